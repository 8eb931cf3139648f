"""What the numba kernels are called with, and what their status means: the glue between torch and the kernels.

The kernels (``entropy_kernels``, ``grouping_kernels``) take flat numpy arrays and plain numbers; this module
makes them from a batch and a tokenizer's settings (``KernelArguments``, named), and turns a kernel's status
into an exception in one place (``call_checked``). Its text is part of the kernel cache's key
(``kernel_cache.SOURCES``): the layouts and tables it makes are what the compiled code reads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ...contract import LOG_EPSILON, grid_shape, scale_sizes

OK = -1
"""A kernel's status when all went well."""
OUT_OF_MEMORY = -2
"""A kernel's status when a task could not allocate its scratch buffers. A status >= 0 is the index of the first
image of the batch holding a NaN or an infinite value."""

NO_SHIFT = np.zeros(3, dtype=np.float32)
"""No normalisation to undo. Writeable, as the per-call arrays are: numba compiles read-only arrays separately."""


class Layout(NamedTuple):
    """The flat per-scale layout of a batch's grids: numpy (read-only int64) for the kernels, ints for Python."""

    rows: np.ndarray  # h_s
    cols: np.ndarray  # w_s
    offsets: np.ndarray  # first cell of scale s; cells laid out (B, h_s, w_s)
    row_offsets: np.ndarray  # first grid row of scale s; rows laid out (B, h_s)
    grids: tuple  # ((h_s, w_s), ...)
    cell_ends: list  # offsets and the end, S + 1 ints


@functools.lru_cache(maxsize=64)
def flat_layout(batch: int, grids: tuple) -> Layout:
    """The ``Layout`` of ``grids`` ``((h_s, w_s), ...)`` for ``batch`` images."""
    rows = np.asarray([grid[0] for grid in grids], dtype=np.int64)
    cols = np.asarray([grid[1] for grid in grids], dtype=np.int64)
    cells, lines = batch * rows * cols, batch * rows
    offsets = np.concatenate(([0], np.cumsum(cells)[:-1]))
    row_offsets = np.concatenate(([0], np.cumsum(lines)[:-1]))
    for array in (rows, cols, offsets, row_offsets):
        array.flags.writeable = False  # shared between calls
    return Layout(rows, cols, offsets, row_offsets, tuple((int(r), int(c)) for r, c in grids),
                  [0, *np.cumsum(cells).tolist()])


@functools.lru_cache(maxsize=64)
def entropy_tables(sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``-(c/N) log2(c/N + 1e-10)`` for c = 0..N, N = p_s**2, every scale, concatenated; and where each starts.

    Each term is formed in float32 as ``entropy_from_counts`` forms it (the numba kernel then sums them in
    float64): a flat patch (c = N) then scores exactly 0, as in the reference, where ``1 + 1e-10`` is 1 in
    float32; in float64 it would score -1.4e-10, and a threshold of 0 would keep it."""
    tables, starts, start = [], [], 0
    for size in sizes:
        pixels = size * size
        prob = np.arange(pixels + 1, dtype=np.float32) / np.float32(pixels)
        tables.append((-(prob * np.log2(prob + np.float32(LOG_EPSILON)))).astype(np.float64))
        starts.append(start)
        start += pixels + 1
    return np.concatenate(tables), np.asarray(starts, dtype=np.int64)


@dataclass(frozen=True)
class KernelArguments:
    """The entropy kernel's settings for a batch of one shape (``entropy_kernels.entropy_flat``), by name.

    ``settings`` is the run of them the kernels take between the pixels and the normalisation, in their order;
    ``sizes`` and ``layout`` describe the flat per-scale arrays the kernels write.
    """

    bins: int
    base: int
    num_scales: int
    pad_value: np.float32
    denormalize: bool  # whether the kernel undoes a normalisation (shifts, scales) on the fly
    sizes: list
    layout: Layout
    tables: np.ndarray
    table_offsets: np.ndarray

    @property
    def cells(self) -> int:
        """Cells of every scale of the batch: the length of the flat maps."""
        return self.layout.cell_ends[-1]

    @property
    def settings(self) -> tuple:
        """``(bins, base, num_scales, rows, cols, offsets, tables, table_offsets, pad_value)``."""
        layout = self.layout
        return (self.bins, self.base, self.num_scales, layout.rows, layout.cols, layout.offsets, self.tables,
                self.table_offsets, self.pad_value)

    def map_slices(self, batch: int) -> tuple:
        """``(p_s, first, end, (B, h_s, w_s))`` of each scale's maps in the kernels' flat array."""
        grids, ends = self.layout.grids, self.layout.cell_ends
        return tuple((size, ends[s], ends[s + 1], (batch, *grids[s])) for s, size in enumerate(self.sizes))


@functools.lru_cache(maxsize=64)
def kernel_arguments(batch, height, width, base, num_scales, bins, pad_value, denormalize: bool) -> KernelArguments:
    """``KernelArguments`` for ``batch`` images of ``height x width``."""
    sizes = scale_sizes(base, num_scales)
    layout = flat_layout(batch, tuple(grid_shape(height, width, size) for size in sizes))
    tables, table_offsets = entropy_tables(tuple(sizes))
    return KernelArguments(bins, base, num_scales, np.float32(pad_value), denormalize, sizes, layout, tables,
                           table_offsets)


def normalisation_arrays(denormalize) -> tuple[np.ndarray, np.ndarray]:
    """``(shift, scale)`` (tensors or arrays of one or three per-channel numbers) as float32 numpy arrays the
    numba kernels read (they repeat a single number for three channels: ``entropy_kernels.three_float32``)."""
    return tuple(np.ascontiguousarray(values if isinstance(values, np.ndarray) else values.detach().float().cpu().numpy(),
                                      dtype=np.float32) for values in denormalize)


def kernel_pixels(images: torch.Tensor) -> tuple[np.ndarray, bool]:
    """``images`` as the numba kernels read them in place: (B, C, H, W), or (B, H, W, C) for a channels-last
    batch (a decoded image's ``permute(2, 0, 1)``: a copy to planes would cost a third of one image's maps);
    and whether it is channels-last."""
    images = images.detach()
    if images.dtype not in (torch.uint8, torch.float32):
        images = images.float()
    if not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        return images.permute(0, 2, 3, 1).numpy(), True
    return images.contiguous().numpy(), False


def pixel_strides(pixels: np.ndarray, channels_last: bool) -> tuple[int, int, int, int]:
    """Where value (b, c, y, x) of ``kernel_pixels``'s array lies in it flattened: ``b * s[0] + c * s[1] +
    y * s[2] + x * s[3]``, in elements."""
    step = [stride // pixels.itemsize for stride in pixels.strides]
    return (step[0], step[3], step[1], step[2]) if channels_last else tuple(step)


def pick(parallel, serial):
    """``parallel`` (a numba kernel), or ``serial``, its serial twin, in a one-thread process: data-loader workers
    run with one torch thread, and the serial kernel also survives a fork (see ``kernel_cache.serial_twin``). The
    kernels are made ready first (``kernel_cache.ensure_kernels``: loaded from, or compiled into, the cache)."""
    from .kernel_cache import ensure_kernels

    ensure_kernels()
    return parallel if torch.get_num_threads() > 1 else serial


def _caused_by(error: BaseException, kind: type) -> bool:
    """Whether ``error`` or an exception in its chain of causes is a ``kind``."""
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


def call_checked(kernel, arguments: KernelArguments, check_finite: bool, status_at: int, *args) -> tuple:
    """``kernel(*args)``, its status (entry ``status_at`` of what it returns) turned into an exception.

    The one place a kernel's status is read: ``OUT_OF_MEMORY`` (or a ``SystemError`` numba raises for a failed
    allocation in a parallel task) raises ``MemoryError``; with ``check_finite`` a status >= 0 (an image holding
    a NaN or an infinite value) raises ``ValueError``.
    """
    try:
        results = kernel(*args)
        status = results[status_at]
    except SystemError as error:
        if not _caused_by(error, MemoryError):
            raise
        results, status = None, OUT_OF_MEMORY
    if status == OUT_OF_MEMORY:
        coarsest = arguments.base << (arguments.num_scales - 1)
        raise MemoryError(
            f"the numba entropy kernel could not allocate its scratch buffers (a band of {coarsest} x "
            f"{int(arguments.layout.cols[-1]) * coarsest} pixels and {arguments.bins} bins per thread); use fewer "
            "scales or bins, or backend='torch'"
        )
    if check_finite and status >= 0:
        raise ValueError(f"images must be finite, got a nan or inf value in image {status} of the batch; "
                         "expected normalised pixel values")
    return results
