"""Where a sweep writes, and how a run's state is read back.

Layout of a sweep directory::

    results/<sweep>/.apt-research.json        the marker: a sweep directory apt-research made (``_io.claim``)
    results/<sweep>/spec.yaml                 the expanded spec (what ran)
    results/<sweep>/spec.source.yaml          the spec as the user wrote it (shown by the report)
    results/<sweep>/runs/<run_id>/run.ipynb   the executed notebook (the record of the run)
                                  records.parquet  one row per image per threshold setting
                                  skipped.json     images that could not be read (if any)
                                  warnings.json    the warnings the run issued (if any)
                                  params.json      the configuration
                                  provenance.json  packages, git commit, device, times
                                  status.json      state, timing, and the traceback on failure
    results/<sweep>/cache/<key>.npz           importance maps shared by runs (no pickle)

Every file is written to a temporary name and renamed, so a run killed half
way never leaves a ``status.json`` that says finished. Every write and delete goes through ``_io``
(our folders only, no symbolic link followed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from .. import _io
from .._io import atomic_path, write_atomic


SOURCE_FILE = "spec.source.yaml"
"""The spec's text as the user wrote it (``spec.Sweep.source_text``), kept beside the expanded ``spec.yaml``."""

RECORD_COLUMNS = ("run_id", "image", "dataset", "retention")
"""Columns every run's ``records.parquet`` has (``records.threshold_records``); a file without them is not ours."""


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


def remove_partial_files(sweep_dir: Path) -> list[Path]:
    """Remove the temporary files (``_io.atomic_path``'s names) a killed sweep left in its run directories,
    cache and top level.

    Call only while holding the sweep's lock (no other process writes there then). Returns what was removed.
    """
    return _io.remove_partial_files(sweep_dir, (".", "runs/*", "runs/*/shards", "cache", "figures"))


def spec_run_ids(sweep_dir) -> list[str]:
    """The run ids of the spec the sweep directory last ran (its ``spec.yaml``), in the spec's order."""
    import yaml

    path = Path(sweep_dir) / "spec.yaml"
    try:
        runs = yaml.safe_load(path.read_text()).get("runs")
        identifiers = [str(run["run_id"]) for run in runs]
    except (OSError, ValueError, yaml.YAMLError, AttributeError, TypeError, KeyError) as error:
        raise ValueError(f"{path} cannot be read as a sweep's spec ({type(error).__name__}: {error}); "
                         "run the sweep again") from None
    bad = [identifier for identifier in identifiers if not re.fullmatch(r"[\w-]+", identifier)]
    if bad:
        raise ValueError(f"{path} names run ids {bad[:3]} that are not names of a run folder (letters, digits, "
                         "_ and -); run the sweep again")
    return identifiers


def run_state(run_dir: Path) -> tuple[str, str | None]:
    """A run's state and, unless it finished, why: ``finished``, ``failed``, ``running`` or ``incomplete``.

    A run is finished only if its ``status.json`` (a JSON object) says so and its ``records.parquet`` can be
    read, has the records' columns (``RECORD_COLUMNS``) and at least one row (its footer and schema: a
    truncated file is caught without reading the data).
    """
    import pyarrow.parquet as pq

    try:
        status = json.loads((run_dir / "status.json").read_text())
    except FileNotFoundError:
        return "incomplete", "no status.json (the run never ran or never ended: killed or still running)"
    except (OSError, ValueError) as error:
        return "incomplete", f"status.json cannot be read ({type(error).__name__}: {error})"
    if not isinstance(status, dict):
        return "incomplete", f"status.json holds a JSON {type(status).__name__}, expected an object"
    state = status.get("state")
    if state != "finished":
        return str(state), None if status.get("error") is None else str(status.get("error"))
    try:
        metadata = pq.read_metadata(run_dir / "records.parquet")
    except (OSError, ValueError) as error:
        return "incomplete", f"records.parquet cannot be read ({type(error).__name__}: {error})"
    missing = sorted(set(RECORD_COLUMNS) - set(metadata.schema.names))
    if missing:
        return "incomplete", f"records.parquet lacks the records' columns {missing} (another file's schema)"
    if metadata.num_rows == 0:
        return "incomplete", "records.parquet holds no record"
    return "finished", None


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run whose status says finished and whose records can be read."""
    return run_state(run_dir)[0] == "finished"


def _read_list(path: Path, kind: type) -> list:
    """A JSON list of ``kind`` items from ``path``; none where it is absent, and a ``ValueError`` naming the
    file where it holds anything else."""
    if not path.exists():
        return []
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(value, list) or not all(isinstance(item, kind) for item in value):
        raise ValueError(f"{path} holds {json.dumps(value)[:80]}, expected a JSON list of {kind.__name__}")
    return value


def read_warnings(run_dir: Path) -> list[str]:
    """The warnings a run issued (``warnings.json``), or none."""
    return _read_list(run_dir / "warnings.json", str)


def read_skipped(run_dir: Path) -> list[dict]:
    """The images a run could not read (``skipped.json``), or none."""
    return _read_list(run_dir / "skipped.json", dict)
