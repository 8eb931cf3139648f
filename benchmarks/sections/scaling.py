"""Scaling checks from the entropy section's records: time against bins and against pixels, peak memory."""

from __future__ import annotations

from ..report import Column, Result, Table

NAME, TITLE = "scaling", "Scaling"
NEEDED = [(224, 256), (224, 1024), (1024, 512), (224, 512)]  # (resolution, bins) rows at 3 scales


def run(entropy: list[dict] | None = None) -> Result:
    """``entropy``: the entropy section's records (this section measures nothing itself)."""
    rows = {(r["size"], r["bins"]): r["ours_ms"] for r in entropy or [] if r["scales"] == 3}
    if not all(key in rows for key in NEEDED):
        return Result(NAME, TITLE, None, notes=["(needs the entropy section)"])
    per_pixel_224 = rows[(224, 512)] / 224**2
    per_pixel_1024 = rows[(1024, 512)] / 1024**2
    checks = {
        "time(1024 bins) / time(256 bins) at 224": rows[(224, 1024)] / rows[(224, 256)],
        "time(1024 bins) / time(256 bins) at 1024": rows.get((1024, 1024), float("nan")) / rows[(1024, 256)],
        "time per pixel at 1024 / at 224": per_pixel_1024 / per_pixel_224,
    }
    shown = [{"check": name, "measured": value} for name, value in checks.items()]
    peaks = [r["peak_extra_bytes"] / r["input_bytes"] for r in entropy if r["peak_extra_bytes"]]
    if peaks:
        shown.append({"check": "largest peak extra memory / input size (target <= 4)", "measured": max(peaks)})
    return Result(NAME, TITLE, checks, [Table(shown, [Column("check (target <= 1.5)", "check"),
                                                       Column("measured", "measured", "{:.2f}")])])
