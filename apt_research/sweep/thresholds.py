"""A run's threshold settings: as the spec gives them, or calibrated on the run's maps to a target retention."""

from __future__ import annotations

from ..calibration import calibrate_thresholds


def threshold_settings(params: dict, maps: list[dict]) -> list[tuple[list[float], dict]]:
    """``(thresholds, extra columns)`` per setting: as given, or calibrated for each target retention."""
    if not params.get("target_retention"):
        return [(thresholds, {}) for thresholds in params["thresholds"]]
    settings = []
    batched = [{size: m[None] for size, m in image_maps.items()} for image_maps in maps]
    for target in params["target_retention"]:
        result = calibrate_thresholds(batched, target, strategy=params["calibration"])
        settings.append((result.thresholds, {"target_retention": target,
                                             "calibration_retention": result.achieved_retention,
                                             "calibration_within_tolerance": result.within_tolerance,
                                             "calibration_message": result.message}))
    return settings
