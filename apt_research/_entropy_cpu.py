"""Fused CPU kernel for multi-scale patch entropy (numba).

One task is one row of the coarsest grid of one image (a band of ``P``
pixel rows). The kernel computes the histogram bin of the band's pixels once,
into a buffer that stays in cache, then histograms every patch of every scale
that lies inside the band. Per patch it only visits the bins its pixels touched, so the
work grows with the number of pixels and not with ``bins``; extra memory is the
output plus one ``P x P`` buffer and one histogram per thread.

The grayscale value and the bin are formed in float32 in the same order as the
plain torch path (``R*0.2989 + G*0.5870 + B*0.1140``, then ``v*bins/255``; the numbers come from
``contract.py``),
so the histograms equal ``torch.histc``'s; the entropy is summed in float64
from the exact counts, which agrees with the float32 reference within its own
rounding (below 1e-5 bits).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._numba import serial_twin
from .contract import GRAY_WEIGHTS, MAX_PIXEL

# float32 globals: numba freezes them into the compiled kernels, in float32 arithmetic. Its on-disk cache is
# keyed on this file, so after editing contract.py remove this package's __pycache__ (or touch this file).
_R, _G, _B = (np.float32(weight) for weight in GRAY_WEIGHTS)
_MAX_PIXEL = np.float32(MAX_PIXEL)


@njit(cache=True, inline="always", error_model="numpy")
def _channel(value, shift, scale, denormalize):
    """A pixel value in [0, 255]: as stored, or ``clamp((x - shift) / scale * 255, 0, 255)`` in float32."""
    if denormalize:
        pixel = (np.float32(value) - shift) / scale * _MAX_PIXEL
        return min(max(pixel, np.float32(0.0)), _MAX_PIXEL)
    return np.float32(value)


@njit(cache=True, inline="always")
def _image_shape(images, channels_last):
    """Channels, height and width of ``images``: (B, C, H, W), or (B, H, W, C) with ``channels_last``."""
    if channels_last:
        return images.shape[3], images.shape[1], images.shape[2]
    return images.shape[1], images.shape[2], images.shape[3]


@njit(cache=True, inline="always")
def _rgb_bin(r, g, b_, shifts, scales, denormalize, bins_f, last_bin):
    gray = (
        _channel(r, shifts[0], scales[0], denormalize) * _R
        + _channel(g, shifts[1], scales[1], denormalize) * _G
        + _channel(b_, shifts[2], scales[2], denormalize) * _B
    )
    return _bin(gray, bins_f, last_bin)


@njit(cache=True, error_model="numpy")
def _band_bins(images, channels_last, b, y0, rows, bins, shifts, scales, denormalize, band):
    """Bins of the pixels of rows ``y0 .. y0 + rows`` of image b into ``band`` (rows x padded width); padding is 0.

    ``images`` is (B, C, H, W), or (B, H, W, C) with ``channels_last`` (read in place: no copy to planes).
    Returns whether the band holds a NaN or an infinite value (its pixels then go to bin 0).
    """
    channels, height, width = _image_shape(images, channels_last)
    bins_f = np.float32(bins)
    last_bin = bins - 1
    valid = min(rows, height - y0)
    band[valid:, :] = 0
    band[:valid, width:] = 0
    planes = np.empty((3, width), dtype=np.float32)
    poison = False  # x - x is 0 for every finite x, NaN for NaN and +-inf; an or, not a sum, vectorises
    for dy in range(valid):
        y = y0 + dy
        out_row = band[dy]
        if channels == 3 and channels_last:
            pixels = images[b, y]
            for x in range(width):
                planes[0, x] = pixels[x, 0]
                planes[1, x] = pixels[x, 1]
                planes[2, x] = pixels[x, 2]
            red, green, blue = planes[0], planes[1], planes[2]
            for x in range(width):
                r, g, b_ = red[x], green[x], blue[x]
                poison |= (r - r) + (g - g) + (b_ - b_) != 0
                out_row[x] = _rgb_bin(r, g, b_, shifts, scales, denormalize, bins_f, last_bin)
        elif channels == 3:
            red, green, blue = images[b, 0, y], images[b, 1, y], images[b, 2, y]
            for x in range(width):
                r, g, b_ = np.float32(red[x]), np.float32(green[x]), np.float32(blue[x])
                poison |= (r - r) + (g - g) + (b_ - b_) != 0
                out_row[x] = _rgb_bin(r, g, b_, shifts, scales, denormalize, bins_f, last_bin)
        else:
            gray_row = images[b, y, :, 0] if channels_last else images[b, 0, y]
            for x in range(width):
                value = np.float32(gray_row[x])
                poison |= value - value != 0
                out_row[x] = _bin(_channel(value, shifts[0], scales[0], denormalize), bins_f, last_bin)
    return poison


@njit(cache=True, inline="always")
def _bin(gray, bins_f, last_bin):
    """``min(floor(gray * bins / 255), bins - 1)``; bin 0 for NaN (reported by the caller, never used)."""
    return min(int((gray if gray == gray else np.float32(0.0)) * bins_f / _MAX_PIXEL), last_bin)


@njit(cache=True, parallel=True)
def entropy_maps_kernel(
    images, channels_last, bins, base, num_scales, rows, cols, offsets, tables, table_offsets, pad_value, shifts, scales,
    denormalize, out, bad_bands,
):
    """Fill ``out`` (flat float32) with the entropy maps of every scale.

    ``images``: (B, C, H, W), or (B, H, W, C) with ``channels_last``.

    ``bad_bands[task]`` is set where the band of task ``b * rows[-1] + band_row`` holds a NaN or
    an infinite value (its maps are then meaningless: the caller raises).

    With ``denormalize`` the images are normalised and each channel c is first
    mapped back to pixels as ``clamp((x - shifts[c]) / scales[c] * 255, 0, 255)``.

    ``rows[s]``, ``cols[s]``: grid of scale s; ``offsets[s]``: where scale s
    starts in ``out`` (laid out as (B, rows[s], cols[s])); ``tables``: for each
    scale, ``-(c/N) * log2(c/N + LOG_EPSILON)`` for c = 0..N with N = p_s**2.
    """
    batch = images.shape[0]
    _, height, width = _image_shape(images, channels_last)
    coarsest = base << (num_scales - 1)
    top = num_scales - 1
    padded_width = cols[top] * coarsest
    for task in prange(batch * rows[top]):
        b = task // rows[top]
        band_row = task % rows[top]
        band = np.empty((coarsest, padded_width), dtype=np.int32)
        hist = np.zeros(bins, dtype=np.int32)
        touched = np.empty(min(bins, coarsest * coarsest) + 1, dtype=np.int32)
        bad_bands[task] = _band_bins(
            images, channels_last, b, band_row * coarsest, coarsest, bins, shifts, scales, denormalize, band
        )
        for scale in range(num_scales):
            size = base << scale
            per_band = coarsest // size
            pad_row = rows[scale] * size > height
            pad_col = cols[scale] * size > width
            table_start = table_offsets[scale]
            for u in range(per_band):
                i = band_row * per_band + u
                if i >= rows[scale]:
                    break
                row_start = offsets[scale] + (b * rows[scale] + i) * cols[scale]
                if pad_row and i == rows[scale] - 1:
                    out[row_start : row_start + cols[scale]] = pad_value
                    continue
                for j in range(cols[scale]):
                    if pad_col and j == cols[scale] - 1:
                        out[row_start + j] = pad_value
                        continue
                    n_touched = 0
                    for dy in range(u * size, (u + 1) * size):
                        line = band[dy]
                        for dx in range(j * size, (j + 1) * size):
                            k = line[dx]
                            touched[n_touched] = k
                            n_touched += hist[k] == 0
                            hist[k] += 1
                    total = 0.0
                    for t in range(n_touched):
                        k = touched[t]
                        total += tables[table_start + hist[k]]
                        hist[k] = 0
                    out[row_start + j] = total
    return out


@njit(cache=True, parallel=True)
def histograms_kernel(images, bins, size, rows, cols, out):
    """Per-patch histograms of one scale: ``out`` is (B, rows, cols, bins) int32, zeroed."""
    batch, channels, height, width = images.shape
    bins_f = np.float32(bins)
    as_stored = np.zeros(3, dtype=np.float32)  # no normalisation to undo
    for task in prange(batch * rows):
        b = task // rows
        i = task % rows
        for j in range(cols):
            for y in range(i * size, (i + 1) * size):
                for x in range(j * size, (j + 1) * size):
                    if y < height and x < width and channels == 3:
                        out[b, i, j, _rgb_bin(images[b, 0, y, x], images[b, 1, y, x], images[b, 2, y, x], as_stored,
                                              as_stored, False, bins_f, bins - 1)] += 1
                    elif y < height and x < width:
                        out[b, i, j, _bin(np.float32(images[b, 0, y, x]), bins_f, bins - 1)] += 1
                    else:
                        out[b, i, j, 0] += 1
    return out


entropy_maps_kernel_serial = serial_twin(entropy_maps_kernel, "entropy_maps_kernel_serial")
