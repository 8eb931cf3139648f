"""The sweep axis ``finetune_steps``: a configuration fine-tunes its classifier on APT tokens before predicting."""

import pytest

from apt_research.errors import ParameterError
from apt_research.sweep.configuration import configuration_records
from apt_research.sweep.parameters import validate_params

pytest.importorskip("timm")

CONFIGURATION = {
    "dataset": "synthetic", "dataset_options": {"count": 12, "size": 64, "seed": 10000}, "image_size": 64,
    "num_scales": 2, "thresholds": [[5.0]], "model": "synthetic",
    "model_options": {"count": 30, "epochs": 1, "embed_dim": 16, "depth": 1},
    "finetune_options": {"train_images": 24, "batch_size": 6, "lr": 0.01},
}


def test_finetune_steps_change_the_predictions_and_are_cached(tmp_path):
    zero_shot, _ = configuration_records(validate_params(dict(CONFIGURATION), "test"), tmp_path)
    params = validate_params({**CONFIGURATION, "finetune_steps": 3}, "test")
    tuned, _ = configuration_records(params, tmp_path)
    assert (tuned["finetune_steps"] == 3).all() and (zero_shot["finetune_steps"] == 0).all()
    # the same images and tokens; the uniform predictions are the classifier's before fine-tuning
    assert tuned["retention"].tolist() == zero_shot["retention"].tolist()
    assert tuned["uniform_pred"].tolist() == zero_shot["uniform_pred"].tolist()
    assert tuned["apt_pred"].tolist() != zero_shot["apt_pred"].tolist() or tuned["kl"].tolist() != zero_shot[
        "kl"].tolist()
    runs = list((tmp_path / "finetuned").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.pt").is_file()
    stamp = (runs[0] / "metrics.csv").stat().st_mtime_ns
    again, _ = configuration_records(params, tmp_path)  # the finished fine-tuning is reused, not run again
    assert (runs[0] / "metrics.csv").stat().st_mtime_ns == stamp
    assert again["apt_pred"].tolist() == tuned["apt_pred"].tolist()


@pytest.mark.parametrize("changes, message", [
    ({"model": None, "model_options": {}}, "key 'finetune_steps' needs a 'model'"),
    ({"finetune_options": {"lrr": 1}}, "unknown or sweep-set key(s) ['lrr']"),
    ({"finetune_options": {"thresholds": [1.0]}}, "unknown or sweep-set key(s) ['thresholds']"),
])
def test_bad_finetune_settings_are_refused(changes, message):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        validate_params({**CONFIGURATION, "finetune_steps": 2, **changes}, "test")
