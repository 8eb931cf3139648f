"""The Triton backend: CUDA kernels for the entropy maps and for a forward in a handful of launches.

``kernels`` holds the Triton programs (entropy per scale, selection, grouping); this module calls them.
Nothing here imports triton until a kernel is needed, so the package imports on machines without it.
"""

from __future__ import annotations

import numpy as np
import torch

from ...contract import grid_shape


def entropy_maps(images, patch_size, num_scales, bins, pad_value, denormalize=None) -> dict[int, torch.Tensor]:
    """``{p_s: (B, h_s, w_s)}`` entropies of CUDA ``images`` by the Triton kernel."""
    from .kernels import entropy_maps_triton

    return entropy_maps_triton(images, patch_size, num_scales, bins, pad_value, denormalize)


def patch_groups(images: torch.Tensor, masks: dict[int, torch.Tensor], base: int) -> dict[str, torch.Tensor]:
    """One Triton program per grid cell writes each kept patch (resized, full, box) to its slot."""
    from .kernels import patch_groups_triton

    totals = torch.stack([masks[size].flatten(1).sum(1) for size in sorted(masks)], 1).long().sum(0).tolist()
    groups = {}
    for scale, size in enumerate(sorted(masks)):
        keep = masks[size] > 0
        resized, full, boxes = patch_groups_triton(images, keep, int(totals[scale]), size, base)
        groups[f"resized_patches_{size}"] = resized
        if full is not None:
            groups[f"full_patches_{size}"] = full
        groups[f"pos_embed_mask_{size}"] = keep.flatten(1)
        groups[f"token_boxes_{size}"] = boxes
    return groups


def forward(images: torch.Tensor, maps, *, sizes: list[int], base: int, bins: int, pad_value: float,
            denormalize: tuple, thresholds: torch.Tensor) -> dict:
    """CUDA forward in a handful of launches and one host sync.

    With ``maps`` None the entropy kernel scores each scale into one flat buffer (the input check folded into
    the scale-0 kernel); else ``maps`` are the scorer's. Then one selection kernel for every scale's mask,
    per-image slots and counts, one copy of the counts to the host, one copy of the packing offsets back, and
    one grouping kernel per scale that writes the patches, their boxes, the packed boxes and labels, and
    (scale 0) the class tokens. ``thresholds``: float32 ``(S,)`` on the device, entry s for scale s.
    """
    from .kernels import entropy_flat_triton, patch_groups_triton, select_triton

    batch, _, height, width = images.shape
    num_scales = len(sizes)
    kernel_checks = maps is None
    if kernel_checks:
        flat, maps = entropy_flat_triton(images, base, num_scales, bins, pad_value, denormalize, check_finite=True)
    else:
        flat = torch.cat([maps[size].reshape(-1).float() for size in sizes])
    grids = [grid_shape(height, width, size) for size in sizes]
    masks_flat, keep, slots, counts = select_triton(flat, thresholds.to(flat.device), batch, *grids[0], num_scales)
    counts = counts.cpu().numpy()  # the one host sync
    # NaN / -inf cells of scale 0 mean bad pixels only in maps the kernel made; a caller's maps may hold them.
    for column, word in ((num_scales, "a nan"), (num_scales + 1, "an inf")) if kernel_checks else ():
        bad = np.flatnonzero(counts[:, column])
        if bad.size:
            raise ValueError(
                f"images must be finite, got {word} value in image {int(bad[0])} of the batch; "
                "expected normalised pixel values"
            )
    kept = counts[:, :num_scales].astype(np.int64)
    seqlens = kept.sum(1) + 1
    cu_seqlens = np.concatenate([[0], np.cumsum(seqlens)])
    offsets = np.cumsum(kept, 0) - kept  # kept patches of the images before, per scale
    packed_starts = cu_seqlens[:-1, None] + 1 + np.cumsum(kept, 1) - kept  # first token of (image, scale)
    ints = torch.from_numpy(np.concatenate([offsets.T.ravel(), packed_starts.T.ravel(), cu_seqlens])
                            .astype(np.int32)).to(images.device)
    offsets = ints[: batch * num_scales].view(num_scales, batch)
    packed_starts = ints[batch * num_scales : 2 * batch * num_scales].view(num_scales, batch)
    cu = ints[2 * batch * num_scales :]
    token_boxes = torch.empty(int(cu_seqlens[-1]), 4, dtype=torch.int64, device=images.device)
    output_mask = torch.empty(int(cu_seqlens[-1]), dtype=torch.int64, device=images.device)
    out, masks, start = {}, {}, 0
    totals = kept.sum(0).tolist()
    keep_bool = keep.view(torch.bool)
    for scale, (size, (rows, cols)) in enumerate(zip(sizes, grids)):
        cells = slice(start, start + batch * rows * cols)
        start += batch * rows * cols
        keep_scale = keep[cells].view(batch, rows, cols)
        resized, full, boxes = patch_groups_triton(
            images, keep_scale, totals[scale], size, base,
            packed=(token_boxes, output_mask, packed_starts[scale], scale + 1),
            slots=slots[cells], offsets=offsets[scale], class_starts=cu[:-1] if scale == 0 else None,
        )
        out[f"resized_patches_{size}"] = resized
        if full is not None:
            out[f"full_patches_{size}"] = full
        out[f"pos_embed_mask_{size}"] = keep_bool[cells].view(batch, rows * cols)
        out[f"token_boxes_{size}"] = boxes
        masks[size] = masks_flat[cells].view(batch, rows, cols)
    out["masks"] = masks
    out["output_mask"] = output_mask
    out["seqlens"] = seqlens.tolist()
    out["cu_seqlens"] = cu
    out["token_boxes"] = token_boxes
    return out
