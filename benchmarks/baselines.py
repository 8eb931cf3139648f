"""The baselines the benchmark suite times our implementation against, written from the spec.

(a) ``histc_loop_maps``: the reference data loaders' path, one ``torch.histc``
    call per patch per image (the tests' slow reference, ``tests/reference.py``).
(b) ``one_hot_maps``: the reference's batched variant, a one-hot tensor of
    ``patches x pixels x bins`` summed over pixels (with the spec's binning, so
    its output agrees with ours).
The reference tokenizer pipeline: (a) for the maps, the hierarchical selection,
then the reference's grouping (every patch rearranged, boolean-mask indexing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import reference  # noqa: E402  (tests/reference.py)

from apt_research.entropy import apply_border_rule, bin_indices, grayscale, grid_shape, scale_sizes  # noqa: E402
from apt_research.selection import select_patches_by_threshold  # noqa: E402


def histc_loop_maps(images, patch_size, num_scales, bins):
    """Baseline (a): per image, per patch ``torch.histc``."""
    return reference.entropy_maps(images, patch_size, num_scales, bins)


def one_hot_bytes(images, patch_size, num_scales, bins) -> int:
    """Memory of the one-hot tensors of baseline (b), float32, all scales."""
    batch, _, height, width = images.shape
    total = 0
    for size in scale_sizes(patch_size, num_scales):
        rows, cols = grid_shape(height, width, size)
        total += batch * rows * cols * size * size * bins * 4
    return total


def one_hot_maps(images, patch_size, num_scales, bins):
    """Baseline (b): batched one-hot histograms, ``(B, patches, pixels, bins)`` per scale."""
    gray = grayscale(images)
    height, width = gray.shape[-2:]
    maps = {}
    for size in scale_sizes(patch_size, num_scales):
        rows, cols = grid_shape(height, width, size)
        padded = F.pad(bin_indices(gray, bins), (0, cols * size - width, 0, rows * size - height))
        per_patch = rearrange(padded, "b (h p1) (w p2) -> b (h w) (p1 p2)", p1=size, p2=size)
        counts = F.one_hot(per_patch, bins).float().sum(2)
        prob = counts / (size * size)
        maps[size] = (-(prob * torch.log2(prob + 1e-10)).sum(-1)).view(-1, rows, cols)
    return apply_border_rule(maps, height, width, 1e6)


def reference_tokenizer(tokenizer, images):
    """The reference pipeline: (a) maps on the unnormalised pixels, selection, reference grouping, packing."""
    maps = histc_loop_maps(tokenizer.to_pixels(images), tokenizer.base_patch_size, tokenizer.num_scales, 512)
    masks = select_patches_by_threshold(maps, tokenizer.thresholds)
    groups = reference.patch_groups(images, masks, tokenizer.base_patch_size)
    seqlens = [1 + sum(int(m[b].sum()) for m in masks.values()) for b in range(images.shape[0])]
    groups["cu_seqlens"] = torch.tensor([0] + seqlens).cumsum(0).int()
    return groups
