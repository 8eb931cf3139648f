"""Multi-scale patch entropy maps, exact to ``docs/contract.md`` (Entropy maps): the contract's functions.

Each public function checks its arguments, then hands the work to the backend ``backends.choose`` /
``backends.entropy_backend`` picks. The plain-torch steps of the contract (gray value, bins, counts to bits,
the border rule) are written once, in ``backends.torch_backend``, and exported from here.
"""

from __future__ import annotations

import torch

from ._validation import check_bins, check_choice, check_denormalize, check_extent, check_images, check_int, \
    check_pad_value
from .backends import BACKENDS, entropy_maps
from .backends.torch_backend import apply_border_rule, bin_indices, denormalize_pixels, entropy_from_counts, \
    grayscale, histograms
from .contract import DEFAULT_BINS, DEFAULT_PAD_VALUE, grid_shape, scale_sizes

__all__ = [
    "BACKENDS",
    "apply_border_rule",
    "bin_indices",
    "compute_patch_entropy_batched",
    "denormalize_pixels",
    "entropy_from_counts",
    "grayscale",
    "grid_shape",
    "patch_histograms",
    "scale_sizes",
]


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
        from .backends.numba_backend import histograms as numba_histograms

        return numba_histograms(images, patch_size, bins)
    return histograms(images, patch_size, bins)


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
    return entropy_maps(images, patch_size, num_scales, bins, pad_value, backend, denormalize)
