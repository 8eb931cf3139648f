"""Sweeps on a real Dask cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1.

The smoke sweep through ``--scheduler`` (one image per shard) gives the local sweep's summary; it still
does with a worker killed mid-sweep, and after the client is killed and ``--resume`` continues. An
unreachable scheduler ends in exit 2 and one line. Every process a test starts is ended by its pid.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from apt_research.cli import main
from apt_research.sweep.cluster import ClusterError, check_versions, connect, shard_task
from apt_research.sweep.configuration import run_configuration
from apt_research._io import claim
from apt_research.sweep.report import load_records, summarise
from apt_research.sweep.runner import run_sweep
from apt_research.sweep.shards import plan
from apt_research.sweep.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "ablations" / "smoke.yaml"
DASK = Path(sys.executable).with_name("dask")
APT_RESEARCH = Path(sys.executable).with_name("apt-research")
NUMERIC = ["images", "retention_mean", "retention_p10", "retention_p90", "savings_mean", "psnr_mean", "ssim_mean"]
START_TIMEOUT = 90


def _end(process: subprocess.Popen) -> None:
    """End a process this module started, and its children, by its pid (its process group)."""
    if process.poll() is None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    process.wait()


class Cluster:
    """A scheduler and its workers, started as separate processes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"process-{len(self.processes)}.log", "w")
        process = subprocess.Popen([str(DASK), *args], cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self.processes.append(process)
        return process

    def start_worker(self, name: str) -> subprocess.Popen:
        worker = self.start("worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
                            "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--name", name,
                            "--local-directory", str(self.folder / name))
        self.workers.append(worker)
        return worker

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.folder.glob("process-*.log")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and two single-thread `dask worker`s on 127.0.0.1, waited for within START_TIMEOUT s."""
    from distributed import Client

    cluster = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        cluster.start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                      "--scheduler-file", str(cluster.scheduler_file))
        deadline = time.monotonic() + START_TIMEOUT
        while not cluster.scheduler_file.exists():
            assert time.monotonic() < deadline, f"no scheduler within {START_TIMEOUT} s:\n{cluster.logs()}"
            assert cluster.processes[0].poll() is None, f"the scheduler ended:\n{cluster.logs()}"
            time.sleep(0.1)
        for name in ("worker-a", "worker-b"):
            cluster.start_worker(name)
        with Client(cluster.address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
        yield cluster
    finally:
        for process in reversed(cluster.processes):
            _end(process)


@pytest.fixture(scope="module")
def sharded_spec(tmp_path_factory) -> Path:
    """The smoke spec with one image per shard: two configurations of two shards each."""
    spec = yaml.safe_load(SMOKE.read_text())
    spec["fixed"]["shard_size"] = 1
    path = tmp_path_factory.mktemp("spec") / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def summary_of(out: Path) -> pd.DataFrame:
    """What ``report`` writes as ``summary.parquet``, without its figures."""
    return summarise(load_records(out)[0])


@pytest.fixture(scope="module")
def local_summary(tmp_path_factory) -> pd.DataFrame:
    """The smoke sweep's summary run locally, unsharded (the reference every cluster sweep must match)."""
    out = tmp_path_factory.mktemp("local")
    statuses = run_sweep(load_spec(SMOKE), out, jobs=2, progress=False)
    assert [s["state"] for s in statuses] == ["finished", "finished"]
    return summary_of(out)


def assert_same_summary(summary: pd.DataFrame, reference: pd.DataFrame) -> None:
    keys = ["dataset", "bins", "thresholds"]
    ours, theirs = summary.sort_values(keys).reset_index(drop=True), reference.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours[keys + NUMERIC], theirs[keys + NUMERIC])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_scheduler_exits_2_with_one_line(tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    result = subprocess.run([str(APT_RESEARCH), "sweep", str(SMOKE), "--out",
                             str(tmp_path / "out"), "--scheduler", address], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert time.monotonic() - start < 30
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--scheduler" in lines[0] and address in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_jobs_with_scheduler_is_refused(tmp_path, capsys):
    assert main(["sweep", str(SMOKE), "--out", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:1",
                 "--jobs", "2"]) == 2
    assert "--jobs 2" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["10.0.0.5", "tcp://127.0.0.1:port"])
def test_malformed_scheduler_address_is_refused(address):
    with pytest.raises(ClusterError, match="expected a scheduler address"):
        connect(address, timeout=5)


def test_version_mismatch_is_reported():
    class MismatchedClient:
        def get_versions(self, check, packages):
            assert check and "apt_research" in packages
            raise ValueError("Mismatched versions found\n| numpy | 2.3.0 | 2.3.0 | 1.26.4 |")

    with pytest.raises(ClusterError, match="different versions(.|\n)*numpy"):
        check_versions(MismatchedClient())


def test_shard_task_returns_records_and_writes_nothing(tmp_path, monkeypatch):
    """What a worker does: compute a shard and hand its records back, without the client's disk."""
    monkeypatch.chdir(tmp_path)
    params = load_spec(SMOKE).runs[0]["params"]
    table, skipped = shard_task(params, (1, 2), "smoke", "r", str(tmp_path / "absent" / "cache"))
    assert list(tmp_path.iterdir()) == [] and skipped == []
    assert list(table["image"].unique()) == ["camera"] and len(table) == 2


VARYING = ["time_s", "maps_time_s", "cache_hit", "maps_key", "shard_size"]


def test_sharded_configuration_gives_the_unsharded_records(tmp_path):
    params = load_spec(SMOKE).runs[0]["params"]
    whole = run_configuration(params, tmp_path / "whole")
    sharded = run_configuration({**params, "shard_size": 1}, tmp_path / "sharded", tmp_path / "cache")
    assert not (tmp_path / "whole" / "shards").exists()
    assert sorted(p.name for p in (tmp_path / "sharded" / "shards").iterdir()) == [
        "000000000-000000001.parquet", "000000001-000000002.parquet"]
    pd.testing.assert_frame_equal(sharded.drop(columns=VARYING), whole.drop(columns=VARYING))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # maps cached per shard


def test_kept_shards_are_reused_and_a_broken_one_recomputed(tmp_path):
    params = {**load_spec(SMOKE).runs[0]["params"], "shard_size": 1}
    first = run_configuration(params, tmp_path)
    kept, broken = sorted((tmp_path / "shards").glob("*.parquet"))
    kept_mtime = kept.stat().st_mtime_ns
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.warns(UserWarning, match="cannot be read"):
        again = run_configuration(params, tmp_path)
    assert kept.stat().st_mtime_ns == kept_mtime
    pd.testing.assert_frame_equal(again.drop(columns=VARYING), first.drop(columns=VARYING))


@pytest.mark.parametrize("extra, message", [({"shard_size": 0}, "greater than or equal to 1"),
                                            ({"shard_size": 2, "target_retention": 0.5}, "fixed thresholds"),
                                            ({"shard_size": 2, "measure_speed": ["vit_s"]}, "no measure_speed")])
def test_bad_shard_size_is_refused(extra, message):
    spec = yaml.safe_load(SMOKE.read_text())
    spec["fixed"].update(extra)
    if "target_retention" in extra:
        del spec["fixed"]["thresholds"]
    with pytest.raises(SpecError, match=f"shard_size.*{message}"):
        load_spec(spec, "bad")


def test_failed_shard_fails_its_run_only_and_stale_shards_are_dropped(sharded_spec, tmp_path, monkeypatch):
    """In-process workers (they see this test's patch): one shard raises; a shard left by an earlier sweep is
    not reused without --resume."""
    from distributed import Client, LocalCluster

    from apt_research.sweep import configuration

    sweep = load_spec(sharded_spec)
    failing, healthy = (run["run_id"] for run in sweep.runs)
    stale = claim(tmp_path / "out", "sweep") / "runs" / healthy / "shards" / "000000000-000000001.parquet"
    stale.parent.mkdir(parents=True)
    pd.DataFrame({"image": ["from an earlier sweep"]}).to_parquet(stale)
    records = configuration.configuration_records

    def configuration_records(params, cache_dir=None, sweep="", run="", shard=None, source=None):
        if run == failing and shard == (1, 2):
            raise RuntimeError("unreadable shard")
        return records(params, cache_dir, sweep, run, shard, source)

    monkeypatch.setattr(configuration, "configuration_records", configuration_records)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        statuses = {s["run_id"]: s for s in run_sweep(sweep, tmp_path / "out", client=client, progress=False)}
    assert statuses[healthy]["state"] == "finished"
    assert statuses[failing]["state"] == "failed" and "unreadable shard" in statuses[failing]["error"]
    status = json.loads((tmp_path / "out" / "runs" / failing / "status.json").read_text())
    assert status["state"] == "failed" and "RuntimeError: unreadable shard" in status["traceback"]
    assert list(pd.read_parquet(stale)["image"]) == ["astronaut", "astronaut"]  # computed afresh


def test_cluster_sweep_matches_the_local_summary(cluster, sharded_spec, local_summary, tmp_path):
    out = tmp_path / "cluster"
    assert main(["sweep", str(sharded_spec), "--out", str(out), "--scheduler", cluster.address]) == 0
    assert_same_summary(pd.read_parquet(out / "summary.parquet"), local_summary)
    for run in load_spec(sharded_spec).runs:
        run_dir = out / "runs" / run["run_id"]
        assert len(list((run_dir / "shards").glob("*.parquet"))) == len(plan(run["params"])) == 2
        assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
        notebook = json.loads((run_dir / "run.ipynb").read_text())
        assert notebook["metadata"]["papermill"]["parameters"]["shard_size"] == 1


def test_client_killed_then_resumed(cluster, sharded_spec, local_summary, tmp_path):
    out = tmp_path / "killed"
    command = [str(APT_RESEARCH), "sweep", str(sharded_spec), "--out", str(out), "--scheduler", cluster.address]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("runs/*/shards/[0-9]*.parquet")):
            assert time.monotonic() < deadline and process.poll() is None, "no shard was written"
            time.sleep(0.05)
    finally:
        _end(process)
    kept = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/shards/[0-9]*.parquet")}
    assert kept and not (out / "summary.parquet").exists()
    partial = next(iter(kept)).parent / ".000000001-000000002.parquet.tmp-12345.parquet"  # as a kill mid-write leaves it
    partial.write_bytes(b"half a shard")
    with connect(cluster.address) as client:
        statuses = run_sweep(load_spec(sharded_spec), out, resume=True, client=client, progress=False)
    assert [s["state"] for s in statuses] == ["finished", "finished"]
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items())  # not computed again
    assert not partial.exists()
    assert_same_summary(summary_of(out), local_summary)


def test_worker_killed_mid_sweep(cluster, sharded_spec, local_summary, tmp_path):
    """Runs last: it kills one of the module's two workers."""
    out = tmp_path / "worker-killed"
    client = connect(cluster.address)
    victim = cluster.workers[0]
    statuses, errors = [], []

    def sweep():
        try:
            statuses.extend(run_sweep(load_spec(sharded_spec), out, client=client, progress=False))
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=sweep)
    try:
        thread.start()
        deadline = time.monotonic() + 120
        victim_address = None
        while victim_address is None:
            assert time.monotonic() < deadline and thread.is_alive(), "no shard ever ran on worker-a"
            workers = client.scheduler_info()["workers"]
            busy = {address for address, tasks in client.processing().items() if tasks}
            victim_address = next((a for a, w in workers.items() if w["name"] == "worker-a" and a in busy), None)
            time.sleep(0.02)
        _end(victim)
        thread.join(180)
        assert not thread.is_alive() and not errors, errors
    finally:
        thread.join()
        client.close()
    assert [s["state"] for s in statuses] == ["finished", "finished"]
    assert_same_summary(summary_of(out), local_summary)


def _photos(tmp_path, count: int):
    """A folder of ``count`` 40 x 40 noise PNGs named 0.png, 1.png, ..."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(count):
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            folder / f"{seed}.png")
    return folder


def test_a_sharded_configuration_lists_its_folder_once_per_run_not_per_shard(tmp_path, monkeypatch):
    """Shards of a folder data set reuse one listing (walking the folder per shard is quadratic in its size);
    each task of a Dask sweep gets its shard's items from the client."""
    from apt_research import datasets

    folder = _photos(tmp_path, 5)
    listings = []
    walk = datasets.folder_dataset
    monkeypatch.setattr(datasets, "folder_dataset", lambda *a, **k: listings.append(a) or walk(*a, **k))
    params = {"dataset": str(folder), "image_size": 32, "num_scales": 2, "thresholds": [[5.0]], "shard_size": 1}
    sharded = run_configuration(params, tmp_path / "run", tmp_path / "cache")
    assert len(sharded) == 5 and len(listings) <= 2  # validation and one listing; five shards
    from apt_research.sweep.maps import list_images, shard_images
    from apt_research.sweep.parameters import validate_params

    source = list_images(validate_params(params, "test"))
    listings.clear()
    table, _ = shard_task(params, (3, 4), "s", "r", None, shard_images(source, (3, 4)))
    assert listings == [] and list(table["image"]) == ["3"]


@pytest.mark.parametrize("shard_size", [None, 2])
def test_validation_and_the_run_share_one_listing_of_a_folder(tmp_path, monkeypatch, shard_size):
    """A folder named through ``dataset_options`` is walked once per run: validation builds the data set and
    the run reuses that listing (it was walked three times unsharded: validation twice, then the maps)."""
    from apt_research import datasets

    folder = _photos(tmp_path, 3)
    listings = []
    walk = datasets.folder_dataset
    monkeypatch.setitem(datasets.DATASETS, "folder", lambda root: listings.append(root) or walk(root))
    params = {"dataset": "folder", "dataset_options": {"root": str(folder)}, "image_size": 32, "num_scales": 2,
              "thresholds": [[5.0]], "shard_size": shard_size}
    records = run_configuration(params, tmp_path / "run", tmp_path / "cache")
    assert len(records) == 3 and len(listings) == 1


def test_scheduler_killed_mid_sweep_fails_its_runs_with_one_line_each(tmp_path):
    """Issue 22: a scheduler killed mid-sweep printed distributed's asyncio tracebacks; now each run fails with
    the reason and what to do, the written shards stay, and nothing else is printed."""
    cluster = Cluster(tmp_path)
    spec = yaml.safe_load(SMOKE.read_text())
    spec["fixed"].update(dataset="synthetic", dataset_options={"count": 200, "size": 64}, image_size=64,
                         shard_size=1)
    spec_path = tmp_path / "long.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    try:
        scheduler = cluster.start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(cluster.scheduler_file))
        deadline = time.monotonic() + START_TIMEOUT
        while not cluster.scheduler_file.exists():
            assert time.monotonic() < deadline and scheduler.poll() is None, cluster.logs()
            time.sleep(0.1)
        cluster.start_worker("worker-a")
        sweep = subprocess.Popen([str(APT_RESEARCH), "sweep", str(spec_path), "--out", str(out), "--scheduler",
                                  cluster.address], cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        try:
            while not list(out.glob("runs/*/shards/[0-9]*.parquet")):
                assert time.monotonic() < deadline + 120 and sweep.poll() is None, "no shard was written"
                time.sleep(0.05)
            os.killpg(scheduler.pid, signal.SIGKILL)
            stdout, stderr = sweep.communicate(timeout=180)
        finally:
            _end(sweep)
    finally:
        for process in reversed(cluster.processes):
            _end(process)
    assert sweep.returncode == 1, (stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    failures = [line for line in stdout.splitlines() if " failed: " in line]
    assert len(failures) == 2 and all("scheduler stopped answering" in line and "--resume" in line
                                      for line in failures), stdout
    assert list(out.glob("runs/*/shards/[0-9]*.parquet"))  # what was computed is kept for --resume
    for status in out.glob("runs/*/status.json"):
        assert json.loads(status.read_text())["state"] == "failed"
