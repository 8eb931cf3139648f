"""A run executed as the run notebook through papermill (the executed notebook is the run's record)."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from .._io import atomic_path
from .layout import run_directory, write_json
from .provenance import PACKAGE_ROOT, provenance

RUN_NOTEBOOK = PACKAGE_ROOT / "notebooks" / "run.ipynb"
KERNEL_START_TRIES = 4


def execute_notebook(notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
    """papermill, retrying a kernel start that loses the port race of parallel launches."""
    import papermill

    for attempt in range(KERNEL_START_TRIES):
        try:
            papermill.execute_notebook(str(notebook), str(output), parameters=parameters, progress_bar=False,
                                       cwd=str(cwd), kernel_name="python3", log_output=False)
            return
        except papermill.PapermillExecutionError:
            raise
        except Exception as error:  # kernel start failures (ZMQError: Address already in use, dead kernel)
            text = f"{type(error).__name__}: {error}"
            retryable = "Address already in use" in text or "Kernel died" in text or "ZMQError" in text
            if not retryable or attempt == KERNEL_START_TRIES - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def start_run(sweep_dir: Path, run_id: str, params: dict) -> tuple[Path, dict]:
    """Prepare a run's directory (``params.json``, ``provenance.json``, no stale status or skipped list);
    returns it and a status."""
    run_dir = run_directory(sweep_dir, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("status.json", "skipped.json"):
        (run_dir / stale).unlink(missing_ok=True)
    write_json(run_dir / "params.json", params)
    write_json(run_dir / "provenance.json", provenance(params["device"]))
    return run_dir, {"run_id": run_id, "state": "running", "started": time.time()}


def end_run(run_dir: Path, status: dict, error: BaseException | None = None) -> dict:
    """Write a run's final ``status.json`` (finished, or failed with the error and its traceback); returns it."""
    if error is None:
        status["state"] = "finished"
    else:
        status.update(state="failed", error=f"{type(error).__name__}: {error}"[:2000],
                      traceback="".join(traceback.format_exception(error)))
    status.update(ended=time.time(), duration_s=time.time() - status["started"])
    write_json(run_dir / "status.json", status)
    return status


def execute_run(run_id: str, params: dict, sweep_dir: Path, sweep_name: str, cache_dir: Path) -> dict:
    """Execute the run notebook for one configuration; returns its status (never raises for a failed run)."""
    run_dir, status = start_run(sweep_dir, run_id, params)
    failure = None
    # The executed notebook is the run's record: kept, failed or interrupted half way, as run.ipynb.
    with atomic_path(run_dir / "run.ipynb", keep_partial=True) as temporary:
        try:
            execute_notebook(RUN_NOTEBOOK, temporary, {
                **params, "output_dir": str(run_dir), "cache_dir": str(cache_dir),
                "sweep": sweep_name, "run_id": run_id,
            }, run_dir)
            if not (run_dir / "records.parquet").exists():
                raise RuntimeError("the run notebook finished without writing records.parquet")
        except Exception as error:
            failure = error
    return end_run(run_dir, status, failure)
