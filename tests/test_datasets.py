"""Data sets (bundled, synthetic, folder) and resize policies."""

import numpy as np
import pytest
import torch
from einops import reduce
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from apt_research import compute_patch_entropy_batched
from apt_research.datasets import (
    SKIMAGE_NAMES,
    _reduction_factor,
    decode_image,
    folder_dataset,
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
    assert names["docs/deep/gray"]["item"] == "docs/deep/gray.png" and names["tiff"]["item"] == "tiff.tif"
    assert [source.item_name(path) for path in source.items] == sorted(
        p.relative_to(tmp_path).as_posix() for p in source.items)
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


@given(st.integers(1, 20000), st.integers(1, 20000), st.integers(1, 10**8))
def test_reduction_factor_is_the_smallest_that_fits(height, width, max_pixels):
    factor = _reduction_factor(height, width, max_pixels)
    assert -(-height // factor) * -(-width // factor) <= max_pixels
    assert factor == 1 or -(-height // (factor - 1)) * -(-width // (factor - 1)) > max_pixels


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"])
def test_decoding_shrunk_is_the_block_mean_of_decoding_whole(tmp_path, mode):
    rgb = data.chelsea()[:240, :360]
    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(rgb[..., 1].astype(np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    path = tmp_path / f"{mode.replace(';', '')}.png"
    image.save(path)
    whole, whole_info = decode_image(path)
    with pytest.warns(UserWarning, match=r"240x360 .* decoded at 1/3 of its size \(80x120\)"):
        shrunk, info = decode_image(path, max_pixels=80 * 120)
    assert whole_info == {"original_height": 240, "original_width": 360, "reduced_by": 1, "orientation": 1}
    assert info == {"original_height": 240, "original_width": 360, "reduced_by": 3, "orientation": 1}
    expected = reduce(whole.astype(np.float64), "(h 3) (w 3) c -> h w c", "mean")
    assert shrunk.shape == (80, 120, 3) and shrunk.dtype == np.uint8
    assert np.abs(shrunk - expected).max() <= 1.0


def test_a_folder_decodes_within_max_pixels(tmp_path):
    Image.fromarray(np.tile(data.chelsea(), (3, 3, 1))).save(tmp_path / "big.png")  # 900 x 1353
    Image.fromarray(data.camera()[:100, :100]).save(tmp_path / "small.png")
    with pytest.warns(UserWarning, match="big.png is 900x1353"):
        loaded = {meta["item"]: (pixels, meta) for pixels, meta in
                  iter_images(folder_dataset(tmp_path, max_pixels=200_000), "native", progress=False)}
    assert loaded["big.png"][0].shape == (3, 300, 451) and loaded["big.png"][1]["reduced_by"] == 3
    assert (loaded["big.png"][1]["original_height"], loaded["big.png"][1]["original_width"]) == (900, 1353)
    assert loaded["small.png"][0].shape == (3, 100, 100) and loaded["small.png"][1]["reduced_by"] == 1


def test_decode_image_refuses_a_bad_max_pixels(tmp_path):
    Image.fromarray(data.camera()).save(tmp_path / "camera.png")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match=f"max_pixels must be an int >= 1 or None, got {bad!r}"):
            decode_image(tmp_path / "camera.png", bad)
