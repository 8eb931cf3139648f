"""Sweeps on a Dask cluster: connect to a scheduler, check versions, run shards of images as Dask tasks.

``apt-research sweep SPEC --scheduler tcp://HOST:8786`` (or ``run_sweep(sweep, out, client=client)``)
hands every configuration to ``DaskExecutor``:

1. Each configuration is cut into shards of ``shard_size`` images (one shard when ``shard_size`` is
   unset); each shard is one Dask task, ``shard_task``, which loads, resizes and scores its images and
   computes their records on a worker.
2. The records come back to the client as a table, and the client writes them under the run directory
   (``shards/START-STOP.parquet``): workers never need the client's disk.
3. When every shard of a configuration is there, the client executes the run notebook, which assembles
   the shards' records into ``records.parquet`` (the executed notebook stays the record of the run).

Dask runs a task again on another worker when its worker dies; a shard already written is never
computed again by ``--resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from pathlib import Path

from .._io import make_dirs
from ..errors import ClusterError

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds ``connect`` waits for a scheduler to answer."""

CHECKED_PACKAGES = ("apt_research", "torch", "numpy", "pandas", "pyarrow", "numba", "papermill")
"""Packages whose versions must agree between the client, the scheduler and every worker."""


def connect(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT):
    """A ``distributed.Client`` on the scheduler at ``address``, after checking the cluster's versions.

    Parameters
    ----------
    address : str
        The scheduler's address, e.g. ``tcp://10.0.0.5:8786``.
    timeout : float
        Seconds to wait for the scheduler to answer.

    Returns
    -------
    distributed.Client

    Raises
    ------
    ClusterError
        When nobody answers at ``address`` within ``timeout`` seconds, when ``address`` is not an
        address, or when client, scheduler and workers run different package versions.
    """
    from distributed import Client
    from distributed.comm.addressing import parse_address, parse_host_port

    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except (ValueError, TypeError) as error:
        raise ClusterError(f"--scheduler: expected a scheduler address such as tcp://10.0.0.5:8786, "
                           f"got {address!r} ({error})") from error
    try:
        # A Client whose connection failed still closes itself at exit, slowly and with tracebacks:
        # the address is tried with a bare connection first.
        asyncio.run(_probe(address, timeout))
    except OSError as error:
        raise ClusterError(f"--scheduler: no Dask scheduler answered at {address!r} within {timeout:g} s "
                           f"(expected a running `dask scheduler`, e.g. tcp://10.0.0.5:8786)") from error
    except Exception as error:  # something answered, but not in Dask's protocol (any decoding failure)
        raise ClusterError(f"--scheduler: the server at {address!r} is not a Dask scheduler "
                           f"({type(error).__name__})") from error
    client = Client(address, timeout=f"{timeout}s", set_as_default=False)
    try:
        check_versions(client)
    except ClusterError:
        client.close()
        raise
    return client


async def _probe(address: str, timeout: float) -> None:
    from distributed.comm import connect as open_comm

    # distributed's own timeout covers the TCP connection, not the handshake after it: a server that accepts
    # the connection and never answers in Dask's protocol (an HTTP server) would hold us for good.
    comm = await asyncio.wait_for(open_comm(address, timeout=timeout), timeout)
    await comm.close()


def check_versions(client) -> None:
    """Raise ``ClusterError`` when the client, scheduler and workers run different package versions.

    Dask's own check (``Client.get_versions(check=True)``) compares Python, dask, distributed and the
    packages that move data, plus ``CHECKED_PACKAGES`` (those that compute the records).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dask warns about optional packages; only errors stop a sweep
        try:
            client.get_versions(check=True, packages=list(CHECKED_PACKAGES))
        except ValueError as error:
            raise ClusterError(f"--scheduler: the client, scheduler and workers run different versions; "
                               f"install the same environment everywhere. Dask reports:\n{error}") from error


def scheduler_lost(client, error: BaseException) -> bool:
    """Whether ``error`` (a shard's failure) means the scheduler went away, not that the shard failed: its futures
    cancelled for a lost connection, the client's connection closed under a result being gathered, or a client
    no longer running."""
    from distributed.comm.core import CommClosedError

    return (getattr(error, "reason", None) == "scheduler-connection-lost" or isinstance(error, CommClosedError)
            or client.status not in ("running", "newly-created"))


class _DropReconnectTracebacks(logging.Filter):
    """distributed's client logs a traceback each time its reconnection to a lost scheduler gives up.

    The sweep reports the loss itself, one line per run, so those records are dropped while it runs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        return not (kind is not None and issubclass(kind, (asyncio.CancelledError, OSError, TimeoutError)))


@contextlib.contextmanager
def quiet_reconnects():
    """While inside, the client's reconnection tracebacks are not printed (see ``_DropReconnectTracebacks``)."""
    logger, quiet = logging.getLogger("distributed.client"), _DropReconnectTracebacks()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def shard_task(params: dict, shard: tuple[int, int], sweep: str, run: str, cache_dir: str | None = None,
               source=None):
    """On a worker: one shard's ``(records, skipped)``, returned to the client, which writes them.

    ``source`` is the shard's images as the client listed them (``maps.shard_images``), so that no worker
    walks the data set again; listed on the worker when ``None``. The maps cache is used only where the worker sees the sweep's cache directory (a shared file
    system); otherwise the shard is computed without one. Nothing else is written on the worker.
    """
    from .configuration import configuration_records

    cache = cache_dir if cache_dir and Path(cache_dir).is_dir() else None
    return configuration_records(params, cache, sweep, run, shard=shard, source=source)


class DaskExecutor:
    """Runs a sweep's configurations on a Dask cluster, one task per shard of images.

    Each shard's records come back to this process, which keeps them under the run directory; when a
    configuration has all its shards, the run notebook is executed here to assemble them into
    ``records.parquet``. A task whose worker dies is run again by Dask on another worker.

    Parameters
    ----------
    client : distributed.Client
        Connected to the cluster (``connect``, or ``Client(cluster)`` of a ``dask_jobqueue`` cluster).
    progress : bool
        Show a progress bar of the shards.

    Raises
    ------
    ClusterError
        When the client and the workers that have joined run different package versions.
    """

    def __init__(self, client, progress: bool = True):
        check_versions(client)
        self.client = client
        self.progress = progress

    def execute(self, tasks, target):
        """Yield each run's final status as it ends (see ``executor.Executor``)."""
        from .layout import run_directory
        from .maps import list_images, shard_images
        from .notebook import execute_run
        from .shards import plan, shard_path

        def assemble(task):
            return execute_run(task.run_id, task.params, target.sweep_dir, target.sweep_name, target.cache_dir)

        make_dirs(target.cache_dir)  # workers that share this disk cache maps there
        shards_left, owners, ready, built = {}, {}, [], {}
        for task in tasks:
            run_dir = run_directory(target.sweep_dir, task.run_id)
            source = list_images(task.params, built)  # each data set listed once; tasks get their shards' items
            missing = [shard for shard in plan(task.params, len(source)) if not shard_path(run_dir, shard).exists()]
            shards_left[task.run_id] = len(missing)
            if not missing:
                ready.append(task)
            for shard in missing:
                future = self.client.submit(shard_task, task.params, shard, target.sweep_name, task.run_id,
                                            str(target.cache_dir), shard_images(source, shard), pure=False)
                owners[future] = (task, shard)
        for task in ready:
            yield assemble(task)
        with quiet_reconnects():
            yield from self._collect(owners, shards_left, target, assemble)

    def _collect(self, owners, shards_left, target, assemble):
        """Keep each shard as it comes back; yield a run's status when its last shard is in, or it fails."""
        from distributed import as_completed
        from tqdm.auto import tqdm

        from .layout import run_directory
        from .notebook import end_run, start_run
        from .shards import save_shard

        failed = set()
        bar = tqdm(total=len(owners), desc="shards", unit="shard", leave=False, disable=not self.progress)
        for future in as_completed(list(owners), loop=self.client.loop):
            bar.update(1)
            task, shard = owners.pop(future)
            if task.run_id in failed:
                continue
            run_dir = run_directory(target.sweep_dir, task.run_id)
            try:
                table, skipped = future.result()
            except Exception as error:  # the shard raised on its worker, or lost too many workers (KilledWorker)
                if scheduler_lost(self.client, error):
                    error = ClusterError(f"the Dask scheduler stopped answering mid-sweep; the shards already "
                                         f"written are kept: start it again and rerun with --resume ({error})")
                elif type(error).__name__ == "KilledWorker":
                    error = RuntimeError(f"the worker processes running shard {shard} of this run died (a native "
                                         "crash, a kill from outside or the worker's memory limit; the nanny's log "
                                         f"names the signal): {error}")
                failed.add(task.run_id)
                for other, (owner, _) in list(owners.items()):
                    if owner.run_id == task.run_id:
                        other.cancel()
                run_dir, status = start_run(target.sweep_dir, task.run_id, task.params)
                yield end_run(run_dir, status, error)
                continue
            save_shard(run_dir, shard, table, skipped)
            shards_left[task.run_id] -= 1
            if shards_left[task.run_id] == 0:
                yield assemble(task)
        bar.close()
