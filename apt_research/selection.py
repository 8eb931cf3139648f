"""Hierarchical patch selection and the token arithmetic built on its masks (``docs/contract.md``)."""

from __future__ import annotations

import math

import torch

from ._validation import check_maps, check_thresholds


def select_patches_by_threshold(entropy_maps: dict[int, torch.Tensor], thresholds) -> dict[int, torch.Tensor]:
    """Keep a large patch where its score is below its scale's threshold, coarsest scale first.

    Parameters
    ----------
    entropy_maps : dict[int, Tensor]
        ``{p_s: (B, h_s, w_s)}`` scores of S scales whose grids nest, from any
        scorer (the name is the reference implementation's).
    thresholds : sequence of float
        S - 1 numbers; ``thresholds[s - 1]`` belongs to scale s (patch size
        ``p * 2**s``). A patch of scale s >= 1 is kept where ``score < threshold``;
        padded border patches (score ``pad_value``) are never kept while every
        threshold is at most ``pad_value`` (the border rule).

    Returns
    -------
    dict[int, Tensor]
        ``{p_s: (B, h_s, w_s)}`` float 0/1 masks. Every cell of the base grid is
        covered by exactly one kept patch.

    Examples
    --------
    >>> import torch
    >>> maps = {16: torch.full((1, 2, 2), 7.0), 32: torch.tensor([[[2.0]]])}
    >>> masks = select_patches_by_threshold(maps, [3.0])
    >>> int(masks[32].sum()), int(masks[16].sum())
    (1, 0)
    """
    sizes = check_maps(entropy_maps)
    thresholds = check_thresholds(thresholds, len(sizes))
    masks = {sizes[0]: torch.ones_like(entropy_maps[sizes[0]], dtype=torch.float32)}
    for scale in range(1, len(sizes)):
        masks[sizes[scale]] = (entropy_maps[sizes[scale]] < thresholds[scale - 1]).float()
    for coarse in range(len(sizes) - 1, 0, -1):
        for fine in range(coarse):
            factor = 2 ** (coarse - fine)
            rows, cols = masks[sizes[fine]].shape[-2:]
            covered = masks[sizes[coarse]].repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
            masks[sizes[fine]] = masks[sizes[fine]] * (1 - covered[:, :rows, :cols])
    return masks


def tokens_per_scale(masks: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Kept patches per image at each scale: ``{p_s: (B,) int64}``."""
    return {size: mask.flatten(1).sum(1).long() for size, mask in sorted(masks.items())}


def token_counts(masks: dict[int, torch.Tensor], class_token: bool = False) -> torch.Tensor:
    """Tokens per image over all scales, ``(B,)`` int64, plus one per image with ``class_token``."""
    per_scale = tokens_per_scale(masks)
    return torch.stack(list(per_scale.values())).sum(0) + int(class_token)


def base_grid_tokens(masks: dict[int, torch.Tensor]) -> int:
    """Tokens a uniform ViT at the base patch size uses per image: ``h_0 * w_0``."""
    base = masks[min(masks)]
    return int(base.shape[-2] * base.shape[-1])


def retention(masks: dict[int, torch.Tensor]) -> torch.Tensor:
    """Kept patches over ``h_0 * w_0`` per image, ``(B,)`` float (class token not counted)."""
    return token_counts(masks).double() / base_grid_tokens(masks)


def mean_retention(entropy_maps, thresholds) -> float:
    """Retention of a set of images at ``thresholds``: the mean over images of each image's ``retention``.

    The one definition of a set's retention: calibration targets it, and a sweep summary's
    ``retention_mean`` (the mean of the records' per-image ``retention``) is it. Each image weighs the
    same, whatever its size: this is not the pooled ratio ``sum(kept) / sum(h_0 * w_0)``, which lets large
    images outweigh small ones.

    Parameters
    ----------
    entropy_maps : dict[int, Tensor] or sequence of them
        ``{p_s: (B, h_s, w_s)}`` (one batch), or a sequence of such dicts (images of different sizes).
    thresholds : sequence of float
        As in ``select_patches_by_threshold``, the same for every image.

    Returns
    -------
    float
        ``sum(retention_i) / n`` over the n images, summed exactly (``math.fsum``), so the value does not
        depend on how the images are batched.

    Examples
    --------
    >>> import torch
    >>> small = {16: torch.zeros((1, 2, 2)), 32: torch.zeros((1, 1, 1))}  # flat: 1 token of 4
    >>> large = {16: torch.ones((1, 4, 4)), 32: torch.ones((1, 2, 2))}  # busy: 16 tokens of 16
    >>> mean_retention([small, large], [0.5])  # (0.25 + 1) / 2, not the pooled 17 / 20
    0.625
    """
    batches = [entropy_maps] if isinstance(entropy_maps, dict) else list(entropy_maps)
    per_image = [value for maps in batches
                 for value in retention(select_patches_by_threshold(maps, thresholds)).tolist()]
    if not per_image:
        raise ValueError("mean_retention needs at least one image, got none")
    return math.fsum(per_image) / len(per_image)


def savings(masks: dict[int, torch.Tensor]) -> torch.Tensor:
    """``1 - retention`` per image, ``(B,)`` float."""
    return 1.0 - retention(masks)
