"""The harness, end to end through papermill: smoke sweep, resume after a kill, failure isolation, spec checks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import papermill
import pytest
import yaml

from apt_research import compute_patch_entropy_batched, select_patches_by_threshold, token_counts
from apt_research.analysis import entropy_statistics
from apt_research.cli import main
from apt_research.datasets import iter_images, skimage_dataset
from apt_research.sweep.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "ablations" / "smoke.yaml"
NUMERIC = ["images", "retention_mean", "retention_p10", "retention_p90", "savings_mean", "psnr_mean", "ssim_mean"]


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["sweep", str(SMOKE), "--out", str(out), "--jobs", "2"]) == 0
    return out


def test_smoke_sweep_runs_through_papermill(smoke_dir):
    runs = sorted((smoke_dir / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "finished" and status["duration_s"] > 0
        notebook = json.loads((run / "run.ipynb").read_text())
        assert notebook["metadata"]["papermill"]["parameters"]["run_id"] == run.name
        provenance = json.loads((run / "provenance.json").read_text())
        assert provenance["packages"]["torch"] and provenance["device"] == "cpu" and "git_commit" in provenance
    for name in ("report.md", "summary.parquet", "summary.csv", "figures/retention_vs_threshold.pdf",
                 "figures/retention_vs_threshold.png", "figures/fidelity_vs_retention.png", "figures/scale_mix.png",
                 "figures/entropy_distributions.png", "figures/bins_ablation.png"):
        assert (smoke_dir / name).stat().st_size > 0, name
    summary = pd.read_parquet(smoke_dir / "summary.parquet")
    assert len(summary) == 4 and set(summary["bins"]) == {256, 512}


def test_summary_equals_the_library(smoke_dir):
    records = pd.concat(pd.read_parquet(p) for p in (smoke_dir / "runs").glob("*/records.parquet"))
    pixels = {m["name"]: p for p, m in iter_images(skimage_dataset(["astronaut", "camera"]), "center_crop", 128,
                                                     progress=False)}
    for _, row in records.iterrows():
        maps = compute_patch_entropy_batched(pixels[row["image"]][None], 16, 3, int(row["bins"]))
        thresholds = [float(t) for t in row["thresholds"].split(",")]
        tokens = int(token_counts(select_patches_by_threshold(maps, thresholds))[0])
        assert row["tokens_total"] == tokens
        assert row["retention"] == pytest.approx(tokens / 64)
        stats = entropy_statistics(maps, 0)  # the same in every threshold setting of the image
        assert {k: row[k] for k in stats} == pytest.approx(stats)
    summary = pd.read_parquet(smoke_dir / "summary.parquet")
    means = records.groupby(["bins", "thresholds"])["retention"].mean()
    for _, row in summary.iterrows():
        assert row["retention_mean"] == pytest.approx(means[(row["bins"], row["thresholds"])])


def test_killed_sweep_resumes_to_the_same_summary(smoke_dir, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "apt_research.cli", "sweep", str(SMOKE), "--out", str(out), "--jobs", "1"]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("runs/*/status.json")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = [p for p in out.glob("runs/*/status.json") if json.loads(p.read_text())["state"] == "finished"]
    assert len(finished) < 2, "the kill should land before the sweep ends"
    for status_file in out.glob("runs/*/status.json"):
        json.loads(status_file.read_text())  # written atomically: never half a file
    assert main(["sweep", str(SMOKE), "--out", str(out), "--resume"]) == 0
    statuses = [json.loads(p.read_text()) for p in out.glob("runs/*/status.json")]
    assert len(statuses) == 2 and all(s["state"] == "finished" for s in statuses)
    resumed = pd.read_parquet(out / "summary.parquet")
    reference = pd.read_parquet(smoke_dir / "summary.parquet")
    pd.testing.assert_frame_equal(resumed[NUMERIC], reference[NUMERIC])


def test_resume_skips_finished_runs(smoke_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in smoke_dir.glob("runs/*/records.parquet")}
    assert main(["sweep", str(SMOKE), "--out", str(smoke_dir), "--resume"]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in smoke_dir.glob("runs/*/records.parquet")}


def test_a_failed_run_is_recorded_and_the_others_go_on(tmp_path):
    spec = tmp_path / "failing.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "failing",
        "fixed": {"dataset": "skimage", "dataset_options": {"names": ["coins"]}, "image_size": 64,
                  "thresholds": [[5.75, 4.0]]},
        "zip": {"device": ["cpu", "meta"], "bins": [256, 512]},  # device alone is not part of the run id
    }))
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "2"]) == 1
    states = {json.loads((r / "params.json").read_text())["device"]: json.loads((r / "status.json").read_text())
              for r in (out / "runs").iterdir()}
    assert states["cpu"]["state"] == "finished"
    assert states["meta"]["state"] == "failed" and "Traceback" in states["meta"]["traceback"]
    report = (out / "report.md").read_text()
    assert "Runs that did not finish" in report and "failed" in report


@pytest.mark.parametrize("spec,message", [
    ({"name": "x", "fixed": {"treshold": [5.0]}}, "unknown key 'fixed.treshold'"),
    ({"name": "x", "fixed": {"image_size": "big"}}, "key 'image_size' expects int, got 'big'"),
    ({"name": "x", "fixed": {"num_scales": 3, "thresholds": [5.5]}}, "key 'thresholds' needs num_scales - 1 = 2"),
    ({"name": "x", "grid": {"bins": []}}, "key 'grid.bins' is empty"),
    ({"name": "x", "fixed": {"dataset": "imagenet21k"}},
     "key 'dataset' expects one of ['folder', 'skimage', 'synthetic'] or an existing folder, got 'imagenet21k'"),
    ({"name": "x", "zip": {"bins": [1, 2], "num_scales": [2]}}, "'zip' lists must have equal lengths"),
    ({"name": "x", "colour": "red"}, "unknown key 'colour'"),
    ({"name": "x", "fixed": {"method": "laplacian", "method_options": {"aggregate": "mean", "bins": 3}}},
     "key 'method_options' has unknown option(s) ['bins']"),
])
def test_malformed_specs_are_rejected_before_anything_runs(tmp_path, capsys, spec, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_presets_validate_and_grid_zip_expand():
    counts = {p.stem: len(load_spec(p).runs) for p in (ROOT / "ablations").glob("*.yaml")}
    assert set(counts) >= {"smoke", "default", "thresholds", "bins", "scales", "scorers", "datasets", "resolutions"}
    assert counts["default"] == 2 * 2 * 2  # grid dataset x bins, zipped num_scales with thresholds
    assert counts["scales"] == 4


def test_run_notebook_by_hand_with_papermill_cli(tmp_path):
    out = tmp_path / "run-out"
    subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "run.ipynb"), str(tmp_path / "out.ipynb"),
                    "-p", "dataset", "skimage", "-p", "num_scales", "2", "-p", "thresholds", "[5.5]", "-p", "limit", "2",
                    "-p", "output_dir", str(out)], check=True, cwd=ROOT, capture_output=True)
    records = pd.read_parquet(out / "records.parquet")
    assert len(records) == 2 and set(records["thresholds"]) == {"5.5"} and set(records["num_scales"]) == {2}


def test_explore_and_report_notebooks_execute(smoke_dir, tmp_path):
    papermill.execute_notebook(str(ROOT / "notebooks" / "explore.ipynb"), str(tmp_path / "explore.ipynb"),
                               parameters={"image": "skimage:coins", "image_size": 128}, kernel_name="python3",
                               progress_bar=False, cwd=str(ROOT))
    papermill.execute_notebook(str(ROOT / "notebooks" / "report.ipynb"), str(tmp_path / "report.ipynb"),
                               parameters={"sweep_dir": str(smoke_dir)}, kernel_name="python3", progress_bar=False,
                               cwd=str(ROOT))
    executed = json.loads((tmp_path / "explore.ipynb").read_text())
    assert any(o.get("output_type") == "display_data" for c in executed["cells"] for o in c.get("outputs", []))


def test_the_console_shows_progress_failures_and_each_warning_once(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photos / "red.png")
    (photos / "broken.png").write_bytes(b"not a png")
    spec = tmp_path / "console.yaml"
    spec.write_text(yaml.safe_dump({"name": "console", "fixed": {"dataset": "photos", "image_size": 32,
                                                                 "num_scales": 2, "thresholds": [[5.0]]},
                                    "zip": {"bins": [64, 128, 32], "device": ["cpu", "cpu", "meta"]}}))
    temporary = tmp_path / "tmp"  # where the kernels' IPC sockets go
    temporary.mkdir()
    result = subprocess.run([sys.executable, "-m", "apt_research.cli", "sweep", str(spec), "--out",
                             str(tmp_path / "out"), "--jobs", "2"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "TMPDIR": str(temporary)})
    assert result.returncode == 1
    console = (result.stdout + result.stderr).replace("\r", "\n")
    for noise in ("without encryption", "KeyboardInterrupt", "ResourceWarning", "[IPKernelApp]", "Traceback"):
        assert noise not in console, noise
    assert console.count("skipped unreadable image") == 1
    assert len([line for line in console.splitlines() if " failed: " in line]) == 1
    assert result.stdout.splitlines()[-1] == f"report: {tmp_path / 'out' / 'report.md'}"
    assert not list(temporary.glob("apt-kernel-*"))


def test_parallel_runs_leave_the_working_directory_and_relative_out_alone(tmp_path, monkeypatch):
    """Runs in threads must not change the process's directory (papermill's cwd= chdirs the whole process):
    the report of a relative --out lands where the user asked, not inside a run's directory."""
    monkeypatch.chdir(tmp_path)
    changes = []
    out = (tmp_path / "relative-out").resolve()
    monkeypatch.setattr(os, "chdir", lambda path: changes.append(path) if out in Path(path).resolve().parents
                        else None)  # into a run's directory: what papermill's cwd= did
    assert main(["sweep", str(SMOKE), "--out", "relative-out", "--jobs", "2"]) == 0
    assert changes == [] and Path.cwd() == tmp_path
    assert (tmp_path / "relative-out" / "report.md").is_file()
    assert not list((tmp_path / "relative-out" / "runs").glob("*/relative-out"))
