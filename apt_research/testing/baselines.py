"""The baselines the benchmark suite times our implementation against, written from the spec.

(a) ``histc_loop_maps``: the reference data loaders' path, one ``torch.histc``
    call per patch per image (the tests' slow reference, ``apt_research.testing.reference``).
(b) ``one_hot_maps``: the reference's batched variant, a one-hot tensor of
    ``patches x pixels x bins`` summed over pixels (with the spec's binning, so
    its output agrees with ours).
The reference tokenizer pipeline: (a) for the maps, the hierarchical selection,
then the reference's grouping (every patch rearranged, boolean-mask indexing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ..entropy import apply_border_rule, bin_indices, grayscale, grid_shape, scale_sizes
from . import reference


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


def reference_image_maps(pixels, patch_size, num_scales, bins=512, pad_value=1e6):
    """The reference data loader's maps of one image ``(C, H, W)`` in [0, 255] (its ``compute_patch_entropy_vectorized``).

    As the reference does it: gray ``0.2989 R + 0.5870 G + 0.1140 B``; per scale the gray image is
    zero-padded to whole patches, unfolded into one row per patch, each row histogrammed by its own
    ``torch.histc`` call and the rows stacked; probabilities, ``-sum(p log2(p + 1e-10))``, and the
    padded last row / column set to ``pad_value``. (It also builds an unused ``linspace`` of bin
    edges per scale, kept here so the work matches.)
    """
    gray = 0.2989 * pixels[0] + 0.5870 * pixels[1] + 0.1140 * pixels[2] if pixels.shape[0] == 3 else pixels[0]
    height, width = gray.shape
    maps = {}
    for size in scale_sizes(patch_size, num_scales):
        rows, cols = grid_shape(height, width, size)
        padded = F.pad(gray, (0, cols * size - width, 0, rows * size - height), mode="constant", value=0)
        rows_of_patches = padded.unfold(0, size, size).unfold(1, size, size).reshape(rows * cols, -1)
        torch.linspace(0, 255, bins + 1)
        counts = torch.stack([torch.histc(row, bins=bins, min=0, max=255) for row in rows_of_patches])
        prob = counts / (size * size)
        entropy = -torch.sum(prob * torch.log2(prob + 1e-10), dim=1).reshape(rows, cols)
        if rows * size > height:
            entropy[-1, :] = pad_value
        if cols * size > width:
            entropy[:, -1] = pad_value
        maps[size] = entropy
    return maps


def reference_loader_maps(pixels, patch_size, num_scales):
    """Maps of a batch as the reference's data loader makes them: one image at a time, then collated.

    ``ImageFolderWithEntropy.__getitem__`` computes each image's maps; the ``DataLoader``'s default
    collation stacks them per patch size into ``(B, h, w)``.
    """
    per_image = [reference_image_maps(image, patch_size, num_scales) for image in pixels]
    return {size: torch.stack([maps[size] for maps in per_image]) for size in per_image[0]}


def reference_select(maps, thresholds):
    """The reference's ``select_patches_by_threshold``: float masks, coarse masks widened by ``repeat_interleave``."""
    sizes = sorted(maps)
    masks = {sizes[0]: torch.ones_like(maps[sizes[0]])}
    for scale in range(len(sizes) - 1, 0, -1):
        masks[sizes[scale]] = (maps[sizes[scale]] < thresholds[scale - 1]).float()
    for scale in range(len(sizes) - 1, 0, -1):
        for finer in range(scale):
            factor = sizes[scale] // sizes[finer]
            wide = masks[sizes[scale]].repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
            rows, cols = maps[sizes[finer]].shape[1:]
            masks[sizes[finer]] = masks[sizes[finer]] * (1 - wide[:, :rows, :cols])
    return masks


def reference_construct_masks(maps, thresholds, base, num_scales):
    """The reference's ``PatchTokenizer.construct_masks``: masks, the scale label of each token, ``seqlens``.

    Labels: a ``(B, 1)`` column of -1 then each scale's flattened mask times ``s + 1``, concatenated
    and filtered to the non-zero entries; ``seqlens`` summed in float and cast to int.
    """
    masks = reference_select(maps, thresholds)
    batch = masks[base].shape[0]
    labels = [torch.ones((batch, 1)) * -1]
    seqlens = torch.ones(batch)
    for scale in range(num_scales):
        flat = masks[base * 2**scale].flatten(1)
        seqlens += flat.sum(1)
        labels.append(flat * (scale + 1))
    output_mask = torch.cat(labels, dim=1)
    return masks, output_mask[output_mask != 0], seqlens.int().tolist()


def reference_construct_patch_groups(images, masks, base, num_scales, image_size):
    """The reference's ``PatchTokenizer.construct_patch_groups`` (square images whose side the largest patch divides).

    Per scale s: the whole batch resized by ``0.5**s`` (bilinear), cut into base-size patches by a
    rearrange and boolean-indexed by the mask; for s >= 1 also the whole batch rearranged into each
    large patch's base patches and boolean-indexed; and the flattened mask.
    """
    groups = {}
    for scale in range(num_scales):
        size = base * 2**scale
        keep = masks[size].bool()
        scaled = images
        if scale > 0:
            scaled = F.interpolate(images, scale_factor=0.5**scale, mode="bilinear")
            factor = size // base
            constituents = rearrange(
                images, "b c (h n1 p3) (w n2 p4) -> b h w (n1 n2) c p3 p4", h=image_size // size,
                w=image_size // size, n1=factor, n2=factor, p3=base, p4=base,
            )
            groups[f"full_patches_{size}"] = constituents[keep]
        cut = rearrange(scaled, "b c (h p1) (w p2) -> b h w c p1 p2", p1=base, p2=base)
        groups[f"resized_patches_{size}"] = cut[masks[size].bool()]
        groups[f"pos_embed_mask_{size}"] = masks[size].flatten(1).bool()
    return groups


def reference_forward(images, maps, thresholds, base, num_scales, image_size):
    """The reference's ``PatchTokenizer.forward`` given the loader's maps: masks, groups, ``cu_seqlens``."""
    batch, _, height, width = images.shape
    masks, output_mask, seqlens = reference_construct_masks(maps, thresholds, base, num_scales)
    groups = reference_construct_patch_groups(images, masks, base, num_scales, image_size)
    groups["output_mask"] = output_mask
    groups["seqlens"] = seqlens
    groups["cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.int32),
                                      torch.tensor(seqlens, dtype=torch.int32).cumsum(0)])
    groups["max_seqlen"] = max(seqlens)
    groups["retained_frac"] = sum(seqlens) / (batch * height * width / base**2)
    return groups


def reference_pipeline(images, pixels, thresholds, base, num_scales, image_size):
    """The reference end to end: the loader's per-image maps of ``pixels``, then its forward on ``images``."""
    maps = reference_loader_maps(pixels, base, num_scales)
    return reference_forward(images, maps, thresholds, base, num_scales, image_size)
