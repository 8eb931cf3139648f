"""Accuracy against tokens in sweeps: the ``model`` keys, their records through the run notebook, the report figure."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from apt_research.cli import main
from apt_research.datasets import SYNTHETIC_KINDS
from apt_research.sweep.configuration import configuration_records
from apt_research.sweep.models import load_model
from apt_research.sweep.parameters import ParameterError, validate_params
from apt_research.sweep.spec import SpecError, load_spec

pytest.importorskip("timm")

TINY_SYNTHETIC = {"count": 24, "epochs": 1, "batch_size": 12, "embed_dim": 32, "depth": 1}
"""A synthetic ViT trained in well under a second: enough to predict, not to be accurate."""
NOTHING_MERGES, EVERYTHING_MERGES = -1.0, 1e6


@pytest.fixture(scope="module")
def model_sweep(tmp_path_factory):
    """A sweep through the run notebook: the synthetic ViT on thresholds that merge nothing and everything."""
    root = tmp_path_factory.mktemp("models")
    spec = root / "models.yaml"
    spec.write_text(yaml.safe_dump({"name": "models", "fixed": {
        "dataset": "synthetic", "dataset_options": {"count": 6, "size": 64, "seed": 500}, "image_size": 64,
        "num_scales": 2, "thresholds": [[NOTHING_MERGES], [EVERYTHING_MERGES]], "model": "synthetic",
        "model_options": TINY_SYNTHETIC}}))
    assert main(["sweep", str(spec), "--out", str(root / "out")]) == 0
    return root / "out"


def test_model_records_through_the_run_notebook(model_sweep):
    (run,) = (model_sweep / "runs").iterdir()
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    records = pd.read_parquet(run / "records.parquet")
    assert len(records) == 12 and records["model"].eq("synthetic").all()
    classes = records["label"].map(SYNTHETIC_KINDS.index)
    assert (records["top1_correct"] == (records["apt_pred"] == classes)).all()
    assert (records["uniform_top1_correct"] == (records["uniform_pred"] == classes)).all()
    assert (records[["uniform_seconds", "apt_seconds"]] > 0).all().all()

    nothing = records[records["threshold_1"] == NOTHING_MERGES]
    assert (nothing["retention"] == 1).all()
    assert nothing["agreement"].all() and (nothing["apt_pred"] == nothing["uniform_pred"]).all()
    assert np.allclose(nothing["kl"], 0, atol=1e-6)

    everything = records[records["threshold_1"] == EVERYTHING_MERGES]
    assert (everything["retention"] == 0.25).all()  # 64 px images: one 32 px patch for four 16 px ones
    assert (everything["agreement"] == (everything["apt_pred"] == everything["uniform_pred"])).all()
    assert (records["kl"] >= 0).all() and everything["kl"].sum() > 1e-6
    assert (everything["uniform_pred"].to_numpy() == nothing["uniform_pred"].to_numpy()).all()


def test_report_plots_agreement_and_accuracy_against_retention(model_sweep):
    assert (model_sweep / "figures" / "model_vs_retention.png").stat().st_size > 0
    assert (model_sweep / "figures" / "model_vs_retention.pdf").stat().st_size > 0
    summary = pd.read_parquet(model_sweep / "summary.parquet").sort_values("retention_mean")
    records = pd.concat(pd.read_parquet(p) for p in (model_sweep / "runs").glob("*/records.parquet"))
    expected = records.groupby("threshold_1")[["agreement", "top1_correct"]].mean().sort_index(ascending=False)
    assert np.allclose(summary["agreement"], expected["agreement"])
    assert np.allclose(summary["top1_accuracy"], expected["top1_correct"])
    assert summary["agreement"].iloc[-1] == 1.0
    assert "Classifier on APT against uniform tokens" in (model_sweep / "report.md").read_text()


def test_a_timm_model_with_random_weights_in_process():
    params = {"dataset": "synthetic", "dataset_options": {"count": 2, "size": 64}, "image_size": 64, "num_scales": 2,
              "thresholds": [[NOTHING_MERGES], [EVERYTHING_MERGES]], "model": "vit_tiny_patch16_224",
              "pretrained": False, "model_options": {"depth": 1}}
    table, _ = configuration_records(params)
    assert table["top1_correct"].isna().all()  # the synthetic kinds are no ImageNet classes
    nothing = table[table["threshold_1"] == NOTHING_MERGES]
    assert nothing["agreement"].all() and np.allclose(nothing["kl"], 0, atol=1e-6)
    assert (table["uniform_pred"].between(0, 999)).all()
    del params["thresholds"]
    calibrated, _ = configuration_records({**params, "target_retention": [1.0, 0.5]})
    assert np.allclose(calibrated.groupby("target_retention")["retention"].mean(), [0.5, 1.0], atol=0.1)
    assert calibrated[calibrated["target_retention"] == 1.0]["agreement"].all()


def test_the_synthetic_vit_is_trained_once_then_loaded_from_the_cache(tmp_path):
    params = validate_params({"dataset": "synthetic", "image_size": 64, "model": "synthetic",
                              "model_options": TINY_SYNTHETIC}, "test")
    trained, classes = load_model(params, tmp_path)
    (entry,) = (tmp_path / "models").iterdir()
    loaded, _ = load_model(params, tmp_path)
    assert classes == list(SYNTHETIC_KINDS) and loaded is not trained
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(images), trained(images))
    assert list((tmp_path / "models").iterdir()) == [entry]


@pytest.mark.parametrize("params, message", [
    ({"model": "vit_tiny_patch16_22"}, "key 'model' expects a timm model name or 'synthetic', got "
                                       "'vit_tiny_patch16_22' (did you mean 'vit_tiny_patch16_224'?)"),
    ({"model": 3}, "key 'model' expects str or null, got 3"),
    ({"model": "synthetic", "pretrained": False}, "key 'pretrained' is false, but model 'synthetic' is trained in the run"),
    ({"model": "synthetic", "model_options": {"epoch": 1}}, "key 'model_options' has unknown option(s) ['epoch'] for model 'synthetic'"),
    ({"model": "vit_tiny_patch16_224", "model_options": {"img_size": 96}}, "key 'model_options' sets ['img_size']"),
    ({"model_options": {"depth": 1}}, "key 'model_options' needs a 'model', got model: null"),
    ({"model": "synthetic", "resize": "native"}, "key 'resize' is 'native', but a 'model' takes square images"),
    ({"pretrained": "yes"}, "key 'pretrained' expects bool, got 'yes'"),
])
def test_model_keys_are_validated(params, message):
    with pytest.raises(ParameterError) as info:
        validate_params(params, "spec")
    assert message in str(info.value)


def test_a_model_sweep_without_timm_stops_before_anything_runs(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "models.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "fixed": {"model": "synthetic"}}))
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError, as where it is not installed
    with pytest.raises(SpecError, match=r"key 'model' is 'synthetic', but .*pip install 'apt-research\[models\]'"):
        load_spec(spec)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "apt-research[models]" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_model_figure_leaves_out_accuracy_without_labels():
    from apt_research.presentation.figures import plot_model_vs_retention

    summary = pd.DataFrame({"retention_mean": [1.0, 0.5, 1.0, 0.6], "agreement": [1.0, 0.7, 1.0, 0.8],
                            "top1_accuracy": np.nan, "uniform_top1_accuracy": np.nan, "psnr_mean": [np.nan, 30, np.nan, 32],
                            "ssim_mean": [1.0, 0.9, 1.0, 0.95], "method": ["entropy", "entropy", "laplacian", "laplacian"]})
    figure = plot_model_vs_retention(summary, curve="method")
    ylabels = [ax.get_ylabel() for ax in figure.axes]
    assert ylabels == ["top-1 agreement with uniform tokens", "PSNR of reconstruction (dB)", "SSIM of reconstruction"]
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["entropy", "laplacian"]
    assert list(figure.axes[0].get_lines()[0].get_xdata()) == [0.5, 1.0]
