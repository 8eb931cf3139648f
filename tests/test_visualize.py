"""The visualize command: the seed's layout, sensible content, failures that write nothing."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from apt_research.cli import main

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


@pytest.mark.parametrize("argv,message", [
    (["visualize", "{missing}"], "no such file"),
    (["visualize", "{corrupt}"], "cannot read image"),
    (["visualize", "skimage:astronaut", "--thresholds", "5.0"], "num_scales - 1 = 2"),
    (["visualize", "skimage:astronaut", "--method", "sobel"], "method must be one of"),
    (["visualize", "skimage:astronaut", "--resize", "stretch"], "--resize must be one of"),
    (["visualize", "skimage:lena"], "names must be bundled"),
])
def test_failures_exit_non_zero_with_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"nope")
    argv = [a.format(missing=tmp_path / "missing.jpg", corrupt=corrupt) for a in argv]
    out = tmp_path / "out"
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("apt-research visualize: error:")
    assert not out.exists()


def test_unknown_option_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["visualize", "skimage:astronaut", "--colour", "red"])
    assert info.value.code == 2
