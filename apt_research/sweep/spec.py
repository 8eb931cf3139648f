"""Sweep specs: a name, fixed parameters, and axes combined as a grid (cartesian) or zipped (paired).

    name: thresholds
    fixed: {dataset: skimage, image_size: 224, num_scales: 3}
    grid: {bins: [256, 512]}
    zip: {num_scales: [2, 3], thresholds: [[[5.5]], [[5.75, 4.0]]]}

Everything is validated before anything runs; each error names the file, the
key and the problem.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..calibration import STRATEGIES
from ..datasets import DATASETS, RESIZE_POLICIES
from ..vit import VIT_CONFIGS
from ..scorers import SCORERS, scorer_options

PARAMETERS: dict[str, tuple[type | tuple, object]] = {
    "dataset": (str, "skimage"),
    "dataset_options": (dict, {}),
    "resize": (str, "center_crop"),
    "image_size": (int, 224),
    "patch_size": (int, 16),
    "num_scales": (int, 3),
    "bins": (int, 512),
    "method": (str, "entropy"),
    "method_options": (dict, {}),
    "thresholds": (list, [[5.75, 4.0]]),
    "target_retention": ((float, int, list, type(None)), None),
    "calibration": (str, "shared"),
    "measure_speed": (list, []),
    "limit": ((int, type(None)), None),
    "shard_size": ((int, type(None)), None),
    "batch_size": (int, 16),
    "device": (str, "cpu"),
}
TOP_LEVEL = ("name", "description", "fixed", "grid", "zip")


class SpecError(ValueError):
    """A malformed sweep spec."""


@dataclass
class Sweep:
    name: str
    description: str
    runs: list[dict]
    path: Path | None = None


def run_id(params: dict) -> str:
    """Stable 12-hex-digit hash of a configuration's parameters."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def normalise_thresholds(value, num_scales: int, where: str) -> list[list[float]]:
    """One setting ``[t1, ...]`` or a list of settings, as a list of settings of ``num_scales - 1`` numbers."""
    if not isinstance(value, list):
        raise SpecError(f"{where}: expected a list of thresholds (e.g. [5.75, 4.0]) or a list of such lists, got {value!r}")
    settings = value if value and all(isinstance(v, list) for v in value) else [value]
    if num_scales == 1 and value == []:
        settings = [[]]
    for setting in settings:
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in setting):
            raise SpecError(f"{where}: thresholds must be numbers, got {setting!r}")
        if len(setting) != num_scales - 1:
            raise SpecError(
                f"{where}: a threshold setting needs num_scales - 1 = {num_scales - 1} numbers, got {setting!r}"
            )
    return [[float(v) for v in setting] for setting in settings]


def check_params(params: dict, where: str) -> dict:
    """Check one configuration; returns it with defaults filled and thresholds normalised."""
    full = {key: default for key, (_, default) in PARAMETERS.items()}
    for key, value in params.items():
        if key not in PARAMETERS:
            raise SpecError(f"{where}: unknown key '{key}' (known: {', '.join(PARAMETERS)})")
        expected, _ = PARAMETERS[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            names = "/".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise SpecError(f"{where}: key '{key}' expects {names}, got {value!r}")
        full[key] = value
    if full["dataset"] not in DATASETS and not Path(str(full["dataset"])).is_dir():
        raise SpecError(f"{where}: key 'dataset': unknown data set {full['dataset']!r} (known: {sorted(DATASETS)} or a folder)")
    if full["resize"] not in RESIZE_POLICIES:
        raise SpecError(f"{where}: key 'resize': expected one of {RESIZE_POLICIES}, got {full['resize']!r}")
    if full["method"] not in SCORERS:
        raise SpecError(f"{where}: key 'method': unknown scorer {full['method']!r} (known: {sorted(SCORERS)})")
    unknown = sorted(set(full["method_options"]) - (set(scorer_options(full["method"])) - {"bins"}))
    if unknown:
        raise SpecError(f"{where}: key 'method_options': unknown option(s) {unknown} for method {full['method']!r}")
    for key in ("image_size", "patch_size", "num_scales", "bins", "batch_size"):
        minimum = 2 if key == "bins" else 1
        if full[key] < minimum:
            raise SpecError(f"{where}: key '{key}' must be >= {minimum}, got {full[key]}")
    if full["target_retention"] is None:
        full["thresholds"] = normalise_thresholds(full["thresholds"], full["num_scales"], f"{where}: key 'thresholds'")
    else:
        if params.get("thresholds"):
            raise SpecError(f"{where}: keys 'thresholds' and 'target_retention' exclude each other: give one")
        if full["num_scales"] < 2:
            raise SpecError(f"{where}: key 'target_retention' needs num_scales >= 2, got {full['num_scales']}")
        targets = full["target_retention"] if isinstance(full["target_retention"], list) else [full["target_retention"]]
        for target in targets:
            if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
                raise SpecError(f"{where}: key 'target_retention' expects numbers in (0, 1], got {target!r}")
        full["target_retention"] = [float(t) for t in targets]
        full["thresholds"] = []
    if full["shard_size"] is not None:
        if full["shard_size"] < 1:
            raise SpecError(f"{where}: key 'shard_size' must be >= 1 image, got {full['shard_size']}")
        if full["target_retention"] is not None or full["measure_speed"]:
            raise SpecError(f"{where}: key 'shard_size' needs fixed thresholds and no measure_speed (calibration "
                            f"and speed measurements use all of a configuration's images at once)")
    if full["calibration"] not in STRATEGIES:
        raise SpecError(f"{where}: key 'calibration' expects one of {STRATEGIES}, got {full['calibration']!r}")
    for model in full["measure_speed"]:
        if model not in VIT_CONFIGS:
            raise SpecError(f"{where}: key 'measure_speed' expects models among {sorted(VIT_CONFIGS)}, got {model!r}")
    return full


def _axes(spec: dict, section: str, where: str) -> dict:
    axes = spec.get(section) or {}
    if not isinstance(axes, dict):
        raise SpecError(f"{where}: key '{section}' expects a mapping of parameter -> list of values, got {axes!r}")
    for key, values in axes.items():
        if key not in PARAMETERS:
            raise SpecError(f"{where}: unknown key '{section}.{key}' (known: {', '.join(PARAMETERS)})")
        if not isinstance(values, list):
            raise SpecError(f"{where}: key '{section}.{key}' expects a list of values, got {values!r}")
        if not values:
            raise SpecError(f"{where}: key '{section}.{key}' is empty: the sweep would have no runs")
    return axes


def load_spec(source, name: str | None = None) -> Sweep:
    """Read, validate and expand a sweep spec (a YAML path or a dict)."""
    if isinstance(source, dict):
        spec, where, path = source, name or "<spec>", None
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise SpecError(f"{where}: no such sweep spec file")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise SpecError(f"{where}: not valid YAML: {error}") from error
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: a sweep spec is a mapping with keys {TOP_LEVEL}, got {type(spec).__name__}")
    for key in spec:
        if key not in TOP_LEVEL:
            raise SpecError(f"{where}: unknown key '{key}' (known: {', '.join(TOP_LEVEL)})")
    sweep_name = spec.get("name") or (path.stem if path else None)
    if not isinstance(sweep_name, str) or not sweep_name.replace("-", "_").isidentifier():
        raise SpecError(f"{where}: key 'name' must be a simple name (letters, digits, _ or -), got {sweep_name!r}")
    fixed = spec.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpecError(f"{where}: key 'fixed' expects a mapping of parameters, got {fixed!r}")
    for key in fixed:
        if key not in PARAMETERS:
            raise SpecError(f"{where}: unknown key 'fixed.{key}' (known: {', '.join(PARAMETERS)})")
    grid, zipped = _axes(spec, "grid", where), _axes(spec, "zip", where)
    both = sorted(set(grid) & set(zipped))
    if both:
        raise SpecError(f"{where}: key(s) {both} appear in both 'grid' and 'zip'")
    lengths = {key: len(values) for key, values in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise SpecError(f"{where}: key 'zip' lists must have equal lengths, got {lengths}")
    zip_points = [dict(zip(zipped, values)) for values in zip(*zipped.values())] if zipped else [{}]
    grid_points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    runs, seen = [], set()
    for grid_point in grid_points:
        for zip_point in zip_points:
            point = {**fixed, **grid_point, **zip_point}
            label = ", ".join(f"{k}={v!r}" for k, v in {**grid_point, **zip_point}.items()) or "fixed"
            params = check_params(point, f"{where} (run {label})")
            identifier = run_id(params)
            if identifier not in seen:
                seen.add(identifier)
                runs.append({"run_id": identifier, "params": params})
    return Sweep(sweep_name, str(spec.get("description", "")), runs, path)
