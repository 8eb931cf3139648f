"""The numba backend: CPU kernels for the entropy maps and for the whole forward, in one call each.

- ``entropy_kernels``: the fused multi-scale entropy kernel (and per-patch histograms, to check it);
- ``grouping_kernels``: selection, grouping and packing, every output written once, in place;
- ``kernel_cache``: how they are compiled and cached (one build per key, loaded, never mixed;
  ``docs/kernels.md``);
- ``arguments``: what the kernels are called with, and their status turned into exceptions.

A tokenizer calls the kernels through a ``Plan``, made once for images of one kind (shape, strides, dtype)
and kept in its ``PlanCache``: ``lookup`` finds the plan for a batch like one already checked, ``build``
makes (and keeps) one. Nothing here imports numba until a kernel is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .arguments import NO_SHIFT, KernelArguments, call_checked, kernel_arguments, kernel_pixels, normalisation_arrays, \
    pick, pixel_strides


def entropy_maps(images, patch_size, num_scales, bins, pad_value, denormalize=None,
                 check_finite=False) -> dict[int, torch.Tensor]:
    """The kernel's maps ``{p_s: (B, h_s, w_s)}`` (views of one flat array); ``denormalize``: tensors or arrays."""
    from .entropy_kernels import entropy_flat, entropy_flat_serial

    batch, _, height, width = images.shape
    arguments = kernel_arguments(batch, height, width, patch_size, num_scales, bins, pad_value, denormalize is not None)
    shift, scale = (NO_SHIFT, NO_SHIFT) if denormalize is None else normalisation_arrays(denormalize)
    pixels, channels_last = kernel_pixels(images)
    out, _ = call_checked(pick(entropy_flat, entropy_flat_serial), arguments, check_finite, 1, pixels, channels_last,
                          *arguments.settings, shift, scale, arguments.denormalize, arguments.cells)
    return {size: torch.from_numpy(out[first:last].reshape(shape)) for size, first, last, shape in arguments.map_slices(batch)}


def histograms(images: torch.Tensor, patch_size: int, bins: int) -> torch.Tensor:
    """Per-patch histograms ``(B, h, w, bins)`` int32 by the kernel's own binning (to check it)."""
    from ...contract import grid_shape
    from .entropy_kernels import histograms_kernel, histograms_kernel_serial

    pixels = images if images.dtype in (torch.uint8, torch.float32) else images.float()
    batch, _, height, width = pixels.shape
    rows, cols = grid_shape(height, width, patch_size)
    out = np.zeros((batch, rows, cols, bins), dtype=np.int32)
    kernel = pick(histograms_kernel, histograms_kernel_serial)
    return torch.from_numpy(kernel(pixels.contiguous().numpy(), bins, patch_size, rows, cols, out))


def patch_groups(images: torch.Tensor, masks: dict[int, torch.Tensor], base: int) -> dict[str, torch.Tensor]:
    """Each scale's kept patches, each written once to its slot by the copy kernel (CPU float32 images)."""
    from .grouping_kernels import group_patches

    sizes = sorted(masks)
    return group_patches(images, [masks[size].bool() for size in sizes], sizes, base)


def forward(images: torch.Tensor, maps: dict[int, torch.Tensor], thresholds: np.ndarray, sizes: list[int],
            base: int) -> dict:
    """The forward from float32 maps: selection, grouping and packing in one kernel call."""
    from .grouping_kernels import forward as kernel_forward

    grids = tuple(tuple(maps[size].shape[1:]) for size in sizes)
    flat = torch.cat([maps[size].reshape(-1) for size in sizes]).numpy()
    return kernel_forward(images, flat, grids, thresholds, sizes, base)


@dataclass(frozen=True)
class Plan:
    """What a kernel call of a tokenizer needs besides the pixels and the normalisation's arrays, made once for
    images of one kind."""

    kind: str  # "maps" (entropy_flat) or "forward" (tokenize: entropy, selection, grouping and packing)
    kernel: Callable  # the kernel, or its serial twin in a one-thread process
    channels_last: bool  # the pixels are read (B, H, W, C)
    arguments: KernelArguments
    settings: tuple  # arguments.settings, made once
    map_slices: tuple  # arguments.map_slices(batch)
    strides: tuple  # the pixels' element strides (arguments.pixel_strides)


class PlanCache:
    """A tokenizer's plans, by everything the checks and the kernels' arguments depend on.

    ``lookup`` returns ``(plan, pixels, shifts, scales)`` for images like ones already planned (the checks were
    made then), else None; ``build`` makes the plan for checked images and keeps it where the kernels can read
    the images' own memory. The key is the images' shape, strides and dtype and the tokenizer's settings, bar the
    values of the pixels and of the normalisation (which the kernels read on every call). A lookup costs the
    images' numpy view, a look at the normalisation buffers' identity and layout, and one dict look-up.
    """

    LIMIT = 16

    def __init__(self):
        self._plans: dict = {}
        self._views = None  # (mean, std, state, mean array, std array): the normalisation's buffers as numpy

    def __len__(self) -> int:
        return len(self._plans)

    def _normalisation(self, tokenizer):
        """The normalisation's buffers as flat numpy arrays over their own memory (contiguous float32 CPU buffers
        only), made again where a buffer changed other than in value (module.to(), .data = ..., set_(),
        as_strided_(), resize_()): its object, address, shape, strides or dtype. That check is what keeps the
        views right; the kernels read the values on every call. None where the buffers cannot be read in place."""
        buffers = tokenizer._buffers
        mean, std = buffers["unnorm_mean"], buffers["unnorm_std"]
        views = self._views
        state = (mean.data_ptr(), std.data_ptr(), mean.shape, std.shape, mean.stride(), std.stride(), mean.dtype,
                 std.dtype)
        if views is None or views[0] is not mean or views[1] is not std or views[2] != state:
            if not all(buffer.dtype == torch.float32 and buffer.is_contiguous() for buffer in (mean, std)):
                return None
            views = (mean, std, state, mean.numpy().reshape(-1), std.numpy().reshape(-1))
            self._views = views
        return views[3], views[4]

    @staticmethod
    def _key(kind, pixels, shifts, scales, tokenizer) -> tuple:
        options = tokenizer.method_options
        return (kind, pixels.shape, pixels.strides, pixels.dtype, shifts.shape, scales.shape,
                torch.get_num_threads() > 1, tokenizer.scorer.function, options.get("backend"), options.get("bins"),
                tokenizer.pad_value, tokenizer.image_size, tokenizer.base_patch_size, tokenizer.num_scales)

    def lookup(self, kind: str, images, tokenizer) -> tuple | None:
        """``(plan, pixels, shifts, scales)`` for ``images`` like ones already planned, else None."""
        if type(images) is not torch.Tensor:
            return None
        try:  # numpy() refuses what the kernels cannot read in place: CUDA, autograd, types numpy lacks
            pixels = images.numpy()  # (first: CUDA images leave here)
            normalisation = self._normalisation(tokenizer)
        except (TypeError, RuntimeError):
            return None
        if normalisation is None:
            return None
        shifts, scales = normalisation
        try:  # (a setting of a type that cannot be hashed, e.g. image_size a list: the full path checks it)
            plan = self._plans.get(self._key(kind, pixels, shifts, scales, tokenizer))
        except TypeError:
            return None
        if plan is None:
            return None
        return plan, pixels.transpose(0, 2, 3, 1) if plan.channels_last else pixels, shifts, scales

    def build(self, kind: str, images: torch.Tensor, tokenizer) -> tuple:
        """``(plan, pixels, shifts, scales)`` for checked ``images``; the plan is kept for ``lookup`` where the
        kernels read ``images``' own memory (float32 or uint8, contiguous or channels-last)."""
        pixels, channels_last = kernel_pixels(images)
        shifts, scales = normalisation_arrays((tokenizer.unnorm_mean, tokenizer.unnorm_std))
        batch, _, height, width = images.shape
        arguments = kernel_arguments(batch, height, width, tokenizer.base_patch_size, tokenizer.num_scales,
                                     tokenizer.method_options["bins"], tokenizer.pad_value, True)
        if kind == "maps":
            from .entropy_kernels import entropy_flat, entropy_flat_serial

            kernel = pick(entropy_flat, entropy_flat_serial)
        else:
            from .grouping_kernels import tokenize, tokenize_serial

            kernel = pick(tokenize, tokenize_serial)
        plan = Plan(kind, kernel, channels_last, arguments, arguments.settings, arguments.map_slices(batch),
                    pixel_strides(pixels, channels_last))
        if images.dtype in (torch.uint8, torch.float32) and not images.requires_grad:
            direct = images.numpy()
            if (direct.transpose(0, 2, 3, 1) if channels_last else direct).flags.c_contiguous:
                self._keep(kind, direct, tokenizer, plan)
        return plan, pixels, shifts, scales

    def _keep(self, kind, pixels, tokenizer, plan) -> None:
        try:
            normalisation = self._normalisation(tokenizer)
            if normalisation is None:
                return
            key = self._key(kind, pixels, *normalisation, tokenizer)
            if len(self._plans) > self.LIMIT:
                self._plans.clear()
            self._plans[key] = plan
        except TypeError:
            return


def maps_by_plan(plan: Plan, pixels: np.ndarray, shifts: np.ndarray, scales: np.ndarray) -> dict[int, torch.Tensor]:
    """The entropy kernel's maps for a planned batch, its values checked by the kernel."""
    arguments = plan.arguments
    out, _ = call_checked(plan.kernel, arguments, True, 1, pixels, plan.channels_last, *plan.settings, shifts, scales,
                          True, arguments.cells)
    return {size: torch.from_numpy(out[first:last].reshape(shape)) for size, first, last, shape in plan.map_slices}


def forward_by_plan(plan: Plan, pixels: np.ndarray, shifts: np.ndarray, scales: np.ndarray,
                    thresholds: np.ndarray) -> dict:
    """The forward for a planned batch (entropy, selection and grouping in one kernel call), values checked by
    the kernel."""
    from .grouping_kernels import outputs

    arguments = plan.arguments
    layout = arguments.layout
    status, *results = call_checked(plan.kernel, arguments, True, 0, pixels, plan.channels_last, *plan.settings,
                                    shifts, scales, True, arguments.cells, thresholds, pixels.reshape(-1),
                                    plan.strides, layout.row_offsets)
    batch, channels = (pixels.shape[0], pixels.shape[3]) if plan.channels_last else pixels.shape[:2]
    return outputs(batch, channels, arguments.sizes, arguments.base, layout, *results)
