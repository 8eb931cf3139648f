"""Whole tokenizer: our forward (and its steps) against the reference pipeline, its loader's per-image maps
then its forward, on the same images; with the grouping against its memory floor."""

from __future__ import annotations

import torch

from apt_research import PatchTokenizer
from apt_research.testing import baselines

from ..common import MEAN, STD, normalised, progress, real_batch, same_result, timed, torch_threads
from ..report import Column, Result, Strong, Table

NAME, TITLE = "tokenizer", "Whole tokenizer"
ROWS = [(14, 224, (6.0, 5.0)), (16, 256, (5.75, 4.0))]  # base patch, resolution, thresholds


def copy_floor(groups: dict, images: torch.Tensor):
    """A call that copies as many bytes as the grouping writes (its patch tensors) into fresh tensors.

    The memory floor of grouping: one contiguous copy of the kept pixels, no gathering, no resizing.
    """
    counts = [value.numel() for key, value in groups.items() if "patches" in key]
    source = images.reshape(-1).numpy()
    return lambda: [source[:count].copy() for count in counts]


def run(rows=ROWS, batch=64, repeats=10, threads=(None, 1)) -> Result:
    """Whole forward against the reference pipeline: its loader's per-image maps, then its forward.

    The reference's loader computes each image's maps from the pixels it decoded; here those pixels
    are ``tokenizer.to_pixels(images)`` (made before timing), so both sides score the same values.
    Each row is timed with the process's torch threads (``None``) and with each count in ``threads``
    (both sides alike; one thread is how data-loader workers run, and is the least disturbed by
    other load on a shared machine).
    """
    records = []
    default = torch.get_num_threads()
    for (base, size, thresholds), count in ((row, count or default) for row in rows for count in threads):
        with torch_threads(count):
            record = measure(base, size, thresholds, batch, repeats)
        record["threads"] = count
        records.append(record)
        progress(NAME, record)
    return Result(NAME, TITLE, records, [table(records, batch)])


def measure(base, size, thresholds, batch, repeats) -> dict:
    """One row: ours and the reference pipeline on the same ``batch`` images."""
    images = normalised(real_batch(size, batch))
    tokenizer = PatchTokenizer(3, base, size, list(thresholds), MEAN, STD)
    loader_pixels = tokenizer.to_pixels(images)
    ours_s, ours = timed(tokenizer, images, repeats=repeats)
    maps_s, maps = timed(tokenizer.compute_importance_maps, images, repeats=repeats)
    masks_s, (masks, _, _) = timed(tokenizer.construct_masks, maps, repeats=repeats)
    groups_s, groups = timed(tokenizer.construct_patch_groups, images, masks, repeats=repeats)
    floor_s, _ = timed(copy_floor(groups, images), repeats=repeats)
    ref_maps_s, ref_maps = timed(baselines.reference_loader_maps, loader_pixels, base, 3, repeats=2)
    ref_fwd_s, ref = timed(baselines.reference_forward, images, ref_maps, list(thresholds), base, 3, size,
                           repeats=2)
    same = same_result(ours, ref)
    record = dict(base=base, size=size, thresholds=list(thresholds), batch=batch, ours_ms=1000 * ours_s / batch,
                  maps_ms=1000 * maps_s / batch, masks_ms=1000 * masks_s / batch,
                  groups_ms=1000 * groups_s / batch, floor_ms=1000 * floor_s / batch,
                  reference_maps_ms=1000 * ref_maps_s / batch, reference_forward_ms=1000 * ref_fwd_s / batch,
                  same=same)
    record["reference_ms"] = record["reference_maps_ms"] + record["reference_forward_ms"]
    record["ratio"] = record["reference_ms"] / record["ours_ms"]
    record["groups_over_floor"] = groups_s / floor_s
    return record


def table(records: list[dict], batch: int) -> Table:
    return Table(records, [
        Column(f"base patch, resolution, thresholds (batch {batch}, 3 scales, 512 bins)",
               lambda r: f"{r['base']}, {r['size']}, {list(r['thresholds'])}"),
        Column("threads", "threads"),
        Column("ours: whole forward ms/img", "ours_ms", "{:.3f}"),
        Column("ours: maps", "maps_ms", "{:.3f}"),
        Column("ours: selection + packing", "masks_ms", "{:.3f}"),
        Column("ours: grouping", "groups_ms", "{:.3f}"),
        Column("grouping floor (copy of the kept pixels)", "floor_ms", "{:.3f}"),
        Column("grouping / floor", "groups_over_floor", "{:.2f}"),
        Column("reference: loader maps ms/img", "reference_maps_ms", "{:.2f}"),
        Column("reference: forward ms/img", "reference_forward_ms", "{:.2f}"),
        Column("reference total ms/img", "reference_ms", "{:.2f}"),
        Column(Strong("ratio"), "ratio", "{:.1f}x", strong=True),
        Column("same result", lambda r: "yes" if r["same"] else "NO"),
    ])
