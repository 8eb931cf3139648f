"""Per-image analysis on top of the core: reconstruction, fidelity, token records.

``reconstruct`` fills every kept token's region from its resized patch scaled
back up, so that PSNR and SSIM (scikit-image's metrics) against the resized
image say what a token budget costs. ``image_record`` is the one row per image
per configuration that sweeps aggregate.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .contract import DEFAULT_PAD_VALUE, MAX_PIXEL
from .contract import grid_shape
from .selection import base_grid_tokens, tokens_per_scale
from .tokenizer import patch_groups

SCORE_QUANTILES = (0.1, 0.5, 0.9)


def reconstruct(pixels: torch.Tensor, masks: dict[int, torch.Tensor], base_patch_size: int) -> torch.Tensor:
    """Mixed-resolution reconstruction ``(B, C, H, W)`` of ``pixels`` from the tokens the masks keep.

    Each kept patch of side ``p_s`` is cut, resized to ``p x p`` exactly as the
    tokenizer does (bilinear, no antialias), scaled back up to ``p_s x p_s``
    (bilinear) and written into its region.
    """
    sizes = sorted(masks)
    groups = patch_groups(pixels.float(), masks, base_patch_size)
    height, width = pixels.shape[-2:]
    rows, cols = grid_shape(height, width, sizes[-1])
    canvas = torch.zeros(pixels.shape[0], pixels.shape[1], rows * sizes[-1], cols * sizes[-1], device=pixels.device)
    for size in sizes:
        patches = groups[f"resized_patches_{size}"]
        if patches.shape[0] == 0:
            continue
        if size != base_patch_size:
            patches = F.interpolate(patches, size=(size, size), mode="bilinear", align_corners=False)
        boxes = groups[f"token_boxes_{size}"]
        grid = rearrange(canvas, "b c (h p1) (w p2) -> b h w c p1 p2", p1=size, p2=size)
        grid[boxes[:, 0], boxes[:, 1] // size, boxes[:, 2] // size] = patches
    return canvas[..., :height, :width]


def fidelity(reference: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM of one ``(C, H, W)`` reconstruction against its reference, pixels in [0, 255].

    SSIM uses a 7 x 7 window, or the largest odd one the image holds; an image thinner than 3 pixels
    holds none (SSIM needs a variance over at least two pixels of the window), and its SSIM is NaN.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = reference.detach().cpu().permute(1, 2, 0).numpy().astype(np.float64)
    rec = reconstruction.detach().cpu().permute(1, 2, 0).numpy().astype(np.float64)
    if np.array_equal(ref, rec):
        psnr = math.inf
    else:
        psnr = float(peak_signal_noise_ratio(ref, rec, data_range=MAX_PIXEL))
    side = min(ref.shape[0], ref.shape[1], 7)
    window = side if side % 2 else side - 1
    if window < 3:
        return {"psnr": psnr, "ssim": math.nan}
    ssim = float(structural_similarity(ref, rec, data_range=MAX_PIXEL, channel_axis=-1, win_size=window))
    return {"psnr": psnr, "ssim": ssim}


def entropy_statistics(maps: dict[int, torch.Tensor], index: int, pad_value: float = DEFAULT_PAD_VALUE
                       ) -> dict[str, float]:
    """Mean, std and p10/p50/p90 of image ``index``'s scores (any scorer's) per scale, padded patches left out."""
    stats = {}
    for size, scale_map in sorted(maps.items()):
        values = scale_map[index].flatten().double()
        values = values[values < pad_value]
        prefix = f"score_{size}"
        if values.numel() == 0:
            stats.update({f"{prefix}_{k}": math.nan for k in ("mean", "std", "p10", "p50", "p90")})
            continue
        quantiles = torch.quantile(values, torch.tensor(SCORE_QUANTILES, dtype=torch.float64)).tolist()
        stats[f"{prefix}_mean"] = float(values.mean())
        stats[f"{prefix}_std"] = float(values.std(unbiased=False))
        stats.update({f"{prefix}_p{round(q * 100)}": v for q, v in zip(SCORE_QUANTILES, quantiles)})
    return stats


def token_record(masks: dict[int, torch.Tensor], index: int) -> dict[str, float]:
    """Tokens per scale, total, base-grid tokens, retention and savings of image ``index``."""
    per_scale = {f"tokens_{size}": int(count[index]) for size, count in tokens_per_scale(masks).items()}
    total = sum(per_scale.values())
    base = base_grid_tokens(masks)
    return {**per_scale, "tokens_total": total, "tokens_base_grid": base, "retention": total / base,
            "savings": 1.0 - total / base}
