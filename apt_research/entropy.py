"""Multi-scale patch entropy maps, exact to ``docs/contract.md`` (Entropy maps)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ._validation import check_bins, check_choice, check_denormalize, check_extent, check_images, check_int, \
    check_pad_value
from .contract import DEFAULT_BINS, DEFAULT_PAD_VALUE, GRAY_WEIGHTS, LOG_EPSILON, MAX_PIXEL

BACKENDS = ("auto", "numba", "triton", "torch")


def grid_shape(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Rows and columns of the patch grid that covers ``height x width`` (padding at bottom/right)."""
    return -(-height // patch_size), -(-width // patch_size)


def scale_sizes(patch_size: int, num_scales: int) -> list[int]:
    """Patch size of every scale: ``p * 2**s`` for s = 0 .. num_scales - 1."""
    return [patch_size * 2**scale for scale in range(num_scales)]


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


def patch_histograms(images: torch.Tensor, patch_size: int, bins: int, *, backend: str = "torch") -> torch.Tensor:
    """Per-patch histograms ``(B, h, w, bins)`` of the grayscale pixels, padding zeros counted in bin 0.

    Equal to ``torch.histc(patch, bins, min=0, max=255)`` for every patch.
    ``backend="torch"``: one ``bincount`` over the pixels (int64, any device);
    ``"numba"``: the CPU kernel's own binning (int32), to check it. The
    arguments are checked as in ``compute_patch_entropy_batched``.
    """
    check_images(images)
    check_int("patch_size", patch_size, 1)
    check_bins(bins)
    check_choice("backend", backend, ("torch", "numba"))
    check_extent(patch_size, 1, *images.shape[-2:])
    images = images.detach()
    if backend == "numba":
        if images.device.type != "cpu":
            raise ValueError(f"backend 'numba' needs CPU tensors, got images on {images.device}")
        from ._entropy_cpu import histograms_kernel, histograms_kernel_serial

        pixels = images if images.dtype in (torch.uint8, torch.float32) else images.float()
        batch, _, height, width = pixels.shape
        rows, cols = grid_shape(height, width, patch_size)
        out = np.zeros((batch, rows, cols, bins), dtype=np.int32)
        kernel = numba_kernel(histograms_kernel, histograms_kernel_serial)
        return torch.from_numpy(kernel(pixels.contiguous().numpy(), bins, patch_size, rows, cols, out))
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


# No normalisation to undo. Writeable, as the per-call arrays are: numba compiles read-only arrays separately.
_NO_SHIFT = np.zeros(3, dtype=np.float32)


def _entropy_maps_torch(images, patch_size, num_scales, bins, pad_value):
    height, width = images.shape[-2:]
    maps = {}
    for size in scale_sizes(patch_size, num_scales):
        maps[size] = entropy_from_counts(patch_histograms(images, size, bins), size * size)
    return apply_border_rule(maps, height, width, pad_value)


@functools.lru_cache(maxsize=64)
def _entropy_tables(sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
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


def _caused_by(error: BaseException, kind: type) -> bool:
    """Whether ``error`` or an exception in its chain of causes is a ``kind``."""
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


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
def _numba_layout(batch: int, height: int, width: int, patch_size: int, num_scales: int) -> tuple[list[int], Layout]:
    """The patch sizes and the ``Layout`` of the numba kernels' flat per-scale arrays for these images."""
    sizes = scale_sizes(patch_size, num_scales)
    return sizes, flat_layout(batch, tuple(grid_shape(height, width, size) for size in sizes))


def numba_denormalize(denormalize) -> tuple[np.ndarray, np.ndarray]:
    """``(shift, scale)`` (tensors or arrays of one or three per-channel numbers) as float32 numpy arrays the
    numba kernels read (they repeat a single number for three channels: ``_entropy_cpu.three_float32``)."""
    return tuple(np.ascontiguousarray(values if isinstance(values, np.ndarray) else values.detach().float().cpu().numpy(),
                                      dtype=np.float32) for values in denormalize)


class KernelArguments(NamedTuple):
    """The numba entropy kernel's arguments (``_entropy_cpu.entropy_flat``) around the normalisation's
    ``(shifts, scales)``: ``head`` from ``bins`` to ``pad_value``, ``tail`` ``(denormalize, cells)``; and what
    ``(sizes, layout)`` (``_numba_layout``) they describe."""

    head: tuple
    tail: tuple
    sizes: list
    layout: Layout


def kernel_arguments(batch, height, width, patch_size, num_scales, bins, pad_value, denormalize: bool) -> KernelArguments:
    """``KernelArguments`` for images of this size (``denormalize``: whether the kernel undoes a normalisation)."""
    sizes, layout = _numba_layout(batch, height, width, patch_size, num_scales)
    tables, table_offsets = _entropy_tables(tuple(sizes))
    head = (bins, patch_size, num_scales, layout.rows, layout.cols, layout.offsets, tables, table_offsets,
            np.float32(pad_value))
    return KernelArguments(head, (denormalize, layout.cell_ends[-1]), sizes, layout)


def map_slices(batch: int, sizes: list[int], layout: Layout) -> tuple:
    """``(p_s, first, end, (B, h_s, w_s))`` of each scale's maps in the kernels' flat array."""
    grids, ends = layout.grids, layout.cell_ends
    return tuple((size, ends[s], ends[s + 1], (batch, *grids[s])) for s, size in enumerate(sizes))


def numba_kernel(parallel, serial):
    """``parallel`` (a numba kernel), or ``serial``, its serial twin, in a one-thread process: data-loader workers
    run with one torch thread, and the serial kernel also survives a fork (see ``_numba.serial_twin``). The
    kernels are made ready first (``_numba.ensure_kernels``: loaded from, or compiled into, the kernel cache)."""
    from ._numba import ensure_kernels

    ensure_kernels()
    return parallel if torch.get_num_threads() > 1 else serial


def numba_failure(error: SystemError) -> int:
    """The status -2 of ``raise_for_status`` where a numba kernel's ``SystemError`` reports a failed allocation in a
    parallel task (one caused by a ``MemoryError``); any other ``error`` is raised again."""
    if not _caused_by(error, MemoryError):
        raise error
    return -2


def raise_for_status(status: int, check_finite: bool, head: tuple) -> None:
    """Raise what the numba entropy kernel's ``status`` reports (``_entropy_cpu.entropy_flat``); ``head``: its
    ``KernelArguments.head``."""
    if status == -2:
        bins, patch_size, num_scales, cols = head[0], head[1], head[2], head[4]
        coarsest = patch_size << (num_scales - 1)
        raise MemoryError(
            f"the numba entropy kernel could not allocate its scratch buffers (a band of {coarsest} x "
            f"{int(cols[-1]) * coarsest} pixels and {bins} bins per thread); use fewer scales or bins, or "
            "backend='torch'"
        )
    if check_finite and status >= 0:
        raise ValueError(f"images must be finite, got a nan or inf value in image {status} of the batch; "
                         "expected normalised pixel values")


def numba_pixels(images: torch.Tensor) -> tuple[np.ndarray, bool]:
    """``images`` as the numba kernels read them in place: (B, C, H, W), or (B, H, W, C) for a channels-last
    batch (a decoded image's ``permute(2, 0, 1)``: a copy to planes would cost a third of one image's maps)."""
    images = images.detach()
    if images.dtype not in (torch.uint8, torch.float32):
        images = images.float()
    if not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        return images.permute(0, 2, 3, 1).numpy(), True
    return images.contiguous().numpy(), False


def pixel_strides(pixels: np.ndarray, channels_last: bool) -> tuple[int, int, int, int]:
    """Where value (b, c, y, x) of ``numba_pixels``'s array lies in it flattened: ``b * s[0] + c * s[1] +
    y * s[2] + x * s[3]``, in elements."""
    step = [stride // pixels.itemsize for stride in pixels.strides]
    return (step[0], step[3], step[1], step[2]) if channels_last else tuple(step)


def _entropy_maps_numba(images, patch_size, num_scales, bins, pad_value, denormalize=None, check_finite=False):
    """The numba kernel's maps ``{p_s: (B, h_s, w_s)}`` (views of one flat array). ``denormalize``: tensors or
    arrays."""
    from ._entropy_cpu import entropy_flat, entropy_flat_serial

    batch, _, height, width = images.shape
    arguments = kernel_arguments(batch, height, width, patch_size, num_scales, bins, pad_value, denormalize is not None)
    shift, scale = (_NO_SHIFT, _NO_SHIFT) if denormalize is None else numba_denormalize(denormalize)
    pixels, channels_last = numba_pixels(images)
    try:
        out, status = numba_kernel(entropy_flat, entropy_flat_serial)(pixels, channels_last, *arguments.head, shift,
                                                                       scale, *arguments.tail)
    except SystemError as error:
        status = numba_failure(error)
    raise_for_status(status, check_finite, arguments.head)
    return {size: torch.from_numpy(out[first:last].reshape(shape))
            for size, first, last, shape in map_slices(batch, arguments.sizes, arguments.layout)}


def triton_available() -> bool:
    """Whether the Triton kernel can be used (triton importable; it ships with CUDA builds of torch)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def numba_available() -> bool:
    """Whether the fused CPU kernel can be used (numba importable)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def compute_patch_entropy_batched(
    images: torch.Tensor,
    patch_size: int = 16,
    num_scales: int = 3,
    bins: int = DEFAULT_BINS,
    pad_value: float = DEFAULT_PAD_VALUE,
    *,
    backend: str = "auto",
    denormalize: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[int, torch.Tensor]:
    """Shannon entropy of every patch at every scale.

    Parameters
    ----------
    images : Tensor, shape (B, C, H, W)
        Pixels in [0, 255], float or uint8, C in {1, 3}. Any H and W; inputs
        that require grad are read detached (histograms have no gradient).
    patch_size : int
        Base patch size ``p``; scale s uses patches of ``p * 2**s`` pixels.
    num_scales : int
        Number of scales S. The coarsest patch ``p * 2**(S - 1)`` may be at most
        twice the image's longer side or 256 px, whichever is larger.
    bins : int
        Equal-width histogram bins over [0, 255], 2 to 4096.
    pad_value : float
        Value of the last row (column) of a scale whose grid sticks out of the
        image; not NaN, and within float32's range (or +-inf). No padded patch
        is ever kept as a large patch as long as every threshold is at most
        ``pad_value`` (the default 1e6 is above any entropy).
    backend : {"auto", "numba", "triton", "torch"}
        ``"numba"``: the fused CPU kernel (CPU tensors only). ``"triton"``: the
        fused CUDA kernel (CUDA tensors). ``"torch"``: plain torch ops (one
        ``bincount`` per scale), on any device, kept as fallback and cross-check.
        ``"auto"``: numba on CPU, triton on CUDA when installed, torch otherwise.
    denormalize : (Tensor, Tensor), optional
        ``(shift, scale)`` per channel: the images are normalised, and pixels
        are ``clamp((x - shift) / scale * 255, 0, 255)`` (see
        ``denormalize_pixels``). The fused kernels do this on the fly instead of
        writing a pixel copy of the batch.

    Returns
    -------
    dict[int, Tensor]
        ``{p_s: (B, ceil(H / p_s), ceil(W / p_s))}`` float32 entropies in bits,
        on the input's device.

    Raises
    ------
    TypeError, ValueError
        An argument outside the ranges above, naming it.
    MemoryError
        The numba kernel could not allocate its per-thread scratch.

    Notes
    -----
    Grayscale ``0.2989 R + 0.5870 G + 0.1140 B`` in float32; a value v goes to
    bin ``min(floor(v * bins / 255), bins - 1)`` as ``torch.histc`` does; the
    zero padding at the bottom and right counts into bin 0. Both backends give
    histograms equal to ``torch.histc``'s and entropies within 1e-5 bits of a
    per-patch ``torch.histc`` loop. The full contract is ``docs/contract.md``.

    Examples
    --------
    >>> import torch
    >>> from skimage import data
    >>> image = torch.from_numpy(data.camera()).float()[None, None]
    >>> maps = compute_patch_entropy_batched(image, patch_size=16, num_scales=3, bins=512)
    >>> sorted(maps), tuple(maps[16].shape)
    ([16, 32, 64], (1, 32, 32))
    >>> bool((maps[16] >= 0).all() and (maps[16] <= 8).all())
    True
    """
    check_images(images, pixel_range=denormalize is None)
    patch_size = check_int("patch_size", patch_size, 1)
    num_scales = check_int("num_scales", num_scales, 1)
    check_extent(patch_size, num_scales, *images.shape[-2:])
    bins = check_bins(bins)
    pad_value = check_pad_value(pad_value)
    check_choice("backend", backend, BACKENDS)
    if denormalize is not None:
        denormalize = check_denormalize(denormalize, images.shape[1])
    return entropy_maps_unchecked(images, patch_size, num_scales, bins, pad_value, backend, denormalize)


def entropy_maps_unchecked(images, patch_size, num_scales, bins, pad_value=DEFAULT_PAD_VALUE, backend="auto",
                           denormalize=None, check_finite=False):
    """``compute_patch_entropy_batched`` without the argument checks, for callers that have made them.

    ``check_finite``: the numba kernel reports NaN / inf pixels (raising ``ValueError``) instead of
    the caller making a pass over the batch first; the caller asks for it only where numba runs.
    """
    images = images.detach()
    if backend == "auto":
        if images.device.type == "cpu":
            backend = "numba" if numba_available() else "torch"
        else:
            backend = "triton" if images.device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if images.device.type != "cuda":
            raise ValueError(f"backend 'triton' needs CUDA tensors, got images on {images.device}")
        from ._entropy_cuda import entropy_maps_triton

        return entropy_maps_triton(images, patch_size, num_scales, bins, pad_value, denormalize)
    if backend == "numba":
        if images.device.type != "cpu":
            raise ValueError(f"backend 'numba' needs CPU tensors, got images on {images.device}")
        return _entropy_maps_numba(images, patch_size, num_scales, bins, pad_value, denormalize, check_finite)
    if denormalize is not None:
        images = denormalize_pixels(images, *denormalize)
    return _entropy_maps_torch(images, patch_size, num_scales, bins, pad_value)
