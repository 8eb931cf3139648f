"""Entropy maps against the per-patch torch.histc reference (docs/contract.md, Entropy maps)."""

import ast
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import apt_research
from apt_research import contract

from apt_research import compute_patch_entropy_batched, patch_histograms
from apt_research.entropy import bin_indices

from apt_research.testing import reference
from conftest import BACKENDS, skimage_batch

SIZES = [(224, 224), (336, 336), (230, 333), (61, 97), (1000, 872)]


def _check(images, patch_size, num_scales, bins, backend):
    expected = reference.entropy_maps(images, patch_size, num_scales, bins)
    got = compute_patch_entropy_batched(images, patch_size, num_scales, bins, backend=backend)
    assert sorted(got) == sorted(expected)
    worst = 0.0
    for size in expected:
        assert got[size].shape == expected[size].shape
        assert got[size].dtype == torch.float32
        worst = max(worst, float((got[size] - expected[size]).abs().max()))
    assert worst <= 1e-5, f"largest entropy difference {worst} bits"
    return worst


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("height,width", SIZES)
def test_real_images_match_histc_reference(backend, height, width):
    images = skimage_batch(height, width, names=("astronaut", "camera") if height > 500 else ("astronaut", "camera", "coffee", "chelsea"))
    for patch_size, num_scales, bins in [(16, 3, 512), (14, 4, 256), (16, 1, 64), (14, 2, 512)]:
        _check(images, patch_size, num_scales, bins, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(3))
def test_random_images_match_histc_reference(backend, seed):
    generator = torch.Generator().manual_seed(seed)
    height, width = torch.randint(5, 160, (2,), generator=generator).tolist()
    channels = [1, 3][seed % 2]
    images = torch.rand(2, channels, height, width, generator=generator) * 255
    for patch_size, num_scales, bins in [(16, 3, 512), (14, 2, 64), (16, 4, 256)]:
        _check(images, patch_size, num_scales, bins, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_equals_float(backend):
    images = skimage_batch(100, 130)
    pixels = images.round().to(torch.uint8)
    got = compute_patch_entropy_batched(pixels, 16, 3, 512, backend=backend)
    expected = reference.entropy_maps(pixels.float(), 16, 3, 512)
    for size in expected:
        assert float((got[size] - expected[size]).abs().max()) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("patch_size,bins", [(16, 512), (14, 256), (16, 64), (7, 1024)])
def test_histograms_equal_histc(backend, patch_size, bins):
    images = torch.cat([skimage_batch(61, 97), torch.rand(1, 3, 61, 97) * 255])
    expected = reference.histc_histograms(images, patch_size, bins)
    got = patch_histograms(images, patch_size, bins, backend=backend)
    assert torch.equal(got.long(), expected.long())
    gray = images[:, :1].contiguous()
    assert torch.equal(patch_histograms(gray, patch_size, bins, backend=backend).long(),
                       reference.histc_histograms(gray, patch_size, bins).long())


def test_binning_equals_histc_on_every_uint8_rgb_gray_value():
    # All 2**24 RGB triples through the grayscale formula, then the bins, against torch.histc one value at a time
    # is too slow; instead histc of the whole set must equal the bincount of our bins.
    levels = torch.arange(256, dtype=torch.float32)
    red, green, blue = torch.meshgrid(levels, levels, levels, indexing="ij")
    gray = red.flatten() * 0.2989 + green.flatten() * 0.5870 + blue.flatten() * 0.1140
    for bins in (64, 256, 512, 1024):
        ours = torch.bincount(bin_indices(gray, bins), minlength=bins)
        assert torch.equal(ours.float(), torch.histc(gray, bins=bins, min=0, max=255))


def test_numba_bins_equal_torch_bins_on_every_uint8_rgb_triple():
    levels = torch.arange(256, dtype=torch.uint8)
    red, green, blue = torch.meshgrid(levels, levels, levels, indexing="ij")
    image = torch.stack([red, green, blue]).reshape(1, 3, 4096, 4096)
    for bins in (256, 512):
        fast = patch_histograms(image, 4096, bins, backend="numba")
        plain = patch_histograms(image, 4096, bins, backend="torch")
        assert torch.equal(fast.long(), plain)


def test_flat_is_zero_noise_is_near_maximum():
    flat = torch.full((1, 3, 64, 64), 128.0)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    maps_flat = compute_patch_entropy_batched(flat, 16, 3, 512)
    maps_noise = compute_patch_entropy_batched(noise, 16, 3, 512)
    # Exactly 0 on every CPU backend, as in the float32 reference (not -1.4e-10: a threshold of 0 keeps nothing).
    for backend in ("numba", "torch"):
        maps = compute_patch_entropy_batched(flat, 16, 3, 512, backend=backend)
        assert all(bool((maps[size] == 0).all()) for size in maps), backend
    # 256 pixels in 512 bins: at most log2(256) = 8 bits; 4096 pixels: at most log2(512) = 9 bits.
    assert 7.0 < float(maps_noise[16].mean()) <= 8.0 + 1e-5
    assert 8.5 < float(maps_noise[64].mean()) <= 9.0 + 1e-5


def test_border_rule_sets_pad_value_on_padded_rows_and_columns():
    images = torch.rand(1, 3, 40, 70) * 255
    maps = compute_patch_entropy_batched(images, 16, 2, 64, pad_value=123.0)
    assert maps[16].shape == (1, 3, 5)
    assert torch.all(maps[16][:, -1, :] == 123.0) and torch.all(maps[16][:, :, -1] == 123.0)
    assert torch.all(maps[16][:, :-1, :-1] < 123.0)
    exact = compute_patch_entropy_batched(images[..., :32, :64], 16, 2, 64, pad_value=123.0)
    assert torch.all(exact[32] < 123.0)


def test_image_smaller_than_one_patch_is_one_padded_patch():
    maps = compute_patch_entropy_batched(torch.full((1, 1, 5, 3), 200.0), 16, 2, 512)
    assert maps[16].shape == (1, 1, 1) and maps[32].shape == (1, 1, 1)


def test_contract_numbers_are_declared_once():
    """Grayscale weights, the pixel range of the binning rule, the log epsilon and the default pad value
    appear as numbers only in contract.py; the torch, numba and Triton paths import them from there."""
    numbers = {*contract.GRAY_WEIGHTS, contract.LOG_EPSILON, contract.DEFAULT_PAD_VALUE, contract.MAX_PIXEL}
    package = Path(apt_research.__file__).parent
    kernels = ["backends/torch_backend.py", "backends/numba_backend/entropy_kernels.py",
               "backends/numba_backend/arguments.py", "backends/triton_backend/kernels.py"]
    paths = ["entropy.py", *kernels, "scorers.py", "tokenizer.py", "selection.py", "analysis.py", "_validation.py"]
    found = []
    for name in paths:
        for node in ast.walk(ast.parse((package / name).read_text())):
            if isinstance(node, ast.Constant) and type(node.value) is float and node.value in numbers:
                found.append(f"{name}:{node.lineno}: {node.value}")
    assert found == []
    for name in kernels:
        assert "contract import" in (package / name).read_text(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_most_bins_allowed(backend):
    images = torch.rand(2, 3, 40, 50, generator=torch.Generator().manual_seed(1)) * 255
    _check(images, 8, 3, contract.MAX_BINS, backend)


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 140), width=st.integers(1, 140), patch_size=st.integers(2, 16),
       num_scales=st.integers(1, 4), bins=st.sampled_from([2, 7, 64, 512, contract.MAX_BINS]),
       flat=st.floats(0.0, 1.0), channels=st.sampled_from([1, 3]), seed=st.integers(0, 2**16))
# Widths that the coarsest patch divides (each band binned as one run, not a row at a time), one with a
# short last band, one with the most bins (the largest uint16 bin index).
@example(height=61, width=112, patch_size=14, num_scales=3, bins=512, flat=0.3, channels=3, seed=0)
@example(height=40, width=64, patch_size=8, num_scales=2, bins=contract.MAX_BINS, flat=0.0, channels=1, seed=1)
def test_numba_kernel_equals_reference_on_any_grid(height, width, patch_size, num_scales, bins, flat, channels, seed):
    # The numba kernel counts only scale-0 patches and sums four children's sparse histograms above it,
    # four neighbouring patches at a time (the last ones of a band alone): every width's remainder,
    # padded rows and columns, more bins than pixels per patch, flat areas (one bin repeated) and noise.
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, channels, height, width, generator=generator) * 255
    flat_rows = int(flat * height)
    images[:, :, :flat_rows] = images[:, :, :1, :1]
    _check(images, patch_size, num_scales, bins, "numba")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, "normalised"])
@pytest.mark.parametrize("height,width", [(224, 224), (61, 97)])
def test_channels_last_images_give_the_same_maps(channels, dtype, height, width):
    # A decoded image's permute(2, 0, 1) is channels-last; the numba kernel reads it in place.
    pixels = skimage_batch(height, width)[:, :channels]
    denormalize = None
    if dtype == "normalised":
        mean, std = torch.tensor([0.485, 0.456, 0.406][:channels]), torch.tensor([0.229, 0.224, 0.225][:channels])
        images = (pixels / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        denormalize = (-mean / std, 1 / std)
    else:
        images = pixels.round().to(dtype)
    last = images.contiguous(memory_format=torch.channels_last)
    assert channels == 1 or not last.is_contiguous()
    for patch_size, num_scales, bins in [(14, 3, 512), (16, 2, 64)]:
        planar = compute_patch_entropy_batched(images, patch_size, num_scales, bins, denormalize=denormalize)
        got = compute_patch_entropy_batched(last, patch_size, num_scales, bins, denormalize=denormalize)
        assert all(torch.equal(got[size], planar[size]) for size in planar)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_channels_last_non_finite_is_reported_by_the_kernel(value):
    # The tokenizer leaves the finiteness check to the numba kernel, which must see it in either layout.
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    tokenizer = apt_research.PatchTokenizer(3, 14, (61, 97), [6.0, 5.0], mean, std)
    images = (skimage_batch(61, 97) / 255).contiguous(memory_format=torch.channels_last)
    images[1, 2, 60, 96] = value
    with pytest.raises(ValueError, match="finite.*image 1 of the batch"):
        tokenizer.compute_importance_maps(images)


def test_a_threshold_of_zero_keeps_no_flat_patch_on_any_backend():
    # Half flat, half noise: at thresholds 0 the reference keeps no large patch (flat ones score exactly 0).
    generator = torch.Generator().manual_seed(0)
    pixels = torch.full((1, 3, 224, 224), 128.0)
    pixels[:, :, 112:] = torch.rand(1, 3, 112, 224, generator=generator) * 255
    mean, std = [0.45] * 3, [0.225] * 3
    images = (pixels / 255 - 0.45) / 0.225
    seqlens = {backend: apt_research.PatchTokenizer(3, 16, 224, [0.0, 0.0], mean, std, backend=backend)(images)["seqlens"]
               for backend in ("numba", "torch")}
    assert seqlens["numba"] == seqlens["torch"] == [1 + 14 * 14]
