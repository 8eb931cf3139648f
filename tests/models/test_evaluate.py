"""``apt-research evaluate``: top-1/top-5 of uniform and APT tokens on labelled folders, and its refusals."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from apt_research.cli import main
from apt_research.datasets import SYNTHETIC_KINDS, synthetic_image
from apt_research.models.classes import imagenet_synsets

timm = pytest.importorskip("timm")

SYNSETS = ["n01440764", "n01443537", "n01484850"]


def _folder(root, classes=SYNSETS, per_class=3, broken=False):
    for number, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            kind = SYNTHETIC_KINDS[(number + index) % len(SYNTHETIC_KINDS)]
            Image.fromarray(synthetic_image(kind, 96 + 16 * index, 100 * number + index)).save(
                root / name / f"image{index}.png")
    if broken:
        (root / classes[0] / "broken.jpg").write_bytes(b"not an image at all")
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random ``vit_tiny_patch16_224``'s state_dict at 64 px (small and quick), saved: the weights evaluate loads,
    and the test's reference."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_evaluate_scores_synset_folders_against_a_direct_forward(tmp_path, tiny_checkpoint, capsys):
    path, model = tiny_checkpoint
    data = _folder(tmp_path / "data", broken=True)
    code = main(["evaluate", "--model", "vit_tiny_patch16_224", "--checkpoint", str(path),
                 "--image-size", "64", "--data", str(data),
                 "--thresholds", "5", "4", "--num-scales", "3", "--batch-size", "4", "--out", str(tmp_path / "out")])
    assert code == 0
    frame = pd.read_csv(tmp_path / "out" / "evaluation.csv")
    assert {"tokenization", "thresholds", "top1", "top5", "images", "retention", "images_per_second"} <= set(frame)
    assert list(frame["tokenization"]) == ["uniform", "apt"]
    assert list(frame["images"]) == [9, 9] and list(frame["skipped"]) == [1, 1]
    assert "skipped 1 image" in capsys.readouterr().out
    # the reference: timm's own eval transform and the model on each image, labels from ImageNet's table
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**{**config, "input_size": (3, 64, 64), "interpolation": "bicubic",
                                              "crop_pct": 0.875})
    synsets = imagenet_synsets()
    correct1 = correct5 = 0
    for name in SYNSETS:
        for file in sorted((data / name).glob("*.png")):
            logits = model(transform(Image.open(file).convert("RGB"))[None])
            top = logits.topk(5).indices[0]
            correct1 += int(top[0] == synsets.index(name))
            correct5 += int(synsets.index(name) in top.tolist())
    uniform = frame.set_index("tokenization").loc["uniform"]
    assert uniform["top1"] == pytest.approx(correct1 / 9) and uniform["top5"] == pytest.approx(correct5 / 9)
    assert uniform["retention"] == 1 and uniform["tokens_per_image"] == 17
    apt = frame.set_index("tokenization").loc["apt"]
    assert apt["thresholds"] == "5,4" and 0 < apt["retention"] < 1 and apt["tokens_per_image"] < 17
    assert (tmp_path / "out" / "evaluation.md").read_text().startswith("| model")


def test_target_retention_calibrates_the_thresholds(tmp_path, tiny_checkpoint):
    path, _ = tiny_checkpoint
    data = _folder(tmp_path / "data", per_class=4)
    assert main(["evaluate", "--model", "vit_tiny_patch16_224", "--checkpoint", str(path),
                 "--image-size", "64", "--data", str(data),
                 "--target-retention", "0.5", "--out", str(tmp_path / "out")]) == 0
    apt = pd.read_csv(tmp_path / "out" / "evaluation.csv").set_index("tokenization").loc["apt"]
    assert apt["retention"] == pytest.approx(0.5, abs=0.08)


@pytest.mark.parametrize("layout, message", [
    ("flat", "no sub-folder holding images"),
    ("unknown synset", "lack 1 of the folder's synsets: n99999999"),
    ("names", "are not ImageNet synsets"),
])
def test_folders_the_model_cannot_score_are_refused(tmp_path, tiny_checkpoint, capsys, layout, message):
    path, _ = tiny_checkpoint
    data = tmp_path / "data"
    if layout == "flat":
        data.mkdir()
        Image.fromarray(synthetic_image("shapes", 64, 0)).save(data / "a.png")
    else:
        _folder(data, ["n01440764", "n99999999"] if layout == "unknown synset" else ["cat", "dog"], per_class=1)
    code = main(["evaluate", "--model", "vit_tiny_patch16_224", "--checkpoint", str(path),
                 "--image-size", "64", "--data", str(data),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_checkpoint_of_another_architecture_is_named(tmp_path, capsys):
    torch.manual_seed(0)
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04junk")
    data = _folder(tmp_path / "data", per_class=1)
    for weights, message in [("other.pt", "another architecture than --model 'vit_tiny_patch16_224'"),
                             ("junk.pt", "is not a checkpoint torch can read")]:
        code = main(["evaluate", "--model", "vit_tiny_patch16_224", "--checkpoint", str(tmp_path / weights),
                     "--image-size", "64", "--data", str(data), "--out", str(tmp_path / "out")])
        assert code == 2
        assert message in capsys.readouterr().err


def test_bad_arguments_name_themselves(tmp_path, capsys):
    data = _folder(tmp_path / "data", per_class=1)
    for extra, message in [(["--model", "vit_tiny_patch16_224x"], "not a timm model"),
                           (["--model", "vit_tiny_patch16_224", "--batch-size", "0"], "--batch-size"),
                           (["--model", "vit_tiny_patch16_224", "--thresholds", "5"], "thresholds must have")]:
        code = main(["evaluate", "--no-pretrained", "--image-size", "64", "--data", str(data), "--out",
                     str(tmp_path / "out"), *extra])
        assert code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "x", "--data", str(data), "--out", "o", "--target-retention", "1.5"])
