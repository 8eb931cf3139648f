"""The seam between a sweep and what executes its runs.

``runner.run_sweep`` decides which runs to execute (resume, locking, progress, the spec record) and hands
them, as ``Task``s, to an ``Executor``; the executor yields each run's final status as it ends. Whatever
an executor does, each run it reports ends with ``status.json`` in its run directory, and a finished run
with ``records.parquet``:

- ``NotebookExecutor`` (the default) executes the run notebook through papermill, ``jobs`` at a time, in
  this machine's processes; the notebook writes the records.
- An executor on other machines can split a task into shards of images (``Task.shard``), compute each
  with ``configuration.configuration_records`` there, put them together with ``shards.assemble_shards``
  (the rows in the order of one unsharded run) and write them on the client with ``layout.write_records``
  between ``notebook.start_run`` and ``notebook.end_run``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from .notebook import execute_run


@dataclass(frozen=True)
class Task:
    """One unit of work: a validated configuration (``params``), its run id, and optionally a shard.

    ``shard``: images ``start:stop`` of the configuration's data set (after ``limit``); ``None`` for all.
    """

    run_id: str
    params: dict
    shard: tuple[int, int] | None = None


@dataclass(frozen=True)
class Target:
    """Where a sweep's runs write: the sweep directory, the sweep's name and the shared map cache."""

    sweep_dir: Path
    sweep_name: str
    cache_dir: Path


class Executor(Protocol):
    """Executes a sweep's tasks."""

    def execute(self, tasks: Sequence[Task], target: Target) -> Iterator[dict]:
        """Yield each run's final status (``run_id``, ``state``, and ``error`` on failure) as it ends.

        A failed run is a status with ``state: failed``, never an exception.
        """


class NotebookExecutor:
    """Runs each task as the run notebook through papermill, ``jobs`` runs at a time on this machine."""

    def __init__(self, jobs: int = 1):
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs

    def execute(self, tasks: Sequence[Task], target: Target) -> Iterator[dict]:
        for task in tasks:
            if task.shard is not None:
                raise ValueError(f"NotebookExecutor runs whole configurations, got shard {task.shard} "
                                 f"for run {task.run_id}")
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(execute_run, task.run_id, task.params, target.sweep_dir, target.sweep_name,
                                   target.cache_dir) for task in tasks]
            for future in as_completed(futures):
                yield future.result()
