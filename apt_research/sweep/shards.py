"""Shards of a configuration: images ``START:STOP`` computed, kept and resumed one shard at a time.

A configuration with ``shard_size`` (a sweep parameter) is cut into shards of that many images of
its data set (after ``limit``). Each shard's records are kept in the run directory::

    runs/<run_id>/shards/START-STOP.parquet      the shard's records
                         START-STOP.skipped.json  its images that could not be read (if any)

so that an interrupted run computes only the shards it lacks, and a Dask cluster computes each shard
as a task (``cluster.DaskExecutor``). The run's ``records.parquet`` is the shards' records in order:
the same rows, and so the same summary, as one unsharded run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

from .._io import atomic_path, make_dirs, remove_tree
from .layout import write_json
from .maps import list_images

SHARDS = "shards"


def plan(params: dict, count: int | None = None) -> list[tuple[int, int]]:
    """The shards ``(start, stop)`` of a validated configuration: ``shard_size`` images each, one shard if unset.

    Examples
    --------
    >>> plan({"shard_size": 4}, count=10)
    [(0, 4), (4, 8), (8, 10)]
    >>> plan({"shard_size": None}, count=10)
    [(0, 10)]
    """
    count = len(list_images(params)) if count is None else count
    size = params["shard_size"] or max(count, 1)
    return [(start, min(start + size, count)) for start in range(0, count, size)] or [(0, 0)]


def shard_path(run_dir: Path, shard: tuple[int, int]) -> Path:
    """Where the records of ``shard`` of the run in ``run_dir`` are kept."""
    return Path(run_dir) / SHARDS / f"{shard[0]:09d}-{shard[1]:09d}.parquet"


def save_shard(run_dir: Path, shard: tuple[int, int], table: pd.DataFrame, skipped: list[dict]) -> None:
    """Keep a shard's records (and its skipped images), each file written atomically, records last."""
    path = shard_path(run_dir, shard)
    make_dirs(path.parent)
    if skipped:
        write_json(path.with_suffix(".skipped.json"), skipped)
    with atomic_path(path) as temporary:
        table.to_parquet(temporary, index=False)


def load_shard(run_dir: Path, shard: tuple[int, int]) -> tuple[pd.DataFrame, list[dict]] | None:
    """A kept shard's ``(records, skipped)``; ``None`` when absent, or unreadable (with a warning)."""
    path = shard_path(run_dir, shard)
    if not path.exists():
        return None
    try:
        table = pd.read_parquet(path)
        skipped_path = path.with_suffix(".skipped.json")
        skipped = json.loads(skipped_path.read_text()) if skipped_path.exists() else []
    except Exception as error:  # a truncated or foreign file: the shard is computed again
        warnings.warn(f"shard records {path} cannot be read ({type(error).__name__}: {error}); "
                      f"computing the shard again", stacklevel=2)
        return None
    return table, skipped


def clear_shards(run_dir: Path) -> None:
    """Remove the shards kept for the run in ``run_dir`` (a run started afresh, without ``--resume``)."""
    remove_tree(Path(run_dir) / SHARDS)


def assemble_shards(params: dict, parts: list[tuple[pd.DataFrame, list[dict]]]) -> tuple[pd.DataFrame, list[dict]]:
    """A configuration's records from its shards' ``(records, skipped)``, in shard order: the rows in the order
    of one unsharded run (threshold setting first, then image) and every shard's skipped images.

    The one way to put shards together, for ``sharded_records``, the Dask executor's run notebook and any
    other executor: each shard's table holds one block of rows per threshold setting, so a plain
    concatenation would interleave the settings.

    Parameters
    ----------
    params : dict
        The validated configuration (its ``thresholds`` give the number of settings).
    parts : list of (pandas.DataFrame, list of dict)
        Each shard's records and skipped images, in shard order.

    Returns
    -------
    (pandas.DataFrame, list of dict)
    """
    tables = [table for table, _ in parts]
    settings = max(len(params["thresholds"]), 1)
    blocks = [table.iloc[setting * (len(table) // settings):(setting + 1) * (len(table) // settings)]
              for setting in range(settings) for table in tables]
    blocks = [block for block in blocks if len(block)] or tables[:1]
    return pd.concat(blocks, ignore_index=True), [entry for _, skipped in parts for entry in skipped]
