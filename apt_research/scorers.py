"""Importance scorers behind one registry (spec section 3).

A scorer is a function ``(images, patch_size, num_scales, **options) -> {p_s: (B, h_s, w_s)}``
on raw pixels in [0, 255]; ``compute_importance_maps`` validates the input and
applies the border rule to every scorer's maps, so that exact cover holds for
all of them. Adding a scorer is one decorated function::

    @register_scorer("my_score")
    def my_score(images, patch_size, num_scales, *, gain=1.0):
        ...
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from ._validation import check_images, check_int
from .entropy import apply_border_rule, compute_patch_entropy_batched, grayscale, grid_shape, scale_sizes

SCORERS: dict[str, Callable[..., dict[int, torch.Tensor]]] = {}


def register_scorer(name: str):
    """Decorator that adds a scorer to the registry under ``name``."""

    def add(function):
        SCORERS[name] = function
        return function

    return add


def scorer_options(method: str) -> dict[str, object]:
    """The keyword options of a scorer with their defaults."""
    if method not in SCORERS:
        raise ValueError(f"method must be one of {sorted(SCORERS)}, got {method!r}")
    parameters = inspect.signature(SCORERS[method]).parameters
    return {name: p.default for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _patch_values(values: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, H, W)`` values, zero-padded to the scale's grid, as ``(B, h, w, size*size)``."""
    height, width = values.shape[-2:]
    rows, cols = grid_shape(height, width, size)
    padded = F.pad(values, (0, cols * size - width, 0, rows * size - height))
    return rearrange(padded, "b (h p1) (w p2) -> b h w (p1 p2)", p1=size, p2=size)


@register_scorer("entropy")
def entropy_scorer(images, patch_size, num_scales, *, bins=512, backend="auto"):
    """Shannon entropy of each patch's gray-level histogram (section 1)."""
    return compute_patch_entropy_batched(images, patch_size, num_scales, bins, backend=backend)


LAPLACIAN_AGGREGATES = ("mean", "max", "std")


@register_scorer("laplacian")
def laplacian_scorer(images, patch_size, num_scales, *, aggregate="mean"):
    """|3x3 Laplacian| of the gray image / 255 (reflect padding), aggregated per patch with padding as zeros.

    ``aggregate="std"`` is the sample standard deviation (torch's default, ``correction=1``).
    """
    if aggregate not in LAPLACIAN_AGGREGATES:
        raise ValueError(f"aggregate must be one of {LAPLACIAN_AGGREGATES}, got {aggregate!r}")
    gray = (grayscale(images) / 255.0).unsqueeze(1)
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]], device=gray.device).view(1, 1, 3, 3)
    mode = "reflect" if min(gray.shape[-2:]) > 1 else "replicate"
    response = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode=mode), kernel).abs()[:, 0]
    reduce = {"mean": lambda v: v.mean(-1), "max": lambda v: v.amax(-1), "std": lambda v: v.std(-1)}[aggregate]
    return {size: reduce(_patch_values(response, size)) for size in scale_sizes(patch_size, num_scales)}


@register_scorer("upsample_mse")
def upsample_mse_scorer(images, patch_size, num_scales):
    """Per-patch mean squared error between the image / 255 and its bilinear down-then-up copy at scale s."""
    rgb = images.float() / 255.0
    height, width = rgb.shape[-2:]
    maps = {}
    for scale, size in enumerate(scale_sizes(patch_size, num_scales)):
        factor = 0.5**scale
        small = F.interpolate(rgb, scale_factor=factor, mode="bilinear", align_corners=False) if scale else rgb
        restored = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
        error = (rgb - restored).pow(2).mean(1)
        maps[size] = _patch_values(error, size).mean(-1)
    return maps


def compute_importance_maps(
    images: torch.Tensor,
    method: str = "entropy",
    patch_size: int = 16,
    num_scales: int = 3,
    pad_value: float = 1e6,
    **options,
) -> dict[int, torch.Tensor]:
    """Importance maps ``{p_s: (B, h_s, w_s)}`` of a registered scorer, border rule applied.

    Parameters
    ----------
    images : Tensor, shape (B, C, H, W)
        Pixels in [0, 255], C in {1, 3}.
    method : str
        A registered scorer: ``"entropy"`` (option ``bins``), ``"laplacian"``
        (option ``aggregate`` in mean/max/std) or ``"upsample_mse"``.
    patch_size, num_scales : int
        Base patch size and number of scales.
    pad_value : float
        Score given to patches of a padded last row or column.

    Examples
    --------
    >>> import torch
    >>> from skimage import data
    >>> image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    >>> maps = compute_importance_maps(image, "laplacian", patch_size=16, num_scales=2, aggregate="max")
    >>> tuple(maps[32].shape)
    (1, 16, 16)
    """
    allowed = scorer_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"method {method!r} takes options {sorted(allowed)}, got unknown option(s) {unknown}")
    check_images(images)
    check_int("patch_size", patch_size, 1)
    check_int("num_scales", num_scales, 1)
    maps = SCORERS[method](images, patch_size, num_scales, **options)
    return apply_border_rule(maps, images.shape[-2], images.shape[-1], pad_value)
