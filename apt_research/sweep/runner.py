"""Running configurations: one inside the run notebook, a whole sweep through papermill.

Layout of a sweep directory::

    results/<sweep>/spec.yaml                 the expanded spec (what ran)
    results/<sweep>/runs/<run_id>/run.ipynb   the executed notebook (the record of the run)
                                  records.parquet  one row per image per threshold setting
                                  params.json      the configuration
                                  provenance.json  packages, git commit, device, times
                                  status.json      state, timing, and the traceback on failure
    results/<sweep>/cache/<key>.npz           importance maps shared by runs (no pickle)

Every file is written to a temporary name and renamed, so a run killed half
way never leaves a ``status.json`` that says finished.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..analysis import entropy_statistics, fidelity, reconstruct, token_record
from ..calibration import calibrate_thresholds
from ..costmodel import vit_flops
from ..speed import measure_speedup
from ..vit import VIT_CONFIGS
from ..datasets import iter_batches, iter_images, load_dataset
from ..scorers import compute_importance_maps
from ..selection import select_patches_by_threshold
from .._io import atomic_path, write_atomic
from .cache import cache_key, load_entry, save_entry
from .spec import Sweep

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
RUN_NOTEBOOK = PACKAGE_ROOT / "notebooks" / "run.ipynb"
KERNEL_START_TRIES = 4


def write_json(path: Path, value) -> None:
    write_atomic(path, json.dumps(value, indent=2, default=str, allow_nan=False) + "\n")


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def provenance(device: str = "cpu") -> dict:
    """Package versions, git commit, Python, machine and device of this process."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("apt-research", "torch", "numpy", "numba", "einops", "pandas", "scikit-image", "papermill",
                 "seaborn", "matplotlib"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    info = {
        "packages": packages,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _method_options(params: dict) -> dict:
    options = dict(params["method_options"])
    if params["method"] == "entropy":
        options["bins"] = params["bins"]
    return options


def compute_maps(params: dict, progress: bool = False):
    """Load and resize the data set's images and score them: ``(pixels, maps, metas)``, one entry per image."""
    source = load_dataset(params["dataset"], **params["dataset_options"])
    images = iter_images(source, params["resize"], params["image_size"], params["patch_size"], params["limit"],
                         progress=progress)
    pixels, maps, metas = [], [], []
    for batch, batch_metas in iter_batches(images, params["batch_size"]):
        batch_maps = compute_importance_maps(batch.to(params["device"]), params["method"], params["patch_size"],
                                             params["num_scales"], **_method_options(params))
        for i, meta in enumerate(batch_metas):
            pixels.append(batch[i])
            maps.append({size: scale_map[i].cpu() for size, scale_map in batch_maps.items()})
            metas.append(meta)
    return pixels, maps, metas, source.skipped


def maps_for(params: dict, cache_dir: Path | None, progress: bool = False):
    """Maps from the cache when present, else computed (and stored); also says whether the cache was hit."""
    path = Path(cache_dir) / f"{cache_key(params)}.npz" if cache_dir else None
    if path is not None:
        entry = load_entry(path)
        if entry is not None:
            return (*entry, [], True)
    pixels, maps, metas, skipped = compute_maps(params, progress)
    if path is not None and pixels:
        save_entry(path, pixels, maps, metas)
    return pixels, maps, metas, skipped, False


def image_columns(image: torch.Tensor, image_maps: dict, meta: dict) -> dict:
    """The columns of an image's records that no threshold changes: its names, sizes and score statistics."""
    return {
        "image": meta["name"],
        "label": meta.get("label"),
        "source": meta.get("source"),
        "original_height": meta.get("original_height"),
        "original_width": meta.get("original_width"),
        "height": int(image.shape[-2]),
        "width": int(image.shape[-1]),
        **entropy_statistics({size: scale_map[None] for size, scale_map in image_maps.items()}, 0),
    }


def threshold_records(params: dict, thresholds: list[float], pixels, maps, columns) -> list[dict]:
    """One record per image for one threshold setting: tokens, retention, PSNR/SSIM, time.

    ``columns``: each image's ``image_columns``, computed once for all threshold settings. Images are
    processed in worker threads (the metrics' filters release the GIL).
    """

    def record(item):
        image, image_maps, image_row = item
        start = time.perf_counter()
        batched = {size: scale_map[None] for size, scale_map in image_maps.items()}
        masks = select_patches_by_threshold(batched, thresholds)
        recon = reconstruct(image[None], masks, params["patch_size"])
        row = {
            **image_row,
            "thresholds": ",".join(f"{t:g}" for t in thresholds),
            **{f"threshold_{s + 1}": t for s, t in enumerate(thresholds)},
            **token_record(masks, 0),
            **fidelity(image, recon[0]),
        }
        for model in VIT_CONFIGS:
            row[f"gflops_apt_{model}"] = float(vit_flops(row["tokens_total"] + 1, model, params["patch_size"])) / 1e9
            row[f"gflops_uniform_{model}"] = float(vit_flops(row["tokens_base_grid"] + 1, model,
                                                             params["patch_size"])) / 1e9
        row["time_s"] = time.perf_counter() - start
        return row

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(record, zip(pixels, maps, columns)))


def threshold_settings(params: dict, maps: list[dict]):
    """The threshold settings of a run: as given, or calibrated on the run's maps for each target retention."""
    if not params.get("target_retention"):
        return [(thresholds, {}) for thresholds in params["thresholds"]]
    settings = []
    batched = [{size: m[None] for size, m in image_maps.items()} for image_maps in maps]
    for target in params["target_retention"]:
        result = calibrate_thresholds(batched, target, strategy=params["calibration"])
        settings.append((result.thresholds, {"target_retention": target, "calibration_within_tolerance":
                                             result.within_tolerance, "calibration_message": result.message}))
    return settings


def measured_speed(params: dict, rows: list[dict]) -> dict:
    """Measured ViT speedups (packed APT vs uniform) for the run's token counts, for each model asked for."""
    out = {}
    for model in params.get("measure_speed") or []:
        apt = [row["tokens_total"] + 1 for row in rows]
        uniform = [row["tokens_base_grid"] + 1 for row in rows]
        out[f"measured_speedup_{model}"] = measure_speedup(apt, uniform, model, params["patch_size"],
                                                           params["device"])["speedup"]
    return out


def run_configuration(params: dict, output_dir, cache_dir=None, sweep: str = "", run: str = "") -> pd.DataFrame:
    """Run one configuration (every threshold setting of it) and write ``records.parquet`` into ``output_dir``."""
    from .spec import check_params

    params = check_params(params, f"run {run or '(notebook)'}")
    output_dir = Path(output_dir)
    start = time.perf_counter()
    pixels, maps, metas, skipped, hit = maps_for(params, cache_dir)
    maps_s = time.perf_counter() - start
    rows, columns = [], [image_columns(*item) for item in zip(pixels, maps, metas)]
    for thresholds, extra in threshold_settings(params, maps):
        setting_rows = threshold_records(params, thresholds, pixels, maps, columns)
        extra = dict(extra, **measured_speed(params, setting_rows))
        rows += [dict(row, **extra) for row in setting_rows]
    table = pd.DataFrame(rows)
    constant = {"sweep": sweep, "run_id": run, "dataset": params["dataset"], "cache_hit": hit, "maps_time_s": maps_s}
    constant.update({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in params.items()
                     if k not in ("thresholds", "dataset", "target_retention")})
    for column, value in reversed(list(constant.items())):
        table.insert(0, column, value)
    with atomic_path(output_dir / "records.parquet") as temporary:
        table.to_parquet(temporary, index=False)
    if skipped:
        write_json(output_dir / "skipped.json", skipped)
    return table


class SweepLocked(RuntimeError):
    """Another sweep is writing to the same directory."""


class DirectoryLock:
    """An exclusive lock file holding the owner's pid; a lock left by a dead process is taken over."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".sweep.lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise SweepLocked(
                        f"another sweep (pid {owner}) is writing to {self.path.parent}; wait for it or use --out"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as stream:
                stream.write(str(os.getpid()))
            return self
        raise SweepLocked(f"could not lock {self.path.parent}")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_finished(run_dir: Path) -> bool:
    status = run_dir / "status.json"
    if not status.exists() or not (run_dir / "records.parquet").exists():
        return False
    try:
        return json.loads(status.read_text()).get("state") == "finished"
    except json.JSONDecodeError:
        return False


def _execute_notebook(notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
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


def execute_run(run: dict, sweep_dir: Path, sweep_name: str, cache_dir: Path, device: str | None = None) -> dict:
    """Execute the run notebook for one configuration; returns its status (never raises for a failed run)."""
    params = dict(run["params"])
    if device:
        params["device"] = device
    run_dir = sweep_dir / "runs" / run["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").unlink(missing_ok=True)
    write_json(run_dir / "params.json", params)
    write_json(run_dir / "provenance.json", provenance(params["device"]))
    started = time.time()
    status = {"run_id": run["run_id"], "state": "running", "started": started}
    # The executed notebook is the run's record: kept, failed or interrupted half way, as run.ipynb.
    with atomic_path(run_dir / "run.ipynb", keep_partial=True) as temporary:
        try:
            _execute_notebook(RUN_NOTEBOOK, temporary, {
                **params, "output_dir": str(run_dir), "cache_dir": str(cache_dir),
                "sweep": sweep_name, "run_id": run["run_id"],
            }, run_dir)
            if not (run_dir / "records.parquet").exists():
                raise RuntimeError("the run notebook finished without writing records.parquet")
            status["state"] = "finished"
        except Exception as error:
            status.update(state="failed", error=f"{type(error).__name__}: {error}"[:2000],
                          traceback=traceback.format_exc())
    status.update(ended=time.time(), duration_s=time.time() - started)
    write_json(run_dir / "status.json", status)
    return status


def run_sweep(sweep: Sweep, out_dir, jobs: int = 1, resume: bool = False, device: str | None = None,
              progress: bool = True) -> list[dict]:
    """Run every configuration of ``sweep`` into ``out_dir`` (parallel, resumable); returns their statuses."""
    import yaml

    sweep_dir = Path(out_dir).resolve()
    if jobs > 1 and any(run["params"]["measure_speed"] for run in sweep.runs):
        tqdm.write("measure_speed times a ViT on this machine: runs go one at a time (--jobs 1) so none competes")
        jobs = 1
    with DirectoryLock(sweep_dir):
        write_atomic(sweep_dir / "spec.yaml", yaml.safe_dump(
            {"name": sweep.name, "description": sweep.description, "source": str(sweep.path),
             "runs": [{"run_id": r["run_id"], **r["params"]} for r in sweep.runs]}, sort_keys=False))
        cache_dir = sweep_dir / "cache"
        todo, statuses = [], []
        for run in sweep.runs:
            if resume and is_finished(sweep_dir / "runs" / run["run_id"]):
                statuses.append({"run_id": run["run_id"], "state": "finished", "skipped": True})
            else:
                todo.append(run)
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, tqdm(
            total=len(sweep.runs), initial=len(statuses), desc=f"sweep {sweep.name}", disable=not progress
        ) as bar:
            futures = [pool.submit(execute_run, run, sweep_dir, sweep.name, cache_dir, device) for run in todo]
            for future in as_completed(futures):
                status = future.result()
                statuses.append(status)
                bar.update(1)
                if status["state"] == "failed":
                    tqdm.write(f"run {status['run_id']} failed: {status['error'].splitlines()[0][:200]}")
    return statuses


def measure_threshold_point_cost(points: int = 4) -> dict:
    """What one more threshold point costs next to a cold point (bundled images, 224, 3 scales, 512 bins).

    ``cold_sweep_s``: one configuration run as a sweep runs it (papermill, fresh kernel, empty cache);
    ``cold_in_process_s``: the same configuration in this process (imports warm, empty cache);
    ``extra_point_s``: each further threshold setting on the cached maps (selection, reconstruction,
    PSNR/SSIM, records).
    """
    from .spec import check_params

    params = check_params({"dataset": "skimage", "image_size": 224, "num_scales": 3, "bins": 512,
                           "thresholds": [[5.75, 4.0]]}, "benchmark")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        status = execute_run({"run_id": "cold", "params": params}, scratch / "sweep", "benchmark",
                             scratch / "sweep" / "cache")
        if status["state"] != "finished":
            raise RuntimeError(f"benchmark run failed: {status.get('error')}")
        cold_sweep = status["duration_s"]
        run_configuration(params, scratch, None)  # warm the imports of this process
        start = time.perf_counter()
        run_configuration(params, scratch, scratch / "cache")
        cold = time.perf_counter() - start
        start = time.perf_counter()
        run_configuration(params, scratch, scratch / "cache")
        one_cached = time.perf_counter() - start
        settings = [[5.0 + 0.25 * i, 3.5 + 0.25 * i] for i in range(points)]
        start = time.perf_counter()
        run_configuration({**params, "thresholds": [[5.75, 4.0]] + settings}, scratch, scratch / "cache")
        extra = (time.perf_counter() - start - one_cached) / points
    return {"cold_sweep_s": cold_sweep, "cold_in_process_s": cold, "cached_run_s": one_cached,
            "extra_point_s": extra, "ratio": extra / cold_sweep, "ratio_in_process": extra / cold}


def run_notebook_configuration(namespace: dict) -> pd.DataFrame:
    """The run notebook's one call: read the parameters from its namespace and run the configuration.

    papermill's ``-p`` passes lists and dicts as text (``-p thresholds "[5.5]"``); such text is read as YAML.
    """
    import yaml

    from .spec import PARAMETERS

    params = {}
    for key, (expected, _) in PARAMETERS.items():
        if key not in namespace:
            continue
        value = namespace[key]
        if isinstance(value, str) and (expected in (list, dict) or key == "target_retention"):
            value = yaml.safe_load(value)
        params[key] = value
    if params.get("target_retention") is not None:
        params.pop("thresholds", None)  # the notebook's default thresholds give way to a target
    output_dir = Path(namespace["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = namespace.get("cache_dir")
    return run_configuration(params, output_dir, cache_dir, namespace.get("sweep", ""), namespace.get("run_id", ""))
