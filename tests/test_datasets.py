"""Data sets (bundled, synthetic, folder) and resize policies."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from apt_research import compute_patch_entropy_batched
from apt_research.datasets import (
    SKIMAGE_NAMES,
    iter_batches,
    iter_images,
    load_dataset,
    resize_image,
    skimage_dataset,
    synthetic_dataset,
    to_rgb_uint8,
)


def test_every_bundled_image_loads_offline_as_rgb():
    source = skimage_dataset()
    assert len(source) == len(SKIMAGE_NAMES) >= 25
    for pixels, meta in iter_images(source, "native", progress=False):
        assert pixels.shape[0] == 3 and pixels.dtype == torch.float32
        assert 0 <= float(pixels.min()) and float(pixels.max()) <= 255
        assert meta["source"].startswith("skimage.data.")
    assert source.skipped == []


def test_synthetic_is_seeded_and_has_known_structure():
    first = [p for p, _ in iter_images(synthetic_dataset(6, 128, seed=3), "native", progress=False)]
    again = [p for p, _ in iter_images(synthetic_dataset(6, 128, seed=3), "native", progress=False)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    maps = {kind: compute_patch_entropy_batched(p[None], 16, 3, 512)[64]
            for p, (kind) in zip(first, ["flat", "gradient", "white_noise", "pink_noise", "shapes", "strokes"])}
    assert float(maps["flat"].max()) < 1e-6
    # 4096 draws of 256 gray levels: the maximum for 8-bit pixels is 8 bits.
    assert 7.9 < float(maps["white_noise"].mean()) <= 8.0
    assert float(maps["gradient"].mean()) < float(maps["pink_noise"].mean())


def _write_folder(root):
    (root / "cats").mkdir(parents=True)
    (root / "docs" / "deep").mkdir(parents=True)
    Image.fromarray(data.chelsea()).save(root / "cats" / "a.jpg")
    Image.fromarray(data.camera()).save(root / "docs" / "deep" / "gray.png")
    Image.fromarray(data.camera().astype(np.uint16) * 257).save(root / "docs" / "sixteen.png")
    Image.fromarray(data.coffee()).convert("P").save(root / "palette.bmp")
    Image.fromarray(np.dstack([data.camera()] * 3 + [data.camera()])).save(root / "rgba.webp")
    Image.fromarray(data.astronaut()).save(root / "tiff.tif")
    (root / "cats" / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "notes.txt").write_text("not an image")


def test_folder_reads_every_format_and_skips_corrupt_files(tmp_path):
    _write_folder(tmp_path)
    source = load_dataset(str(tmp_path))
    assert len(source) == 7
    with pytest.warns(UserWarning, match="skipped unreadable image .*corrupt.jpg"):
        loaded = list(iter_images(source, "resize", 64, progress=False, workers=3))
    names = {meta["name"]: meta for _, meta in loaded}
    assert set(names) == {"cats/a", "docs/deep/gray", "docs/sixteen", "palette", "rgba", "tiff"}
    assert names["cats/a"]["label"] == "cats" and names["palette"]["label"] is None
    assert [s["item"].endswith("corrupt.jpg") for s in source.skipped] == [True]
    sixteen = next(p for p, m in loaded if m["name"] == "docs/sixteen")
    gray = next(p for p, m in loaded if m["name"] == "docs/deep/gray")
    assert torch.allclose(sixteen, gray, atol=1.0), "16-bit scales down to 8 bits"
    assert all(p.shape == (3, 64, 64) for p, _ in loaded)


def test_to_rgb_uint8_conversions():
    assert to_rgb_uint8(np.ones((4, 5), dtype=bool)).max() == 255
    assert to_rgb_uint8(np.full((4, 5), 0.5)).max() == 128
    assert to_rgb_uint8(np.zeros((4, 5, 4), dtype=np.uint8)).shape == (4, 5, 3)


@pytest.mark.parametrize("policy,size,expected", [
    ("center_crop", 224, (224, 224)),
    ("resize", (100, 150), (100, 150)),
    ("short_side", 224, (224, 320)),
    ("native", None, (300, 451)),
])
def test_resize_policies(policy, size, expected):
    cat = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()
    out = resize_image(cat, policy, size, patch_size=16)
    assert tuple(out.shape[-2:]) == expected
    assert float(out.min()) >= 0 and float(out.max()) <= 255


def test_center_crop_keeps_the_middle():
    image = torch.zeros(3, 256, 512)
    image[:, :, 192:320] = 255.0
    out = resize_image(image, "center_crop", 224)
    assert float(out[:, :, 112].mean()) > 200 and float(out[:, :, 5].mean()) < 1


def test_bad_dataset_and_policy():
    with pytest.raises(ValueError, match="dataset must be one of .*'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="resize must be one of .*'stretch'"):
        resize_image(torch.zeros(3, 8, 8), "stretch", 4)
    with pytest.raises(ValueError, match="names must be bundled .*'lena'"):
        skimage_dataset(["lena"])


def test_batches_group_equal_sizes():
    items = [(torch.zeros(3, 8, 8), {"i": 0}), (torch.zeros(3, 8, 8), {"i": 1}), (torch.zeros(3, 4, 8), {"i": 2})]
    batches = list(iter_batches(iter(items), batch_size=4))
    assert [b.shape[0] for b, _ in batches] == [2, 1]


def test_bundled_images_are_the_same_on_every_load():
    first = [p for p, _ in iter_images(skimage_dataset(["binary_blobs", "camera"]), "native", progress=False)]
    again = [p for p, _ in iter_images(skimage_dataset(["binary_blobs", "camera"]), "native", progress=False)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
