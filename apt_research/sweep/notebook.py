"""A run executed as the run notebook through papermill (the executed notebook is the run's record).

Kernels talk over IPC sockets in a directory of their own (no TCP port to race for when runs start
in parallel, and no warning about unencrypted TCP), log only critical problems (a kernel shut down
by its manager is sent SIGINT and would log ``KeyboardInterrupt caught in kernel``), and the event
loop papermill's client leaves in each worker thread is closed. A run's own warnings are recorded
in the run (``warnings.json``) and reach the console once, through ``runner``.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
import traceback
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

from .._io import atomic_path, make_dirs, remove_file
from .layout import read_warnings, run_directory, write_json
from ..plain import check_plain
from ..provenance import PACKAGE_ROOT, provenance
from ..errors import KernelKilled

RUN_NOTEBOOK = PACKAGE_ROOT / "notebooks" / "run.ipynb"
KERNEL_START_TRIES = 4
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]
# The signal that ended this thread's last kernel, if one did (runs execute one per thread).
_kernel_exit = threading.local()


class IPCKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel listens on IPC sockets in a temporary directory, removed at shutdown."""

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    socket_dir: Path | None = None  # the temporary directory this manager made, the only one it removes

    @default("ip")
    def _default_ip(self) -> str:
        self.socket_dir = Path(tempfile.mkdtemp(prefix="apt-kernel-"))
        return str(self.socket_dir / "kernel")

    async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        process = getattr(self.provisioner, "process", None)
        code = process.poll() if process is not None else None
        if code is not None and code < 0:  # it died by itself before being shut down
            _kernel_exit.signal = signal.Signals(-code).name
        await super()._async_shutdown_kernel(now=now, restart=restart)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None


def _close_thread_event_loop() -> None:
    """Close the event loop jupyter_core's ``run_sync`` keeps for this thread (else: ResourceWarning at exit)."""
    from jupyter_core.utils import ensure_event_loop

    loop = ensure_event_loop()
    if not loop.is_running():
        loop.close()


def execute_notebook(notebook: Path, output: Path, parameters: dict) -> None:
    """papermill on an IPC kernel, retrying a kernel start that fails (a dead kernel at start).

    No ``cwd``: papermill would ``chdir`` the whole process, and runs execute in threads, so one run's
    change of directory would leak into another's (and into the sweep's relative paths). The run
    notebook gets absolute paths instead.
    """
    import papermill

    try:
        for attempt in range(KERNEL_START_TRIES):
            try:
                papermill.execute_notebook(str(notebook), str(output), parameters=parameters, progress_bar=False,
                                           kernel_name="python3", log_output=False,
                                           kernel_manager_class=IPCKernelManager, extra_arguments=KERNEL_ARGUMENTS)
                return
            except papermill.PapermillExecutionError:
                raise
            except Exception as error:  # kernel start failures (dead kernel, ZMQError)
                if _kernel_exit.signal is not None:
                    raise KernelKilled(
                        f"the run's kernel process was killed by {_kernel_exit.signal} (a native crash or a kill "
                        "from outside, not a Python error); run.ipynb shows the cell it reached") from error
                text = f"{type(error).__name__}: {error}"
                retryable = "Address already in use" in text or "Kernel died" in text or "ZMQError" in text
                if not retryable or attempt == KERNEL_START_TRIES - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
    finally:
        _close_thread_event_loop()


def start_run(sweep_dir: Path, run_id: str, params: dict) -> tuple[Path, dict]:
    """Prepare a run's directory (``params.json``, ``provenance.json``, no stale status or skipped list);
    returns it and a status."""
    run_dir = make_dirs(run_directory(sweep_dir, run_id))
    for stale in ("status.json", "skipped.json", "warnings.json"):
        remove_file(run_dir / stale)
    write_json(run_dir / "params.json", params)
    write_json(run_dir / "provenance.json", provenance(params["device"]))
    return run_dir, {"run_id": run_id, "state": "running", "started": time.time()}


def end_run(run_dir: Path, status: dict, error: BaseException | None = None) -> dict:
    """Write a run's final ``status.json`` (finished, or failed with the error and its traceback); returns it."""
    if error is None:
        status["state"] = "finished"
    else:
        cause = f"{error.ename}: {error.evalue}" if hasattr(error, "ename") else f"{type(error).__name__}: {error}"
        status.update(state="failed", error=cause.strip()[:2000],
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
            # Parameters reach the notebook as plain data only (``plain.check_plain``): papermill writes them as
            # Python literals, which such values cannot break out of.
            execute_notebook(RUN_NOTEBOOK, temporary, check_plain({
                **params, "output_dir": str(run_dir), "cache_dir": str(cache_dir),
                "sweep": sweep_name, "run_id": run_id,
            }, f"run {run_id}"))
            if not (run_dir / "records.parquet").exists():
                raise RuntimeError("the run notebook finished without writing records.parquet")
        except Exception as error:
            failure = error
    try:
        status["warnings"] = read_warnings(run_dir)
    except ValueError as error:
        status["warnings"] = [str(error)]
    return end_run(run_dir, status, failure)
