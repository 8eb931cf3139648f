"""Triton kernel for the entropy maps on CUDA.

One program per patch: it walks the patch in tiles of ``TILE_ROWS`` rows,
forms the grayscale value and the bin of each pixel in float32 in the
reference's order (no FMA contraction, round-to-nearest division, so the bins
equal ``torch.histc``'s), accumulates ``tl.histogram`` of the tile (a warp-level
ballot histogram in shared memory: work grows with the pixels, not with
``patches x bins`` memory), and turns the counts into bits. Padding pixels
count into bin 0; lanes outside the patch go to a spare bin that is ignored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...contract import GRAY_WEIGHTS, LOG_EPSILON, MAX_PIXEL

FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
# The contract's numbers as compile-time constants (Python floats become float32 operands, like literals).
GRAY_R = tl.constexpr(GRAY_WEIGHTS[0])
GRAY_G = tl.constexpr(GRAY_WEIGHTS[1])
GRAY_B = tl.constexpr(GRAY_WEIGHTS[2])
PIXEL_MAX = tl.constexpr(MAX_PIXEL)
LOG_EPS = tl.constexpr(LOG_EPSILON)


def _pow2(n: int) -> int:
    """Smallest power of two >= n (``triton.next_power_of_2`` is a constexpr function, slower from the host)."""
    return 1 << max(0, int(n) - 1).bit_length()


@triton.jit
def _pixel(pointers, mask, shift_ptr, scale_ptr, DENORMALIZE: tl.constexpr):
    """``(pixel, raw)``: pixels in [0, 255], padding (``mask`` false) is 0, and the value as loaded.

    With DENORMALIZE the pixel is ``clamp((x - shift) / scale * 255, 0, 255)``.
    """
    raw = tl.load(pointers, mask=mask, other=0).to(tl.float32)
    value = raw
    if DENORMALIZE:
        value = tl.math.div_rn(raw - tl.load(shift_ptr), tl.load(scale_ptr)) * PIXEL_MAX
        value = tl.where(mask, tl.minimum(tl.maximum(value, 0.0), PIXEL_MAX), 0.0)
    return value, raw


@triton.jit
def _patch_entropy(images, b, i, j, channels, height, width, stride_b, stride_c, stride_h, shift_ptr, scale_ptr,
                   DENORMALIZE: tl.constexpr, CHECK_FINITE: tl.constexpr, SIZE: tl.constexpr,
                   SIZE_POW2: tl.constexpr, TILE_ROWS: tl.constexpr, BINS: tl.constexpr, BINS_POW2: tl.constexpr):
    """Entropy in bits of patch (i, j) of image b, and ``(nans, infs)``: non-finite values met (CHECK_FINITE)."""
    dx = tl.arange(0, SIZE_POW2)
    x = j * SIZE + dx
    counts = tl.zeros((BINS_POW2,), dtype=tl.int32)
    nans = tl.zeros((), dtype=tl.int32)
    infs = tl.zeros((), dtype=tl.int32)
    for tile in range(0, SIZE, TILE_ROWS):
        dy = tile + tl.arange(0, TILE_ROWS)
        y = i * SIZE + dy
        in_patch = (dy[:, None] < SIZE) & (dx[None, :] < SIZE)
        in_image = in_patch & (y[:, None] < height) & (x[None, :] < width)
        offsets = b.to(tl.int64) * stride_b + y[:, None] * stride_h + x[None, :]
        first, raw = _pixel(images + offsets, in_image, shift_ptr, scale_ptr, DENORMALIZE)
        if CHECK_FINITE:
            nan = raw != raw
            inf = tl.abs(raw) > FLOAT32_MAX
        if channels == 3:
            green, raw = _pixel(images + offsets + stride_c, in_image, shift_ptr + 1, scale_ptr + 1, DENORMALIZE)
            if CHECK_FINITE:
                nan = nan | (raw != raw)
                inf = inf | (tl.abs(raw) > FLOAT32_MAX)
            blue, raw = _pixel(images + offsets + 2 * stride_c, in_image, shift_ptr + 2, scale_ptr + 2, DENORMALIZE)
            if CHECK_FINITE:
                nan = nan | (raw != raw)
                inf = inf | (tl.abs(raw) > FLOAT32_MAX)
            gray = first * GRAY_R + green * GRAY_G + blue * GRAY_B
        else:
            gray = first
        if CHECK_FINITE:
            nans += tl.sum(tl.reshape(nan.to(tl.int32), (TILE_ROWS * SIZE_POW2,)), axis=0)
            infs += tl.sum(tl.reshape(inf.to(tl.int32), (TILE_ROWS * SIZE_POW2,)), axis=0)
            gray = tl.where(nan | inf, 0.0, gray)  # keep the bin index in range; the batch is rejected anyway
        index = tl.math.div_rn(gray * BINS, PIXEL_MAX).to(tl.int32)
        index = tl.minimum(index, BINS - 1)
        index = tl.where(in_patch, index, BINS)
        counts += tl.histogram(tl.reshape(index, (TILE_ROWS * SIZE_POW2,)), BINS_POW2)
    prob = counts.to(tl.float32) / (SIZE * SIZE)
    bin_ids = tl.arange(0, BINS_POW2)
    terms = tl.where(bin_ids < BINS, -prob * tl.log2(prob + LOG_EPS), 0.0)
    return tl.sum(terms.to(tl.float64), axis=0).to(tl.float32), nans, infs


@triton.jit
def _entropy_kernel(
    images,
    out,
    channels,
    height,
    width,
    rows,
    cols,
    stride_b,
    stride_c,
    stride_h,
    pad_value,
    pad_row,
    pad_col,
    shift_ptr,
    scale_ptr,
    DENORMALIZE: tl.constexpr,
    CHECK_FINITE: tl.constexpr,
    SIZE: tl.constexpr,
    SIZE_POW2: tl.constexpr,
    TILE_ROWS: tl.constexpr,
    BINS: tl.constexpr,
    BINS_POW2: tl.constexpr,
):
    patch = tl.program_id(0)
    b = patch // (rows * cols)
    i = (patch // cols) % rows
    j = patch % cols
    is_border = ((i == rows - 1) & (pad_row != 0)) | ((j == cols - 1) & (pad_col != 0))
    if CHECK_FINITE:
        # Every patch is read, border ones too, so that every pixel is checked: NaN marks a patch that
        # holds a NaN, -inf one that holds an infinity (entropies are never negative).
        entropy, nans, infs = _patch_entropy(
            images, b, i, j, channels, height, width, stride_b, stride_c, stride_h, shift_ptr, scale_ptr,
            DENORMALIZE, CHECK_FINITE, SIZE, SIZE_POW2, TILE_ROWS, BINS, BINS_POW2)
        value = tl.where(is_border, pad_value, entropy)
        value = tl.where(infs > 0, float("-inf"), value)
        value = tl.where(nans > 0, float("nan"), value)
        tl.store(out + patch, value)
    else:
        if is_border:
            tl.store(out + patch, pad_value)
        else:
            entropy, nans, infs = _patch_entropy(
                images, b, i, j, channels, height, width, stride_b, stride_c, stride_h, shift_ptr, scale_ptr,
                DENORMALIZE, CHECK_FINITE, SIZE, SIZE_POW2, TILE_ROWS, BINS, BINS_POW2)
            tl.store(out + patch, entropy)


def _per_channel(values: torch.Tensor, device, channels: int) -> torch.Tensor:
    """``values`` as ``channels`` contiguous float32 numbers on ``device``; no op when they are already."""
    if values.device == device and values.dtype == torch.float32 and values.numel() == channels \
            and values.is_contiguous():
        return values
    return values.to(device, torch.float32).flatten().expand(channels).contiguous()


def entropy_maps_triton(images, patch_size: int, num_scales: int, bins: int, pad_value: float, denormalize=None,
                        check_finite: bool = False):
    """``{p_s: (B, h_s, w_s)}`` entropy maps of CUDA ``images`` (float32 or uint8, contiguous).

    ``denormalize``: ``(shift, scale)`` per channel, to map normalised images back to pixels on the fly.
    The maps are views of one flat buffer, scale after scale (see ``entropy_flat_triton``).
    """
    return entropy_flat_triton(images, patch_size, num_scales, bins, pad_value, denormalize, check_finite)[1]


def entropy_flat_triton(images, patch_size: int, num_scales: int, bins: int, pad_value: float, denormalize=None,
                        check_finite: bool = False):
    """``(flat, maps)``: every scale's map in one float32 buffer, scale 0 first, and the maps as its views.

    ``check_finite``: scale-0 patches that hold a NaN read NaN, those that hold an infinity read -inf
    (float images only), so that the caller learns of bad input without a pass of its own.
    """
    if images.dtype not in (torch.uint8, torch.float32):
        images = images.float()
    images = images.contiguous()
    channels_in = images.shape[1]
    if denormalize is None:
        shifts = scales = torch.zeros(3, device=images.device)
    else:
        shifts, scales = (_per_channel(t, images.device, channels_in) for t in denormalize)
    batch, channels, height, width = images.shape
    sizes = [patch_size * 2**scale for scale in range(num_scales)]
    grids = [(-(-height // size), -(-width // size)) for size in sizes]
    flat = torch.empty(sum(batch * rows * cols for rows, cols in grids), dtype=torch.float32, device=images.device)
    maps, start = {}, 0
    for scale, (size, (rows, cols)) in enumerate(zip(sizes, grids)):
        out = flat[start : start + batch * rows * cols]
        start += batch * rows * cols
        size_pow2 = _pow2(size)
        tile_rows = max(1, min(_pow2(size), 4096 // size_pow2))
        # Lanes outside the patch go to a spare bin; without such lanes no spare bin is needed.
        spare = size != size_pow2 or size % tile_rows != 0
        bins_pow2 = _pow2(bins + 1 if spare else bins)
        _entropy_kernel[(batch * rows * cols,)](
            images,
            out,
            channels,
            height,
            width,
            rows,
            cols,
            images.stride(0),
            images.stride(1),
            images.stride(2),
            float(pad_value),
            int(rows * size > height),
            int(cols * size > width),
            shifts,
            scales,
            DENORMALIZE=denormalize is not None,
            CHECK_FINITE=bool(check_finite and scale == 0 and images.dtype != torch.uint8),
            SIZE=size,
            SIZE_POW2=size_pow2,
            TILE_ROWS=tile_rows,
            BINS=bins,
            BINS_POW2=bins_pow2,
            enable_fp_fusion=False,
            num_warps=2 if size_pow2 * tile_rows <= 256 else 4 if size_pow2 * tile_rows <= 1024 else 8,
        )
        maps[size] = out.view(batch, rows, cols)
    return flat, maps


@triton.jit
def _select_kernel(
    maps,
    thresholds,
    masks_out,
    keep_out,
    slots_out,
    counts_out,
    batch,
    rows0,
    cols0,
    NUM_SCALES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (b, s): the scale-s mask of image b, each kept patch's slot in its image, and the count.

    A patch of scale s is kept where ``map_s < threshold_s`` (always at s = 0) and no coarser patch that
    contains it has ``map_t < threshold_t``: the coarsest-first rule of docs/contract.md, since a coarser patch
    that passes its threshold but is itself covered lies inside an even coarser one that passes. In the
    flat buffers scale t starts after the ``batch * rows_t * cols_t`` cells of the finer scales, with
    ``rows_t = ceil(rows0 / 2**t)``. ``counts_out`` is ``(B, NUM_SCALES + 2)``: the kept patches per
    scale, then the NaN and the -inf cells of the scale-0 map (bad input, see ``entropy_flat_triton``).
    """
    b = tl.program_id(0)
    s = tl.program_id(1)
    rows = (rows0 + (1 << s) - 1) >> s
    cols = (cols0 + (1 << s) - 1) >> s
    start = b * 0
    for t in tl.static_range(NUM_SCALES):
        start += tl.where(t < s, batch * ((rows0 + (1 << t) - 1) >> t) * ((cols0 + (1 << t) - 1) >> t), 0)
    cells = rows * cols
    start += b * cells
    threshold = tl.load(thresholds + s)
    running = b * 0
    nans = b * 0
    infs = b * 0
    for first in range(0, cells, BLOCK):
        idx = first + tl.arange(0, BLOCK)
        valid = idx < cells
        i = idx // cols
        j = idx % cols
        value = tl.load(maps + start + idx, mask=valid, other=0.0)
        keep = valid & ((s == 0) | (value < threshold))
        coarse_start = b * 0
        for t in tl.static_range(NUM_SCALES):
            rows_t = (rows0 + (1 << t) - 1) >> t
            cols_t = (cols0 + (1 << t) - 1) >> t
            if t > 0:
                # For t <= s the shift is 0 and the cell lies in scale t's (finer) grid: a valid address.
                shift = tl.maximum(t - s, 0)
                ancestor = coarse_start + b * rows_t * cols_t + (i >> shift) * cols_t + (j >> shift)
                score = tl.load(maps + ancestor, mask=valid, other=0.0)
                covered = (score < tl.load(thresholds + t)) & (s < t)
                keep = keep & (covered == 0)
            coarse_start += batch * rows_t * cols_t
        nans += tl.sum((valid & (value != value)).to(tl.int32), axis=0)
        infs += tl.sum((valid & (value == float("-inf"))).to(tl.int32), axis=0)
        kept = keep.to(tl.int32)
        tl.store(masks_out + start + idx, kept.to(tl.float32), mask=valid)
        tl.store(keep_out + start + idx, kept.to(tl.uint8), mask=valid)
        tl.store(slots_out + start + idx, running + tl.cumsum(kept, axis=0) - 1, mask=valid)
        running += tl.sum(kept, axis=0)
    tl.store(counts_out + b * (NUM_SCALES + 2) + s, running)
    if s == 0:
        tl.store(counts_out + b * (NUM_SCALES + 2) + NUM_SCALES, nans)
        tl.store(counts_out + b * (NUM_SCALES + 2) + NUM_SCALES + 1, infs)


def select_triton(flat: torch.Tensor, thresholds: torch.Tensor, batch: int, rows0: int, cols0: int, num_scales: int):
    """Masks of every scale from the flat maps of ``entropy_flat_triton`` in one launch.

    ``thresholds``: float32 ``(num_scales,)`` on the device, entry s for scale s (entry 0 unused).
    Returns flat ``masks`` (float 0/1), ``keep`` (uint8), ``slots`` (int32, each kept patch's place among
    its image's kept patches of its scale) laid out as ``flat``, and ``counts`` ``(B, num_scales + 2)``
    int32 (kept per scale; NaN and -inf cells of the scale-0 map).
    """
    masks = torch.empty_like(flat)
    keep = torch.empty(flat.shape, dtype=torch.uint8, device=flat.device)
    slots = torch.empty(flat.shape, dtype=torch.int32, device=flat.device)
    counts = torch.empty(batch, num_scales + 2, dtype=torch.int32, device=flat.device)
    block = max(16, min(1024, _pow2(rows0 * cols0)))
    _select_kernel[(batch, num_scales)](
        flat, thresholds, masks, keep, slots, counts, batch, rows0, cols0,
        NUM_SCALES=num_scales, BLOCK=block, enable_fp_fusion=False, num_warps=4 if block <= 256 else 8,
    )
    return masks, keep, slots, counts


@triton.jit
def _load_pixel(plane, y, x, height, width, stride_h, mask):
    inside = mask & (y < height) & (x < width)
    return tl.load(plane + y * stride_h + x, mask=inside, other=0).to(tl.float32)


@triton.jit
def _store_box(boxes_ptr, row, b, y0, x0, side, labels_ptr, label, WRITE_LABEL: tl.constexpr):
    """Row ``row`` of an ``(N, 4)`` int64 box table: ``(b, y0, x0, side)``; with WRITE_LABEL also ``labels[row]``."""
    tl.store(boxes_ptr + row * 4, b.to(tl.int64))
    tl.store(boxes_ptr + row * 4 + 1, tl.full((), y0, tl.int64))
    tl.store(boxes_ptr + row * 4 + 2, tl.full((), x0, tl.int64))
    tl.store(boxes_ptr + row * 4 + 3, tl.full((), side, tl.int64))
    if WRITE_LABEL:
        tl.store(labels_ptr + row, tl.full((), label, tl.int64))


@triton.jit
def _group_kernel(
    images,
    keep_ptr,
    slot_ptr,
    offset_ptr,
    resized_ptr,
    full_ptr,
    boxes_ptr,
    packed_boxes_ptr,
    labels_ptr,
    delta_ptr,
    cu_ptr,
    label,
    num_cells,
    channels,
    height,
    width,
    rows,
    cols,
    stride_b,
    stride_c,
    stride_h,
    SIZE: tl.constexpr,
    BASE: tl.constexpr,
    BASE_POW2: tl.constexpr,
    FACTOR: tl.constexpr,
    HAS_OFFSET: tl.constexpr,
    WRITE_PACKED: tl.constexpr,
):
    cell = tl.program_id(0)
    if cell >= num_cells:
        # Programs after the grid's cells (launched with class starts) write each image's class token.
        b = cell - num_cells
        _store_box(packed_boxes_ptr, tl.load(cu_ptr + b).to(tl.int64), b, -1, -1, 0, labels_ptr, -1, True)
    elif tl.load(keep_ptr + cell) != 0:
        b = cell // (rows * cols)
        i = (cell // cols) % rows
        j = cell % cols
        slot = tl.load(slot_ptr + cell).to(tl.int64)
        if WRITE_PACKED:
            where = slot + tl.load(delta_ptr + b)
        if HAS_OFFSET:
            slot += tl.load(offset_ptr + b)
        y0 = i * SIZE
        x0 = j * SIZE
        _store_box(boxes_ptr, slot, b, y0, x0, SIZE, labels_ptr, label, False)
        if WRITE_PACKED:
            _store_box(packed_boxes_ptr, where, b, y0, x0, SIZE, labels_ptr, label, True)
        py = tl.arange(0, BASE_POW2)[:, None]
        px = tl.arange(0, BASE_POW2)[None, :]
        inside = (py < BASE) & (px < BASE)
        for channel in range(channels):
            plane = images + b.to(tl.int64) * stride_b + channel * stride_c
            out = (slot * channels + channel) * BASE * BASE + py * BASE + px
            if FACTOR == 1:
                value = _load_pixel(plane, y0 + py, x0 + px, height, width, stride_h, inside)
            else:
                top = y0 + py * FACTOR + FACTOR // 2 - 1
                left = x0 + px * FACTOR + FACTOR // 2 - 1
                value = 0.25 * _load_pixel(plane, top, left, height, width, stride_h, inside)
                value += 0.25 * _load_pixel(plane, top, left + 1, height, width, stride_h, inside)
                value += 0.25 * _load_pixel(plane, top + 1, left, height, width, stride_h, inside)
                value += 0.25 * _load_pixel(plane, top + 1, left + 1, height, width, stride_h, inside)
                for part in tl.static_range(FACTOR * FACTOR):
                    sub = _load_pixel(plane, y0 + (part // FACTOR) * BASE + py, x0 + (part % FACTOR) * BASE + px,
                                      height, width, stride_h, inside)
                    full = ((slot * FACTOR * FACTOR + part) * channels + channel) * BASE * BASE + py * BASE + px
                    tl.store(full_ptr + full, sub.to(full_ptr.dtype.element_ty), mask=inside)
            tl.store(resized_ptr + out, value.to(resized_ptr.dtype.element_ty), mask=inside)


def patch_groups_triton(images: torch.Tensor, keep: torch.Tensor, count: int, size: int, base: int, packed=None,
                        slots=None, offsets=None, class_starts=None):
    """Kept patches of one scale in (image, row, column) order, one program per grid cell.

    ``keep``: ``(B, rows, cols)`` mask (any dtype, nonzero = kept); ``count``: how many cells it keeps
    (known on the host, so no sync). ``slots``: each kept cell's place among its image's kept cells of
    this scale, with ``offsets`` ``(B,)`` the kept cells of the images before; without them the places
    come from a cumulative sum over ``keep``. ``packed``: ``(token_boxes, output_mask, delta, label)``:
    also write each patch's box and ``label`` at place ``slot + delta[image]`` of the packed sequence
    (``slot`` being the per-image place when ``slots`` is given, the global one otherwise).
    ``class_starts``: ``(B,)`` where each image's sequence starts; its class token is written there.
    Returns ``(resized (N, C, p, p), full (N, f*f, C, p, p) or None, boxes (N, 4))``; the resized patch is
    the bilinear downsampling by ``f = size / base`` (two rows and columns at weight 1/2 each, summed in the
    order of torch's CPU kernel), pixels beyond the image are zero.
    """
    images = images.contiguous()
    batch, channels, height, width = images.shape
    rows, cols = keep.shape[-2:]
    flat = keep.reshape(-1)
    if slots is None:
        flat = flat.to(torch.int32)
        slots = torch.cumsum(flat, 0, dtype=torch.int32) - 1
        offsets = None
    factor = size // base
    resized = torch.empty(count, channels, base, base, dtype=images.dtype, device=images.device)
    full = (torch.empty(count, factor * factor, channels, base, base, dtype=images.dtype, device=images.device)
            if factor > 1 else resized)
    boxes = torch.empty(count, 4, dtype=torch.int64, device=images.device)
    packed_boxes, labels, delta, label = packed if packed is not None else (boxes, boxes, boxes, 0)
    cells = flat.numel() if count else 0
    programs = cells + (batch if class_starts is not None else 0)
    if programs:
        _group_kernel[(programs,)](
            images, flat, slots, offsets if offsets is not None else slots, resized, full, boxes, packed_boxes,
            labels, delta, class_starts if class_starts is not None else slots, label, cells,
            channels, height, width, rows, cols, images.stride(0), images.stride(1), images.stride(2),
            SIZE=size, BASE=base, BASE_POW2=_pow2(base), FACTOR=factor,
            HAS_OFFSET=offsets is not None, WRITE_PACKED=packed is not None,
            enable_fp_fusion=False, num_warps=4 if base <= 16 else 8,
        )
    return resized, (full if factor > 1 else None), boxes
