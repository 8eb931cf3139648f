"""Measured ViT speed of a run's token counts (packed APT against uniform patches)."""

from __future__ import annotations

from ..models.speed import measure_speedup


def measured_speed(params: dict, rows: list[dict]) -> dict:
    """Measured ViT speedups (packed APT vs uniform) for the run's token counts, for each model asked for."""
    out = {}
    for model in params.get("measure_speed") or []:
        apt = [row["tokens_total"] + 1 for row in rows]
        uniform = [row["tokens_base_grid"] + 1 for row in rows]
        out[f"measured_speedup_{model}"] = measure_speedup(apt, uniform, model, params["patch_size"],
                                                           params["device"])["speedup"]
    return out
