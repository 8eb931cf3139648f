"""Where a sweep writes, and how a run's state is read back.

Layout of a sweep directory::

    results/<sweep>/spec.yaml                 the expanded spec (what ran)
    results/<sweep>/runs/<run_id>/run.ipynb   the executed notebook (the record of the run)
                                  records.parquet  one row per image per threshold setting
                                  skipped.json     images that could not be read (if any)
                                  warnings.json    the warnings the run issued (if any)
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


PARTIAL_FILES = ".*.tmp-*"
"""The names ``_io.atomic_path`` writes to before renaming: left behind only by a killed process."""


def remove_partial_files(sweep_dir: Path) -> list[Path]:
    """Remove the temporary files a killed sweep left in its run directories, cache and top level.

    Call only while holding the sweep's lock (no other process writes there then). Returns what was removed.
    """
    sweep_dir = Path(sweep_dir)
    removed = []
    for pattern in (PARTIAL_FILES, f"runs/*/{PARTIAL_FILES}", f"runs/*/shards/{PARTIAL_FILES}", f"cache/{PARTIAL_FILES}",
                    f"figures/{PARTIAL_FILES}"):
        for path in sweep_dir.glob(pattern):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def run_state(run_dir: Path) -> tuple[str, str | None]:
    """A run's state and, unless it finished, why: ``finished``, ``failed``, ``running`` or ``incomplete``.

    A run is finished only if its ``status.json`` says so and its ``records.parquet`` can be read
    (its footer and schema: a truncated file is caught without reading the data).
    """
    import pyarrow.parquet as pq

    try:
        status = json.loads((run_dir / "status.json").read_text())
    except FileNotFoundError:
        return "incomplete", "no status.json (the run never ended: killed or still running)"
    except (OSError, ValueError) as error:
        return "incomplete", f"status.json cannot be read ({type(error).__name__}: {error})"
    state = status.get("state")
    if state != "finished":
        return str(state), status.get("error")
    try:
        pq.read_schema(run_dir / "records.parquet")
    except (OSError, ValueError) as error:
        return "incomplete", f"records.parquet cannot be read ({type(error).__name__}: {error})"
    return "finished", None


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run whose status says finished and whose records can be read."""
    return run_state(run_dir)[0] == "finished"


def read_warnings(run_dir: Path) -> list[str]:
    """The warnings a run issued (``warnings.json``), or none."""
    path = run_dir / "warnings.json"
    return json.loads(path.read_text()) if path.exists() else []


def read_skipped(run_dir: Path) -> list[dict]:
    """The images a run could not read (``skipped.json``), or none."""
    path = run_dir / "skipped.json"
    return json.loads(path.read_text()) if path.exists() else []
