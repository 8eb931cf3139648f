"""Benchmark suite: our tokenizer against the baselines it carries, measured in one process.

    python3 run.py bench                       # everything this machine can run
    python3 run.py bench --sections entropy    # one section (entropy, scaling, tokenizer, one_image, loader, cache,
                                               # vit, launch, cuda)
    python3 run.py bench --out benchmarks/RESULTS-cpu.md

Prints markdown tables and writes them (and the raw figures as JSON) where
``--out`` says. Ratios compare implementations timed in the same process on
the same inputs; absolute times only describe the machine they came from.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import baselines  # noqa: E402

from apt_research import PatchTokenizer, compute_patch_entropy_batched  # noqa: E402
from apt_research.datasets import iter_images, skimage_dataset  # noqa: E402
from apt_research.speed import timed  # noqa: E402

ONE_HOT_LIMIT = 4 * 2**30
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def real_batch(size: int, batch: int, device="cpu") -> torch.Tensor:
    """``batch`` bundled scikit-image images resized to ``size x size`` (cycled), pixels in [0, 255]."""
    images = [pixels for pixels, _ in iter_images(skimage_dataset(), "center_crop", size, progress=False)]
    stacked = torch.stack([images[i % len(images)] for i in range(batch)])
    return stacked.to(device)


def max_diff(ours: dict, theirs: dict) -> float:
    return max(float((ours[k].cpu()[: theirs[k].shape[0]] - theirs[k].cpu()).abs().max()) for k in theirs)


def peak_extra_bytes(size: int, batch: int, scales: int, bins: int) -> int | None:
    """Peak resident memory our entropy call adds on top of its input, measured in a fresh process (Linux)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    code = (
        "import sys, torch, numpy as np; sys.path.insert(0, %r); import run;"
        "from apt_research import compute_patch_entropy_batched as f;"
        "x = run.real_batch(%d, %d); f(x[:1], 16, %d, %d);"
        "import gc; gc.collect();"
        "rss = lambda key: int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1]) * 1024;"
        "open('/proc/self/clear_refs', 'w').write('5'); before = rss('VmRSS');"
        "f(x, 16, %d, %d); print(rss('VmHWM') - before)"
    ) % (str(HERE), size, batch, scales, bins, scales, bins)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


ENTROPY_ROWS = [
    (224, 64, 3, 512), (224, 8, 3, 512), (224, 64, 2, 512), (224, 64, 4, 512), (224, 64, 3, 256), (224, 64, 3, 1024),
    (336, 32, 3, 512), (448, 16, 3, 512), (1024, 8, 3, 256), (1024, 8, 3, 512), (1024, 8, 3, 1024),
]


def entropy_section(results: dict, rows=ENTROPY_ROWS) -> str:
    lines = [
        "| resolution | batch | scales | bins | ours ms/img | ours img/s | (a) histc loop ms/img | vs (a) "
        "| (b) one-hot ms/img | vs (b) | peak extra memory | agree with (a) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for size, batch, scales, bins in rows:
        images = real_batch(size, batch)
        ours_s, ours = timed(compute_patch_entropy_batched, images, 16, scales, bins)
        subset = images[: max(1, min(batch, 4 if size < 1024 else 2))]
        ref_s, ref = timed(baselines.histc_loop_maps, subset, 16, scales, bins, repeats=1)
        ours_ms, ref_ms = 1000 * ours_s / batch, 1000 * ref_s / subset.shape[0]
        need = baselines.one_hot_bytes(images, 16, scales, bins)
        if need <= ONE_HOT_LIMIT:
            hot_s, hot = timed(baselines.one_hot_maps, images, 16, scales, bins, repeats=1)
            hot_ms = 1000 * hot_s / batch
            hot_cells = (f"{hot_ms:.2f}", f"{hot_ms / ours_ms:.0f}x")
            assert max_diff(ours, hot) <= 1e-5
        else:
            hot_ms, hot_cells = None, (f"skipped (needs {need / 2**30:.1f} GB > 4 GB)", "-")
        peak = peak_extra_bytes(size, batch, scales, bins)
        input_bytes = images.numel() * images.element_size()
        peak_cell = "n/a" if peak is None else f"{peak / 2**10:,.0f} KiB ({peak / input_bytes:.3f}x input)"
        diff = max_diff(ours, ref)
        lines.append(
            f"| {size} | {batch} | {scales} | {bins} | {ours_ms:.3f} | {1000 / ours_ms:.0f} | {ref_ms:.2f} "
            f"| {ref_ms / ours_ms:.1f}x | {hot_cells[0]} | {hot_cells[1]} | {peak_cell} "
            f"| {'yes' if diff <= 1e-5 else 'NO'} (max {diff:.1e} bits) |"
        )
        records.append(dict(size=size, batch=batch, scales=scales, bins=bins, ours_ms=ours_ms, histc_ms=ref_ms,
                            one_hot_ms=hot_ms, peak_extra_bytes=peak, input_bytes=input_bytes, max_diff=diff))
        print(lines[-1], flush=True)
        del images
        gc.collect()
    results["entropy"] = records
    return "\n".join(lines)


TOKENIZER_ROWS = [(14, 224, (6.0, 5.0)), (16, 256, (5.75, 4.0))]


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 255] normalised as a ViT takes them (ImageNet mean and std)."""
    return (pixels / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def copy_floor(groups: dict, images: torch.Tensor):
    """A call that copies as many bytes as the grouping writes (its patch tensors) into fresh tensors.

    The memory floor of grouping: one contiguous copy of the kept pixels, no gathering, no resizing.
    """
    counts = [value.numel() for key, value in groups.items() if "patches" in key]
    source = images.reshape(-1).numpy()
    return lambda: [source[:count].copy() for count in counts]


def same_result(ours: dict, theirs: dict) -> bool:
    """Same packed sequences (lengths, labels) and the same patches (within float32 resizing) as the reference."""
    if ours["cu_seqlens"].tolist() != theirs["cu_seqlens"].tolist():
        return False
    if not torch.equal(ours["output_mask"], theirs["output_mask"].long()):
        return False
    return all(torch.allclose(ours[key], value, atol=1e-5, rtol=0) for key, value in theirs.items()
               if key.startswith(("resized_patches", "full_patches")))


def tokenizer_section(results: dict, rows=TOKENIZER_ROWS, batch=64, repeats=10, threads=(None, 1)) -> str:
    """Whole forward against the reference pipeline: its loader's per-image maps, then its forward.

    The reference's loader computes each image's maps from the pixels it decoded; here those pixels
    are ``tokenizer.to_pixels(images)`` (made before timing), so both sides score the same values.
    Each row is timed with the process's torch threads (``None``) and with each count in ``threads``
    (both sides alike; one thread is how data-loader workers run, and is the least disturbed by
    other load on a shared machine).
    """
    lines = [
        f"| base patch, resolution, thresholds (batch {batch}, 3 scales, 512 bins) | threads "
        "| ours: whole forward ms/img "
        "| ours: maps | ours: selection + packing | ours: grouping | grouping floor (copy of the kept pixels) "
        "| grouping / floor | reference: loader maps ms/img | reference: forward ms/img | reference total ms/img "
        "| **ratio** | same result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    records = []
    default = torch.get_num_threads()
    for (base, size, thresholds), count in ((row, count or default) for row in rows for count in threads):
        with torch_threads(count):
            record = _tokenizer_row(base, size, thresholds, batch, repeats)
        record["threads"] = count
        records.append(record)
        lines.append(
            f"| {base}, {size}, {list(thresholds)} | {count} | {record['ours_ms']:.3f} | {record['maps_ms']:.3f} "
            f"| {record['masks_ms']:.3f} | {record['groups_ms']:.3f} | {record['floor_ms']:.3f} "
            f"| {record['groups_over_floor']:.2f} | {record['reference_maps_ms']:.2f} "
            f"| {record['reference_forward_ms']:.2f} | {record['reference_ms']:.2f} | **{record['ratio']:.1f}x** "
            f"| {'yes' if record['same'] else 'NO'} |"
        )
        print(lines[-1], flush=True)
    results["tokenizer"] = records
    return "\n".join(lines)


def _tokenizer_row(base, size, thresholds, batch, repeats) -> dict:
    """One row of ``tokenizer_section``: ours and the reference pipeline on the same ``batch`` images."""
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


def jpeg_bytes(size: int = 512) -> bytes:
    """A bundled image resized to ``size x size`` and encoded as JPEG (quality 90)."""
    import io

    from PIL import Image

    pixels = real_batch(size, 1)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decode_and_resize(data: bytes, size: int) -> torch.Tensor:
    """JPEG bytes to a ``(3, size, size)`` uint8 tensor: PIL decode, bilinear resize."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        resized = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(resized)).permute(2, 0, 1)


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch threads, then restore the process's count."""
    default = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(default)


def alternately(calls: dict, repeats: int) -> dict:
    """Best wall time of each call over ``repeats`` rounds that run every call once, in turn, after one warm-up
    round: the calls share the machine's state (caches, load) instead of each repeating itself back to back."""
    import time

    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def one_image_section(results: dict, rows=TOKENIZER_ROWS, batch=64, repeats=12) -> str:
    """One image per call, as a data-loader transform calls it, against the per-image cost in a batch.

    The one-image calls go over the same ``batch`` images as the batch call, each alone: images differ
    in cost (flat ones are cheaper), so one chosen image would measure its content, not the per-call cost.
    The batch call and the loop of one-image calls are timed alternately, ``repeats`` rounds
    (``alternately``), so that both start from the same machine state; timed each back to back, the
    batch ran with its own scratch and outputs still in cache from the call before. Within the loop each
    call follows the previous image's, as a worker's calls follow each other. Both sides run with this
    process's torch threads, then both with one thread, as data-loader workers run (the ``loader``
    section); the decode comparison below is also given with one thread.
    """
    lines = [
        f"| base patch, resolution | threads | maps: batch {batch} ms/img | maps: each image alone, ms/img "
        f"| one / batch (target <= 1.5) | forward: batch {batch} ms/img | forward: each image alone, ms/img "
        "| one / batch (target <= 2) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    records = []
    default = torch.get_num_threads()
    for base, size, thresholds in rows:
        images = normalised(real_batch(size, batch))
        tokenizer = PatchTokenizer(3, base, size, list(thresholds), MEAN, STD)
        singles = [images[i : i + 1].clone() for i in range(batch)]
        for count in (default, 1):
            lines.append(_one_image_row(tokenizer, images, singles, base, size, count, repeats, records))
            print(lines[-1], flush=True)
    lines += _decode_comparison(results, records, default, repeats)
    return "\n".join(lines)


def _one_image_row(tokenizer, images, singles, base, size, count, repeats, records) -> str:
    """One row of ``one_image_section``: ``singles`` one at a time against ``images`` in one call, with ``count``
    threads; its figures appended to ``records``."""
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
    records.append(record)
    return (f"| {base}, {size} | {count} | {record['maps_batch_ms']:.3f} | {record['maps_one_ms']:.3f} "
            f"| **{record['maps_ratio']:.2f}** | {record['forward_batch_ms']:.3f} "
            f"| {record['forward_one_ms']:.3f} | **{record['forward_ratio']:.2f}** |")


def _decode_comparison(results: dict, records: list, default: int, repeats: int) -> list[str]:
    """One 224 image's maps against a PIL decode + resize of a 512x512 JPEG (``one_image_section``'s second
    table); stores the section's figures in ``results``."""
    data = jpeg_bytes(512)
    decode_s, decoded = timed(decode_and_resize, data, 224, repeats=10 * repeats)
    tokenizer = PatchTokenizer(3, 14, 224, [6.0, 5.0], MEAN, STD)
    image = normalised(decoded[None].float())
    maps_s = {}
    for count in (default, 1):
        with torch_threads(count):
            maps_s[count] = (timed(tokenizer.compute_importance_maps, image, repeats=10 * repeats)[0],
                             timed(compute_patch_entropy_batched, decoded[None], 14, 3, 512, repeats=10 * repeats)[0])
    results["one_image"] = dict(rows=records, decode_resize_ms=1000 * decode_s, jpeg_bytes=len(data),
                                maps_normalised_ms=1000 * maps_s[default][0], maps_uint8_ms=1000 * maps_s[default][1],
                                maps_normalised_one_thread_ms=1000 * maps_s[1][0],
                                maps_uint8_one_thread_ms=1000 * maps_s[1][1])
    lines = [
        "",
        "| one 224x224 image, base patch 14, 3 scales | ms | / PIL decode + resize (target <= 0.1) |",
        "|---|---|---|",
        f"| PIL: decode a 512x512 JPEG ({len(data) // 1024} KiB) + bilinear resize to 224 (one thread) "
        f"| {1000 * decode_s:.3f} | 1 |",
    ]
    for count in (default, 1):
        for label, seconds in (("`tokenizer.compute_importance_maps` (normalised float32)", maps_s[count][0]),
                               ("`compute_patch_entropy_batched` (the decoded uint8 pixels)", maps_s[count][1])):
            lines.append(f"| maps, {label}, {count} thread{'s' if count > 1 else ''} | {1000 * seconds:.3f} "
                         f"| **{seconds / decode_s:.3f}** |")
    return lines


class JpegFiles(torch.utils.data.Dataset):
    """JPEG files decoded and resized to ``size x size`` uint8 pixels; with ``maps``, also their entropy maps."""

    def __init__(self, paths: list, size: int, base: int, maps: bool):
        self.paths, self.size, self.base, self.maps = paths, size, base, maps

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        pixels = decode_and_resize(Path(self.paths[index]).read_bytes(), self.size)
        if not self.maps:
            return pixels
        maps = compute_patch_entropy_batched(pixels[None], self.base, 3, 512)
        return pixels, {size: value[0] for size, value in maps.items()}


def loader_section(results: dict, count=512, size=224, base=14, batch_size=32, workers=2, epochs=3) -> str:
    """A ``DataLoader`` (``workers`` processes) over JPEG files in a temporary folder: images/s without and
    with the entropy maps computed per image in the workers. Best of ``epochs`` after one warm-up epoch."""
    import tempfile
    import time

    from PIL import Image

    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        images = [pixels for pixels, _ in iter_images(skimage_dataset(), "center_crop", 512, progress=False)]
        paths = []
        for index in range(count):
            path = Path(folder) / f"{index:05d}.jpg"
            array = images[index % len(images)].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(array).save(path, format="JPEG", quality=90)
            paths.append(str(path))
        for maps in (False, True):
            loader = torch.utils.data.DataLoader(JpegFiles(paths, size, base, maps), batch_size=batch_size,
                                                 num_workers=workers, persistent_workers=True)
            best = float("inf")
            for epoch in range(epochs + 1):
                start = time.perf_counter()
                for _ in loader:
                    pass
                if epoch:
                    best = min(best, time.perf_counter() - start)
            rates[maps] = count / best
            del loader
    results["loader"] = dict(count=count, size=size, base=base, batch_size=batch_size, workers=workers,
                             plain_img_s=rates[False], maps_img_s=rates[True], ratio=rates[True] / rates[False])
    return "\n".join([
        f"| `DataLoader`, {workers} workers, {count} JPEG files (512x512), resized to {size}, batch {batch_size} "
        "| images/s |",
        "|---|---|",
        f"| decode + resize | {rates[False]:,.0f} |",
        f"| decode + resize + entropy maps (base {base}, 3 scales, 512 bins) per image in the workers "
        f"| {rates[True]:,.0f} ({rates[True] / rates[False]:.2f} of the plain loader) |",
    ])


def scaling_section(results: dict) -> str:
    rows = {(r["size"], r["bins"]): r["ours_ms"] for r in results.get("entropy", []) if r["scales"] == 3}
    if not all(k in rows for k in [(224, 256), (224, 1024), (1024, 512), (224, 512)]):
        return "(needs the entropy section)"
    per_pixel_224 = rows[(224, 512)] / 224**2
    per_pixel_1024 = rows[(1024, 512)] / 1024**2
    checks = {
        "time(1024 bins) / time(256 bins) at 224": rows[(224, 1024)] / rows[(224, 256)],
        "time(1024 bins) / time(256 bins) at 1024": rows.get((1024, 1024), float("nan")) / rows[(1024, 256)],
        "time per pixel at 1024 / at 224": per_pixel_1024 / per_pixel_224,
    }
    results["scaling"] = checks
    lines = ["| check (target <= 1.5) | measured |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in checks.items()]
    peaks = [r["peak_extra_bytes"] / r["input_bytes"] for r in results["entropy"] if r["peak_extra_bytes"]]
    if peaks:
        lines.append(f"| largest peak extra memory / input size (target <= 4) | {max(peaks):.2f} |")
    return "\n".join(lines)


def cache_section(results: dict) -> str:
    from apt_research.sweep.benchmark import measure_threshold_point_cost

    figures = measure_threshold_point_cost()
    results["cache"] = figures
    return "\n".join([
        "| sweep point (26 bundled images, 224, 3 scales, 512 bins) | seconds |",
        "|---|---|",
        f"| cold point as a sweep runs it (papermill kernel, load, resize, maps, records) | {figures['cold_sweep_s']:.2f} |",
        f"| cold point in a warm process (load, resize, maps, records) | {figures['cold_in_process_s']:.2f} |",
        f"| each extra threshold point (cached maps: selection, reconstruction, PSNR/SSIM) | {figures['extra_point_s']:.3f} |",
        f"| **extra point / cold sweep point** (target <= 0.05) | **{figures['ratio']:.3f}** |",
        f"| extra point / cold point in a warm process | {figures['ratio_in_process']:.3f} |",
    ])


STARTUP_SCRIPT = """
import time
start = time.perf_counter()
import torch
import apt_research as apt
imported = time.perf_counter()
tokenizer = apt.PatchTokenizer(3, 16, 224, [5.75, 4.0], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
tokenizer(torch.rand(1, 3, 224, 224) * 2 - 1)
called = time.perf_counter()
from apt_research._numba import ensure_kernels
print(imported - start, called - imported, called - start, ensure_kernels())
"""


def _fresh_process(cache: Path) -> list[str]:
    """``STARTUP_SCRIPT`` in a fresh process on the kernel cache ``cache``: its four printed fields."""
    env = {**os.environ, "APT_RESEARCH_KERNEL_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT], env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


def startup_section(results: dict, warm_repeats=5) -> str:
    """A fresh process's ``import apt_research`` and first tokenizer call: on an empty kernel cache (the one
    build of every kernel, ``_numba``), then with the build on disk (the median of ``warm_repeats``)."""
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "kernels"
        cold = _fresh_process(cache)
        warm = [_fresh_process(cache) for _ in range(warm_repeats)]
    if cold[3] != "built" or any(run[3] != "load" for run in warm):
        raise RuntimeError(f"unexpected kernel cache modes: cold {cold[3]}, warm {[run[3] for run in warm]}")
    median = sorted(warm, key=lambda run: float(run[2]))[warm_repeats // 2]
    figures = {"cold_import_s": float(cold[0]), "cold_first_call_s": float(cold[1]), "cold_total_s": float(cold[2]),
               "warm_import_s": float(median[0]), "warm_first_call_s": float(median[1]),
               "warm_total_s": float(median[2]), "warm_totals_s": [float(run[2]) for run in warm]}
    results["startup"] = figures
    return "\n".join([
        "| fresh process, one 224 image, 3 scales | import torch + apt_research (s) | first tokenizer call (s) | total (s) |",
        "|---|---|---|---|",
        f"| empty kernel cache (compiles every kernel once) | {figures['cold_import_s']:.2f} | "
        f"{figures['cold_first_call_s']:.1f} | {figures['cold_total_s']:.1f} |",
        f"| kernel cache on disk (median of {warm_repeats}) | {figures['warm_import_s']:.2f} | "
        f"{figures['warm_first_call_s']:.2f} | **{figures['warm_total_s']:.2f}** |",
    ])


def vit_section(results: dict, models=("vit_s", "vit_b"), sizes=(224,), batch=8, device="cpu", dtype=torch.float32,
                repeats=2, targets: dict | None = None) -> str:
    """Uniform vs packed ViT forward. ``targets`` ({size: retention}) calibrates a shared threshold to that
    retention instead of using the paper's thresholds [5.75, 4.0]."""
    from apt_research.costmodel import predicted_speedup
    from apt_research.vit import ViTEncoder, attention_kernel

    lines = [
        "| model | resolution | batch | retention | measured speedup (packed APT vs uniform) | cost model | img/s uniform | img/s APT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for size in sizes:
        pixels = real_batch(size, batch, device)
        images = (pixels / 255 - torch.tensor(MEAN, device=device).view(1, 3, 1, 1)) / torch.tensor(STD, device=device).view(1, 3, 1, 1)
        thresholds = [5.75, 4.0]
        if targets and size in targets:
            from apt_research.calibration import calibrate_thresholds

            probe = PatchTokenizer(3, 16, size, thresholds, MEAN, STD).to(device)
            thresholds = calibrate_thresholds(
                {k: v.cpu() for k, v in probe.compute_importance_maps(images).items()}, targets[size]).thresholds
        tokenizer = PatchTokenizer(3, 16, size, thresholds, MEAN, STD).to(device)
        out = tokenizer(images)
        seqlens = out["seqlens"]
        uniform_tokens = 1 + (size // 16) ** 2
        retention = (sum(seqlens) - batch) / (batch * (uniform_tokens - 1))
        for model in models:
            encoder = ViTEncoder(model).to(device=device, dtype=dtype).eval()
            dim_in = 3 * 16 * 16
            uniform = torch.randn(batch, uniform_tokens, dim_in, device=device, dtype=dtype)
            packed = torch.randn(sum(seqlens), dim_in, device=device, dtype=dtype)
            cu, max_len = out["cu_seqlens"].to(device), out["max_seqlen"]
            with torch.inference_mode():
                uni_s, _ = timed(encoder, uniform, repeats=repeats, device=device)
                apt_s, _ = timed(encoder, packed, cu, max_len, repeats=repeats, device=device)
            predicted = predicted_speedup(seqlens, uniform_tokens, model)
            records.append(dict(model=model, size=size, batch=batch, retention=retention, measured=uni_s / apt_s,
                                thresholds=[round(t, 4) for t in thresholds],
                                attention=attention_kernel(device, dtype), device=str(device),
                                predicted=predicted, uniform_img_s=batch / uni_s, apt_img_s=batch / apt_s))
            lines.append(f"| {model} | {size} | {batch} | {retention:.3f} | {uni_s / apt_s:.2f}x | {predicted:.2f}x "
                         f"| {batch / uni_s:.1f} | {batch / apt_s:.1f} |")
            print(lines[-1], flush=True)
            del encoder
    results.setdefault("vit", []).extend(records)
    lines.append(f"\nPacked attention: {attention_kernel(device, dtype)}; uniform: scaled_dot_product_attention.")
    return "\n".join(lines)


def cuda_section(results: dict) -> str:
    """GPU figures: entropy throughput, ratio against (b), tokenizer time as a fraction of a ViT-B/16 forward."""
    from apt_research.vit import ViTEncoder

    device = "cuda"
    lines = ["| resolution | batch | ours img/s (GPU) | (b) one-hot img/s (GPU) | vs (b) | agree with CPU |",
             "|---|---|---|---|---|---|"]
    records = []
    for size, batch in [(224, 256), (336, 128), (1024, 16)]:
        cpu_images = real_batch(size, batch)
        images = cpu_images.to(device)
        ours_s, ours = timed(compute_patch_entropy_batched, images, 16, 3, 512, repeats=10, device=device)
        fit = max(1, min(batch, int(ONE_HOT_LIMIT // baselines.one_hot_bytes(images[:1], 16, 3, 512))))
        hot_s, hot = timed(baselines.one_hot_maps, images[:fit], 16, 3, 512, repeats=3, device=device)
        check = compute_patch_entropy_batched(cpu_images[:4], 16, 3, 512)
        diff = max(float((ours[k][:4].cpu() - check[k]).abs().max()) for k in check)
        ours_rate, hot_rate = batch / ours_s, fit / hot_s
        records.append(dict(size=size, batch=batch, ours_img_s=ours_rate, one_hot_img_s=hot_rate,
                            one_hot_batch=fit, max_diff_vs_cpu=diff))
        lines.append(f"| {size} | {batch} | {ours_rate:,.0f} | {hot_rate:,.0f} (batch {fit}) | {ours_rate / hot_rate:.0f}x "
                     f"| {'yes' if diff <= 1e-5 else 'NO'} ({diff:.1e}) |")
        print(lines[-1], flush=True)
    pixels = real_batch(224, 256, device)
    images = (pixels / 255 - torch.tensor(MEAN, device=device).view(1, 3, 1, 1)) / torch.tensor(STD, device=device).view(1, 3, 1, 1)
    tokenizer = PatchTokenizer(3, 16, 224, [5.75, 4.0], MEAN, STD).to(device)
    tok_times, _ = timed(tokenizer, images, repeats=30, device=device, all_times=True)
    encoder = ViTEncoder("vit_b").to(device=device, dtype=torch.bfloat16).eval()
    tokens = torch.randn(256, 197, 768, device=device, dtype=torch.bfloat16)
    with torch.inference_mode():
        vit_times, _ = timed(encoder, tokens, repeats=30, device=device, all_times=True)
    # Best of 30 (as in runs 1-6) and the median, which a host-bound call spreads more.
    tok_s, vit_s = min(tok_times), min(vit_times)
    tok_median, vit_median = statistics.median(tok_times), statistics.median(vit_times)
    fraction = tok_s / vit_s
    results["cuda"] = dict(device=torch.cuda.get_device_name(), entropy=records, tokenizer_ms=1000 * tok_s,
                           vit_b16_forward_ms=1000 * vit_s, fraction=fraction,
                           tokenizer_median_ms=1000 * tok_median, vit_b16_median_ms=1000 * vit_median,
                           fraction_of_medians=tok_median / vit_median)
    lines += ["", "| batch 256, 224x224 | best of 30, ms | median, ms |", "|---|---|---|",
              f"| `PatchTokenizer.forward` (maps, masks, groups, packing) | {1000 * tok_s:.2f} | {1000 * tok_median:.2f} |",
              f"| ViT-B/16 forward, bf16, SDPA, random weights | {1000 * vit_s:.2f} | {1000 * vit_median:.2f} |",
              f"| **tokenizer / ViT-B/16 forward** (target <= 0.05) | **{fraction:.3f}** | {tok_median / vit_median:.3f} |"]
    return "\n".join(lines)


def launch_section(results: dict, batch=256, repeats=50) -> str:
    """Host side of the CUDA forward, measured on the CPU: its Triton kernels stubbed out, its launches counted.

    The GPU's share is the kernels' run time; what the host spends between them is measured here, on any
    machine with triton installed. The stubbed selection kernel reports the counts the CPU path finds for
    the same images, so every allocation has its real size.
    """
    try:
        from apt_research import _entropy_cuda as kernels
    except ImportError:
        return "triton is not installed: section skipped."
    pixels = real_batch(224, batch)
    images = (pixels / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    tokenizer = PatchTokenizer(3, 16, 224, [5.75, 4.0], MEAN, STD)
    real_counts = torch.stack([m.flatten(1).sum(1) for m in tokenizer(images)["masks"].values()], 1).int()
    launches = []

    class Stub:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(self.name)

    select = kernels.select_triton

    def stub_select(*args, **kwargs):
        masks, keep, slots, counts = select(*args, **kwargs)
        counts.zero_()
        counts[:, : real_counts.shape[1]] = real_counts
        return masks, keep, slots, counts

    saved = {name: getattr(kernels, name) for name in ("_entropy_kernel", "_select_kernel", "_group_kernel")}
    try:
        for name in saved:
            setattr(kernels, name, Stub(name))
        kernels.select_triton = stub_select
        call = lambda: tokenizer._forward_triton(images, None)  # noqa: E731
        times, out = timed(call, repeats=repeats, all_times=True)
    finally:
        for name, kernel in saved.items():
            setattr(kernels, name, kernel)
        kernels.select_triton = select
    per_call = len(launches) // (repeats + 1)
    best, median = min(times), statistics.median(times)
    results["launch"] = dict(launches_per_forward=per_call, host_ms_best=1000 * best, host_ms_median=1000 * median,
                             tokens=int(sum(out["seqlens"])))
    return "\n".join([
        f"| CUDA `PatchTokenizer.forward`, batch {batch} at 224, kernels stubbed (host side only, this CPU) | value |",
        "|---|---|",
        f"| Triton launches per forward | {per_call} |",
        f"| host time per forward, best / median of {repeats} | {1000 * best:.3f} / {1000 * median:.3f} ms |",
        "| host syncs per forward | 1 (the counts) |",
    ])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if hasattr(os, "getloadavg"):
        text += f", load average {os.getloadavg()[0]:.1f} at the start (a shared machine's timings spread with it)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def plot_speed(records: list[dict], path: Path, title: str) -> None:
    """Measured speedups (points) against retention, beside the cost model's curves, as PDF and PNG."""
    import matplotlib.pyplot as plt

    from apt_research import figures

    figures.paper_style()
    figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN * 1.3, 2.6))
    base = 196.0
    figures.plot_speedup_curves(ax, base, 16, sorted({r["model"] for r in records}))
    markers = dict(zip(sorted({r["size"] for r in records}), "os^D"))
    for record in records:
        ax.scatter(record["retention"], record["measured"], marker=markers[record["size"]], s=18, zorder=3,
                   color=f"C{sorted({r['model'] for r in records}).index(record['model'])}")
    for size, marker in markers.items():
        ax.scatter([], [], marker=marker, color="0.4", label=f"measured, {size} px")
    for index, model in enumerate(sorted({r["model"] for r in records})):
        ax.scatter([], [], marker="s", color=f"C{index}", label=f"{model} measured")
    ax.set(xlabel="retention (APT tokens / uniform tokens)", ylabel="throughput ratio APT / uniform",
           title=f"{title}; lines: cost model at 224 px")
    ax.legend(fontsize=6, ncol=2)
    figures.save_figure(figure, path)
    plt.close(figure)


SECTIONS = ("entropy", "scaling", "tokenizer", "one_image", "loader", "cache", "vit", "launch", "cuda", "startup")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--out", type=Path, help="write the tables (markdown) here, and the figures as JSON beside")
    parser.add_argument("--gpu-vit", action="store_true", help="ViT-B/L/H at 224/336/448, bf16, batch 64 on CUDA")
    parser.add_argument("--plot-from", type=Path, help="draw the speed figure of a results JSON and stop")
    parser.add_argument("--paper-retention", action="store_true",
                        help="ViT-B/L/H on CUDA at the paper's retention: 0.75 at 224, 0.44 at 384 (calibrated)")
    args = parser.parse_args(argv)
    if args.plot_from:
        data = json.loads(args.plot_from.read_text())
        target = args.plot_from.with_name(args.plot_from.stem + "-speedup_vs_retention")
        plot_speed(data["vit"], target, data["machine"].split(", GPU ")[-1][:40])
        print(f"wrote {target}.pdf/.png")
        return 0
    results: dict = {"machine": machine()}
    parts = [f"Machine: {results['machine']}", ""]
    titles = {"entropy": "Entropy maps", "scaling": "Scaling", "tokenizer": "Whole tokenizer",
              "one_image": "One image at a time", "loader": "Data loader", "cache": "Threshold points with cached maps",
              "vit": "ViT speed, uniform vs APT-packed (CPU)", "launch": "Host side of the CUDA forward",
              "cuda": "CUDA", "startup": "Start-up: import and first call, cold and warm kernel cache"}
    for section in args.sections:
        if section == "cuda" and not torch.cuda.is_available():
            parts += [f"## {titles[section]}", "", "No CUDA device on this machine: section skipped.", ""]
            continue
        print(f"== {section}", flush=True)
        table = globals()[f"{section}_section"](results)
        parts += [f"## {titles[section]}", "", table, ""]
        print(table, flush=True)
    if args.gpu_vit and torch.cuda.is_available():
        table = vit_section(results, models=("vit_b", "vit_l", "vit_h"), sizes=(224, 336, 448), batch=64,
                            device="cuda", dtype=torch.bfloat16, repeats=5)
        parts += ["## ViT speed on CUDA (bf16, batch 64)", "", table, ""]
    if args.paper_retention and torch.cuda.is_available():
        table = vit_section(results, models=("vit_b", "vit_l", "vit_h"), sizes=(224, 384), batch=64, device="cuda",
                            dtype=torch.bfloat16, repeats=5, targets={224: 0.75, 384: 0.44})
        parts += ["## ViT speed on CUDA at the paper's retention (bf16, batch 64; paper: ViT-L +40%, ViT-H +50%)",
                  "", table, ""]
    text = "\n".join(parts)
    if args.out and results.get("vit"):
        plot_speed(results["vit"], args.out.with_name(args.out.stem + "-speedup_vs_retention"), results["machine"][:40])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
