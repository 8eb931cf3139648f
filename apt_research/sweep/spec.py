"""Sweep specs: a name, fixed parameters, and axes combined as a grid (cartesian) or zipped (paired).

    name: thresholds
    fixed: {dataset: skimage, image_size: 224, num_scales: 3}
    grid: {bins: [256, 512]}
    zip: {num_scales: [2, 3], thresholds: [[[5.5]], [[5.75, 4.0]]]}

Every run is validated (``parameters.validate_params``) before anything runs; each error names the
file, the run, the key and the problem. Relative folder paths resolve against the spec file's directory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .parameters import EXECUTION_KEYS, PARAMETERS, ParameterError, unknown_key, validate_params
from ..plain import NotPlainData, check_plain, load_yaml
from ..errors import SpecError

TOP_LEVEL = ("name", "description", "fixed", "grid", "zip")


@dataclass
class Sweep:
    """A validated, expanded sweep: its name, description, runs (``run_id`` and ``params``), source file and the
    spec's text as the user wrote it (``source_text``: the file's text, or a mapping as YAML), which the sweep
    directory keeps as ``spec.source.yaml`` beside the expanded ``spec.yaml``."""

    name: str
    description: str
    runs: list[dict]
    path: Path | None = None
    source_text: str | None = None


def run_id(params: dict) -> str:
    """Stable 12-hex-digit hash of a configuration's validated parameters, the execution ones (``EXECUTION_KEYS``:
    shards, batches, device) left out: they do not change the records, so they do not make another run."""
    identifying = {key: value for key, value in params.items() if key not in EXECUTION_KEYS}
    canonical = json.dumps(identifying, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _section(spec: dict, section: str, where: str, axis: bool) -> dict:
    values = spec.get(section) or {}
    if not isinstance(values, dict):
        raise SpecError(f"{where}: key '{section}' expects a mapping of parameters"
                        + (" to lists of values" if axis else "") + f", got {values!r}")
    for key, value in values.items():
        if key not in PARAMETERS:
            raise SpecError(f"{where}: {unknown_key(key, f'{section}.')}")
        if axis and not isinstance(value, list):
            raise SpecError(f"{where}: key '{section}.{key}' expects a list of values, got {value!r}")
        if axis and not value:
            raise SpecError(f"{where}: key '{section}.{key}' is empty: the sweep would have no runs")
    return values


def _read(source, name: str | None) -> tuple[dict, str, Path | None, str]:
    """The spec as plain data (``plain``: any other YAML tag or a duplicate key is refused with its key path), where
    it came from, its file, and its text (a mapping's as YAML)."""
    import yaml

    try:
        if isinstance(source, dict):
            spec = check_plain(source, name or "<spec>")
            return spec, name or "<spec>", None, yaml.safe_dump(spec, sort_keys=False)
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"{path}: no such sweep spec file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise SpecError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                            f"{error.start}); a spec is a YAML text file") from None
        return load_yaml(text, str(path)), str(path), path, text
    except NotPlainData as error:
        raise SpecError(str(error)) from None


def count_runs(grid: dict, zipped: dict) -> int:
    """Number of points of a grid (product of its axes) times a zip (its common length)."""
    return math.prod(len(values) for values in grid.values()) * (len(next(iter(zipped.values()))) if zipped else 1)


def load_spec(source, name: str | None = None, max_runs: int | None = None) -> Sweep:
    """Read, validate and expand a sweep spec.

    Parameters
    ----------
    source : path or dict
        A YAML file, or the spec as a mapping.
    name : str, optional
        What errors call a spec given as a mapping.
    max_runs : int, optional
        Refuse a spec that expands to more runs than this, before validating them.

    Returns
    -------
    Sweep
        Its runs, each with a ``run_id`` and every parameter validated.

    Raises
    ------
    SpecError
        One line naming the file, the run, the key and the problem.
    """
    spec, where, path, text = _read(source, name)
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: a sweep spec is a mapping with keys {TOP_LEVEL}, got {type(spec).__name__}")
    for key in spec:
        if key not in TOP_LEVEL:
            raise SpecError(f"{where}: unknown key '{key}' (known: {', '.join(TOP_LEVEL)})")
    sweep_name = spec.get("name") or (path.stem if path else None)
    if not isinstance(sweep_name, str) or not sweep_name.replace("-", "_").isidentifier():
        raise SpecError(f"{where}: key 'name' must be a simple name (letters, digits, _ or -), got {sweep_name!r}")
    fixed = _section(spec, "fixed", where, axis=False)
    grid, zipped = _section(spec, "grid", where, axis=True), _section(spec, "zip", where, axis=True)
    both = sorted(set(grid) & set(zipped))
    if both:
        raise SpecError(f"{where}: key(s) {both} appear in both 'grid' and 'zip'")
    lengths = {key: len(values) for key, values in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise SpecError(f"{where}: key 'zip' lists must have equal lengths, got {lengths}")
    total = count_runs(grid, zipped)
    if max_runs is not None and total > max_runs:
        raise SpecError(f"{where}: the spec expands to {total:,} runs, more than {max_runs:,}; pass --yes to run them")
    zip_points = [dict(zip(zipped, values)) for values in zip(*zipped.values())] if zipped else [{}]
    grid_points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    base = path.resolve().parent if path else None
    runs, seen, checked = [], set(), {}
    for grid_point in grid_points:
        for zip_point in zip_points:
            label = ", ".join(f"{k}={v!r}" for k, v in {**grid_point, **zip_point}.items()) or "fixed"
            try:
                params = validate_params({**fixed, **grid_point, **zip_point}, f"{where} (run {label})", base,
                                         checked)
            except ParameterError as error:
                raise SpecError(str(error)) from None
            identifier = run_id(params)
            if identifier not in seen:
                seen.add(identifier)
                runs.append({"run_id": identifier, "params": params})
    return Sweep(sweep_name, str(spec.get("description", "")), runs, path, text)
