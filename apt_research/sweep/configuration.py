"""One configuration, in process: maps, every threshold setting's records, and the run's constant columns.

The run notebook calls ``run_notebook_configuration``; an executor that runs shards of images on other
machines calls ``configuration_records`` there and writes the concatenated records with
``layout.write_records``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pandas as pd

from .._io import make_dirs
from .layout import write_json, write_records
from . import shards
from .maps import list_images, maps_for, shard_images
from .models import ModelEvaluator
from .parameters import PARAMETERS, ParameterError, closest, dataset_key, validate_params
from .records import image_columns, threshold_records
from .speed import measured_speed
from .thresholds import threshold_settings


def configuration_records(params: dict, cache_dir=None, sweep: str = "", run: str = "",
                          shard: tuple[int, int] | None = None, source=None) -> tuple[pd.DataFrame, list[dict]]:
    """The records of one configuration (every threshold setting) on all its images or one shard of them.

    Parameters
    ----------
    params : dict
        A configuration; validated here.
    cache_dir : path, optional
        Where importance maps are cached; no cache when ``None``.
    sweep, run : str
        The sweep's name and the run's id, written into every record.
    shard : (int, int), optional
        Only images ``start:stop`` of the data set (after ``limit``).
    source : ImageSource, optional
        The shard's images, already listed (``maps.shard_images``): the data set is then not listed again,
        neither to validate ``params`` nor to find the shard. Listed here when ``None``.

    Returns
    -------
    (pandas.DataFrame, list of dict)
        One row per image per threshold setting, and the images that could not be read.
    """
    listed = {dataset_key(params): source} if source is not None else None
    params = validate_params(params, f"run {run or '(notebook)'}", checked=listed)
    start = time.perf_counter()
    pixels, maps, metas, skipped, hit, key = maps_for(params, cache_dir, shard=shard, source=source)
    maps_s = time.perf_counter() - start
    rows, columns = [], [image_columns(*item) for item in zip(pixels, maps, metas)]
    evaluator = ModelEvaluator(params, pixels, maps, metas, cache_dir) if params["model"] and pixels else None
    for thresholds, extra in threshold_settings(params, maps):
        setting_rows = threshold_records(params, thresholds, pixels, maps, columns)
        if evaluator is not None:
            setting_rows = [dict(row, **model_row) for row, model_row in zip(setting_rows, evaluator.records(thresholds))]
        extra = dict(extra, **measured_speed(params, setting_rows))
        rows += [dict(row, **extra) for row in setting_rows]
    table = pd.DataFrame(rows)
    constant = {"sweep": sweep, "run_id": run, "dataset": params["dataset"], "cache_hit": hit, "maps_key": key,
                "maps_time_s": maps_s}
    constant.update({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in params.items()
                     if k not in ("thresholds", "dataset", "target_retention")})
    for column, value in reversed(list(constant.items())):
        table.insert(0, column, value)
    return table, skipped


def sharded_records(params: dict, run_dir: Path, cache_dir=None, sweep: str = "",
                    run: str = "") -> tuple[pd.DataFrame, list[dict]]:
    """A configuration's records, shard by shard: each kept shard is read back, each missing one computed and kept.

    Without ``shard_size`` and without kept shards, the configuration is computed in one piece, as before
    shards existed (no ``shards/`` directory is written).

    Parameters
    ----------
    params : dict
        A configuration; validated here.
    run_dir : path
        The run's directory, holding ``shards/``.
    cache_dir : path, optional
        Where importance maps are cached (one entry per shard).
    sweep, run : str
        The sweep's name and the run's id, written into every record.

    Returns
    -------
    (pandas.DataFrame, list of dict)
        One row per image per threshold setting, in image order, and the images that could not be read.
    """
    built = {}
    params = validate_params(params, f"run {run or '(notebook)'}", checked=built)
    source = list_images(params, built)  # the listing validation made: the folder is walked once
    run_dir = Path(run_dir)
    if params["shard_size"] is None and not (run_dir / shards.SHARDS).is_dir():
        return configuration_records(params, cache_dir, sweep, run, source=source)
    parts = []
    for shard in shards.plan(params, len(source)):
        kept = shards.load_shard(run_dir, shard)
        if kept is None:
            kept = configuration_records(params, cache_dir, sweep, run, shard=shard, source=shard_images(source, shard))
            shards.save_shard(run_dir, shard, *kept)
        parts.append(kept)
    return shards.assemble_shards(params, parts)


NOTEBOOK_NAMES = ("output_dir", "cache_dir", "sweep", "run_id")
"""The run notebook's parameters beyond the sweep parameters: where it writes and what it is part of."""


def run_configuration(params: dict, output_dir, cache_dir=None, sweep: str = "", run: str = "") -> pd.DataFrame:
    """Run one configuration (every threshold setting of it) and write ``records.parquet`` into ``output_dir``."""
    table, skipped = sharded_records(params, Path(output_dir), cache_dir, sweep, run)
    write_records(Path(output_dir), table, skipped)
    return table


def notebook_parameters(namespace: dict) -> dict:
    """The sweep parameters among a notebook's variables; a variable that is no parameter is refused.

    papermill injects ``-p NAME VALUE`` as a variable whatever ``NAME`` is, so a typo would otherwise run
    with the default. Text is read as YAML where the parameter is not text (``-p thresholds "[5.5]"``).

    Raises
    ------
    ParameterError
        Naming the unknown variable and the closest parameter.
    """
    import yaml
    from IPython import get_ipython

    shell = get_ipython()
    hidden = set(shell.user_ns_hidden) if shell is not None else set()
    plain = (str, int, float, bool, list, dict, type(None))
    known = [*PARAMETERS, *NOTEBOOK_NAMES]
    for name, value in namespace.items():
        if not name.startswith("_") and name not in hidden and isinstance(value, plain) and name not in known:
            raise ParameterError(f"run notebook: unknown parameter {name!r}{closest(name, known)} "
                                 f"(known: {', '.join(known)})")
    params = {}
    for key, default in PARAMETERS.items():
        if key in namespace:
            value = namespace[key]
            params[key] = yaml.safe_load(value) if isinstance(value, str) and not isinstance(default, str) else value
    if params.get("target_retention") is not None:
        params.pop("thresholds", None)  # the notebook's default thresholds give way to a target
    return params


def run_notebook_configuration(namespace: dict) -> pd.DataFrame:
    """The run notebook's one call: check the parameters among its variables and run the configuration.

    The warnings the run issues are shown in the notebook and kept in ``warnings.json`` beside the records,
    so that a sweep can show each of them once on its console.
    """
    output_dir = Path(namespace["output_dir"])
    params = notebook_parameters(namespace)
    make_dirs(output_dir)
    with warnings.catch_warnings(record=True) as caught:
        table = run_configuration(params, output_dir, namespace.get("cache_dir"), namespace.get("sweep", ""),
                                  namespace.get("run_id", ""))
    if caught:
        write_json(output_dir / "warnings.json", list(dict.fromkeys(f"{w.category.__name__}: {w.message}"
                                                                   for w in caught)))
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return table
