"""The laplacian and upsample_mse scorers against plain per-patch loops (docs/contract.md), and the registry."""

import math

import pytest
import torch
import torch.nn.functional as F

from apt_research import SCORERS, PatchTokenizer, compute_importance_maps, register_scorer

from apt_research.testing import reference
from conftest import skimage_batch

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def normalise(pixels):
    return (pixels / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


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


@pytest.fixture
def registry():
    """Restore the registry after a test that registers or replaces scorers."""
    saved = dict(SCORERS)
    yield SCORERS
    SCORERS.clear()
    SCORERS.update(saved)


def _mean_gray(images, patch_size, num_scales, *, gain=1.0):
    gray = images.float().mean(1, keepdim=True) * gain
    return {patch_size * 2**s: F.avg_pool2d(gray, patch_size * 2**s, ceil_mode=True)[:, 0] for s in range(num_scales)}


def test_a_registered_scorer_works_in_the_tokenizer(registry):
    register_scorer("mean_gray")(_mean_gray)
    images = normalise(skimage_batch(64, 96))
    tokenizer = PatchTokenizer(2, 16, (64, 96), [100.0], MEAN, STD, method="mean_gray", gain=0.5)
    pixels = tokenizer.to_pixels(images)
    expected = compute_importance_maps(pixels, "mean_gray", 16, 2, gain=0.5)
    maps = tokenizer.compute_importance_maps(images)
    for size in expected:
        assert torch.equal(maps[size], expected[size])
    out = tokenizer(images)
    assert torch.equal(out["masks"][32], (expected[32] < 100.0).float())
    with pytest.raises(TypeError, match=r"method 'mean_gray' takes options \['gain'\], got unknown option.s. ..bins"):
        PatchTokenizer(2, 16, 64, [1.0], method="mean_gray", bins=64)


def test_the_tokenizer_gets_entropy_through_the_registry(registry):
    """Replacing the entropy scorer replaces it in PatchTokenizer too: there is no side door."""
    calls = []

    def constant(images, patch_size, num_scales, *, bins=512):
        calls.append(bins)
        return {patch_size * 2**s: torch.zeros(images.shape[0], -(-64 // (patch_size * 2**s)),
                                               -(-64 // (patch_size * 2**s))) for s in range(num_scales)}

    register_scorer("entropy", replace=True)(constant)
    tokenizer = PatchTokenizer(2, 16, 64, [1.0], bins=77)
    out = tokenizer(torch.zeros(2, 3, 64, 64))
    assert calls == [77]
    assert out["seqlens"] == [5, 5], "every 32-px patch kept: the constant scores, not the entropy"


def test_register_scorer_refuses_to_replace_silently(registry):
    with pytest.raises(ValueError, match=r"scorer named 'laplacian' is already registered .*replace=True"):
        register_scorer("laplacian")(_mean_gray)
    assert SCORERS["laplacian"].function is not _mean_gray
    register_scorer("laplacian", replace=True)(_mean_gray)
    assert SCORERS["laplacian"].function is _mean_gray


@pytest.mark.parametrize("function,words", [
    (lambda images, patch_size: {}, ["(images, patch_size, num_scales)"]),
    (lambda images, patch_size, num_scales, *, gain: {}, ["option 'gain'", "needs a default"]),
])
def test_register_scorer_checks_the_signature(registry, function, words):
    with pytest.raises(TypeError) as info:
        register_scorer("bad")(function)
    assert all(word in str(info.value) for word in words)
    assert "bad" not in SCORERS


def test_scorer_options_are_checked_by_the_scorer_checker(registry):
    def check(options):
        if options["gain"] <= 0:
            raise ValueError(f"gain must be positive, got {options['gain']}")
        return options

    register_scorer("mean_gray", check=check)(_mean_gray)
    with pytest.raises(ValueError, match="gain must be positive, got -1"):
        PatchTokenizer(2, 16, 64, [1.0], method="mean_gray", gain=-1)
    with pytest.raises(ValueError, match="gain must be positive, got 0"):
        compute_importance_maps(torch.zeros(1, 3, 64, 64), "mean_gray", gain=0)


@pytest.mark.parametrize("result,words", [
    ({16: torch.zeros(1, 4, 4)}, ["'wrong'", "patch sizes [16, 32]", "got [16]"]),
    ({16: torch.zeros(1, 4, 4), 32: torch.zeros(1, 3, 3)}, ["'wrong'", "maps[32]", "(1, 3, 3)", "(1, 2, 2)"]),
    ({16: torch.zeros(1, 4, 4), 32: torch.zeros(1, 2, 2, dtype=torch.uint8)}, ["maps[32]", "torch.uint8", "floating"]),
    ([torch.zeros(1, 4, 4)], ["'wrong'", "dict", "list"]),
])
def test_a_scorer_that_returns_wrong_maps_is_named(registry, result, words):
    register_scorer("wrong")(lambda images, patch_size, num_scales: result)
    for call in (lambda: compute_importance_maps(torch.zeros(1, 3, 64, 64), "wrong", 16, 2),
                 lambda: PatchTokenizer(2, 16, 64, [1.0], method="wrong")(torch.zeros(1, 3, 64, 64))):
        with pytest.raises(ValueError) as info:
            call()
        assert all(word in str(info.value) for word in words), str(info.value)


def test_bins_shorthand_is_the_entropy_scorer_option():
    images = normalise(skimage_batch(64, 64))
    tokenizer = PatchTokenizer(2, 16, 64, [5.0], MEAN, STD, bins=64)
    assert tokenizer.method_options == {"bins": 64, "backend": "auto"}
    expected = compute_importance_maps(tokenizer.to_pixels(images), "entropy", 16, 2, bins=64)
    maps = tokenizer.compute_importance_maps(images)
    for size in expected:
        assert float((maps[size] - expected[size]).abs().max()) <= 1e-5


SIZES = [(1, 1), (3, 5), (1, 40), (17, 2), (2, 2), (61, 97)]


@pytest.mark.parametrize("method", ["entropy", "laplacian", "upsample_mse"])
@pytest.mark.parametrize("height,width", SIZES)
def test_every_scorer_works_on_any_image_size(method, height, width):
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height * width)) * 255
    maps = compute_importance_maps(images, method, 16, 3, pad_value=50.0)
    for size in (16, 32, 64):
        rows, cols = -(-height // size), -(-width // size)
        assert maps[size].shape == (2, rows, cols)
        assert bool(torch.isfinite(maps[size]).all())
        if rows * size > height:
            assert torch.all(maps[size][:, -1, :] == 50.0)
    tokenizer = PatchTokenizer(3, 16, (height, width), [5.0, 4.0], [0.0] * 3, [1.0] * 3, method=method)
    masks = tokenizer(images / 255)["masks"]
    rows, cols = masks[16].shape[1:]
    cover = sum(masks[16 * 2**s].repeat_interleave(2**s, 1).repeat_interleave(2**s, 2)[:, :rows, :cols]
                for s in range(3))
    assert torch.all(cover == 1), "exact cover"


def test_upsample_mse_on_images_smaller_than_the_scale_uses_one_pixel():
    images = torch.rand(1, 3, 3, 5, generator=torch.Generator().manual_seed(0)) * 255
    maps = SCORERS["upsample_mse"](images, 1, 3)  # the scorer itself: no border rule over the padded patches
    rgb = images / 255
    restored = F.interpolate(F.interpolate(rgb, size=(1, 1), mode="bilinear"), size=(3, 5), mode="bilinear")
    assert torch.allclose(maps[4][0, 0, 0], (rgb - restored).pow(2).mean(1)[:, :, :4].sum() / 16, atol=1e-7)
    at_two = F.interpolate(F.interpolate(rgb, scale_factor=0.5, mode="bilinear"), size=(3, 5), mode="bilinear")
    assert torch.allclose(maps[2][0, 0, 0], (rgb - at_two).pow(2).mean(1)[:, :2, :2].mean(), atol=1e-7)


@pytest.mark.parametrize("height,width", SIZES)
def test_per_image_analysis_works_on_any_image_size(height, width):
    from apt_research import select_patches_by_threshold
    from apt_research.analysis import entropy_statistics, fidelity, reconstruct, token_record

    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height + width)) * 255
    maps = compute_importance_maps(images, "upsample_mse", 4, 3)
    masks = select_patches_by_threshold(maps, [1.0, 1.0])
    recon = reconstruct(images, masks, 4)
    assert recon.shape == images.shape
    metrics = fidelity(images[0], recon[0])
    assert metrics["psnr"] > 0
    assert (min(height, width) < 3) == math.isnan(metrics["ssim"])
    assert token_record(masks, 0)["tokens_total"] >= 1
    assert set(entropy_statistics(maps, 0)) == {f"score_{p}_{k}" for p in (4, 8, 16)
                                                for k in ("mean", "std", "p10", "p50", "p90")}
