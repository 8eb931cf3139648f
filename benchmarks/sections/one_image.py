"""One image at a time: one image per call, as a data-loader transform calls it, against the per-image cost
in a batch; and one image's maps against decoding and resizing it."""

from __future__ import annotations

import torch

from apt_research import PatchTokenizer, compute_patch_entropy_batched

from ..common import (MEAN, STD, alternately, decode_and_resize, jpeg_bytes, normalised, progress, real_batch,
                      timed, torch_threads)
from ..report import Column, Result, Strong, Table
from .tokenizer import ROWS

NAME, TITLE = "one_image", "One image at a time"


def run(rows=ROWS, batch=64, repeats=12) -> Result:
    """One image per call, as a data-loader transform calls it, against the per-image cost in a batch.

    The one-image calls go over the same ``batch`` images as the batch call, each alone: images differ
    in cost (flat ones are cheaper), so one chosen image would measure its content, not the per-call cost.
    The batch call and the loop of one-image calls are timed alternately, ``repeats`` rounds
    (``alternately``), so that both start from the same machine state; timed each back to back, the
    batch ran with its own scratch and outputs still in cache from the call before. Within the loop each
    call follows the previous image's, as a worker's calls follow each other. Both sides run with this
    process's torch threads, then both with one thread, as data-loader workers run (the ``loader``
    section); the decode comparison is also given with one thread.
    """
    records = []
    default = torch.get_num_threads()
    for base, size, thresholds in rows:
        images = normalised(real_batch(size, batch))
        tokenizer = PatchTokenizer(3, base, size, list(thresholds), MEAN, STD)
        singles = [images[i : i + 1].clone() for i in range(batch)]
        for count in (default, 1):
            records.append(measure_row(tokenizer, images, singles, base, size, count, repeats))
            progress(NAME, records[-1])
    figures, decode_rows = decode_comparison(default, repeats)
    return Result(NAME, TITLE, dict(rows=records, **figures), [rows_table(records, batch), decode_table(decode_rows)])


def measure_row(tokenizer, images, singles, base, size, count, repeats) -> dict:
    """``singles`` one at a time against ``images`` in one call, with ``count`` threads."""
    batch = len(singles)

    def each(function):
        return lambda: [function(image) for image in singles]

    with torch_threads(count):
        best = alternately({
            "maps_batch": lambda: tokenizer.compute_importance_maps(images),
            "maps_one": each(tokenizer.compute_importance_maps),
            "fwd_batch": lambda: tokenizer(images),
            "fwd_one": each(tokenizer),
        }, repeats=repeats)
    record = dict(base=base, size=size, threads=count, maps_batch_ms=1000 * best["maps_batch"] / batch,
                  maps_one_ms=1000 * best["maps_one"] / batch, forward_batch_ms=1000 * best["fwd_batch"] / batch,
                  forward_one_ms=1000 * best["fwd_one"] / batch)
    record["maps_ratio"] = record["maps_one_ms"] / record["maps_batch_ms"]
    record["forward_ratio"] = record["forward_one_ms"] / record["forward_batch_ms"]
    return record


def decode_comparison(default: int, repeats: int) -> tuple[dict, list[dict]]:
    """One 224 image's maps against a PIL decode + resize of a 512x512 JPEG: the section's figures, and the
    rows of its second table (what was timed, ms, ratio to the decode)."""
    data = jpeg_bytes(512)
    decode_s, decoded = timed(decode_and_resize, data, 224, repeats=10 * repeats)
    tokenizer = PatchTokenizer(3, 14, 224, [6.0, 5.0], MEAN, STD)
    image = normalised(decoded[None].float())
    maps_s = {}
    for count in (default, 1):
        with torch_threads(count):
            maps_s[count] = (timed(tokenizer.compute_importance_maps, image, repeats=10 * repeats)[0],
                             timed(compute_patch_entropy_batched, decoded[None], 14, 3, 512, repeats=10 * repeats)[0])
    figures = dict(decode_resize_ms=1000 * decode_s, jpeg_bytes=len(data),
                   maps_normalised_ms=1000 * maps_s[default][0], maps_uint8_ms=1000 * maps_s[default][1],
                   maps_normalised_one_thread_ms=1000 * maps_s[1][0], maps_uint8_one_thread_ms=1000 * maps_s[1][1])
    rows = [{"what": f"PIL: decode a 512x512 JPEG ({len(data) // 1024} KiB) + bilinear resize to 224 (one thread)",
             "ms": 1000 * decode_s, "ratio": "1"}]
    for count in (default, 1):
        for label, seconds in (("`tokenizer.compute_importance_maps` (normalised float32)", maps_s[count][0]),
                               ("`compute_patch_entropy_batched` (the decoded uint8 pixels)", maps_s[count][1])):
            rows.append({"what": f"maps, {label}, {count} thread{'s' if count > 1 else ''}", "ms": 1000 * seconds,
                         "ratio": Strong(seconds / decode_s)})
    return figures, rows


def rows_table(records: list[dict], batch: int) -> Table:
    return Table(records, [
        Column("base patch, resolution", lambda r: f"{r['base']}, {r['size']}"),
        Column("threads", "threads"),
        Column(f"maps: batch {batch} ms/img", "maps_batch_ms", "{:.3f}"),
        Column("maps: each image alone, ms/img", "maps_one_ms", "{:.3f}"),
        Column("one / batch (target <= 1.5)", "maps_ratio", "{:.2f}", strong=True),
        Column(f"forward: batch {batch} ms/img", "forward_batch_ms", "{:.3f}"),
        Column("forward: each image alone, ms/img", "forward_one_ms", "{:.3f}"),
        Column("one / batch (target <= 2)", "forward_ratio", "{:.2f}", strong=True),
    ])


def decode_table(rows: list[dict]) -> Table:
    return Table(rows, [
        Column("one 224x224 image, base patch 14, 3 scales", "what"),
        Column("ms", "ms", "{:.3f}"),
        Column("/ PIL decode + resize (target <= 0.1)", "ratio", "{:.3f}"),
    ])
