"""The labelled synthetic data set, the in-process classifier, per-image records and notebooks/models.ipynb."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm", reason="timm is the optional [models] extra (python3 run.py installs it)")

from apt_research.datasets import SYNTHETIC_KINDS, iter_images, load_dataset  # noqa: E402
from apt_research.models import (  # noqa: E402
    UNKNOWN_LABEL,
    accuracy_by_setting,
    from_timm,
    labelled_images,
    prediction_records,
    synthetic_classification_data,
    threshold_records,
    train_synthetic_vit,
)
from apt_research.models.synthetic import normalise  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = {"image_size": 64, "patch_size": 16, "count": 60, "epochs": 10, "batch_size": 20, "embed_dim": 32, "depth": 1,
        "progress": False}


@pytest.fixture(scope="module")
def classifier():
    return train_synthetic_vit(**TINY)


def test_classes_are_the_kinds_of_the_synthetic_data_set():
    pixels, labels = synthetic_classification_data(8, 32, seed=5)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    images = [image for image, _ in iter_images(load_dataset("synthetic", count=8, size=32, seed=5), "native",
                                                progress=False)]
    assert torch.equal(pixels, torch.stack(images))
    with pytest.raises(ValueError, match=r"kinds must be among .* got unknown \['stripes'\]"):
        synthetic_classification_data(2, 32, kinds=("flat", "stripes"))


def test_training_is_seeded():
    first, again = (train_synthetic_vit(**dict(TINY, epochs=1)) for _ in range(2))
    for (name, value), other in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(value, other), name


def test_training_learns(classifier):
    pixels, labels = synthetic_classification_data(TINY["count"], TINY["image_size"])
    with torch.no_grad():
        loss = F.cross_entropy(classifier(normalise(pixels, classifier)), labels)
    assert loss < 0.8 * np.log(len(SYNTHETIC_KINDS))  # below chance level


def test_an_unknown_label_leaves_only_its_own_image_unscored(classifier):
    known = SYNTHETIC_KINDS[:-1]  # the last kind is not among the classes
    images, labels = labelled_images(classifier, "synthetic", {"count": 12, "size": 80, "seed": 100}, known)
    assert labels.tolist() == [0, 1, 2, 3, 4, UNKNOWN_LABEL] * 2
    records = threshold_records(classifier, images, labels, 2, [[-1.0], [7.0]], batch_size=5)
    unknown = records["image"] % len(SYNTHETIC_KINDS) == len(SYNTHETIC_KINDS) - 1
    for column in ("label", "top1_correct", "uniform_top1_correct"):
        assert records.loc[unknown, column].isna().all() and records.loc[~unknown, column].notna().all(), column
    assert (records.loc[~unknown, "top1_correct"] == (records.loc[~unknown, "apt_pred"]
                                                      == records.loc[~unknown, "label"])).all()
    summary = accuracy_by_setting(records).set_index("thresholds")
    expected = records[~unknown].groupby("thresholds")["top1_correct"].apply(lambda c: c.astype(float).mean())
    assert np.allclose(summary.loc[expected.index, "top1_correct"].astype(float), expected)
    with pytest.raises(ValueError, match="labels must be class indices >= 0 or UNKNOWN_LABEL"):
        prediction_records(from_timm(classifier, 2, [7.0]), images[:2], torch.tensor([0, -2]))


def test_records_compare_uniform_and_apt(classifier):
    images, labels = labelled_images(classifier, "synthetic", {"count": 12, "size": 80, "seed": 100},
                                     SYNTHETIC_KINDS)
    assert images.shape == (12, 3, 64, 64) and labels.tolist() == [0, 1, 2, 3, 4, 5] * 2
    records = threshold_records(classifier, images, labels, 2, [[-1.0], [7.0]], batch_size=5)
    assert len(records) == 24
    same, merged = records[records["thresholds"] == (-1.0,)], records[records["thresholds"] == (7.0,)]
    assert same["agreement"].all() and same["kl"].abs().max() < 1e-6 and (same["retention"] == 1).all()
    assert (same["top1_correct"] == same["uniform_top1_correct"]).all()
    assert merged["retention"].mean() < 1 and (merged["tokens"] < 17).any()
    with torch.no_grad():  # the records hold what the models say
        apt = from_timm(classifier, 2, [7.0])
        expected = prediction_records(apt, images[:3])
        assert expected["apt_pred"].tolist() == apt(images[:3]).argmax(1).tolist()
        maps = apt.tokenizer.compute_importance_maps(images[:3])
        with_maps = prediction_records(apt, images[:3], importance_maps=maps)
        pd.testing.assert_frame_equal(with_maps.drop(columns=["uniform_seconds", "apt_seconds"]),
                                      expected.drop(columns=["uniform_seconds", "apt_seconds"]))
        assert expected["uniform_pred"].tolist() == classifier(images[:3]).argmax(1).tolist()
    assert "top1_correct" not in expected
    summary = accuracy_by_setting(records)
    assert summary["retention"].tolist() == sorted(summary["retention"], reverse=True)
    assert summary.loc[0, "agreement"] == 1.0


def test_models_notebook(tmp_path):
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "papermill", str(ROOT / "notebooks/models.ipynb"), str(tmp_path / "run.ipynb"),
         "-p", "output_dir", str(out), "-y",
         "model_options: {image_size: 64, count: 30, epochs: 1, embed_dim: 16, depth: 1}\n"
         "dataset_options: {count: 6, size: 64, seed: 100}\nnum_scales: 2\nthresholds: [[-1.0], [7.0]]"],
        check=True, cwd=ROOT, capture_output=True,
    )
    records = pd.read_parquet(out / "records.parquet")
    assert len(records) == 12 and records["top1_correct"].notna().all()
    assert (out / "accuracy_vs_retention.png").stat().st_size > 0
