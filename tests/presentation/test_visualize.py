"""The visualize command: the seed's layout, sensible content, failures that write nothing."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from apt_research.cli import main
from apt_research.contract import MAX_BINS
from apt_research.scorers import SCORERS, register_scorer
from apt_research.presentation.visualize import VisualizeConfig

LAYOUT = [
    "01_heatmaps/importance_map_scale_16.png",
    "01_heatmaps/importance_map_scale_32.png",
    "01_heatmaps/importance_map_scale_64.png",
    "02_patches_grid/patches_visualization.jpg",
    "03_original_resized/original_image.jpg",
    "03_original_resized/resized_image.jpg",
    "04_reconstruction/reconstruction.png",
    "summary.json",
]


def test_bundled_image(tmp_path):
    assert main(["visualize", "skimage:astronaut", "--out", str(tmp_path), "--image-size", "224"]) == 0
    for name in LAYOUT:
        assert (tmp_path / "astronaut" / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "astronaut" / "summary.json").read_text())
    assert summary["tokens_total"] == summary["tokens_16"] + summary["tokens_32"] + summary["tokens_64"]
    assert summary["retention"] == pytest.approx(summary["tokens_total"] / summary["tokens_base_grid"])
    assert 20 < summary["psnr"] < 60 and 0.5 < summary["ssim"] <= 1
    assert summary["parameters"]["thresholds"] == [5.75, 4.0]


def test_flat_region_is_large_patches_and_text_small(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sky = np.full((256, 256, 3), 180, dtype=np.uint8)
    Image.fromarray(sky).save(folder / "sky.png")
    Image.fromarray(data.text()).save(folder / "text.png")
    assert main(["visualize", str(folder), "--out", str(tmp_path / "out"), "--resize", "resize", "--image-size", "256"]) == 0
    sky_summary = json.loads((tmp_path / "out" / "sky" / "summary.json").read_text())
    text_summary = json.loads((tmp_path / "out" / "text" / "summary.json").read_text())
    assert sky_summary["tokens_64"] == 16 and sky_summary["tokens_16"] == 0
    assert text_summary["tokens_16"] > text_summary["tokens_32"] + text_summary["tokens_64"]


def test_folder_with_a_corrupt_file(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="broken.png"):
        assert main(["visualize", str(folder), "--out", str(tmp_path / "out"), "--image-size", "128"]) == 0
    assert (tmp_path / "out" / "coffee" / "summary.json").exists()
    assert not (tmp_path / "out" / "broken").exists()
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out


def _run(argv, capsys):
    """Exit code and stderr lines of ``apt-research ARGV`` (argparse's own errors included)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv,message", [
    (["{missing}"], "no such file"),
    (["{corrupt}"], "cannot be read"),
    (["skimage:lena"], "names must be bundled"),
])
def test_bad_images_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"nope")
    argv = [a.format(missing=tmp_path / "missing.jpg", corrupt=corrupt) for a in argv]
    out = tmp_path / "out"
    code, err = _run(["visualize", *argv, "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and message in err[0] and err[0].startswith("apt-research visualize: error:")
    assert not out.exists()


# (arguments, the option the one line must name, the value it must show)
BAD_OPTIONS = {
    "bins 1": (["--bins", "1"], "--bins", "1"),
    "bins too many": (["--bins", "70000"], "--bins", "70000"),
    "bins above the library's limit": (["--bins", "5000"], "--bins", "5000"),
    "bins not a number": (["--bins", "many"], "--bins", "many"),
    "bins without value": (["--bins"], "--bins", ""),
    "patch size 0": (["--patch-size", "0"], "--patch-size", "0"),
    "image size 0": (["--image-size", "0"], "--image-size", "0"),
    "image size below the coarsest patch": (["--image-size", "32"], "--image-size", "32"),
    "image size above max pixels": (["--image-size", "6000"], "--image-size", "6000"),
    "num scales 0": (["--num-scales", "0"], "--num-scales", "0"),
    "device bogus": (["--device", "bogus"], "--device", "bogus"),
    "device absent": (["--device", "cuda:99"], "--device", "cuda:99"),
    "max pixels 0": (["--max-pixels", "0"], "--max-pixels", "0"),
    "thresholds not numbers": (["--thresholds", "high"], "--thresholds", "high"),
    "thresholds not finite": (["--thresholds", "nan", "4"], "--thresholds", "nan"),
    "thresholds count": (["--thresholds", "5.0"], "--thresholds", "5.0"),
    "resize unknown": (["--resize", "stretch"], "--resize", "stretch"),
    "method unknown": (["--method", "sobel"], "--method", "sobel"),
    "no-resize with resize": (["--no-resize", "--resize", "resize"], "--no-resize", "resize"),
    "out is a file": (["--out", "{file}"], "--out", "{file}"),
    "out below a file": (["--out", "{file}/sub"], "--out", "{file}"),
    "unknown option": (["--colour", "red"], "--colour", "red"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_each_bad_option_exits_2_with_one_line_naming_it_before_any_work(tmp_path, capsys, case):
    argv, option, value = BAD_OPTIONS[case]
    user_file = tmp_path / "results.csv"
    user_file.write_text("a,b")
    argv = [a.format(file=user_file) for a in argv]
    out_args = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    code, err = _run(["visualize", "skimage:camera", *argv, *out_args], capsys)
    assert code == 2 and len(err) == 1, err
    assert option in err[0] and value.format(file=user_file) in err[0] and "Traceback" not in err[0], err
    assert err[0].startswith("apt-research"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"] and user_file.read_text() == "a,b"


@pytest.mark.parametrize("thresholds", [["6", "5"], ["6,5"], ["[6, 5]"], ["6", "5,"]])
def test_thresholds_space_or_comma_separated(tmp_path, thresholds):
    out = tmp_path / "out"
    argv = ["visualize", "skimage:camera", "--out", str(out), "--image-size", "64", "--thresholds", *thresholds]
    assert main(argv) == 0
    assert json.loads((out / "camera" / "summary.json").read_text())["parameters"]["thresholds"] == [6.0, 5.0]


def test_thresholds_before_image_and_for_one_scale(tmp_path):
    out = tmp_path / "out"
    assert main(["visualize", "--out", str(out), "--image-size", "64", "--num-scales", "1", "--thresholds", "--",
                 "skimage:camera"]) == 0
    summary = json.loads((out / "camera" / "summary.json").read_text())
    assert summary["parameters"]["thresholds"] == [] and summary["tokens_total"] == summary["tokens_base_grid"] == 16


@pytest.mark.parametrize("flag", ["--no-resize", "--no_resize"])
def test_no_resize_keeps_the_native_size(tmp_path, flag):
    image = tmp_path / "wide.png"
    Image.fromarray(data.chelsea()).save(image)
    assert main(["visualize", str(image), "--out", str(tmp_path / "out"), flag]) == 0
    summary = json.loads((tmp_path / "out" / "wide" / "summary.json").read_text())
    assert summary["image_size"] == [300, 451] and summary["parameters"]["resize"] == "native"
    assert summary["tokens_base_grid"] == 19 * 29


def test_huge_images_are_decoded_shrunk_with_a_warning(tmp_path):
    image = tmp_path / "huge.png"
    Image.fromarray(np.tile(data.chelsea(), (2, 2, 1))).save(image)  # 600 x 902
    with pytest.warns(UserWarning, match=r"600x902 .* above max_pixels=61000: decoded at 1/3 of its size \(200x301\)"):
        assert main(["visualize", str(image), "--out", str(tmp_path / "out"), "--no-resize",
                     "--max-pixels", "61000"]) == 0
    summary = json.loads((tmp_path / "out" / "huge" / "summary.json").read_text())
    assert summary["image_size"] == [200, 301] and summary["image"]["reduced_by"] == 3
    assert (summary["image"]["original_height"], summary["image"]["original_width"]) == (600, 902)


def test_what_is_only_shown_is_shrunk(tmp_path):
    image = tmp_path / "long.png"
    Image.fromarray(np.tile(data.chelsea(), (1, 8, 1))).save(image)  # 300 x 3608
    assert main(["visualize", str(image), "--out", str(tmp_path / "out"), "--no-resize"]) == 0
    for shown in ["03_original_resized/original_image.jpg", "03_original_resized/resized_image.jpg",
                  "04_reconstruction/reconstruction.png"]:
        with Image.open(tmp_path / "out" / "long" / shown) as figure:
            assert figure.width < 1600, f"{shown} shown at most 1024 pixels wide, not 3608"
    summary = json.loads((tmp_path / "out" / "long" / "summary.json").read_text())
    assert summary["image_size"] == [300, 3608], "analysed whole"


@pytest.mark.parametrize("size,scales", [((5, 40), 1), ((40, 300), 3)])
def test_no_resize_refuses_an_image_too_small_for_its_patches(tmp_path, capsys, size, scales):
    image = tmp_path / "small.png"
    Image.fromarray(np.full((*size, 3), 128, dtype=np.uint8)).save(image)
    thresholds = ["--thresholds"] + ["5"] * (scales - 1)
    code, err = _run(["visualize", "--num-scales", str(scales), "--out", str(tmp_path / "out"), "--no-resize",
                      *thresholds, "--", str(image)], capsys)
    assert code == 2 and len(err) == 1 and "--no-resize: the short side" in err[0] and str(image) in err[0], err
    assert not (tmp_path / "out").exists()


def test_bins_limit_is_the_library_s(capsys):
    with pytest.raises(ValueError, match=rf"--bins must be an int in \[2, {MAX_BINS}\], got {MAX_BINS + 1}"):
        VisualizeConfig(bins=MAX_BINS + 1).check()
    assert VisualizeConfig(bins=MAX_BINS).check().bins == MAX_BINS
    with pytest.raises(SystemExit):
        main(["visualize", "--help"])
    assert f"2 to {MAX_BINS}" in " ".join(capsys.readouterr().out.split())


def test_bins_reach_any_scorer_that_takes_them():
    saved = dict(SCORERS)
    try:
        @register_scorer("binned_test")
        def binned(images, patch_size, num_scales, *, bins=8):
            return {}
        assert VisualizeConfig(method="binned_test", bins=64).scorer_options() == {"bins": 64}
        assert VisualizeConfig(method="laplacian", bins=64).scorer_options() == {}
        assert VisualizeConfig(method="entropy", bins=64).scorer_options() == {"bins": 64}
    finally:
        SCORERS.clear()
        SCORERS.update(saved)
