"""Caches and records that cannot lie: changed folders, corrupt cache entries and records, failed sweeps,
partial files, skipped images, stale locks."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from apt_research.cli import main
from apt_research.sweep.configuration import run_configuration
from apt_research.sweep.lock import DirectoryLock, SweepLocked, owner_token
from apt_research.sweep.notebook import end_run, start_run
from apt_research.sweep.report import build_report
from apt_research.sweep.runner import run_sweep
from apt_research.sweep.spec import load_spec
from sweep_helpers import InProcessExecutor

SMALL = {"image_size": 32, "num_scales": 2, "thresholds": [[5.0]]}


def _photo(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        _photo(folder / name, seed)
    return folder


def _tokens(records):
    return records.set_index("image")["tokens_total"].to_dict()


def test_a_folder_that_changed_gets_new_maps(tmp_path, photos):
    params = {"dataset": str(photos), **SMALL}
    cache = tmp_path / "cache"
    first = run_configuration(params, tmp_path / "run", cache)
    assert len(first) == 2 and not first["cache_hit"].any()
    assert run_configuration(params, tmp_path / "run", cache)["cache_hit"].all()
    _photo(photos / "c.png", 2)
    added = run_configuration(params, tmp_path / "run", cache)
    assert sorted(added["image"]) == ["a", "b", "c"] and not added["cache_hit"].any()
    _photo(photos / "a.png", 9)
    os.utime(photos / "a.png", ns=(10**18, 10**18))
    changed = run_configuration(params, tmp_path / "run", cache)
    assert not changed["cache_hit"].any()
    assert changed.set_index("image")["score_16_mean"]["a"] != added.set_index("image")["score_16_mean"]["a"]


def test_a_truncated_or_tampered_cache_entry_is_recomputed_with_a_warning(tmp_path, photos):
    params = {"dataset": str(photos), **SMALL}
    cache = tmp_path / "cache"
    reference = run_configuration(params, tmp_path / "run", cache)
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match="cache entry .* cannot be used .*; recomputing it"):
        again = run_configuration(params, tmp_path / "run", cache)
    assert not again["cache_hit"].any() and _tokens(again) == _tokens(reference)
    assert run_configuration(params, tmp_path / "run", cache)["cache_hit"].all()  # the entry was replaced

    with np.load(entry) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["map_0_16"] = arrays["map_0_16"] + 1.0  # valid archive, wrong numbers, old checksum
    np.savez(entry, **arrays)
    with pytest.warns(RuntimeWarning, match="checksum mismatch"):
        tampered = run_configuration(params, tmp_path / "run", cache)
    assert not tampered["cache_hit"].any() and _tokens(tampered) == _tokens(reference)


@pytest.fixture
def two_runs(tmp_path):
    sweep = load_spec({"name": "two", "fixed": {"dataset": "synthetic", "dataset_options": {"count": 2, "size": 48},
                                                **SMALL}, "grid": {"bins": [64, 128]}})
    out = tmp_path / "sweep"
    run_sweep(sweep, out, executor=InProcessExecutor(), progress=False)
    return sweep, out


def test_truncated_records_are_reported_as_failed_and_rerun_by_resume(two_runs, capsys):
    sweep, out = two_runs
    broken = out / "runs" / sweep.runs[0]["run_id"] / "records.parquet"
    broken.write_bytes(broken.read_bytes()[:100])
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert f"`{sweep.runs[0]['run_id']}`: incomplete: records.parquet cannot be read" in report
    assert len(pd.read_parquet(out / "summary.parquet")) == 1
    statuses = run_sweep(sweep, out, resume=True, executor=InProcessExecutor(), progress=False)
    assert {s["run_id"]: s.get("skipped", False) for s in statuses} == {sweep.runs[0]["run_id"]: False,
                                                                         sweep.runs[1]["run_id"]: True}
    assert len(build_report(out).summary) == 2


class FailingExecutor:
    def execute(self, tasks, target):
        for task in tasks:
            run_dir, status = start_run(target.sweep_dir, task.run_id, task.params)
            yield end_run(run_dir, status, RuntimeError("the data went away"))


def test_a_sweep_where_every_run_failed_leaves_no_earlier_summary_or_figures(two_runs):
    sweep, out = two_runs
    build_report(out)
    assert (out / "summary.parquet").exists() and list((out / "figures").glob("*.png"))
    (out / "figures" / "mine.png").write_bytes(b"the user's")
    statuses = run_sweep(sweep, out, executor=FailingExecutor(), progress=False)
    assert {s["state"] for s in statuses} == {"failed"}
    report = build_report(out)
    assert "No run finished." in report.markdown and report.markdown.count("the data went away") == 2
    assert not (out / "summary.parquet").exists() and not (out / "summary.csv").exists()
    assert [p.name for p in (out / "figures").iterdir()] == ["mine.png"]


def test_a_sweep_removes_the_partial_files_a_killed_run_left(two_runs):
    sweep, out = two_runs
    run_dir = out / "runs" / sweep.runs[0]["run_id"]
    partial = [run_dir / ".run.ipynb.tmp-k1ll3d.ipynb", run_dir / ".records.parquet.tmp-x.parquet",
               out / "cache" / ".0123.npz.tmp-y.npz", out / ".summary.csv.tmp-z.csv"]
    for path in partial:
        path.write_bytes(b"half")
    (run_dir / "notes.txt").write_text("mine")
    run_sweep(sweep, out, resume=True, executor=InProcessExecutor(), progress=False)
    assert not any(path.exists() for path in partial) and (run_dir / "notes.txt").read_text() == "mine"


def test_skipped_images_are_listed_in_the_report_also_from_the_cache(tmp_path, photos):
    (photos / "broken.png").write_bytes(b"not a png")
    sweep = load_spec({"name": "skips", "fixed": {"dataset": str(photos), **SMALL}})
    out = tmp_path / "sweep"
    with pytest.warns(UserWarning, match="skipped unreadable image"):
        run_sweep(sweep, out, executor=InProcessExecutor(), progress=False)
    assert "broken.png" in build_report(out).markdown
    run_sweep(sweep, out, executor=InProcessExecutor(), progress=False)  # maps, and what was skipped, from the cache
    report = build_report(out)
    assert report.records["cache_hit"].all()
    assert "## Skipped images (could not be read)" in report.markdown and "broken.png" in report.markdown


def test_a_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = owner_token(sleeper.pid)
        lock = tmp_path / ".sweep.lock"
        lock.write_text(json.dumps(live))
        with pytest.raises(SweepLocked, match=f"another sweep \\(pid {sleeper.pid} on {socket.gethostname()}\\)"):
            with DirectoryLock(tmp_path):
                pass
        lock.write_text(json.dumps({**live, "host": "elsewhere"}))
        with pytest.raises(SweepLocked, match="on elsewhere"):
            with DirectoryLock(tmp_path):
                pass
        lock.write_text(json.dumps({**live, "started": live["started"] - 3600}))  # the pid was reused
        with DirectoryLock(tmp_path):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.write_text(json.dumps(live))  # the owner is gone
    with DirectoryLock(tmp_path):
        assert json.loads(lock.read_text()) == owner_token()
    assert not lock.exists()


@pytest.mark.parametrize("ip", ["127.0.0.1", "kernel-123"])
def test_a_kernel_manager_removes_only_the_socket_directory_it_made(tmp_path, monkeypatch, ip):
    import asyncio

    from apt_research.sweep.notebook import IPCKernelManager

    monkeypatch.chdir(tmp_path)
    (tmp_path / "user-file").write_text("keep me")
    given = IPCKernelManager(ip=ip)
    asyncio.run(given._async_cleanup_resources())
    assert (tmp_path / "user-file").read_text() == "keep me"

    made = IPCKernelManager()
    kernel_ip = made.ip  # the default made the directory
    socket_dir = made.socket_dir
    assert kernel_ip == str(socket_dir / "kernel") and socket_dir.is_dir()
    asyncio.run(made._async_cleanup_resources())
    assert not socket_dir.exists() and (tmp_path / "user-file").exists()


def test_a_sweep_whose_folder_data_set_moved_still_makes_its_report_with_examples(tmp_path, photos):
    import shutil

    sweep = load_spec({"name": "moved", "fixed": {"dataset": str(photos), **SMALL}})
    out = tmp_path / "sweep"
    run_sweep(sweep, out, executor=InProcessExecutor(), progress=False)
    shutil.move(photos, tmp_path / "archived-photos")
    archived = tmp_path / "archive" / "sweep"
    shutil.copytree(out, archived)
    report = build_report(archived)
    assert "dataset_examples.png" in {p.name for p in (archived / "figures").iterdir()}
    assert len(report.summary) == 1


def test_two_sweeps_that_find_a_stale_lock_cannot_both_take_it_over(tmp_path):
    lock = tmp_path / ".sweep.lock"
    gone = {**owner_token(), "pid": 2**22 + 7, "started": 1.0}  # a process that no longer runs
    lock.write_text(json.dumps(gone))
    with DirectoryLock(tmp_path):
        lock.write_text(json.dumps(gone))  # what the second process would read while the first holds the lock
        with pytest.raises(SweepLocked, match="another sweep"):
            with DirectoryLock(tmp_path):
                pass
    with DirectoryLock(tmp_path):  # released with its holder: the stale lock is taken over now
        assert json.loads(lock.read_text()) == owner_token()
    assert not lock.exists()


def test_a_lock_is_removed_only_while_it_still_holds_its_owners_token(tmp_path):
    lock = tmp_path / ".sweep.lock"
    other = {**owner_token(), "host": "elsewhere"}
    with DirectoryLock(tmp_path):
        lock.unlink()
        lock.write_text(json.dumps(other))  # replaced by another sweep's lock (by hand, or from another host)
    assert json.loads(lock.read_text()) == other
