"""CPU selection and grouping for ``PatchTokenizer`` (numba): every output written once, in place.

Selection is one serial pass over the cells of every scale, coarsest first: a cell is
kept where its score is below its scale's threshold (always at scale 0) and no coarser
kept patch covers it. The same pass counts the kept patches of each image and scale.

Grouping is one parallel kernel per scale, one task per row of the grid of one image:
each kept patch is written straight to its slot (the order is batch, row, column) as its
resized patch, its base patches (scales above 0), its box and, for the forward, its
packed box and label. The resized patch is the bilinear ``0.5**s`` downsampling with
``align_corners=False``: each output pixel is ``(a/4 + b/4) + c/4 + d/4`` of the two rows
and two columns around the source point, in float32 and in the order
``F.interpolate``'s CPU kernel adds them, so the result is the same to the last bit.
Pixels outside the image read as 0 (the zero padding).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from ._numba import serial_twin

_QUARTER = np.float32(0.25)


@njit(cache=True)
def select_kernel(flat, thresholds, batch, rows, cols, offsets, masks, keep, counts):
    """Masks of every scale from the flat maps, coarsest scale first.

    ``flat``: float32 maps of scale s at ``offsets[s]``, laid out (B, rows[s], cols[s]);
    ``thresholds[s]``: float32 threshold of scale s (entry 0 unused). Writes ``masks``
    (float32 0/1) and ``keep`` (uint8) in the same layout, and ``counts[b, s]``, the kept
    patches of image b at scale s. ``keep`` of a coarser scale marks the cells covered
    below it while the pass descends: 2 for covered by a kept ancestor, 1 for kept.
    """
    num_scales = rows.shape[0]
    for scale in range(num_scales - 1, -1, -1):
        threshold = thresholds[scale]
        for b in range(batch):
            kept = 0
            for i in range(rows[scale]):
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
    for cell in range(keep.shape[0]):
        keep[cell] = keep[cell] == 1


@njit(cache=True, inline="always")
def _read(images, b, c, y, x, height, width):
    if y < height and x < width:
        return images[b, c, y, x]
    return np.float32(0.0)


@njit(cache=True)
def _write_border_patch(images, b, y0, x0, size, base, resized, full, n):
    """Patch n, which sticks out of the image (pixels outside read as 0): its resized copy into
    ``resized[n]`` and, above scale 0, its base patches into ``full[n]``."""
    _, channels, height, width = images.shape
    factor = size // base
    first = factor // 2 - 1
    for c in range(channels):
        for dy in range(base):
            for dx in range(base):
                if factor == 1:
                    resized[n, c, dy, dx] = _read(images, b, c, y0 + dy, x0 + dx, height, width)
                    continue
                top, left = y0 + factor * dy + first, x0 + factor * dx + first
                resized[n, c, dy, dx] = (
                    (_QUARTER * _read(images, b, c, top, left, height, width)
                     + _QUARTER * _read(images, b, c, top, left + 1, height, width))
                    + _QUARTER * _read(images, b, c, top + 1, left, height, width)
                ) + _QUARTER * _read(images, b, c, top + 1, left + 1, height, width)
        if factor > 1:
            for k in range(factor * factor):
                for dy in range(base):
                    for dx in range(base):
                        y, x = y0 + (k // factor) * base + dy, x0 + (k % factor) * base + dx
                        full[n, k, c, dy, dx] = _read(images, b, c, y, x, height, width)


@njit(cache=True, inline="always")
def _copy(src, start, dst, out, count):
    """``dst[out : out + count] = src[start : start + count]`` (flat arrays, unsigned offsets)."""
    for k in range(count):
        dst[out + k] = src[start + k]


@njit(cache=True, parallel=True)
def group_kernel(images, keep, row_start, size, base, resized, full, boxes, packed_start, packed_boxes, labels, label):
    """Write every kept patch of one scale to its slot.

    ``keep``: (B, rows, cols) uint8; ``row_start[b * rows + i]``: slot of the first kept patch
    of row i of image b. Outputs: ``resized`` (N, C, base, base), ``full`` (N, factor**2, C,
    base, base) above scale 0 (unused at scale 0), ``boxes`` (N, 4) int64 ``(image, y0, x0,
    size)``. With a non-empty ``packed_start`` (B,), patch n of image b is also token
    ``packed_start[b] + n`` of the packed sequence: its box goes to ``packed_boxes`` and
    ``label`` to ``labels``.
    """
    batch, rows, cols = keep.shape
    _, channels, height, width = images.shape
    factor = size // base
    first = factor // 2 - 1
    packed = packed_start.shape[0] > 0
    src = images.ravel()
    small = resized.ravel()
    large = full.ravel()
    plane = np.uintp(height * width)
    row = np.uintp(width)
    side = np.uintp(base)
    patch = side * side  # values of one base patch of one channel
    step = np.uintp(factor)
    for task in prange(batch * rows):
        b = task // rows
        i = task % rows
        n = row_start[task]
        for j in range(cols):
            if keep[b, i, j] == 0:
                continue
            y0, x0 = i * size, j * size
            if y0 + size > height or x0 + size > width:
                _write_border_patch(images, b, y0, x0, size, base, resized, full, n)
            else:
                # Flat arrays and unsigned offsets: numba then emits no negative-index test per value, and the
                # loops vectorise (several times faster than indexing the 4-d and 5-d arrays).
                for c in range(channels):
                    channel = np.uintp((b * channels + c)) * plane
                    out = np.uintp(n * channels + c) * patch
                    if factor == 1:
                        for dy in range(side):
                            _copy(src, channel + (np.uintp(y0) + dy) * row + np.uintp(x0), small, out + dy * side, side)
                        continue
                    for dy in range(side):
                        top = channel + (np.uintp(y0 + first) + step * dy) * row + np.uintp(x0 + first)
                        line = out + dy * side
                        for dx in range(side):
                            at = top + step * dx
                            small[line + dx] = (
                                (_QUARTER * src[at] + _QUARTER * src[at + 1]) + _QUARTER * src[at + row]
                            ) + _QUARTER * src[at + row + 1]
                    for u in range(step):
                        for v in range(step):
                            block = (np.uintp(n) * step * step + u * step + v) * np.uintp(channels) + np.uintp(c)
                            origin = channel + (np.uintp(y0) + u * side) * row + np.uintp(x0) + v * side
                            for dy in range(side):
                                _copy(src, origin + dy * row, large, block * patch + dy * side, side)
            boxes[n, 0] = b
            boxes[n, 1] = i * size
            boxes[n, 2] = j * size
            boxes[n, 3] = size
            if packed:
                token = packed_start[b] + n
                for k in range(4):
                    packed_boxes[token, k] = boxes[n, k]
                labels[token] = label
            n += 1


group_kernel_serial = serial_twin(group_kernel, "group_kernel_serial")


def select_masks(maps: dict, sizes: list[int], thresholds: list[float]):
    """Masks of float32 CPU ``maps`` (``select_patches_by_threshold``'s, compared in float32 as torch does).

    Returns ``masks`` ``{p_s: (B, h_s, w_s)}`` float32, ``keep`` (the same as uint8 numpy arrays, one
    per scale) and ``counts`` ``(B, S)`` int64 numpy: kept patches per image and scale.
    """
    batch = maps[sizes[0]].shape[0]
    rows = np.asarray([maps[size].shape[1] for size in sizes], dtype=np.int64)
    cols = np.asarray([maps[size].shape[2] for size in sizes], dtype=np.int64)
    cells = batch * rows * cols
    offsets = np.concatenate(([0], np.cumsum(cells)[:-1]))
    flat = torch.cat([maps[size].reshape(-1) for size in sizes]).numpy()
    masks_flat = torch.empty(int(cells.sum()), dtype=torch.float32)
    keep_flat = np.empty(int(cells.sum()), dtype=np.uint8)
    counts = np.empty((batch, len(sizes)), dtype=np.int64)
    select_kernel(flat, np.asarray([0.0, *thresholds], dtype=np.float32), batch, rows, cols, offsets,
                  masks_flat.numpy(), keep_flat, counts)
    masks, keep = {}, []
    for s, size in enumerate(sizes):
        shape = (batch, int(rows[s]), int(cols[s]))
        masks[size] = masks_flat[offsets[s] : offsets[s] + cells[s]].view(shape)
        keep.append(keep_flat[offsets[s] : offsets[s] + cells[s]].reshape(shape))
    return masks, keep, counts


def group_patches(images: torch.Tensor, keep: list[np.ndarray], sizes: list[int], base: int, packed=None) -> dict:
    """``patch_groups``'s outputs for float32 CPU ``images`` and uint8 ``keep`` masks, one kernel per scale.

    ``packed``: ``(starts, token_boxes, output_mask)`` to also write each patch's packed box and
    label; ``starts`` ``(S, B)`` is the packed position of slot 0 of each scale, per image.
    """
    pixels = images.contiguous().numpy()
    channels = images.shape[1]
    kernel = group_kernel if torch.get_num_threads() > 1 else group_kernel_serial
    empty_starts, empty_boxes, empty_labels = np.empty(0, np.int64), np.empty((0, 4), np.int64), np.empty(0, np.int64)
    groups = {}
    for scale, size in enumerate(sizes):
        mask = keep[scale]
        per_row = mask.sum(2, dtype=np.int64).ravel()
        row_start = np.cumsum(per_row) - per_row
        total = int(per_row.sum())
        factor = size // base
        resized = torch.empty(total, channels, base, base)
        full = torch.empty(total, factor * factor, channels, base, base) if scale else torch.empty(0, 0, 0, 0, 0)
        boxes = torch.empty(total, 4, dtype=torch.int64)
        if packed is None:
            starts, packed_boxes, labels = empty_starts, empty_boxes, empty_labels
        else:
            starts, packed_boxes, labels = packed[0][scale], packed[1].numpy(), packed[2].numpy()
        kernel(pixels, mask, row_start, size, base, resized.numpy(), full.numpy(), boxes.numpy(),
                     starts, packed_boxes, labels, scale + 1)
        groups[f"resized_patches_{size}"] = resized
        if scale:
            groups[f"full_patches_{size}"] = full
        groups[f"pos_embed_mask_{size}"] = torch.from_numpy(mask).view(torch.bool).flatten(1)
        groups[f"token_boxes_{size}"] = boxes
    return groups
