"""A whole sweep: lock the directory, record the spec, skip finished runs, execute the rest, show progress."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from .._io import claim, remove_file, write_atomic
from .cluster import DaskExecutor
from .executor import Executor, NotebookExecutor, Target, Task
from .cache import source_fingerprint
from .layout import SOURCE_FILE, is_finished, remove_partial_files, run_directory, write_json
from .maps import list_images
from .parameters import dataset_key
from .lock import DirectoryLock
from .shards import clear_shards
from .spec import Sweep


DATA_FILE = "data.json"
"""A finished run's record of the images it read (``cache.source_fingerprint``), for ``--resume``."""


def _recorded_fingerprint(run_dir: Path) -> str | None | bool:
    """The fingerprint a finished run recorded; ``False`` where it recorded none that can be read."""
    try:
        recorded = json.loads((run_dir / DATA_FILE).read_text())
        return recorded["fingerprint"] if isinstance(recorded, dict) else False
    except (OSError, ValueError, KeyError):
        return False


def run_sweep(sweep: Sweep, out_dir, jobs: int = 1, resume: bool = False, device: str | None = None,
              progress: bool = True, executor: Executor | None = None, client=None) -> list[dict]:
    """Run every configuration of ``sweep`` into ``out_dir``; returns their statuses.

    The console shows a progress bar, one line per failed run, and each distinct warning the runs
    issued, once.

    Parameters
    ----------
    sweep : Sweep
        A validated sweep (``spec.load_spec``).
    out_dir : path
        The sweep directory (see ``layout``): new, empty, or a sweep directory apt-research made
        (``_io.claim``); anything else raises ``_io.OwnershipError``.
    jobs : int
        Runs executed at once by the default ``NotebookExecutor``.
    resume : bool
        Skip runs that already finished on the same images (their files' content: ``cache.source_fingerprint``,
        kept in each finished run's ``data.json``), and the shards of images already computed of the others.
    device : str, optional
        Overrides every run's device.
    progress : bool
        Show a progress bar.
    executor : Executor, optional
        What executes the runs; ``NotebookExecutor(jobs)`` when ``None``.
    client : distributed.Client, optional
        Run on this Dask cluster instead (``cluster.DaskExecutor``: one task per shard of images).

    Returns
    -------
    list of dict
        One status per run (``run_id``, ``state``; ``skipped: True`` for runs resumed as finished).
    """
    import yaml

    sweep_dir = claim(Path(out_dir), "sweep").resolve()
    if client is not None:
        if executor is not None:
            raise ValueError(f"run_sweep: give executor or client, not both (got executor={executor!r})")
        executor = DaskExecutor(client, progress)
    if executor is None:
        if jobs > 1 and any(run["params"]["measure_speed"] for run in sweep.runs):
            tqdm.write("measure_speed times a ViT on this machine: runs go one at a time (--jobs 1) so none competes")
            jobs = 1
        executor = NotebookExecutor(jobs)
    from ..backends.numba_backend.kernel_cache import ensure_kernels

    ensure_kernels()  # a first use compiles them here, saying so, before the runs' processes start and load them
    with DirectoryLock(sweep_dir):
        remove_partial_files(sweep_dir)
        write_atomic(sweep_dir / "spec.yaml", yaml.safe_dump(
            {"name": sweep.name, "description": sweep.description, "source": str(sweep.path),
             "runs": [{"run_id": r["run_id"], **r["params"]} for r in sweep.runs]}, sort_keys=False))
        if sweep.source_text is not None:  # the spec as the user wrote it, for the report
            write_atomic(sweep_dir / SOURCE_FILE, sweep.source_text)
        else:  # none of an earlier spec left beside this one's spec.yaml
            remove_file(sweep_dir / SOURCE_FILE)
        todo, statuses, fingerprints, by_data, built = [], [], {}, {}, {}
        for run in sweep.runs:
            run_dir = run_directory(sweep_dir, run["run_id"])
            data = (dataset_key(run["params"]), run["params"]["limit"])
            if data not in by_data:  # each data set's files read once
                by_data[data] = source_fingerprint(list_images(run["params"], built))
            fingerprint = fingerprints[run["run_id"]] = by_data[data]
            if resume and is_finished(run_dir):
                if _recorded_fingerprint(run_dir) == fingerprint:
                    statuses.append({"run_id": run["run_id"], "state": "finished", "skipped": True})
                    continue
                tqdm.write(f"run {run['run_id']}: its images changed since it finished (or it predates this "
                           "check): running it again")
            if not resume or is_finished(run_dir):  # a fresh start: no shard of an earlier one is reused
                clear_shards(run_dir)
            params = dict(run["params"], device=device) if device else run["params"]
            todo.append(Task(run["run_id"], params))
        target = Target(sweep_dir, sweep.name, sweep_dir / "cache")
        with tqdm(total=len(sweep.runs), initial=len(statuses), desc=f"sweep {sweep.name}",
                  disable=not progress) as bar:
            shown = set()
            for status in executor.execute(todo, target):
                statuses.append(status)
                if status["state"] == "finished":
                    write_json(run_directory(sweep_dir, status["run_id"]) / DATA_FILE,
                               {"fingerprint": fingerprints[status["run_id"]]})
                bar.update(1)
                if status["state"] == "failed":
                    tqdm.write(f"run {status['run_id']} failed: {status['error'].splitlines()[0][:200]}")
                for message in set(status.get("warnings", [])) - shown:
                    shown.add(message)
                    tqdm.write(f"run {status['run_id']}: {message}")
    return statuses
