"""Slow, obvious references written from the spec: explicit loops, one patch at a time.

The library's fast paths are compared with these on random and real images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gray(images: torch.Tensor) -> torch.Tensor:
    images = images.float()
    if images.shape[1] == 1:
        return images[:, 0]
    return images[:, 0] * 0.2989 + images[:, 1] * 0.5870 + images[:, 2] * 0.1140


def histc_histograms(images: torch.Tensor, patch_size: int, bins: int) -> torch.Tensor:
    """``(B, h, w, bins)``: ``torch.histc`` of each zero-padded patch, one call per patch."""
    g = gray(images)
    batch, height, width = g.shape
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    padded = F.pad(g, (0, cols * patch_size - width, 0, rows * patch_size - height))
    out = torch.zeros(batch, rows, cols, bins)
    for b in range(batch):
        for i in range(rows):
            for j in range(cols):
                patch = padded[b, i * patch_size : (i + 1) * patch_size, j * patch_size : (j + 1) * patch_size]
                out[b, i, j] = torch.histc(patch, bins=bins, min=0, max=255)
    return out


def entropy_maps(images, patch_size=16, num_scales=3, bins=512, pad_value=1e6):
    height, width = images.shape[-2:]
    maps = {}
    for scale in range(num_scales):
        size = patch_size * 2**scale
        prob = histc_histograms(images, size, bins) / (size * size)
        entropy = -(prob * torch.log2(prob + 1e-10)).sum(-1)
        if entropy.shape[1] * size > height:
            entropy[:, -1, :] = pad_value
        if entropy.shape[2] * size > width:
            entropy[:, :, -1] = pad_value
        maps[size] = entropy
    return maps


def select(maps, thresholds):
    """Selection with explicit loops: coarsest first, a kept patch clears every finer cell it covers."""
    sizes = sorted(maps)
    masks = {size: torch.zeros_like(maps[size]) for size in sizes}
    batch, rows0, cols0 = maps[sizes[0]].shape
    for b in range(batch):
        covered = torch.zeros(rows0, cols0, dtype=torch.bool)
        for scale in range(len(sizes) - 1, -1, -1):
            size = sizes[scale]
            factor = 2**scale
            rows, cols = maps[size].shape[1:]
            for i in range(rows):
                for j in range(cols):
                    cells = covered[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
                    if scale == 0:
                        keep = not bool(cells.any())
                    else:
                        keep = float(maps[size][b, i, j]) < thresholds[scale - 1] and not bool(cells.any())
                    if keep:
                        masks[size][b, i, j] = 1
                        covered[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor] = True
    return masks


def patch_groups(images, masks, base):
    """The reference's grouping: resize the whole padded image per scale, rearrange every patch, boolean-index."""
    from einops import rearrange

    sizes = sorted(masks)
    largest = sizes[-1]
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, math.ceil(width / largest) * largest - width, 0, math.ceil(height / largest) * largest - height))
    groups = {}
    for scale, size in enumerate(sizes):
        keep = masks[size].bool()
        rows, cols = keep.shape[1:]
        scaled = padded if scale == 0 else F.interpolate(padded, scale_factor=0.5**scale, mode="bilinear", align_corners=False)
        patches = rearrange(scaled, "b c (h p1) (w p2) -> b h w c p1 p2", p1=base, p2=base)[:, :rows, :cols]
        groups[f"resized_patches_{size}"] = patches[keep]
        if scale:
            full = rearrange(
                padded, "b c (h n1 p1) (w n2 p2) -> b h w (n1 n2) c p1 p2", n1=2**scale, n2=2**scale, p1=base, p2=base
            )[:, :rows, :cols]
            groups[f"full_patches_{size}"] = full[keep]
    return groups
