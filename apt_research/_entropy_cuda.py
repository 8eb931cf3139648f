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


@triton.jit
def _pixel(pointers, mask, shift_ptr, scale_ptr, DENORMALIZE: tl.constexpr):
    """Pixels in [0, 255]; padding (``mask`` false) is 0. With DENORMALIZE: ``clamp((x - shift) / scale * 255)``."""
    value = tl.load(pointers, mask=mask, other=0).to(tl.float32)
    if DENORMALIZE:
        value = tl.math.div_rn(value - tl.load(shift_ptr), tl.load(scale_ptr)) * 255.0
        value = tl.where(mask, tl.minimum(tl.maximum(value, 0.0), 255.0), 0.0)
    return value


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
    if is_border:
        tl.store(out + patch, pad_value)
    else:
        dx = tl.arange(0, SIZE_POW2)
        x = j * SIZE + dx
        counts = tl.zeros((BINS_POW2,), dtype=tl.int32)
        for tile in range(0, SIZE, TILE_ROWS):
            dy = tile + tl.arange(0, TILE_ROWS)
            y = i * SIZE + dy
            in_patch = (dy[:, None] < SIZE) & (dx[None, :] < SIZE)
            in_image = in_patch & (y[:, None] < height) & (x[None, :] < width)
            offsets = b * stride_b + y[:, None] * stride_h + x[None, :]
            first = _pixel(images + offsets, in_image, shift_ptr, scale_ptr, DENORMALIZE)
            if channels == 3:
                green = _pixel(images + offsets + stride_c, in_image, shift_ptr + 1, scale_ptr + 1, DENORMALIZE)
                blue = _pixel(images + offsets + 2 * stride_c, in_image, shift_ptr + 2, scale_ptr + 2, DENORMALIZE)
                gray = first * 0.2989 + green * 0.5870 + blue * 0.1140
            else:
                gray = first
            index = tl.math.div_rn(gray * BINS, 255.0).to(tl.int32)
            index = tl.minimum(index, BINS - 1)
            index = tl.where(in_patch, index, BINS)
            counts += tl.histogram(tl.reshape(index, (TILE_ROWS * SIZE_POW2,)), BINS_POW2)
        prob = counts.to(tl.float32) / (SIZE * SIZE)
        bin_ids = tl.arange(0, BINS_POW2)
        terms = tl.where(bin_ids < BINS, -prob * tl.log2(prob + 1e-10), 0.0)
        tl.store(out + patch, tl.sum(terms.to(tl.float64), axis=0).to(tl.float32))


def entropy_maps_triton(images, patch_size: int, num_scales: int, bins: int, pad_value: float, denormalize=None):
    """``{p_s: (B, h_s, w_s)}`` entropy maps of CUDA ``images`` (float32 or uint8, contiguous).

    ``denormalize``: ``(shift, scale)`` per channel, to map normalised images back to pixels on the fly.
    """
    if images.dtype not in (torch.uint8, torch.float32):
        images = images.float()
    images = images.contiguous()
    channels_in = images.shape[1]
    if denormalize is None:
        shifts = scales = torch.zeros(3, device=images.device)
    else:
        shifts, scales = (t.to(images.device, torch.float32).flatten().expand(channels_in).contiguous() for t in denormalize)
    batch, channels, height, width = images.shape
    maps = {}
    for scale in range(num_scales):
        size = patch_size * 2**scale
        rows, cols = -(-height // size), -(-width // size)
        size_pow2 = triton.next_power_of_2(size)
        tile_rows = max(1, min(triton.next_power_of_2(size), 4096 // size_pow2))
        # Lanes outside the patch go to a spare bin; without such lanes no spare bin is needed.
        spare = size != size_pow2 or size % tile_rows != 0
        bins_pow2 = triton.next_power_of_2(bins + 1 if spare else bins)
        out = torch.empty(batch, rows, cols, dtype=torch.float32, device=images.device)
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
            SIZE=size,
            SIZE_POW2=size_pow2,
            TILE_ROWS=tile_rows,
            BINS=bins,
            BINS_POW2=bins_pow2,
            enable_fp_fusion=False,
            num_warps=2 if size_pow2 * tile_rows <= 256 else 4 if size_pow2 * tile_rows <= 1024 else 8,
        )
        maps[size] = out
    return maps


@triton.jit
def _load_pixel(plane, y, x, height, width, stride_h, mask):
    inside = mask & (y < height) & (x < width)
    return tl.load(plane + y * stride_h + x, mask=inside, other=0).to(tl.float32)


@triton.jit
def _group_kernel(
    images,
    keep_ptr,
    slot_ptr,
    resized_ptr,
    full_ptr,
    boxes_ptr,
    packed_boxes_ptr,
    labels_ptr,
    delta_ptr,
    label,
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
    WRITE_PACKED: tl.constexpr,
):
    cell = tl.program_id(0)
    if tl.load(keep_ptr + cell) != 0:
        slot = tl.load(slot_ptr + cell).to(tl.int64)
        b = cell // (rows * cols)
        i = (cell // cols) % rows
        j = cell % cols
        y0 = i * SIZE
        x0 = j * SIZE
        tl.store(boxes_ptr + slot * 4, b.to(tl.int64))
        tl.store(boxes_ptr + slot * 4 + 1, y0.to(tl.int64))
        tl.store(boxes_ptr + slot * 4 + 2, x0.to(tl.int64))
        tl.store(boxes_ptr + slot * 4 + 3, tl.full((), SIZE, tl.int64))
        if WRITE_PACKED:
            where = slot + tl.load(delta_ptr + b)
            tl.store(packed_boxes_ptr + where * 4, b.to(tl.int64))
            tl.store(packed_boxes_ptr + where * 4 + 1, y0.to(tl.int64))
            tl.store(packed_boxes_ptr + where * 4 + 2, x0.to(tl.int64))
            tl.store(packed_boxes_ptr + where * 4 + 3, tl.full((), SIZE, tl.int64))
            tl.store(labels_ptr + where, tl.full((), label, tl.int64))
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


def patch_groups_triton(images: torch.Tensor, keep: torch.Tensor, count: int, size: int, base: int, packed=None):
    """Kept patches of one scale in (image, row, column) order, one program per grid cell.

    ``keep``: ``(B, rows, cols)`` mask; ``count``: how many cells it keeps (known on the host, so no sync).
    ``packed``: ``(token_boxes, output_mask, delta, label)``: also write each patch's box and ``label`` at
    place ``slot + delta[image]`` of the packed sequence.
    Returns ``(resized (N, C, p, p), full (N, f*f, C, p, p) or None, boxes (N, 4))``; the resized patch is
    the bilinear downsampling by ``f = size / base`` (two rows and columns at weight 1/2 each, summed in the
    order of torch's CPU kernel), pixels beyond the image are zero.
    """
    images = images.contiguous()
    batch, channels, height, width = images.shape
    rows, cols = keep.shape[-2:]
    flat = keep.reshape(-1).to(torch.int32)
    slots = torch.cumsum(flat, 0, dtype=torch.int32) - 1
    factor = size // base
    resized = torch.empty(count, channels, base, base, dtype=images.dtype, device=images.device)
    full = (torch.empty(count, factor * factor, channels, base, base, dtype=images.dtype, device=images.device)
            if factor > 1 else resized)
    boxes = torch.empty(count, 4, dtype=torch.int64, device=images.device)
    packed_boxes, labels, delta, label = packed if packed is not None else (boxes, boxes, boxes, 0)
    if count:
        _group_kernel[(flat.numel(),)](
            images, flat, slots, resized, full, boxes, packed_boxes, labels, delta, label,
            channels, height, width, rows, cols, images.stride(0), images.stride(1), images.stride(2),
            SIZE=size, BASE=base, BASE_POW2=triton.next_power_of_2(base), FACTOR=factor,
            WRITE_PACKED=packed is not None,
            enable_fp_fusion=False, num_warps=4 if base <= 16 else 8,
        )
    return resized, (full if factor > 1 else None), boxes
