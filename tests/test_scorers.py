"""The laplacian and upsample_mse scorers against plain per-patch loops (spec section 3), and the registry."""

import pytest
import torch
import torch.nn.functional as F

from apt_research import SCORERS, compute_importance_maps, register_scorer

import reference
from conftest import skimage_batch


def _laplacian_loop(images, size, aggregate):
    gray = reference.gray(images) / 255.0
    batch, height, width = gray.shape
    padded = F.pad(gray.unsqueeze(1), (1, 1, 1, 1), mode="reflect")[:, 0]
    response = torch.zeros_like(gray)
    for y in range(height):
        for x in range(width):
            window = padded[:, y : y + 3, x : x + 3]
            response[:, y, x] = (window.sum((1, 2)) - 9 * window[:, 1, 1]).abs()
    rows, cols = -(-height // size), -(-width // size)
    full = F.pad(response, (0, cols * size - width, 0, rows * size - height))
    out = torch.zeros(batch, rows, cols)
    for i in range(rows):
        for j in range(cols):
            values = full[:, i * size : (i + 1) * size, j * size : (j + 1) * size].flatten(1)
            out[:, i, j] = {"mean": values.mean(1), "max": values.amax(1), "std": values.std(1)}[aggregate]
    return out


@pytest.mark.parametrize("aggregate", ["mean", "max", "std"])
def test_laplacian_matches_loop(aggregate):
    images = skimage_batch(40, 56, names=("astronaut", "camera"))
    maps = compute_importance_maps(images, "laplacian", 16, 2, pad_value=99.0, aggregate=aggregate)
    for size in (16, 32):
        expected = _laplacian_loop(images, size, aggregate)
        rows, cols = expected.shape[1:]
        pad_r, pad_c = rows * size > 40, cols * size > 56
        inner = maps[size][:, : rows - pad_r, : cols - pad_c]
        assert torch.allclose(inner, expected[:, : rows - pad_r, : cols - pad_c], atol=1e-5)
        if pad_c:
            assert torch.all(maps[size][:, :, -1] == 99.0)


def test_upsample_mse_zero_at_scale_zero_and_matches_formula():
    images = skimage_batch(64, 64, names=("coffee",))
    maps = compute_importance_maps(images, "upsample_mse", 16, 3)
    assert torch.all(maps[16] == 0)
    rgb = images / 255
    restored = F.interpolate(F.interpolate(rgb, scale_factor=0.25, mode="bilinear"), size=(64, 64), mode="bilinear")
    error = (rgb - restored).pow(2).mean(1)
    assert torch.allclose(maps[64][0, 0, 0], error.mean(), atol=1e-7)


def test_a_new_scorer_is_one_function():
    @register_scorer("brightness")
    def brightness(images, patch_size, num_scales):
        return {patch_size * 2**s: F.avg_pool2d(images.float().mean(1, keepdim=True), patch_size * 2**s, ceil_mode=True)[:, 0] for s in range(num_scales)}

    try:
        maps = compute_importance_maps(torch.rand(1, 3, 64, 64) * 255, "brightness", 16, 2)
        assert maps[32].shape == (1, 2, 2)
    finally:
        SCORERS.pop("brightness")
