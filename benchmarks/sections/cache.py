"""Threshold points with cached maps: what one more threshold point of a sweep costs next to a cold point."""

from __future__ import annotations

from ..report import Column, Result, Strong, Table

NAME, TITLE = "cache", "Threshold points with cached maps"


def run() -> Result:
    from apt_research.sweep.benchmark import measure_threshold_point_cost

    figures = measure_threshold_point_cost()
    rows = [
        ("cold point as a sweep runs it (papermill kernel, load, resize, maps, records)",
         f"{figures['cold_sweep_s']:.2f}"),
        ("cold point in a warm process (load, resize, maps, records)", f"{figures['cold_in_process_s']:.2f}"),
        ("each extra threshold point (cached maps: selection, reconstruction, PSNR/SSIM)",
         f"{figures['extra_point_s']:.3f}"),
        ((Strong("extra point / cold sweep point"), " (target <= 0.05)"), Strong(f"{figures['ratio']:.3f}")),
        ("extra point / cold point in a warm process", f"{figures['ratio_in_process']:.3f}"),
    ]
    return Result(NAME, TITLE, figures, [Table([{"what": what, "seconds": value} for what, value in rows], [
        Column("sweep point (26 bundled images, 224, 3 scales, 512 bins)", "what"),
        Column("seconds", "seconds"),
    ])])
