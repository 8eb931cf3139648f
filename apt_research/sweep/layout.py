"""Where a sweep writes, and how a run's state is read back.

Layout of a sweep directory::

    results/<sweep>/spec.yaml                 the expanded spec (what ran)
    results/<sweep>/runs/<run_id>/run.ipynb   the executed notebook (the record of the run)
                                  records.parquet  one row per image per threshold setting
                                  skipped.json     images that could not be read (if any)
                                  params.json      the configuration
                                  provenance.json  packages, git commit, device, times
                                  status.json      state, timing, and the traceback on failure
    results/<sweep>/cache/<key>.npz           importance maps shared by runs (no pickle)

Every file is written to a temporary name and renamed, so a run killed half
way never leaves a ``status.json`` that says finished.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .._io import atomic_path, write_atomic


def write_json(path: Path, value) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically (NaN refused)."""
    write_atomic(path, json.dumps(value, indent=2, default=str, allow_nan=False) + "\n")


def run_directory(sweep_dir: Path, run_id: str) -> Path:
    """The directory of run ``run_id`` inside ``sweep_dir``."""
    return Path(sweep_dir) / "runs" / run_id


def write_records(output_dir: Path, table: pd.DataFrame, skipped: list[dict]) -> None:
    """Write a run's ``records.parquet`` (and ``skipped.json`` when images were skipped) atomically."""
    with atomic_path(Path(output_dir) / "records.parquet") as temporary:
        table.to_parquet(temporary, index=False)
    if skipped:
        write_json(Path(output_dir) / "skipped.json", skipped)


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run whose status says finished and whose records exist."""
    status = run_dir / "status.json"
    if not status.exists() or not (run_dir / "records.parquet").exists():
        return False
    try:
        return json.loads(status.read_text()).get("state") == "finished"
    except json.JSONDecodeError:
        return False
