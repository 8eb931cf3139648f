"""One parameter schema: spec and notebook validation, report columns, dry-run, CLI options, the docs table (docs/sweeps.md)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from apt_research.cli import main
from apt_research.sweep.cache import cache_key
from apt_research.sweep.parameters import EXECUTION_KEYS, PARAMETERS, Parameters, parameter_table
from apt_research.sweep.report import build_report, config_columns, configuration_label, report_tables, summarise
from apt_research.sweep.runner import run_sweep
from apt_research.sweep.spec import load_spec
from sweep_helpers import InProcessExecutor

ROOT = Path(__file__).resolve().parents[2]
TINY = {"dataset": "synthetic", "dataset_options": {"count": 2, "size": 48, "seed": 0}, "image_size": 32,
        "num_scales": 2, "thresholds": [[5.0]]}


@pytest.fixture(scope="module")
def tiny_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    run_sweep(load_spec({"name": "tiny", "fixed": TINY}), out, executor=InProcessExecutor(), progress=False)
    return pd.concat(pd.read_parquet(p) for p in out.glob("runs/*/records.parquet"))


def test_a_sweep_varying_only_dataset_options_reports_one_row_per_option(tmp_path):
    sweep = load_spec({"name": "seeds", "fixed": {k: v for k, v in TINY.items() if k != "dataset_options"},
                       "grid": {"dataset_options": [{"count": 2, "size": 48, "seed": 0},
                                                    {"count": 2, "size": 48, "seed": 7}]}})
    statuses = run_sweep(sweep, tmp_path, executor=InProcessExecutor(), progress=False)
    assert [s["state"] for s in statuses] == ["finished", "finished"]
    report = build_report(tmp_path)
    assert len(report.summary) == 2 and list(report.summary["images"]) == [2, 2]
    for title in ("Token savings and fidelity", "Token budgets and speed", "Scale mix", "Entropy statistics"):
        section = report.markdown.split(f"## {title}")[1].split("##")[0]
        assert "dataset_options" in section.splitlines()[2], title


@pytest.mark.parametrize("key", [k for k in PARAMETERS
                                 if k not in ("dataset", "thresholds", "target_retention", *EXECUTION_KEYS)])
def test_every_varied_parameter_is_a_column_of_every_table_and_a_facet_of_the_figures(tiny_records, key):
    first, second = tiny_records.copy(), tiny_records.copy()
    first[key], second[key] = "a", "b"
    records = pd.concat([first, second], ignore_index=True)
    summary = summarise(records)
    assert len(summary) == 2 * len(summarise(tiny_records)) and key in config_columns(records)
    for title, table in report_tables(summary).items():
        assert key in table.columns, title
    assert configuration_label(records).nunique() == 2


@pytest.mark.parametrize("key", list(PARAMETERS))
def test_the_cache_key_changes_with_each_maps_parameter_and_no_other(key):
    from apt_research.scorers import SCORERS

    base = {**PARAMETERS, "method": "entropy"}
    other = next(name for name in SCORERS if name != "entropy") if key == "method" else ["changed"]
    changes = cache_key({**base, key: other}) != cache_key(base)
    assert changes == Parameters.model_fields[key].json_schema_extra["maps"], key
    assert changes == (key in {"dataset", "dataset_options", "resize", "image_size", "patch_size", "num_scales",
                               "bins", "method", "method_options", "limit"}), key


def test_run_ids_derive_from_the_schema():
    ids = {run["run_id"] for run in load_spec({"name": "x", "grid": {"bins": [64, 128]}}).runs}
    assert len(ids) == 2


@pytest.mark.parametrize("key, values", [("batch_size", [4, 8]), ("shard_size", [None, 1]), ("device", ["cpu"])])
def test_execution_parameters_are_not_part_of_the_run_id_nor_a_configuration_column(tiny_records, key, values):
    assert set(EXECUTION_KEYS) == {"shard_size", "batch_size", "device"}
    assert len({run["run_id"] for run in load_spec({"name": "x", "grid": {key: values}}).runs}) == 1
    records = pd.concat([tiny_records.assign(**{key: "a"}), tiny_records.assign(**{key: "b"})], ignore_index=True)
    assert key not in config_columns(records) and configuration_label(records).nunique() == 1


def test_resume_after_changing_shard_size_or_batch_size_reuses_the_finished_runs(tmp_path):
    run_sweep(load_spec({"name": "tiny", "fixed": TINY}), tmp_path, executor=InProcessExecutor(), progress=False)
    before = {p: p.read_bytes() for p in tmp_path.glob("runs/*/records.parquet")}
    changed = load_spec({"name": "tiny", "fixed": {**TINY, "shard_size": 1, "batch_size": 1}})
    statuses = run_sweep(changed, tmp_path, resume=True, executor=InProcessExecutor(), progress=False)
    assert [s.get("skipped") for s in statuses] == [True]
    assert {p: p.read_bytes() for p in tmp_path.glob("runs/*/records.parquet")} == before


def test_readme_parameter_table_is_the_schema():
    assert parameter_table() in (ROOT / "docs" / "sweeps.md").read_text()


def test_run_notebook_parameters_and_their_defaults_are_the_schema():
    from apt_research.sweep.configuration import NOTEBOOK_NAMES

    notebook = json.loads((ROOT / "notebooks" / "run.ipynb").read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    defaults = {}
    exec("".join(cell["source"]), {}, defaults)
    assert list(defaults) == [*PARAMETERS, *NOTEBOOK_NAMES]
    assert {name: defaults[name] for name in PARAMETERS} == PARAMETERS


def test_a_typo_in_a_notebook_parameter_fails_naming_the_parameter(tmp_path):
    result = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "run.ipynb"),
                             str(tmp_path / "out.ipynb"), "-p", "num_scale", "3", "-p", "output_dir",
                             str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "unknown parameter 'num_scale' (did you mean 'num_scales'?)" in result.stderr + result.stdout
    assert not (tmp_path / "run" / "records.parquet").exists()


@pytest.mark.parametrize("fixed,message", [
    ({"dataset": "skimage", "dataset_options": {"nmes": ["coins"]}},
     "key 'dataset_options' does not fit data set 'skimage'"),
    ({"dataset": "skimage", "dataset_options": {"names": ["nope"]}}, "got unknown ['nope']"),
    ({"dataset": "synthetic", "dataset_options": {"kinds": ["plaid"]}}, "fails for data set 'synthetic'"),
    ({"method": "laplacian", "method_options": {"agregate": "mean"}},
     "key 'method_options' has unknown option(s) ['agregate']"),
    ({"device": "bogus"}, "key 'device' expects a torch device"),
    ({"num_scales": 2, "thresholds": [float("nan")]}, "key 'fixed.thresholds[0]' is nan; expected a finite number"),
    ({"dataset": "no/such/folder"}, "or an existing folder, got 'no/such/folder'"),
    ({"limit": -1}, "key 'limit' expects int or null, got -1"),
    ({"limit": 0}, "key 'limit' expects int or null, got 0"),
    ({"bins": True}, "key 'bins' expects int, got True"),
    ({"num_scale": 3}, "unknown key 'fixed.num_scale' (did you mean 'num_scales'?)"),
    ({"bins": 2**40}, "key 'bins'"),
    ({"method": "laplacian", "method_options": {"aggregate": "median"}},
     "is refused by scorer 'laplacian': aggregate must be one of"),
    ({"method_options": {"backend": "bogus"}}, "is refused by scorer 'entropy'"),
    ({"image_size": 32, "patch_size": 16, "num_scales": 9}, "num_scales=9 makes the coarsest patch"),
])
def test_dry_run_catches_what_a_run_would_fail_on(tmp_path, capsys, fixed, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "fixed": fixed}))
    assert main(["sweep", str(spec), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(spec) in err[0]


def test_relative_folders_resolve_against_the_spec_files_directory(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "mine.yaml"
    spec.write_text(yaml.safe_dump({"name": "mine", "fixed": {"dataset": "folder",
                                                              "dataset_options": {"root": "../photos"}}}))
    monkeypatch.chdir(ROOT)  # not the spec's directory: the paths still resolve against it
    assert load_spec(spec).runs[0]["params"]["dataset_options"]["root"] == str(tmp_path / "photos")
    spec.write_text(yaml.safe_dump({"name": "mine", "fixed": {"dataset": "../photos"}}))
    assert load_spec(spec).runs[0]["params"]["dataset"] == str(tmp_path / "photos")


def test_large_grids_print_their_run_count_and_need_yes(tmp_path, capsys):
    spec = tmp_path / "big.yaml"
    spec.write_text(yaml.safe_dump({"name": "big", "grid": {"bins": list(range(2, 1003))}}))
    assert main(["sweep", str(spec), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    assert "expands to 1,001 runs, more than 1,000; pass --yes" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--dry-run", "--yes", "--out", str(tmp_path / "out")]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("sweep big: 1001 run(s)") and "varying bins" in listing[0] and len(listing) == 1002


@pytest.mark.parametrize("arguments,message", [
    (["--jobs", "0"], "--jobs expects a whole number >= 1, got '0'"),
    (["--jobs", "two"], "--jobs expects a whole number >= 1, got 'two'"),
    (["--device", "bogus"], "--device expects a torch device (cpu, cuda, cuda:1), got 'bogus'"),
    (["--out", "FILE"], "--out expects a directory, got"),
    (["--out", "USERDIR"], "--out expects a new or empty directory, or one apt-research made"),
])
def test_bad_sweep_options_exit_2_with_one_line_before_any_work(tmp_path, capsys, arguments, message):
    (tmp_path / "FILE").write_text("mine")
    (tmp_path / "USERDIR").mkdir()
    (tmp_path / "USERDIR" / "notes.txt").write_text("mine")
    arguments = [str(tmp_path / a) if a in ("FILE", "USERDIR") else a for a in arguments]
    assert main(["sweep", str(ROOT / "ablations" / "smoke.yaml"), *arguments]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert (tmp_path / "FILE").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "USERDIR").iterdir()) == ["notes.txt"]
    assert not list(tmp_path.glob("**/runs"))


@pytest.mark.parametrize("target", ["missing", "FILE"])
def test_bad_report_directory_exits_2_with_one_line(tmp_path, capsys, target):
    (tmp_path / "FILE").write_text("mine")
    assert main(["report", str(tmp_path / target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search("SWEEP_DIR expects a sweep directory made by apt-research", err[0])


def test_the_report_predicts_a_speedup_for_every_vit_of_the_cost_model(tiny_records, monkeypatch):
    from apt_research.models.vit import VIT_CONFIGS, ViTConfig

    monkeypatch.setitem(VIT_CONFIGS, "vit_t", ViTConfig("vit_t", 192, 12, 3))
    records = tiny_records.assign(gflops_uniform_vit_t=2.0, gflops_apt_vit_t=1.0)
    summary = summarise(records)
    assert {f"speedup_pred_{model}" for model in VIT_CONFIGS} <= set(summary.columns)
    assert (summary["speedup_pred_vit_t"] == 2.0).all()
