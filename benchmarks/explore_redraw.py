"""Redraw time of the explore widget on a 512 x 512 image: threshold changes against map changes.

    .venv/bin/python benchmarks/explore_redraw.py                       # prints a markdown table
    .venv/bin/python benchmarks/explore_redraw.py --out benchmarks/results/explore-redraw-cpu.md

Each row times what the widget runs in the kernel when one control changes
(``slider.value = v`` runs its observers synchronously): for a threshold, the
selection from the cached maps, the reconstruction, PSNR/SSIM, token counts and
the PNG of the patch grid and reconstruction; for bins, the maps and the
heatmaps as well. The browser's own drawing is not included. The target is a
threshold change within 0.3 s (issue 15). CPU seconds (this process, all its
threads) say what a change costs when other processes share the cores, where
wall time grows with their load (reported with the table).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from apt_research._io import write_atomic
from apt_research.presentation.explore import Explorer, explore_widget
from apt_research.presentation.visualize import VisualizeConfig


def time_changes(control, values) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds of this process (all its threads) taken by each ``control.value = v``."""
    wall, cpu = [], []
    for value in values:
        start, start_cpu = time.perf_counter(), time.process_time()
        control.value = value
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="side of the square image (centre crop)")
    parser.add_argument("--changes", type=int, default=30, help="threshold changes timed")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)

    explorer = Explorer("skimage:astronaut", VisualizeConfig(image_size=args.size, resize="center_crop"))
    widget = explore_widget(explorer)
    controls, sliders = widget.children[0].children
    bins = controls.children[3]
    low, high = sliders.children[0].min, sliders.children[0].max
    values = [low + (high - low) * (0.3 + 0.4 * (i % 7) / 6) for i in range(args.changes)]
    computed = explorer.map_computations
    threshold_s = time_changes(sliders.children[0], values)
    if explorer.map_computations != computed:
        raise RuntimeError("a threshold change recomputed the maps")
    bins_s = time_changes(bins, [256, 512, 128])

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [("threshold change", *threshold_s), ("bins change (maps + heatmaps)", *bins_s)]
    table = [f"Explore widget, {args.size} x {args.size} image, {explorer.config.num_scales} scales, "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
             f"1-min load average {load:.1f} at the end", "",
             "| control | changes | median wall s | p90 wall s | max wall s | median CPU s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, times, cpu in rows:
        ordered = sorted(times)
        table.append(f"| {name} | {len(times)} | {statistics.median(times):.3f} | "
                     f"{ordered[int(0.9 * (len(ordered) - 1))]:.3f} | {max(times):.3f} | {statistics.median(cpu):.3f} |")
    text = "\n".join(table) + "\n"
    print(text)
    if args.out:
        write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
