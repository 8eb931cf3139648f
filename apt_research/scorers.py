"""Importance scorers behind one registry (``docs/contract.md``, Other scorers).

A scorer is a function ``(images, patch_size, num_scales, **options) -> {p_s: (B, h_s, w_s)}`` on
pixels in [0, 255]; its keyword-only parameters are its options, with their defaults. The registry is
the only way to a scorer: ``compute_importance_maps`` and ``PatchTokenizer(method=...)`` both look the
name up, check the options (with the checker given at registration), check the shapes of the maps
and apply the border rule, so that a scorer a user registers works wherever a built-in one does and
exact cover holds for all of them. Adding a scorer is one decorated function::

    @register_scorer("my_score")
    def my_score(images, patch_size, num_scales, *, gain=1.0):
        ...

A scorer that can read normalised images itself (as the entropy kernels do) also takes a keyword
``denormalize=(shift, scale)``; ``PatchTokenizer`` then hands it the normalised batch instead of a
pixel copy.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from ._validation import check_bins, check_choice, check_extent, check_images, check_int, check_pad_value
from .contract import DEFAULT_BINS, DEFAULT_PAD_VALUE, MAX_PIXEL
from .backends import BACKENDS, entropy_maps
from .backends.torch_backend import apply_border_rule, denormalize_pixels, grayscale
from .contract import grid_shape, scale_sizes


@dataclass(frozen=True)
class Scorer:
    """A registered scorer: its function, its options with their defaults and their checker.

    Calling it calls the function. ``takes_normalised``: the function accepts ``denormalize``.
    """

    name: str
    function: Callable[..., dict[int, torch.Tensor]]
    options: dict[str, object]
    check_options: Callable[[dict], dict] | None
    takes_normalised: bool

    def __call__(self, images, patch_size, num_scales, **options):
        return self.function(images, patch_size, num_scales, **options)

    def resolve(self, options: dict) -> dict:
        """Every option, defaults filled in and checked; an unknown name raises ``TypeError``."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"method {self.name!r} takes options {sorted(self.options)}, got unknown option(s) "
                            f"{unknown}")
        resolved = {**self.options, **options}
        return self.check_options(resolved) if self.check_options is not None else resolved


SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str, *, check: Callable[[dict], dict] | None = None, replace: bool = False):
    """Decorator that adds a scorer to the registry under ``name``.

    Parameters
    ----------
    name : str
        The name ``compute_importance_maps`` and ``PatchTokenizer`` take as ``method``.
    check : callable, optional
        ``options -> options``: checks the options (all of them, defaults filled in) and
        raises naming the bad one; called once when a tokenizer is built, and on every
        ``compute_importance_maps`` call.
    replace : bool
        Replace a scorer already registered under ``name``; without it that is an error.

    Examples
    --------
    >>> import torch
    >>> @register_scorer("brightness_doc")
    ... def brightness(images, patch_size, num_scales, *, gain=1.0):
    ...     gray = images.float().mean(1, keepdim=True) * gain
    ...     sizes = [patch_size * 2**s for s in range(num_scales)]
    ...     return {p: torch.nn.functional.avg_pool2d(gray, p, ceil_mode=True)[:, 0] for p in sizes}
    >>> maps = compute_importance_maps(torch.full((1, 3, 64, 64), 9.0), "brightness_doc", 16, 2, gain=2.0)
    >>> float(maps[32][0, 0, 0])
    18.0
    >>> _ = SCORERS.pop("brightness_doc")
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")

    def add(function):
        if name in SCORERS and not replace:
            existing = SCORERS[name].function
            raise ValueError(f"a scorer named {name!r} is already registered "
                             f"({existing.__module__}.{existing.__qualname__}); pass replace=True to replace it")
        SCORERS[name] = _scorer(name, function, check)
        return function

    return add


def _scorer(name: str, function, check) -> Scorer:
    """The registry entry of ``function``: its keyword-only parameters (but ``denormalize``) are the options."""
    parameters = inspect.signature(function).parameters.values()
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 3 and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        raise TypeError(f"scorer {name!r} must take (images, patch_size, num_scales) positionally, "
                        f"got the signature {inspect.signature(function)}")
    options = {}
    for parameter in parameters:
        if parameter.kind is parameter.KEYWORD_ONLY and parameter.name != "denormalize":
            if parameter.default is parameter.empty:
                raise TypeError(f"option {parameter.name!r} of scorer {name!r} needs a default")
            options[parameter.name] = parameter.default
    takes_normalised = any(p.name == "denormalize" and p.kind is p.KEYWORD_ONLY for p in parameters)
    return Scorer(name, function, options, check, takes_normalised)


def get_scorer(method: str) -> Scorer:
    """The registered scorer ``method``, or a ``ValueError`` naming the registered ones."""
    if not isinstance(method, str) or method not in SCORERS:
        raise ValueError(f"method must be one of {sorted(SCORERS)}, got {method!r}")
    return SCORERS[method]


def scorer_options(method: str) -> dict[str, object]:
    """The keyword options of a scorer with their defaults."""
    return dict(get_scorer(method).options)


def takes_bins(method: str) -> bool:
    """Whether scorer ``method`` takes a ``bins`` option (``entropy``, or a registered one whose signature has it).

    The one rule of the command line, the explorer and the sweeps: ``bins`` is a setting of its own
    there, passed on only to such a scorer (``options_with_bins``), and only then part of a map's identity.
    """
    return "bins" in get_scorer(method).options


def options_with_bins(method: str, options: dict, bins: int) -> dict:
    """``options`` with ``bins`` added when scorer ``method`` takes a ``bins`` option (``takes_bins``), else
    unchanged.

    Parameters
    ----------
    method : str
        A registered scorer's name.
    options : dict
        The scorer's other keyword options; not modified.
    bins : int
        The histogram bins to pass on.

    Returns
    -------
    dict
        A new dict of the keyword options to give the scorer.
    """
    merged = dict(options)
    if takes_bins(method):
        merged["bins"] = bins
    return merged


def _patch_values(values: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, H, W)`` values, zero-padded to the scale's grid, as ``(B, h, w, size*size)``."""
    height, width = values.shape[-2:]
    rows, cols = grid_shape(height, width, size)
    padded = F.pad(values, (0, cols * size - width, 0, rows * size - height))
    return rearrange(padded, "b (h p1) (w p2) -> b h w (p1 p2)", p1=size, p2=size)


def _check_entropy_options(options: dict) -> dict:
    return {"bins": check_bins(options["bins"]), "backend": check_choice("backend", options["backend"], BACKENDS)}


@register_scorer("entropy", check=_check_entropy_options)
def entropy_scorer(images, patch_size, num_scales, *, bins=DEFAULT_BINS, backend="auto", denormalize=None,
                   check_finite=False):
    """Shannon entropy of each patch's gray-level histogram (``compute_patch_entropy_batched``).

    ``check_finite``: the numba kernel itself refuses NaN / inf pixels (``PatchTokenizer`` asks for it
    instead of a separate pass over the batch).
    """
    return entropy_maps(images, patch_size, num_scales, bins, DEFAULT_PAD_VALUE, backend, denormalize,
                                  check_finite)


LAPLACIAN_AGGREGATES = ("mean", "max", "std")


def _check_laplacian_options(options: dict) -> dict:
    return {"aggregate": check_choice("aggregate", options["aggregate"], LAPLACIAN_AGGREGATES)}


@register_scorer("laplacian", check=_check_laplacian_options)
def laplacian_scorer(images, patch_size, num_scales, *, aggregate="mean"):
    """|3x3 Laplacian| of the gray image / 255 (reflect padding), aggregated per patch with padding as zeros.

    ``aggregate="std"`` is the sample standard deviation (torch's default, ``correction=1``).
    """
    gray = (grayscale(images) / MAX_PIXEL).unsqueeze(1)
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]], device=gray.device).view(1, 1, 3, 3)
    mode = "reflect" if min(gray.shape[-2:]) > 1 else "replicate"
    response = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode=mode), kernel).abs()[:, 0]
    reduce = {"mean": lambda v: v.mean(-1), "max": lambda v: v.amax(-1), "std": lambda v: v.std(-1)}[aggregate]
    return {size: reduce(_patch_values(response, size)) for size in scale_sizes(patch_size, num_scales)}


@register_scorer("upsample_mse")
def upsample_mse_scorer(images, patch_size, num_scales):
    """Per-patch mean squared error between the image / 255 and its bilinear down-then-up copy at scale s.

    The copy is ``F.interpolate(scale_factor=0.5**s)``; where a side is shorter than ``2**s`` pixels,
    that would leave no pixel, so the copy is ``max(1, floor(side / 2**s))`` pixels on each side instead.
    """
    rgb = images.float() / MAX_PIXEL
    height, width = rgb.shape[-2:]
    maps = {}
    for scale, size in enumerate(scale_sizes(patch_size, num_scales)):
        if scale == 0:
            small = rgb
        elif height >> scale and width >> scale:
            small = F.interpolate(rgb, scale_factor=0.5**scale, mode="bilinear", align_corners=False)
        else:
            small = F.interpolate(rgb, size=(max(1, height >> scale), max(1, width >> scale)), mode="bilinear",
                                  align_corners=False)
        restored = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
        error = (rgb - restored).pow(2).mean(1)
        maps[size] = _patch_values(error, size).mean(-1)
    return maps


def compute_importance_maps(
    images: torch.Tensor,
    method: str = "entropy",
    patch_size: int = 16,
    num_scales: int = 3,
    pad_value: float = DEFAULT_PAD_VALUE,
    **options,
) -> dict[int, torch.Tensor]:
    """Importance maps ``{p_s: (B, h_s, w_s)}`` of a registered scorer, border rule applied.

    Parameters
    ----------
    images : Tensor, shape (B, C, H, W)
        Pixels in [0, 255], C in {1, 3}, any H and W.
    method : str
        A registered scorer: ``"entropy"`` (options ``bins``, ``backend``),
        ``"laplacian"`` (option ``aggregate`` in mean/max/std), ``"upsample_mse"``
        or one added with ``register_scorer``.
    patch_size, num_scales : int
        Base patch size and number of scales; the coarsest patch may be at most
        twice the image's longer side or 256 px, whichever is larger.
    pad_value : float
        Score given to patches of a padded last row or column; not NaN, and at
        least every threshold the maps will meet for the border rule to hold.
    **options
        The scorer's options, checked by its checker.

    Returns
    -------
    dict[int, Tensor]
        ``{p_s: (B, ceil(H / p_s), ceil(W / p_s))}`` scores, on the input's device.

    Examples
    --------
    >>> import torch
    >>> from skimage import data
    >>> image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    >>> maps = compute_importance_maps(image, "laplacian", patch_size=16, num_scales=2, aggregate="max")
    >>> tuple(maps[32].shape)
    (1, 16, 16)
    """
    scorer = get_scorer(method)
    options = scorer.resolve(options)
    check_images(images)
    patch_size = check_int("patch_size", patch_size, 1)
    num_scales = check_int("num_scales", num_scales, 1)
    check_extent(patch_size, num_scales, *images.shape[-2:])
    pad_value = check_pad_value(pad_value)
    return importance_maps_unchecked(scorer, images, patch_size, num_scales, pad_value, options)


def importance_maps_unchecked(scorer: Scorer, images, patch_size, num_scales, pad_value, options,
                              denormalize=None) -> dict[int, torch.Tensor]:
    """Run ``scorer`` on arguments already checked; check the maps' shapes and apply the border rule.

    ``denormalize=(shift, scale)``: the images are normalised; a scorer that takes ``denormalize`` reads
    them so, any other gets the pixel copy ``denormalize_pixels(images, shift, scale)``.
    """
    if denormalize is None:
        maps = scorer.function(images, patch_size, num_scales, **options)
    elif scorer.takes_normalised:
        maps = scorer.function(images, patch_size, num_scales, denormalize=denormalize, **options)
    else:
        maps = scorer.function(denormalize_pixels(images, *denormalize), patch_size, num_scales, **options)
    height, width = images.shape[-2:]
    _check_scores(scorer.name, maps, images.shape[0], height, width, scale_sizes(patch_size, num_scales))
    return apply_border_rule(maps, height, width, pad_value)


def _check_scores(name: str, maps, batch: int, height: int, width: int, sizes: list[int]) -> None:
    """A scorer's output must be ``{p_s: floating (B, h_s, w_s)}`` for exactly the scales asked for."""
    if not isinstance(maps, dict) or sorted(maps) != sizes:
        got = sorted(maps) if isinstance(maps, dict) else type(maps).__name__
        raise ValueError(f"scorer {name!r} must return a dict with the patch sizes {sizes}, got {got}")
    for size in sizes:
        expected = (batch, *grid_shape(height, width, size))
        tensor = maps[size]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected or \
                not tensor.is_floating_point():
            got = f"{tuple(tensor.shape)} {tensor.dtype}" if isinstance(tensor, torch.Tensor) else repr(tensor)
            raise ValueError(f"scorer {name!r} returned maps[{size}] of {got}; expected a floating-point tensor "
                             f"of shape {expected}")
        if torch.isnan(tensor).any():
            image = int(torch.isnan(tensor).flatten(1).any(1).nonzero()[0])
            raise ValueError(f"scorer {name!r} returned NaN scores in maps[{size}] of image {image} of the batch; "
                             "expected a number for every patch (NaN would never be kept or dropped reliably)")
