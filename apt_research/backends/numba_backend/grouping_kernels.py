"""CPU selection and grouping for ``PatchTokenizer`` (numba): every output written once, in place.

Selection is one serial pass over the cells of every scale, coarsest first: a cell is
kept where its score is below its scale's threshold (always at scale 0) and no coarser
kept patch covers it. The same pass counts the kept patches of each image and scale and
gives each grid row the slot of its first kept patch.

Grouping is one parallel kernel for every scale, one task per grid row of one image: each
kept patch is written straight to its slot (the order is batch, row, column) as its resized
patch, its base patches (scales above 0), its box and, for the forward, its packed box and
label; the forward's class tokens are written by the same call. The resized patch is the
bilinear ``0.5**s`` downsampling with ``align_corners=False``: each output pixel is
``(a/4 + b/4) + c/4 + d/4`` of the two rows and two columns around the source point, in
float32 and in the order ``F.interpolate``'s CPU kernel adds them, so the result is the same
to the last bit. Pixels outside the image read as 0 (the zero padding). Images are read in
place, planar ``(B, C, H, W)`` or channels-last (a decoded image's ``permute(2, 0, 1)``).

A call costs a few numpy and torch steps besides the kernels, so that one image at a
time (a data-loader transform) costs little more per image than a batch.

The kernels are compiled and cached as ``kernel_cache`` says (one build, by one process, per version and CPU).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from numba import types as nt

from .entropy_kernels import ENTROPY_FLAT, LAYOUT, _image_shape, entropy_flat, entropy_flat_serial
from .kernel_cache import kernel, serial_twin
from ...contract import CLASS_TOKEN
from .arguments import flat_layout, kernel_pixels, pick, pixel_strides

# The argument types the kernels are called with from Python (``kernel_cache.kernel``): float32 pixels, flat.
_STRIDES = nt.UniTuple(nt.int64, 4)
_GROUPING = (nt.float32[::1], _STRIDES, nt.int64, nt.int64, nt.int64, nt.int64, nt.int64)  # src .. base
GROUP_ALL = ((*_GROUPING, nt.uint8[::1], LAYOUT, LAYOUT, LAYOUT, LAYOUT, nt.int64[::1], nt.int64[:, ::1],
              nt.int64[::1], nt.int64[:, ::1], nt.boolean),)
SELECT_AND_GROUP = ((nt.float32[::1], nt.float32[::1], *_GROUPING[:6], nt.int64, LAYOUT, LAYOUT, LAYOUT, LAYOUT),)
TOKENIZE = tuple((*signature, nt.float32[::1], nt.float32[::1], _STRIDES, LAYOUT)
                 for signature in ENTROPY_FLAT if signature[0].dtype == nt.float32)

_QUARTER = np.float32(0.25)


@njit
def select_kernel(flat, thresholds, batch, rows, cols, offsets, row_offsets, masks, keep, counts, row_starts,
                  cu_seqlens, packed_starts):
    """Masks of every scale from the flat maps, coarsest scale first, and the packed sequence's layout.

    ``flat``: float32 maps of scale s at ``offsets[s]``, laid out (B, rows[s], cols[s]);
    ``thresholds[s]``: float32 threshold of scale s (entry 0 unused). Writes ``masks``
    (float32 0/1) and ``keep`` (uint8) in the same layout, ``counts[b, s]``, the kept
    patches of image b at scale s, and ``row_starts[row_offsets[s] + b * rows[s] + i]``, the
    slot (among the kept patches of scale s of the whole batch) of the first kept patch of row i
    of image b. ``keep`` of a coarser scale marks the cells covered below it while the pass
    descends: 2 for covered by a kept ancestor, 1 for kept.

    Then the packed sequence (each image's class token, then its patches scale by scale):
    ``cu_seqlens`` (B + 1) and ``packed_starts[s, b]``, the packed position of slot 0 of scale s
    for image b (its first scale-s token minus the scale-s patches of the images before it).
    """
    num_scales = rows.shape[0]
    for scale in range(num_scales - 1, -1, -1):
        threshold = thresholds[scale]
        slot = 0
        for b in range(batch):
            kept = 0
            for i in range(rows[scale]):
                row_starts[row_offsets[scale] + b * rows[scale] + i] = slot + kept
                for j in range(cols[scale]):
                    cell = offsets[scale] + (b * rows[scale] + i) * cols[scale] + j
                    covered = False
                    if scale < num_scales - 1:
                        up = scale + 1
                        covered = keep[offsets[up] + (b * rows[up] + i // 2) * cols[up] + j // 2] != 0
                    take = not covered and (scale == 0 or flat[cell] < threshold)
                    masks[cell] = np.float32(1.0) if take else np.float32(0.0)
                    keep[cell] = 1 if take else (2 if covered else 0)
                    kept += take
            counts[b, scale] = kept
            slot += kept
    for cell in range(keep.shape[0]):
        keep[cell] = keep[cell] == 1
    cu_seqlens[0] = 0
    for b in range(batch):
        token = cu_seqlens[b] + 1  # after the class token
        for scale in range(num_scales):
            packed_starts[scale, b] = token
            token += counts[b, scale]
        cu_seqlens[b + 1] = token
    for scale in range(num_scales):
        before = 0
        for b in range(batch):
            packed_starts[scale, b] -= before
            before += counts[b, scale]


@njit(inline="always")
def _read(src, origin, row, step, y, x, height, width):
    """The value at (y, x) of one channel plane that starts at ``origin``; 0 outside the image."""
    if y < height and x < width:
        return src[origin + y * row + x * step]
    return np.float32(0.0)


@njit
def _write_border_patch(src, strides, height, width, channels, b, y0, x0, size, base, small, large, n, block0):
    """Patch n, which sticks out of the image (pixels outside read as 0): its resized copy into
    ``small`` (slot n) and, above scale 0, its base patches into ``large`` (from base patch ``block0``)."""
    stride_b, stride_c, row, step = strides
    factor = size // base
    first = factor // 2 - 1
    patch = base * base
    for c in range(channels):
        origin = b * stride_b + c * stride_c
        out = (n * channels + c) * patch
        for dy in range(base):
            for dx in range(base):
                if factor == 1:
                    value = _read(src, origin, row, step, y0 + dy, x0 + dx, height, width)
                else:
                    top, left = y0 + factor * dy + first, x0 + factor * dx + first
                    value = (
                        (_QUARTER * _read(src, origin, row, step, top, left, height, width)
                         + _QUARTER * _read(src, origin, row, step, top, left + 1, height, width))
                        + _QUARTER * _read(src, origin, row, step, top + 1, left, height, width)
                    ) + _QUARTER * _read(src, origin, row, step, top + 1, left + 1, height, width)
                small[out + dy * base + dx] = value
        for k in range(factor * factor if factor > 1 else 0):
            block = ((block0 + k) * channels + c) * patch
            for dy in range(base):
                for dx in range(base):
                    y, x = y0 + (k // factor) * base + dy, x0 + (k % factor) * base + dx
                    large[block + dy * base + dx] = _read(src, origin, row, step, y, x, height, width)


@njit(inline="always")
def _copy(src, start, step, dst, out, count):
    """``dst[out + k] = src[start + k * step]`` for k < count (flat arrays, unsigned offsets)."""
    for k in range(count):
        dst[out + k] = src[start + k * step]


@njit
def _group_row(src, strides, height, width, channels, keep_row, cols, size, base, b, i, n, block, small, large,
               boxes, token, packed_boxes, labels, label):
    """The kept patches of grid row i (scale of patch side ``size``) of image b: the first to slot n of
    ``small`` and ``boxes`` (its base patches from base patch ``block`` of ``large``) and, with a non-empty
    ``packed_boxes``, to token ``token`` of the packed sequence."""
    factor = size // base
    first = factor // 2 - 1
    stride_b, stride_c = np.uintp(strides[0]), np.uintp(strides[1])
    stride_y, stride_x = np.uintp(strides[2]), np.uintp(strides[3])
    side = np.uintp(base)
    patch = side * side  # values of one base patch of one channel
    step = np.uintp(factor)
    for j in range(cols):
        if keep_row[j] == 0:
            continue
        y0, x0 = i * size, j * size
        if y0 + size > height or x0 + size > width:
            _write_border_patch(src, strides, height, width, channels, b, y0, x0, size, base, small, large, n, block)
        else:
            # Flat arrays and unsigned offsets: numba then emits no negative-index test per value, and the
            # loops vectorise (several times faster than indexing the 4-d and 5-d arrays).
            for c in range(channels):
                origin = np.uintp(b) * stride_b + np.uintp(c) * stride_c
                out = np.uintp(n * channels + c) * patch
                if factor == 1:
                    for dy in range(side):
                        start = origin + (np.uintp(y0) + dy) * stride_y + np.uintp(x0) * stride_x
                        _copy(src, start, stride_x, small, out + dy * side, side)
                    continue
                for dy in range(side):
                    top = origin + (np.uintp(y0 + first) + step * dy) * stride_y + np.uintp(x0 + first) * stride_x
                    line = out + dy * side
                    for dx in range(side):
                        at = top + step * dx * stride_x
                        small[line + dx] = (
                            (_QUARTER * src[at] + _QUARTER * src[at + stride_x]) + _QUARTER * src[at + stride_y]
                        ) + _QUARTER * src[at + stride_y + stride_x]
                for u in range(step):
                    for v in range(step):
                        at = (np.uintp(block) + u * step + v) * np.uintp(channels) + np.uintp(c)
                        corner = origin + (np.uintp(y0) + u * side) * stride_y + (np.uintp(x0) + v * side) * stride_x
                        for dy in range(side):
                            _copy(src, corner + dy * stride_y, stride_x, large, at * patch + dy * side, side)
        boxes[n, 0] = b
        boxes[n, 1] = y0
        boxes[n, 2] = x0
        boxes[n, 3] = size
        if packed_boxes.shape[0] > 0:
            for k in range(4):
                packed_boxes[token, k] = boxes[n, k]
            labels[token] = label
            token += 1
        n += 1
        block += factor * factor if factor > 1 else 0


@njit(parallel=True)
def group_kernel(src, strides, height, width, channels, batch, base, keep, offsets, rows, cols, row_offsets,
                 row_starts, slots, blocks, small, large, boxes, packed_starts, packed_boxes, labels, cu_seqlens):
    """Write every kept patch of every scale to its slot.

    ``src``: the images as one flat float32 array, value (b, c, y, x) at ``b * strides[0] +
    c * strides[1] + y * strides[2] + x * strides[3]``. ``keep`` (uint8, flat, scale s at
    ``offsets[s]`` laid out (B, rows[s], cols[s])) and ``row_starts`` as ``select_kernel``
    writes them. Outputs, every scale in one flat array each: slot ``slots[s] + n`` of ``small``
    ``(N, C, base, base)`` and of ``boxes`` ``(N, 4)`` int64 ``(image, y0, x0, size)`` is patch n of
    scale s; its base patches (scales above 0) are ``large`` ``(M, C, base, base)`` from base patch
    ``blocks[s] + n * 4**s``. With a non-empty ``packed_boxes``, patch n of scale s of image b is
    also token ``packed_starts[s, b] + n`` of the packed sequence: its box goes to ``packed_boxes``
    and its label ``s + 1`` to ``labels``; token ``cu_seqlens[b]`` is image b's class token.
    """
    num_scales = rows.shape[0]
    per_image = 0
    for scale in range(num_scales):
        per_image += rows[scale]
    packed = packed_boxes.shape[0] > 0
    for b in range(batch if packed else 0):
        token = cu_seqlens[b]
        packed_boxes[token, 0] = b
        packed_boxes[token, 1] = -1
        packed_boxes[token, 2] = -1
        packed_boxes[token, 3] = 0
        labels[token] = CLASS_TOKEN
    # Tasks image by image and, within an image, band by band of the coarsest grid (its row, then the rows of
    # each finer scale inside it): the kept patches tile the image, so the threads' equal shares of the range
    # hold about equal areas, whole images in a batch and halves of the image for one image alone.
    top = num_scales - 1
    task_scale = np.empty(per_image, dtype=np.int64)
    task_row = np.empty(per_image, dtype=np.int64)
    t = 0
    for band in range(rows[top]):
        for scale in range(top, -1, -1):
            span = 1 << (top - scale)
            for i in range(band * span, min((band + 1) * span, rows[scale])):
                task_scale[t] = scale
                task_row[t] = i
                t += 1
    for task in prange(batch * per_image):
        b = task // per_image
        scale = task_scale[task % per_image]
        i = task_row[task % per_image]
        cell = offsets[scale] + (b * rows[scale] + i) * cols[scale]
        n = row_starts[row_offsets[scale] + b * rows[scale] + i]
        token = packed_starts[scale, b] + n if packed else 0
        _group_row(src, strides, height, width, channels, keep[cell : cell + cols[scale]], cols[scale],
                   base << scale, base, b, i, slots[scale] + n, blocks[scale] + n * (1 << (2 * scale)), small, large,
                   boxes, token, packed_boxes, labels, scale + 1)


group_kernel_serial = serial_twin(group_kernel, "group_kernel_serial")


@kernel(*GROUP_ALL)
def group_all(src, strides, height, width, channels, batch, base, keep, offsets, rows, cols, row_offsets, row_starts,
              counts, cu_seqlens, packed_starts, packed):
    """Allocate the outputs of ``group_kernel`` (every scale in one array each) and fill them (``group_all_serial``:
    with its serial twin).

    Returns ``small``, ``large``, ``boxes``, the first slot of each scale (``slots``, S + 1), the first
    base patch of each scale in ``large`` (``blocks``, S + 1) and, with ``packed``, the packed sequence's
    ``token_boxes`` and labels (``output_mask``).
    """
    num_scales = rows.shape[0]
    slots = np.zeros(num_scales + 1, dtype=np.int64)
    blocks = np.zeros(num_scales + 1, dtype=np.int64)
    for scale in range(num_scales):
        total = 0
        for b in range(batch):
            total += counts[b, scale]
        slots[scale + 1] = slots[scale] + total
        blocks[scale + 1] = blocks[scale] + (total << (2 * scale) if scale else 0)
    patch = channels * base * base
    small = np.empty(slots[num_scales] * patch, dtype=np.float32)
    large = np.empty(blocks[num_scales] * patch, dtype=np.float32)
    boxes = np.empty((slots[num_scales], 4), dtype=np.int64)
    tokens = cu_seqlens[batch] if packed else 0
    packed_boxes = np.empty((tokens, 4), dtype=np.int64)
    labels = np.empty(tokens, dtype=np.int64)
    group_kernel(src, strides, height, width, channels, batch, base, keep, offsets, rows, cols, row_offsets, row_starts,
                 slots, blocks, small, large, boxes, packed_starts, packed_boxes, labels, cu_seqlens)
    return small, large, boxes, slots, blocks, packed_boxes, labels


group_all_serial = serial_twin(group_all, "group_all_serial", group_kernel=group_kernel_serial)


@kernel(*SELECT_AND_GROUP)
def select_and_group(flat, thresholds, src, strides, height, width, channels, batch, base, offsets, rows, cols,
                     row_offsets):
    """``select_kernel`` then ``group_all`` (``select_and_group_serial``: its serial twin), for the forward: one
    call from Python for both.

    Returns the masks (float32, flat), ``keep``, ``counts``, ``cu_seqlens`` and ``group_all``'s outputs.
    """
    num_scales = rows.shape[0]
    cells = flat.shape[0]
    masks = np.empty(cells, dtype=np.float32)
    keep = np.empty(cells, dtype=np.uint8)
    counts = np.empty((batch, num_scales), dtype=np.int64)
    row_starts = np.empty(row_offsets[num_scales - 1] + batch * rows[num_scales - 1], dtype=np.int64)
    cu_seqlens = np.empty(batch + 1, dtype=np.int64)
    packed_starts = np.empty((num_scales, batch), dtype=np.int64)
    select_kernel(flat, thresholds, batch, rows, cols, offsets, row_offsets, masks, keep, counts, row_starts,
                  cu_seqlens, packed_starts)
    groups = group_all(src, strides, height, width, channels, batch, base, keep, offsets, rows, cols, row_offsets,
                       row_starts, counts, cu_seqlens, packed_starts, True)
    return (masks, keep, counts, cu_seqlens) + groups


select_and_group_serial = serial_twin(select_and_group, "select_and_group_serial", group_all=group_all_serial)


@kernel(*TOKENIZE)
def tokenize(images, channels_last, bins, base, num_scales, rows, cols, offsets, tables, table_offsets, pad_value,
             shifts, scales, denormalize, cells, thresholds, src, strides, row_offsets):
    """The whole CPU forward of the numba entropy scorer in one call from Python: ``entropy_flat``, then, when
    its status is -1 (all well), ``select_and_group`` (``tokenize_serial``: their serial twins). Returns the
    status and ``select_and_group``'s outputs (empty where the status is not -1)."""
    flat, status = entropy_flat(images, channels_last, bins, base, num_scales, rows, cols, offsets, tables,
                                table_offsets, pad_value, shifts, scales, denormalize, cells)
    batch = images.shape[0]
    channels, height, width = _image_shape(images, channels_last)
    if status != -1:
        batch = 0  # nothing kept: every output empty
    return (status,) + select_and_group(flat[: cells if batch else 0], thresholds, src, strides, height, width,
                                        channels, batch, base, offsets, rows, cols, row_offsets)


tokenize_serial = serial_twin(tokenize, "tokenize_serial", entropy_flat=entropy_flat_serial,
                              select_and_group=select_and_group_serial)


def _flat_pixels(images: torch.Tensor):
    """The float32 ``images`` as one flat numpy array read in place where it can be, and its element strides."""
    pixels, channels_last = kernel_pixels(images)
    return pixels.reshape(-1), pixel_strides(pixels, channels_last)


def _groups(batch: int, channels: int, base: int, sizes: list[int], layout, keep, small, large, boxes, slots, blocks):
    """``patch_groups``'s dict: per-scale views of ``group_all``'s flat outputs (one storage per kind; numpy
    views wrapped once each, cheaper than slicing tensors)."""
    grids, cell_ends = layout.grids, layout.cell_ends
    keep = keep.view(np.bool_)
    slots, blocks = slots.tolist(), blocks.tolist()
    patch = channels * base * base
    groups = {}
    for scale, size in enumerate(sizes):
        first, last = slots[scale], slots[scale + 1]
        groups[f"resized_patches_{size}"] = torch.from_numpy(
            small[first * patch : last * patch].reshape(last - first, channels, base, base))
        if scale:
            groups[f"full_patches_{size}"] = torch.from_numpy(
                large[blocks[scale] * patch : blocks[scale + 1] * patch].reshape(last - first, 4**scale, channels,
                                                                                   base, base))
        groups[f"pos_embed_mask_{size}"] = torch.from_numpy(
            keep[cell_ends[scale] : cell_ends[scale + 1]].reshape(batch, grids[scale][0] * grids[scale][1]))
        groups[f"token_boxes_{size}"] = torch.from_numpy(boxes[first:last])
    return groups


def group_patches(images: torch.Tensor, keep: list[torch.Tensor], sizes: list[int], base: int) -> dict:
    """``patch_groups``'s outputs for float32 CPU ``images`` and bool masks ``keep`` ``(B, h_s, w_s)``."""
    batch, channels, height, width = images.shape
    arrays = [mask.contiguous().numpy().view(np.uint8) for mask in keep]
    layout = flat_layout(batch, tuple(array.shape[1:] for array in arrays))
    per_row = [array.sum(2, dtype=np.int64).reshape(-1) for array in arrays]
    counts = np.stack([rows.reshape(batch, -1).sum(1) for rows in per_row], 1)
    row_starts = np.concatenate([np.cumsum(rows) - rows for rows in per_row])
    flat = np.concatenate([array.reshape(-1) for array in arrays])
    pixels, strides = _flat_pixels(images)
    no_packing = np.empty((len(sizes), 0), dtype=np.int64)
    small, large, boxes, slots, blocks, _, _ = pick(group_all, group_all_serial)(
        pixels, strides, height, width, channels, batch, base, flat, layout.offsets, layout.rows, layout.cols,
        layout.row_offsets, row_starts, counts, np.empty(0, dtype=np.int64), no_packing, False)
    return _groups(batch, channels, base, sizes, layout, flat, small, large, boxes, slots, blocks)


def outputs(batch, channels, sizes, base, layout, masks, keep, counts, cu_seqlens, small, large, boxes, slots,
            blocks, token_boxes, labels) -> dict:
    """The forward's dict from ``select_and_group``'s outputs (views, no copies)."""
    out = _groups(batch, channels, base, sizes, layout, keep, small, large, boxes, slots, blocks)
    grids, cell_ends = layout.grids, layout.cell_ends
    out["masks"] = {size: torch.from_numpy(masks[cell_ends[s] : cell_ends[s + 1]].reshape(batch, *grids[s]))
                    for s, size in enumerate(sizes)}
    out["output_mask"] = torch.from_numpy(labels)
    cu = cu_seqlens.tolist()
    out["seqlens"] = [end - start for start, end in zip(cu, cu[1:])]
    out["cu_seqlens"] = torch.from_numpy(cu_seqlens.astype(np.int32))
    out["token_boxes"] = torch.from_numpy(token_boxes)
    return out


def forward(images: torch.Tensor, flat: np.ndarray, grids: tuple, thresholds: np.ndarray, sizes: list[int],
            base: int) -> dict:
    """The CPU forward's outputs from the float32 flat maps (scale s laid out (B, h_s, w_s) after the scales
    before it; thresholds compared in float32 as torch does): selection, grouping and packing in one call."""
    batch, channels, height, width = images.shape
    layout = flat_layout(batch, grids)
    pixels, strides = _flat_pixels(images)
    results = pick(select_and_group, select_and_group_serial)(
        flat, thresholds, pixels, strides, height, width, channels, batch, base, layout.offsets, layout.rows,
        layout.cols, layout.row_offsets)
    return outputs(batch, channels, sizes, base, layout, *results)
