"""Every bad-input case of spec section 5 raises an error naming the argument, the value and what was expected."""

import math

import pytest
import torch

from apt_research import PatchTokenizer, compute_importance_maps, compute_patch_entropy_batched, select_patches_by_threshold

GOOD = torch.rand(1, 3, 32, 32) * 255


@pytest.mark.parametrize("images,error,words", [
    (torch.rand(3, 32, 32) * 255, ValueError, ["images", "4 dimensions", "(3, 32, 32)"]),
    (torch.rand(1, 2, 32, 32) * 255, ValueError, ["images", "1 or 3 channels", "2"]),
    (torch.rand(0, 3, 32, 32), ValueError, ["images", "empty batch"]),
    (torch.full((1, 3, 8, 8), math.nan), ValueError, ["images", "finite", "nan"]),
    (torch.full((1, 3, 8, 8), math.inf), ValueError, ["images", "finite", "inf"]),
    (torch.full((1, 3, 8, 8), 300.0), ValueError, ["images", "[0, 255]", "300"]),
    (torch.full((1, 3, 8, 8), -1.0), ValueError, ["images", "[0, 255]", "-1"]),
    ([[1.0]], TypeError, ["images", "torch.Tensor", "list"]),
])
def test_bad_images(images, error, words):
    with pytest.raises(error) as info:
        compute_patch_entropy_batched(images)
    for word in words:
        assert word in str(info.value)


def test_zero_one_scaled_images_warn():
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        compute_patch_entropy_batched(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("kwargs,error,words", [
    ({"bins": 1}, ValueError, ["bins", ">= 2", "1"]),
    ({"bins": 2.5}, TypeError, ["bins", "int", "2.5"]),
    ({"patch_size": 0}, ValueError, ["patch_size", ">= 1", "0"]),
    ({"num_scales": 0}, ValueError, ["num_scales", ">= 1", "0"]),
    ({"backend": "cuda-magic"}, ValueError, ["backend", "cuda-magic"]),
])
def test_bad_parameters(kwargs, error, words):
    with pytest.raises(error) as info:
        compute_patch_entropy_batched(GOOD, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_thresholds_wrong_length():
    maps = compute_patch_entropy_batched(GOOD, 8, 3, 64)
    with pytest.raises(ValueError, match=r"thresholds must have num_scales - 1 = 2 entries.*got 1: \[5.0\]"):
        select_patches_by_threshold(maps, [5.0])


def test_thresholds_single_scale_must_be_empty():
    maps = compute_patch_entropy_batched(GOOD, 8, 1, 64)
    with pytest.raises(ValueError, match="num_scales - 1 = 0"):
        select_patches_by_threshold(maps, [5.0])
    assert torch.all(select_patches_by_threshold(maps, [])[8] == 1)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_thresholds_non_finite(value):
    maps = compute_patch_entropy_batched(GOOD, 8, 2, 64)
    with pytest.raises(ValueError, match=r"thresholds must be finite, got (nan|inf)"):
        select_patches_by_threshold(maps, [value])


def test_thresholds_not_a_list():
    maps = compute_patch_entropy_batched(GOOD, 8, 2, 64)
    with pytest.raises(TypeError, match="thresholds must be a list of 1 numbers"):
        select_patches_by_threshold(maps, "5.5")


def test_maps_that_do_not_nest():
    maps = {16: torch.zeros(1, 4, 4), 32: torch.zeros(1, 5, 2)}
    with pytest.raises(ValueError, match=r"do not nest.*\(1, 4, 4\).*got \(1, 5, 2\)"):
        select_patches_by_threshold(maps, [1.0])


def test_maps_with_wrong_patch_sizes():
    with pytest.raises(ValueError, match=r"patch sizes must be p \* 2\*\*s"):
        select_patches_by_threshold({16: torch.zeros(1, 4, 4), 48: torch.zeros(1, 2, 2)}, [1.0])


def test_unknown_scorer_and_option():
    with pytest.raises(ValueError, match="method must be one of .*'sobel'"):
        compute_importance_maps(GOOD, "sobel")
    with pytest.raises(TypeError, match=r"method 'laplacian' takes options \['aggregate'\].*\['bins'\]"):
        compute_importance_maps(GOOD, "laplacian", bins=3)
    with pytest.raises(ValueError, match="aggregate must be one of .*'median'"):
        compute_importance_maps(GOOD, "laplacian", aggregate="median")


def test_tokenizer_arguments():
    with pytest.raises(ValueError, match="thresholds must have num_scales - 1 = 2"):
        PatchTokenizer(3, 16, 224, [5.0], [0.5] * 3, [0.5] * 3)
    with pytest.raises(TypeError, match="image_size must be an int or a pair"):
        PatchTokenizer(2, 16, "224", [5.0], [0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match="std must be positive"):
        PatchTokenizer(2, 16, 224, [5.0], [0.5] * 3, [0.0] * 3)
    tokenizer = PatchTokenizer(2, 16, (32, 48), [5.0], [0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match=r"height x width 32 x 32, but this tokenizer was built for image_size 32 x 48"):
        tokenizer(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("maps,words", [
    ({16: torch.zeros(2, 4, 4), 32: torch.zeros(2, 2, 2)}, ["importance_maps", "patch sizes", "[16, 32, 64]"]),
    ({16: torch.zeros(2, 5, 5), 32: torch.zeros(2, 3, 3), 64: torch.zeros(2, 2, 2)},
     ["importance_maps[16]", "(2, 4, 4)", "(2, 5, 5)"]),
    ({16: torch.zeros(3, 4, 4), 32: torch.zeros(3, 2, 2), 64: torch.zeros(3, 1, 1)},
     ["importance_maps[16]", "(2, 4, 4)", "(3, 4, 4)"]),
])
def test_forward_with_mismatched_importance_maps(maps, words):
    tokenizer = PatchTokenizer(3, 16, 64, [5.0, 4.0])
    with pytest.raises(ValueError) as info:
        tokenizer(torch.zeros(2, 3, 64, 64), importance_maps=maps)
    for word in words:
        assert word in str(info.value)
