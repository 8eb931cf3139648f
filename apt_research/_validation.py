"""Input checks shared by the public functions.

Every error names the argument, the value received and what was expected, in
the manner of timm's ``PatchEmbed`` ("Input height (230) should be ...").
"""

from __future__ import annotations

import difflib

import math
import numbers
import warnings
from typing import Sequence

import numpy as np
import torch

from .contract import COARSEST_PATCH_RATIO, MAX_BINS, SMALL_IMAGE_PATCH_LIMIT


def check_int(name: str, value, minimum: int) -> int:
    """Return ``value`` as an int, or raise if it is not an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_bins(bins, name: str = "bins") -> int:
    """Return ``bins`` as an int in ``[2, MAX_BINS]``, or raise naming it."""
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral):
        raise TypeError(f"{name} must be an int in [2, {MAX_BINS}], got {bins!r} ({type(bins).__name__})")
    if not 2 <= bins <= MAX_BINS:
        raise ValueError(f"{name} must be an int in [2, {MAX_BINS}], got {bins}")
    return int(bins)


def check_choice(name: str, value, choices: Sequence) -> object:
    """Return ``value`` if it is one of ``choices``, or raise naming the argument and the choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_pad_value(value, name: str = "pad_value") -> float:
    """Return ``value`` as a float: a real number that is not NaN and fits in float32 (``inf`` is allowed), else raise.

    NaN would compare false with every threshold and mark bad input on the CUDA path, so it is refused.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (the score of padded border patches), "
                        f"got {value!r} ({type(value).__name__})")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN; expected a number at least as large as every threshold")
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        # Maps are float32: such a value would become inf on one backend and an overflow error on another.
        raise ValueError(f"{name} must fit in float32 (at most {_FLOAT32_MAX:.6g} in magnitude, or +-inf), "
                         f"got {value!r}")
    return float(value)


def check_channel_stats(name: str, value, *, positive: bool = False) -> torch.Tensor:
    """``value`` as a flat float32 tensor of 1 or 3 finite numbers (one per channel); with ``positive`` all > 0."""
    expected = f"{name} must be 1 or 3 finite {'positive ' if positive else ''}numbers (one per channel)"
    if isinstance(value, (str, bytes, bool)) or (isinstance(value, Sequence) and any(
            isinstance(v, (str, bytes, bool)) for v in value)):
        raise TypeError(f"{expected}, got {value!r}")
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{expected}, got {value!r} ({type(value).__name__})") from error
    if tensor.numel() not in (1, 3) or not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{expected}, got {value!r}")
    if positive and bool((tensor <= 0).any()):
        raise ValueError(f"{expected}, got {value!r}")
    return tensor


def check_denormalize(denormalize, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``(shift, scale)``: 1 or 3 finite numbers each, ``scale`` positive, 3 only for 3-channel images."""
    if not isinstance(denormalize, (tuple, list)) or len(denormalize) != 2:
        raise TypeError(f"denormalize must be a pair (shift, scale) of per-channel numbers, got {denormalize!r}")
    shift = check_channel_stats("denormalize shift", denormalize[0])
    scale = check_channel_stats("denormalize scale", denormalize[1], positive=True)
    for label, tensor in (("shift", shift), ("scale", scale)):
        if tensor.numel() == 3 and channels != 3:
            raise ValueError(f"denormalize {label} has 3 values but the images have {channels} channel(s); "
                             "expected 1 value")
    return shift, scale


def check_extent(patch_size: int, num_scales: int, height: int, width: int,
                 names: tuple[str, str] = ("patch_size", "num_scales")) -> None:
    """Refuse scales whose coarsest patch dwarfs a ``height x width`` image (``docs/contract.md``, Limits).

    The coarsest patch ``patch_size * 2**(num_scales - 1)`` may be at most ``COARSEST_PATCH_RATIO`` times
    the longer side, or ``SMALL_IMAGE_PATCH_LIMIT`` pixels, whichever is larger; checked before any buffer
    is allocated.
    """
    limit = max(SMALL_IMAGE_PATCH_LIMIT, COARSEST_PATCH_RATIO * max(height, width))
    coarsest = patch_size << min(num_scales - 1, 64)  # 2**64 px already dwarfs any image
    if coarsest <= limit:
        return
    rule = (f"expected a coarsest patch of at most max({SMALL_IMAGE_PATCH_LIMIT}, {COARSEST_PATCH_RATIO} x the "
            f"longer side) = {limit} px for a {height} x {width} image")
    if patch_size > limit:
        raise ValueError(f"{names[0]}={patch_size} dwarfs the image: {rule}")
    allowed = (limit // patch_size).bit_length()
    size = f"{coarsest} px" if num_scales <= 65 else "more than 2**64 px"
    raise ValueError(f"{names[1]}={num_scales} makes the coarsest patch {names[0]} * 2**{num_scales - 1} = "
                     f"{size}, which dwarfs the image: {rule}, i.e. {names[1]} <= {allowed}")


def check_images(images, name: str = "images", *, pixel_range: bool = True, values: bool = True) -> torch.Tensor:
    """Check a ``(B, C, H, W)`` image batch with C in {1, 3}.

    ``values=False`` checks the shape and dtype only (the caller checks the values: the fused CUDA
    kernels do, without a pass over the batch of their own and a host sync).

    With ``pixel_range`` the values must lie in ``[0, 255]``; a batch whose
    values all lie in ``[0, 1]`` draws a warning, since every patch would then
    fall into the first histogram bins.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor (layout torch.strided), got layout {images.layout}; "
                        "use .to_dense()")
    if images.is_meta:
        raise ValueError(f"{name} must hold data, got a tensor on the meta device (shape only)")
    if images.dim() != 4:
        raise ValueError(f"{name} must have 4 dimensions (B, C, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if batch == 0:
        raise ValueError(f"{name} must hold at least one image, got an empty batch of shape {tuple(images.shape)}")
    if channels not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels (dimension 1), got {channels} in shape {tuple(images.shape)}")
    if height == 0 or width == 0:
        raise ValueError(f"{name} must have a positive height and width, got shape {tuple(images.shape)}")
    if images.dtype == torch.bool or images.is_complex():
        raise TypeError(f"{name} must hold real numbers (float or uint8), got dtype {images.dtype}")
    if images.dtype == torch.uint8 or not values:
        return images
    low, high = torch.stack(torch.aminmax(images.detach().float())).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = low if not math.isfinite(low) else high
        raise ValueError(f"{name} must be finite, got a {bad} value; expected pixels in [0, 255]")
    if pixel_range:
        if low < 0 or high > 255:
            raise ValueError(f"{name} must hold pixel values in [0, 255], got values in [{low:g}, {high:g}]")
        if high <= 1.0 and high > low:
            warnings.warn(
                f"{name} look scaled to [0, 1] (max {high:g}); scorers expect pixels in [0, 255], "
                "multiply by 255 first",
                UserWarning,
                stacklevel=3,
            )
    return images


def check_thresholds(thresholds, num_scales: int, name: str = "thresholds") -> list[float]:
    """Check a list of ``num_scales - 1`` finite thresholds (real numbers: Python's, numpy's; or a 1-d tensor or
    array) and return it as floats."""
    if isinstance(thresholds, (torch.Tensor, np.ndarray)):
        thresholds = thresholds.tolist()
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise TypeError(
            f"{name} must be a list of {num_scales - 1} numbers (one per scale above 0), got {thresholds!r}"
        )
    if len(thresholds) != num_scales - 1:
        raise ValueError(
            f"{name} must have num_scales - 1 = {num_scales - 1} entries (thresholds[s-1] belongs to scale s), "
            f"got {len(thresholds)}: {list(thresholds)!r}"
        )
    values = []
    for value in thresholds:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must hold numbers, got {value!r} in {list(thresholds)!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"{name} must be finite, got {value!r} in {list(thresholds)!r}")
        values.append(number)
    return values


def check_maps(maps, name: str = "entropy_maps") -> list[int]:
    """Check importance maps ``{p_s: (B, h_s, w_s)}`` and return the sorted patch sizes.

    The patch sizes must be ``p * 2**s`` and the grids must nest: each coarser
    grid is ``ceil`` of half the finer one.
    """
    if not isinstance(maps, dict) or not maps:
        raise TypeError(f"{name} must be a non-empty dict {{patch_size: tensor (B, h, w)}}, got {type(maps).__name__}")
    sizes = sorted(maps)
    base = sizes[0]
    for scale, size in enumerate(sizes):
        if size != base * 2**scale:
            raise ValueError(f"{name} patch sizes must be p * 2**s (p={base}), got {sizes}")
        tensor = maps[size]
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{name}[{size}] must be a tensor of shape (B, h, w), got {shape}")
    batch, rows, cols = maps[base].shape
    for size in sizes[1:]:
        expected = (batch, -(-rows * base // size), -(-cols * base // size))
        got = tuple(maps[size].shape)
        # The grids of one image of H x W pixels: ceil(H / p_s); any H in the base grid's range fits.
        ok = got[0] == batch and _nests(rows, base, got[1], size) and _nests(cols, base, got[2], size)
        if not ok:
            raise ValueError(
                f"{name} shapes do not nest: {name}[{base}] is {tuple(maps[base].shape)}, so {name}[{size}] "
                f"should be {expected}, got {got}"
            )
    return sizes


def _nests(fine_cells: int, fine_size: int, coarse_cells: int, coarse_size: int) -> bool:
    """Whether some image extent gives ``fine_cells`` at ``fine_size`` and ``coarse_cells`` at ``coarse_size``."""
    low = (fine_cells - 1) * fine_size + 1
    high = fine_cells * fine_size
    return -(-low // coarse_size) <= coarse_cells <= -(-high // coarse_size)


def check_device(name: str, value) -> torch.device:
    """Return ``value`` as a ``torch.device`` of type cpu, cuda or mps that this machine has."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:1', got {value!r}") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"{name} {value!r} is not available: this machine has {count} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name} {value!r} is not available: this machine has no MPS device")
    elif device.type != "cpu":
        raise ValueError(f"{name} must be a cpu, cuda or mps device, got {value!r}")
    return device


def closest(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``name``, or an empty string."""
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""

