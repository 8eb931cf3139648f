"""The plain-torch backend: the contract written as torch operations, on any device, differentiable.

It is the slow, obvious path the kernels are checked against, the fallback where numba or Triton are
missing, and the path autograd follows (patches cut by torch indexing keep their gradient). Its entropy
is one ``bincount`` per scale; its grouping gathers each scale's kept patches and resizes them.
``entropy.py`` exports the contract's functions from here (``grayscale``, ``bin_indices``, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ..contract import CLASS_TOKEN, GRAY_WEIGHTS, LOG_EPSILON, MAX_PIXEL, grid_shape, scale_sizes


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` pixels to float32 ``(B, H, W)``: ``R * 0.2989 + G * 0.5870 + B * 0.1140``, left to right.

    With one channel that channel is the gray value. The weights are ``contract.GRAY_WEIGHTS``.
    """
    images = images.float()
    if images.shape[1] == 1:
        return images[:, 0]
    red, green, blue = GRAY_WEIGHTS
    return images[:, 0] * red + images[:, 1] * green + images[:, 2] * blue


def bin_indices(gray: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin of every gray value in [0, 255]: ``min(floor(v * bins / 255), bins - 1)`` in float32, as ``torch.histc``."""
    return torch.clamp((gray * bins / MAX_PIXEL).long(), max=bins - 1)


def apply_border_rule(maps: dict[int, torch.Tensor], height: int, width: int, pad_value: float) -> dict[int, torch.Tensor]:
    """Set the last row (column) of each scale's map to ``pad_value`` where that scale's grid needed padding.

    Works in place on the tensors of ``maps`` and returns ``maps``.
    """
    for size, scale_map in maps.items():
        rows, cols = scale_map.shape[-2:]
        if rows * size > height:
            scale_map[:, -1, :] = pad_value
        if cols * size > width:
            scale_map[:, :, -1] = pad_value
    return maps


def entropy_from_counts(counts: torch.Tensor, pixels_per_patch: int) -> torch.Tensor:
    """Shannon entropy in bits over the last dimension: ``-sum(p * log2(p + 1e-10))`` with ``p = counts / N``.

    The epsilon is ``contract.LOG_EPSILON``.
    """
    prob = counts.float() / pixels_per_patch
    return -(prob * torch.log2(prob + LOG_EPSILON)).sum(dim=-1)


def histograms(images: torch.Tensor, patch_size: int, bins: int) -> torch.Tensor:
    """Per-patch histograms ``(B, h, w, bins)`` int64 of the grayscale pixels, padding zeros counted in bin 0:
    one ``bincount`` over the pixels (arguments unchecked; ``entropy.patch_histograms`` checks them)."""
    gray = grayscale(images)
    batch, height, width = gray.shape
    rows, cols = grid_shape(height, width, patch_size)
    padded = F.pad(bin_indices(gray, bins), (0, cols * patch_size - width, 0, rows * patch_size - height))
    per_patch = rearrange(padded, "b (h p1) (w p2) -> (b h w) (p1 p2)", p1=patch_size, p2=patch_size)
    keys = per_patch + torch.arange(per_patch.shape[0], device=gray.device).unsqueeze(1) * bins
    counts = torch.bincount(keys.flatten(), minlength=per_patch.shape[0] * bins)
    return counts.view(batch, rows, cols, bins)


def denormalize_pixels(images: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Normalised images back to pixels: ``clamp((x - shift) / scale * 255, 0, 255)`` in float32, per channel.

    With ``shift = -mean / std`` and ``scale = 1 / std`` this undoes a ViT's
    normalisation the way the reference does (a second normalisation).
    """
    shift = shift.to(images.device, torch.float32).view(1, -1, 1, 1)
    scale = scale.to(images.device, torch.float32).view(1, -1, 1, 1)
    return ((images.float() - shift) / scale * MAX_PIXEL).clamp(0.0, MAX_PIXEL)


def entropy_maps(images, patch_size, num_scales, bins, pad_value, denormalize=None) -> dict[int, torch.Tensor]:
    """``{p_s: (B, h_s, w_s)}`` entropies of pixels (or of normalised images with ``denormalize``), border rule
    applied."""
    if denormalize is not None:
        images = denormalize_pixels(images, *denormalize)
    height, width = images.shape[-2:]
    maps = {}
    for size in scale_sizes(patch_size, num_scales):
        maps[size] = entropy_from_counts(histograms(images, size, bins), size * size)
    return apply_border_rule(maps, height, width, pad_value)


def downsample_patches(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """``F.interpolate(patches, scale_factor=1/factor, mode="bilinear", align_corners=False)`` for a power of two.

    Bilinear downsampling by ``factor = 2**s`` without antialiasing reads two
    rows and two columns per output pixel, each with weight 1/2 (source
    ``factor * i + factor / 2 - 1`` and the next). Written as four strided views
    summed in the CPU kernel's order it is bit-identical to ``F.interpolate`` on
    the CPU (within one float32 rounding of the CUDA kernel), and much faster for
    many small patches than ``upsample_bilinear2d`` on CUDA.
    """
    first = factor // 2 - 1
    rows_a, rows_b = patches[..., first::factor, :], patches[..., first + 1 :: factor, :]
    return (
        0.25 * rows_a[..., first::factor] + 0.25 * rows_a[..., first + 1 :: factor]
    ) + 0.25 * rows_b[..., first::factor] + 0.25 * rows_b[..., first + 1 :: factor]


def gather_patches(images, image_idx, row_idx, col_idx, size: int) -> torch.Tensor:
    """The ``size x size`` patches at the given grid cells, ``(N, C, size, size)``.

    ``images`` is zero-padded to a multiple of the base patch: the grid of whole patches is
    viewed and indexed. Patches above scale 0 that stick out of the image are never kept (the
    border rule); should custom maps keep one, the image is padded for that scale.
    """
    rows, cols = images.shape[-2] // size, images.shape[-1] // size
    if image_idx.numel() and bool(((row_idx >= rows) | (col_idx >= cols)).any()):
        images = F.pad(images, (0, -(-images.shape[-1] // size) * size - images.shape[-1],
                                0, -(-images.shape[-2] // size) * size - images.shape[-2]))
        rows, cols = images.shape[-2] // size, images.shape[-1] // size
    grid = rearrange(images[..., : rows * size, : cols * size], "b c (h p1) (w p2) -> b h w c p1 p2", p1=size, p2=size)
    return grid[image_idx, row_idx, col_idx]


def patch_groups(images: torch.Tensor, masks: dict[int, torch.Tensor], base: int) -> dict[str, torch.Tensor]:
    """Each scale's kept patches gathered by torch indexing (see ``tokenizer.patch_groups`` for the outputs)."""
    height, width = images.shape[-2:]
    rows, cols = grid_shape(height, width, base)
    if (rows * base, cols * base) != (height, width):
        images = F.pad(images, (0, cols * base - width, 0, rows * base - height))
    groups = {}
    for scale, size in enumerate(sorted(masks)):
        keep = masks[size].bool()
        image_idx, row_idx, col_idx = keep.nonzero(as_tuple=True)
        patches = gather_patches(images, image_idx, row_idx, col_idx, size)
        if scale == 0:
            groups[f"resized_patches_{size}"] = patches
        else:
            groups[f"resized_patches_{size}"] = downsample_patches(patches, size // base)
            groups[f"full_patches_{size}"] = rearrange(
                patches, "n c (n1 p1) (n2 p2) -> n (n1 n2) c p1 p2", p1=base, p2=base
            )
        groups[f"pos_embed_mask_{size}"] = keep.flatten(1)
        groups[f"token_boxes_{size}"] = torch.stack(
            [image_idx, row_idx * size, col_idx * size, torch.full_like(image_idx, size)], dim=1
        )
    return groups


def output_mask(counts: torch.Tensor, seqlens: list[int], num_scales: int) -> torch.Tensor:
    """The packed sequence's labels from the kept patches per image and scale ``counts`` ``(B, S)``: -1 for each
    image's class token, ``s + 1`` for a token of scale s."""
    labels = torch.tensor([CLASS_TOKEN, *range(1, num_scales + 1)], device=counts.device)
    per_image = torch.cat([torch.ones_like(counts[:, :1]), counts], dim=1)
    return torch.repeat_interleave(labels.repeat(counts.shape[0]), per_image.flatten(), output_size=sum(seqlens))


def packed_boxes(groups: dict, sizes: list[int], batch: int, device) -> torch.Tensor:
    """``(sum(seqlens), 4)`` boxes in the packed order: each image's class token ``(image, -1, -1, 0)``, then its
    patches scale by scale."""
    class_boxes = torch.tensor([[0, -1, -1, 0]], device=device).repeat(batch, 1)
    class_boxes[:, 0] = torch.arange(batch, device=device)
    boxes = [class_boxes] + [groups[f"token_boxes_{size}"] for size in sizes]
    labels = [torch.full((batch,), CLASS_TOKEN, device=device)] + [
        torch.full((b.shape[0],), scale + 1, device=device) for scale, b in enumerate(boxes[1:])
    ]
    boxes, labels = torch.cat(boxes), torch.cat(labels)
    order = torch.argsort(boxes[:, 0] * (len(sizes) + 2) + labels + 1, stable=True)
    return boxes[order]


def forward(images: torch.Tensor, masks: dict[int, torch.Tensor], counts: torch.Tensor, counts_host: torch.Tensor,
            base: int, group=patch_groups) -> dict:
    """The forward's outputs from the selection's ``masks`` and kept patches per image and scale (``counts`` on the
    images' device, ``counts_host`` on the CPU): groups by ``group`` (this backend's, or the numba copy kernel's
    for CPU float32 images), then the packed sequence's labels, lengths and boxes."""
    sizes = sorted(masks)
    seqlens = (counts_host.sum(1) + 1).tolist()
    out = group(images, masks, base)
    out["masks"] = masks
    out["output_mask"] = output_mask(counts, seqlens, len(sizes))
    out["seqlens"] = seqlens
    seq_tensor = torch.tensor([0] + seqlens, dtype=torch.int64, device=images.device)
    out["cu_seqlens"] = seq_tensor.cumsum(0).to(torch.int32)
    out["token_boxes"] = packed_boxes(out, sizes, images.shape[0], images.device)
    return out
