"""Entropy maps: ours against (a) the per-patch ``torch.histc`` loop and (b) the batched one-hot histograms,
per resolution, batch, scales and bins; with the peak memory our call adds and its agreement with (a)."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from apt_research import compute_patch_entropy_batched
from apt_research.testing import baselines

from ..common import ONE_HOT_LIMIT, ROOT, max_diff, progress, real_batch, timed
from ..report import Column, Result, Table

NAME, TITLE = "entropy", "Entropy maps"
ROWS = [
    (224, 64, 3, 512), (224, 8, 3, 512), (224, 64, 2, 512), (224, 64, 4, 512), (224, 64, 3, 256), (224, 64, 3, 1024),
    (336, 32, 3, 512), (448, 16, 3, 512), (1024, 8, 3, 256), (1024, 8, 3, 512), (1024, 8, 3, 1024),
]
AGREE = 1e-5  # bits: a row agrees with a baseline when no map differs by more


def peak_extra_bytes(size: int, batch: int, scales: int, bins: int) -> int | None:
    """Peak resident memory our entropy call adds on top of its input, measured in a fresh process (Linux)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    code = (
        "import torch, numpy as np; from benchmarks.common import real_batch;"
        "from apt_research import compute_patch_entropy_batched as f;"
        "x = real_batch(%d, %d); f(x[:1], 16, %d, %d);"
        "import gc; gc.collect();"
        "rss = lambda key: int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1]) * 1024;"
        "open('/proc/self/clear_refs', 'w').write('5'); before = rss('VmRSS');"
        "f(x, 16, %d, %d); print(rss('VmHWM') - before)"
    ) % (size, batch, scales, bins, scales, bins)
    # The repository root is the working folder, so ``benchmarks`` imports there as here.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def measure(size: int, batch: int, scales: int, bins: int) -> dict:
    """One row: ours on ``batch`` images, (a) on the first few of them, (b) where its one-hot tensors fit in
    ``ONE_HOT_LIMIT`` (checked to agree with ours), and our peak extra memory in a fresh process."""
    images = real_batch(size, batch)
    ours_s, ours = timed(compute_patch_entropy_batched, images, 16, scales, bins)
    subset = images[: max(1, min(batch, 4 if size < 1024 else 2))]
    ref_s, ref = timed(baselines.histc_loop_maps, subset, 16, scales, bins, repeats=1)
    ours_ms, ref_ms = 1000 * ours_s / batch, 1000 * ref_s / subset.shape[0]
    need = baselines.one_hot_bytes(images, 16, scales, bins)
    hot_ms = None
    if need <= ONE_HOT_LIMIT:
        hot_s, hot = timed(baselines.one_hot_maps, images, 16, scales, bins, repeats=1)
        hot_ms = 1000 * hot_s / batch
        assert max_diff(ours, hot) <= AGREE
    peak = peak_extra_bytes(size, batch, scales, bins)
    input_bytes = images.numel() * images.element_size()
    return dict(size=size, batch=batch, scales=scales, bins=bins, ours_ms=ours_ms, histc_ms=ref_ms,
                one_hot_ms=hot_ms, peak_extra_bytes=peak, input_bytes=input_bytes, max_diff=max_diff(ours, ref),
                one_hot_bytes=need)


def run(rows=ROWS) -> Result:
    records = []
    for row in rows:
        records.append(measure(*row))
        progress(NAME, records[-1])
        gc.collect()
    return Result(NAME, TITLE, records, [table(records)])


def table(records: list[dict]) -> Table:
    def one_hot(r):
        if r["one_hot_ms"] is None:
            return f"skipped (needs {r['one_hot_bytes'] / 2**30:.1f} GB > {ONE_HOT_LIMIT // 2**30} GB)"
        return r["one_hot_ms"]

    def peak(r):
        if r["peak_extra_bytes"] is None:
            return "n/a"
        return f"{r['peak_extra_bytes'] / 2**10:,.0f} KiB ({r['peak_extra_bytes'] / r['input_bytes']:.3f}x input)"

    return Table(records, [
        Column("resolution", "size"),
        Column("batch", "batch"),
        Column("scales", "scales"),
        Column("bins", "bins"),
        Column("ours ms/img", "ours_ms", "{:.3f}"),
        Column("ours img/s", lambda r: 1000 / r["ours_ms"], "{:.0f}"),
        Column("(a) histc loop ms/img", "histc_ms", "{:.2f}"),
        Column("vs (a)", lambda r: r["histc_ms"] / r["ours_ms"], "{:.1f}x"),
        Column("(b) one-hot ms/img", one_hot, "{:.2f}"),
        Column("vs (b)", lambda r: "-" if r["one_hot_ms"] is None else r["one_hot_ms"] / r["ours_ms"], "{:.0f}x"),
        Column("peak extra memory", peak),
        Column("agree with (a)",
               lambda r: f"{'yes' if r['max_diff'] <= AGREE else 'NO'} (max {r['max_diff']:.1e} bits)"),
    ])
