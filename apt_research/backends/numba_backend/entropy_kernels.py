"""Fused CPU kernel for multi-scale patch entropy (numba).

One task is one row of the coarsest grid of one image (a band of ``P``
pixel rows). The kernel computes the histogram bin of the band's pixels once,
into a buffer that stays in cache (a vectorised loop), then counts the pixels of
every scale-0 patch of the band; the histogram of a patch of a coarser scale is
the sum of its four children's sparse ``(bin, count)`` lists. Per patch it only
visits the bins that are not empty, so the work grows with the number of pixels
and not with ``bins``; extra memory is the output plus, per task, the band and
two sets of sparse lists of at most one entry per pixel of the band.

The grayscale value and the bin are formed in float32 in the same order as the
plain torch path (``R*0.2989 + G*0.5870 + B*0.1140``, then ``v*bins/255``; the numbers come from
``contract.py``),
so the histograms equal ``torch.histc``'s; each count's term ``-p log2(p + 1e-10)`` comes from a table
formed in float32 as the reference forms it (``arguments.entropy_tables``: a flat patch scores exactly 0), and
the terms are summed in float64 (in four partial sums), which agrees with the float32 reference's sum
within its own rounding (below 1e-5 bits).

Indices in the counting loops are unsigned (uint16 bins, uint32 counts, np.uintp positions): numba tests
every signed index for a negative value (Python's wraparound), three more instructions on each histogram
update, which made those loops about 1.5x slower.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba import types as nt

from .kernel_cache import kernel, serial_twin
from ...contract import GRAY_WEIGHTS, MAX_PIXEL

# float32 globals: numba freezes them into the compiled kernels, in float32 arithmetic (the kernel cache's key
# hashes contract.py's source with the kernels', see kernel_cache.py).
_R, _G, _B = (np.float32(weight) for weight in GRAY_WEIGHTS)

# The argument types the kernels are called with from Python (``kernel_cache.kernel``: compiled for these only).
PIXELS = (nt.uint8[:, :, :, ::1], nt.float32[:, :, :, ::1])  # (B, C, H, W) or (B, H, W, C), as stored
LAYOUT = nt.Array(nt.int64, 1, "C", readonly=True)  # arguments.flat_layout's rows, cols and offsets
# The normalisation's (shift, scale): given arrays (3,), or a tokenizer's buffers (1, 3, 1, 1) read in place.
NORMALISATION = (nt.float32[::1], nt.float32[:, :, :, ::1])
ENTROPY_FLAT = tuple(
    (pixels, nt.boolean, nt.int64, nt.int64, nt.int64, LAYOUT, LAYOUT, LAYOUT, nt.float64[::1], nt.int64[::1],
     nt.float32, normalisation, normalisation, nt.boolean, nt.int64)
    for pixels in PIXELS for normalisation in NORMALISATION)
HISTOGRAMS = tuple((pixels, nt.int64, nt.int64, nt.int64, nt.int64, nt.int32[:, :, :, ::1]) for pixels in PIXELS)
_MAX_PIXEL = np.float32(MAX_PIXEL)
_ZERO = np.float32(0.0)


@njit(inline="always", error_model="numpy")
def _channel(value, shift, scale, denormalize):
    """A pixel value in [0, 255]: as stored, or ``clamp((x - shift) / scale * 255, 0, 255)`` in float32."""
    if denormalize:
        pixel = (np.float32(value) - shift) / scale * _MAX_PIXEL
        return min(max(pixel, np.float32(0.0)), _MAX_PIXEL)
    return np.float32(value)


@njit(inline="always", error_model="numpy")
def _gray(r, g, b, shift, scale, denormalize):
    """The grayscale value of one RGB pixel (``shift`` / ``scale``: three scalars each), left to right in float32."""
    return (
        _channel(r, shift[0], scale[0], denormalize) * _R
        + _channel(g, shift[1], scale[1], denormalize) * _G
        + _channel(b, shift[2], scale[2], denormalize) * _B
    )


@njit(inline="always", error_model="numpy")
def _bin(gray, bins_f, last_f):
    """``min(floor(gray * bins / 255), bins - 1)`` in float32, as a uint16 (bins <= 4096); bin 0 for NaN
    (reported by the caller, never used).

    Clamped in float before the conversion (the same for every value >= 0), so NaN and infinity never reach
    it: selects that vectorise, where an integer ``min`` after a float test does not.
    """
    scaled = gray * bins_f / _MAX_PIXEL
    scaled = scaled if scaled > _ZERO else _ZERO
    return np.uint16(scaled if scaled < last_f else last_f)


@njit(error_model="numpy", inline="always")
def _bin_rgb_row(red, green, blue, stride, shifts, scales, denormalize, bins, out_row):
    """Bins of one row of RGB pixels into ``out_row``; whether the row holds a NaN or an infinite value.

    Pixel x is ``red[stride * x]``, ``green[stride * x]``, ``blue[stride * x]``: planes (stride 1), or
    one interleaved row (``red``, ``green`` and ``blue`` the same flat row offset by 0, 1 and 2, stride 3).
    The per-channel numbers are read into scalars first and each branch is its own loop: written so,
    LLVM vectorises the loop (several times faster than reading ``shifts[c]`` for every pixel). Inlined
    where it is called, so that ``stride`` is a constant there (about a quarter faster again).
    """
    bins_f, last_f = np.float32(bins), np.float32(bins - 1)
    shift = (shifts[0], shifts[1], shifts[2])
    scale = (scales[0], scales[1], scales[2])
    poison = False  # x - x is 0 for every finite x, NaN for NaN and +-inf; an or, not a sum, vectorises
    if denormalize:
        for x in range(out_row.shape[0]):
            r, g, b = np.float32(red[stride * x]), np.float32(green[stride * x]), np.float32(blue[stride * x])
            poison |= (r - r) + (g - g) + (b - b) != 0
            out_row[x] = _bin(_gray(r, g, b, shift, scale, True), bins_f, last_f)
    else:
        for x in range(out_row.shape[0]):
            r, g, b = np.float32(red[stride * x]), np.float32(green[stride * x]), np.float32(blue[stride * x])
            poison |= (r - r) + (g - g) + (b - b) != 0
            out_row[x] = _bin(_gray(r, g, b, shift, scale, False), bins_f, last_f)
    return poison


@njit(error_model="numpy", inline="always")
def _bin_gray_row(values, stride, shift, scale, denormalize, bins, out_row):
    """``_bin_rgb_row`` for one-channel images: value x is ``values[stride * x]``."""
    bins_f, last_f = np.float32(bins), np.float32(bins - 1)
    poison = False
    if denormalize:
        for x in range(out_row.shape[0]):
            value = np.float32(values[stride * x])
            poison |= value - value != 0
            out_row[x] = _bin(_channel(value, shift, scale, True), bins_f, last_f)
    else:
        for x in range(out_row.shape[0]):
            value = np.float32(values[stride * x])
            poison |= value - value != 0
            out_row[x] = _bin(value, bins_f, last_f)
    return poison


@njit(inline="always")
def _image_shape(images, channels_last):
    """Channels, height and width of ``images``: (B, C, H, W), or (B, H, W, C) with ``channels_last``."""
    if channels_last:
        return images.shape[3], images.shape[1], images.shape[2]
    return images.shape[1], images.shape[2], images.shape[3]


@njit(error_model="numpy")
def _band_bins(images, channels_last, b, y0, rows, bins, shifts, scales, denormalize, band):
    """Bins of the pixels of rows ``y0 .. y0 + rows`` of image b into ``band`` (rows x padded width); padding is 0.

    ``images`` is a C-contiguous (B, C, H, W), or (B, H, W, C) with ``channels_last`` (read in place,
    each row as one interleaved run of values). Returns whether the band holds a NaN or an infinite
    value (its pixels then go to bin 0).
    """
    channels, height, width = _image_shape(images, channels_last)
    valid = min(rows, height - y0)
    band[valid:, :] = 0
    band[:valid, width:] = 0
    poison = False
    padded = band.shape[1]
    # Where the band has no padding columns its rows and the image's are both one run: one call, not one a row.
    step = valid if padded == width else 1
    flat = band.ravel()
    image = images[b]
    for dy in range(0, valid, step):
        y = y0 + dy
        out_run = flat[dy * padded : dy * padded + step * width]
        if channels_last:
            run = image.ravel()[y * width * channels : (y + step) * width * channels]
            if channels == 3:
                poison |= _bin_rgb_row(run, run[1:], run[2:], 3, shifts, scales, denormalize, bins, out_run)
            else:
                poison |= _bin_gray_row(run, channels, shifts[0], scales[0], denormalize, bins, out_run)
        elif channels == 3:
            first, last = y * width, (y + step) * width
            poison |= _bin_rgb_row(image[0].ravel()[first:last], image[1].ravel()[first:last],
                                   image[2].ravel()[first:last], 1, shifts, scales, denormalize, bins, out_run)
        else:
            poison |= _bin_gray_row(image[0].ravel()[y * width : (y + step) * width], 1, shifts[0], scales[0],
                                    denormalize, bins, out_run)
    return poison


@njit(inline="always")
def _entropy_of_touched(hist, touched, n_touched, tables, table_start, store, sparse_bins, sparse_counts, fill):
    """Entropy of the histogram ``hist`` over its ``n_touched`` non-empty bins ``touched[:n_touched]``
    (summed in float64, in four partial sums over every fourth bin), clearing them; with ``store`` also
    appends each ``(bin, count)`` to the sparse lists from ``fill``. Returns the entropy and the new ``fill``."""
    # Four partial sums: one float64 chain would wait on each addition's latency. Positions are np.uintp
    # (a plain int literal would turn uintp arithmetic into float64).
    one, two, three, four = np.uintp(1), np.uintp(2), np.uintp(3), np.uintp(4)
    sum0 = sum1 = sum2 = sum3 = 0.0
    t = np.uintp(0)
    while t + four <= n_touched:
        k0, k1, k2, k3 = touched[t], touched[t + one], touched[t + two], touched[t + three]
        c0, c1, c2, c3 = hist[k0], hist[k1], hist[k2], hist[k3]
        sum0 += tables[table_start + np.uintp(c0)]
        sum1 += tables[table_start + np.uintp(c1)]
        sum2 += tables[table_start + np.uintp(c2)]
        sum3 += tables[table_start + np.uintp(c3)]
        hist[k0] = 0
        hist[k1] = 0
        hist[k2] = 0
        hist[k3] = 0
        if store:
            sparse_bins[fill] = k0
            sparse_bins[fill + one] = k1
            sparse_bins[fill + two] = k2
            sparse_bins[fill + three] = k3
            sparse_counts[fill] = c0
            sparse_counts[fill + one] = c1
            sparse_counts[fill + two] = c2
            sparse_counts[fill + three] = c3
            fill += four
        t += four
    while t < n_touched:
        k0 = touched[t]
        c0 = hist[k0]
        sum0 += tables[table_start + np.uintp(c0)]
        hist[k0] = 0
        if store:
            sparse_bins[fill] = k0
            sparse_counts[fill] = c0
            fill += one
        t += one
    total = (sum0 + sum1) + (sum2 + sum3)
    return total, fill


@njit(inline="always")
def _count(k, amount, hist, touched, n_touched):
    """Add ``amount`` to bin ``k`` of ``hist``, noting ``k`` in ``touched`` if the bin was empty; returns the
    new number of noted bins. Branch-free: ``touched[n_touched]`` is written either way."""
    touched[n_touched] = k
    n_touched += np.uintp(hist[k] == 0)
    hist[k] += amount
    return n_touched


@njit
def _scale0(band, size, rows0, cols0, hist, touched, tables, table_start, store, sparse_bins, sparse_counts,
            sparse_start, totals):
    """Entropies of every scale-0 patch of the band into ``totals`` (rows0 x cols0, row-major) and, with
    ``store``, their sparse histograms. Four neighbouring patches are counted together, one pixel of
    each in turn: four independent chains of histogram updates, where one patch alone waits on each
    update of a repeated bin."""
    fill = np.uintp(0)
    table_start = np.uintp(table_start)
    h0, h1, h2, h3 = hist[0], hist[1], hist[2], hist[3]
    t0, t1, t2, t3 = touched[0], touched[1], touched[2], touched[3]
    for u in range(rows0):
        j = 0
        while j < cols0:
            lanes = 4 if cols0 - j >= 4 else 1  # the last few patches of a row one at a time
            n0 = n1 = n2 = n3 = np.uintp(0)
            if lanes == 4:
                for dy in range(u * size, (u + 1) * size):
                    line = band[dy]
                    for dx in range(j * size, (j + 1) * size):
                        n0 = _count(line[dx], 1, h0, t0, n0)
                        n1 = _count(line[dx + size], 1, h1, t1, n1)
                        n2 = _count(line[dx + 2 * size], 1, h2, t2, n2)
                        n3 = _count(line[dx + 3 * size], 1, h3, t3, n3)
            else:
                for dy in range(u * size, (u + 1) * size):
                    line = band[dy]
                    for dx in range(j * size, (j + 1) * size):
                        n0 = _count(line[dx], 1, h0, t0, n0)
            for lane in range(lanes):
                n = (n0, n1, n2, n3)[lane]
                patch = u * cols0 + j + lane
                if store:
                    sparse_start[patch] = fill
                totals[patch], fill = _entropy_of_touched(hist[lane], touched[lane], n, tables, table_start, store,
                                                          sparse_bins, sparse_counts, fill)
            j += lanes
    if store:
        sparse_start[rows0 * cols0] = fill


@njit
def _merge(rows_s, cols_s, hist, touched, tables, table_start, store, child_bins, child_counts, child_start,
           parent_bins, parent_counts, parent_start, totals):
    """Entropies of the patches of a scale above 0 from their four children's sparse histograms."""
    fill = np.uintp(0)
    table_start = np.uintp(table_start)
    child_cols = 2 * cols_s
    for u in range(rows_s):
        for v in range(cols_s):
            n_touched = np.uintp(0)
            first = 2 * u * child_cols + 2 * v
            for child in (first, first + 1, first + child_cols, first + child_cols + 1):
                for e in range(np.uintp(child_start[child]), np.uintp(child_start[child + 1])):
                    n_touched = _count(child_bins[e], child_counts[e], hist, touched, n_touched)
            patch = u * cols_s + v
            if store:
                parent_start[patch] = fill
            totals[patch], fill = _entropy_of_touched(hist, touched, n_touched, tables, table_start, store,
                                                      parent_bins, parent_counts, fill)
    if store:
        parent_start[rows_s * cols_s] = fill


@njit(parallel=True)
def entropy_maps_kernel(
    images, channels_last, bins, base, num_scales, rows, cols, offsets, tables, table_offsets, pad_value, shifts, scales,
    denormalize, out, bad_bands,
):
    """Fill ``out`` (flat float32) with the entropy maps of every scale.

    ``images``: (B, C, H, W), or (B, H, W, C) with ``channels_last``.

    ``bad_bands[task]`` (uint8) is set, when task ``task`` (of image ``task // rows[-1]``) is done, to 1 where its
    band holds a NaN or an infinite value (its maps are then meaningless: the caller raises), else 0.
    A task that could not allocate its scratch leaves it as it was (``entropy_flat`` starts it at 2).

    With ``denormalize`` the images are normalised and each channel c is first
    mapped back to pixels as ``clamp((x - shifts[c]) / scales[c] * 255, 0, 255)``.

    ``rows[s]``, ``cols[s]``: grid of scale s; ``offsets[s]``: where scale s
    starts in ``out`` (laid out as (B, rows[s], cols[s])); ``tables``: for each
    scale, ``-(c/N) * log2(c/N + LOG_EPSILON)`` for c = 0..N with N = p_s**2.

    One task is one band (a row of the coarsest grid of one image). Only scale 0 counts pixels; the
    histogram of a patch above it is the sum of its four children's, kept as sparse ``(bin, count)``
    lists: the same integer counts in fewer steps wherever neighbouring patches share grey levels.
    Patches of the padded area (outside a scale's grid, or on its padded border) are counted too,
    since their parents need them; the border rule then overwrites their scores.
    """
    batch = images.shape[0]
    _, height, width = _image_shape(images, channels_last)
    top = num_scales - 1
    coarsest = base << top
    padded_width = cols[top] * coarsest
    rows0, cols0 = coarsest // base, padded_width // base  # scale-0 patches of a band
    capacity = rows0 * cols0 * min(bins, base * base)  # the most sparse entries of one scale in a band
    multi = num_scales > 1
    half = (rows[top] + 1) // 2
    for task in prange(batch * rows[top]):
        b = task // rows[top]
        # An image's even bands, then its odd ones: two threads on one image alone then share its top and
        # bottom (which often differ in cost: sky and ground) instead of taking one each.
        k = task % rows[top]
        band_row = 2 * k if k < half else 2 * (k - half) + 1
        band = np.empty((coarsest, padded_width), dtype=np.uint16)
        hist = np.zeros((4, bins), dtype=np.uint32)
        touched = np.empty((4, min(bins, coarsest * coarsest) + 1), dtype=np.uint16)
        totals = np.empty(rows0 * cols0, dtype=np.float64)
        sparse = capacity if multi else 0
        child_bins = np.empty(sparse, dtype=np.uint16)
        child_counts = np.empty(sparse, dtype=np.uint32)
        child_start = np.empty(rows0 * cols0 + 1, dtype=np.int64)
        parent_bins = np.empty(sparse, dtype=np.uint16)
        parent_counts = np.empty(sparse, dtype=np.uint32)
        parent_start = np.empty(rows0 * cols0 + 1, dtype=np.int64)
        poison = _band_bins(
            images, channels_last, b, band_row * coarsest, coarsest, bins, shifts, scales, denormalize, band
        )
        for scale in range(num_scales):
            size = base << scale
            rows_s, cols_s = rows0 >> scale, cols0 >> scale
            store = scale < top
            if scale == 0:
                _scale0(band, size, rows_s, cols_s, hist, touched, tables, table_offsets[0], store, parent_bins,
                        parent_counts, parent_start, totals)
            else:
                _merge(rows_s, cols_s, hist[0], touched[0], tables, table_offsets[scale], store, child_bins,
                       child_counts, child_start, parent_bins, parent_counts, parent_start, totals)
            for u in range(rows_s):
                i = band_row * rows_s + u
                if i >= rows[scale]:
                    break
                pad_row = i == rows[scale] - 1 and rows[scale] * size > height
                row_start = offsets[scale] + (b * rows[scale] + i) * cols[scale]
                for j in range(cols[scale]):
                    border = pad_row or (j == cols[scale] - 1 and cols[scale] * size > width)
                    out[row_start + j] = pad_value if border else totals[u * cols_s + j]
            if store:
                child_bins, parent_bins = parent_bins, child_bins
                child_counts, parent_counts = parent_counts, child_counts
                child_start, parent_start = parent_start, child_start
        bad_bands[task] = 1 if poison else 0
    return out


@kernel(*HISTOGRAMS, parallel=True)
def histograms_kernel(images, bins, size, rows, cols, out):
    """Per-patch histograms of one scale: ``out`` is (B, rows, cols, bins) int32, zeroed."""
    batch, channels, height, width = images.shape
    bins_f, last_f = np.float32(bins), np.float32(bins - 1)
    as_stored = (np.float32(0.0), np.float32(0.0), np.float32(0.0))  # no normalisation to undo
    for task in prange(batch * rows):
        b = task // rows
        i = task % rows
        for j in range(cols):
            for y in range(i * size, (i + 1) * size):
                for x in range(j * size, (j + 1) * size):
                    if y < height and x < width and channels == 3:
                        gray = _gray(images[b, 0, y, x], images[b, 1, y, x], images[b, 2, y, x], as_stored, as_stored,
                                     False)
                        out[b, i, j, _bin(gray, bins_f, last_f)] += 1
                    elif y < height and x < width:
                        out[b, i, j, _bin(np.float32(images[b, 0, y, x]), bins_f, last_f)] += 1
                    else:
                        out[b, i, j, 0] += 1
    return out


entropy_maps_kernel_serial = serial_twin(entropy_maps_kernel, "entropy_maps_kernel_serial")
histograms_kernel_serial = serial_twin(histograms_kernel, "histograms_kernel_serial")


_UNFINISHED = 2  # a task's ``bad_bands`` entry until it is done


@njit
def three_float32(values):
    """One or three per-channel numbers (an array of any shape and float dtype) as float32 ``(3,)``, one value
    repeated (as torch broadcasts one number over three channels), made here so that a caller can pass the
    normalisation's own arrays (a tokenizer's buffers, read in place) and every call reads their values."""
    flat = np.ascontiguousarray(values).reshape(values.size)
    if flat.size != 1 and flat.size != 3:
        raise ValueError("the normalisation must hold 1 or 3 values (one per channel)")
    out = np.empty(3, dtype=np.float32)
    for c in range(3):
        out[c] = np.float32(flat[c if flat.size == 3 else 0])
    return out


@kernel(*ENTROPY_FLAT)
def entropy_flat(images, channels_last, bins, base, num_scales, rows, cols, offsets, tables, table_offsets,
                 pad_value, shifts, scales, denormalize, cells):
    """Allocate the flat maps (``cells`` float32) and fill them with ``entropy_maps_kernel`` (``entropy_flat_serial``:
    its serial twin): one call from Python. Returns the maps and a status: -1 when all is well, -2 when a task
    could not allocate its scratch (numba does not raise that from a parallel region), else the first image
    that holds a NaN or an infinite value. ``shifts`` / ``scales``: see ``three_float32``."""
    shifts, scales = three_float32(shifts), three_float32(scales)
    per_image = rows[num_scales - 1]
    tasks = images.shape[0] * per_image
    out = np.empty(cells, dtype=np.float32)
    bad_bands = np.full(tasks, _UNFINISHED, dtype=np.uint8)
    entropy_maps_kernel(images, channels_last, bins, base, num_scales, rows, cols, offsets, tables, table_offsets,
                        pad_value, shifts, scales, denormalize, out, bad_bands)
    for task in range(tasks):
        if bad_bands[task] == _UNFINISHED:
            return out, -2
    for task in range(tasks):
        if bad_bands[task] == 1:
            return out, task // per_image
    return out, -1


entropy_flat_serial = serial_twin(entropy_flat, "entropy_flat_serial", entropy_maps_kernel=entropy_maps_kernel_serial)
