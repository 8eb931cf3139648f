"""Every bad input (docs/contract.md, Bad input) raises an error naming the argument, the value and what was expected.

Each library entry point gets each bad argument it takes: ``compute_patch_entropy_batched``,
``patch_histograms``, ``compute_importance_maps`` and the ``PatchTokenizer`` constructor, which checks
everything once so that ``forward`` checks only the images.
"""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from apt_research import (
    PatchTokenizer,
    compute_importance_maps,
    compute_patch_entropy_batched,
    patch_histograms,
    select_patches_by_threshold,
)

GOOD = torch.rand(1, 3, 32, 32) * 255

# Each entry point, called with the given keyword arguments on a good 32 x 32 image (or built for one).
ENTROPY_ENTRY_POINTS = {
    "compute_patch_entropy_batched": lambda **kw: compute_patch_entropy_batched(GOOD, **kw),
    "compute_importance_maps": lambda **kw: compute_importance_maps(GOOD, "entropy", **kw),
    "PatchTokenizer": lambda **kw: PatchTokenizer(2, 16, 32, [5.0], **kw),
}


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


def _raises(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


BAD_ENTROPY_OPTIONS = [
    ({"bins": 1}, ValueError, ["bins", "[2, 4096]", "got 1"]),
    ({"bins": 0}, ValueError, ["bins", "[2, 4096]", "got 0"]),
    ({"bins": -1}, ValueError, ["bins", "[2, 4096]", "got -1"]),
    ({"bins": 2**40}, ValueError, ["bins", "[2, 4096]", "1099511627776"]),
    ({"bins": "512"}, TypeError, ["bins", "int", "'512'"]),
    ({"bins": 2.5}, TypeError, ["bins", "int", "2.5"]),
    ({"bins": True}, TypeError, ["bins", "int", "True"]),
    ({"backend": "bogus"}, ValueError, ["backend", "'bogus'", "'numba'"]),
]


@pytest.mark.parametrize("entry", sorted(ENTROPY_ENTRY_POINTS))
@pytest.mark.parametrize("kwargs,error,words", BAD_ENTROPY_OPTIONS)
def test_bad_entropy_options_at_every_entry_point(entry, kwargs, error, words):
    _raises(lambda: ENTROPY_ENTRY_POINTS[entry](**kwargs), error, words)


@pytest.mark.parametrize("kwargs,error,words", [
    *BAD_ENTROPY_OPTIONS,
    ({"patch_size": 0}, ValueError, ["patch_size", ">= 1", "0"]),
    ({"patch_size": 2**20}, ValueError, ["patch_size=1048576", "dwarfs", "256 px", "32 x 32"]),
])
def test_bad_histogram_arguments(kwargs, error, words):
    kwargs = {"patch_size": 16, "bins": 64, "backend": "torch", **kwargs}
    _raises(lambda: patch_histograms(GOOD, kwargs.pop("patch_size"), kwargs.pop("bins"), **kwargs), error, words)


@pytest.mark.parametrize("kwargs,error,words", [
    ({"patch_size": 0}, ValueError, ["patch_size", ">= 1", "0"]),
    ({"num_scales": 0}, ValueError, ["num_scales", ">= 1", "0"]),
    ({"num_scales": 2.0}, TypeError, ["num_scales", "int", "2.0"]),
])
def test_bad_scale_arguments(kwargs, error, words):
    _raises(lambda: compute_patch_entropy_batched(GOOD, **kwargs), error, words)
    _raises(lambda: compute_importance_maps(GOOD, "laplacian", **kwargs), error, words)


@pytest.mark.parametrize("entry", sorted(ENTROPY_ENTRY_POINTS))
@pytest.mark.parametrize("value,error,words", [
    (None, TypeError, ["pad_value", "real number", "None"]),
    ("1e6", TypeError, ["pad_value", "real number", "'1e6'"]),
    (math.nan, ValueError, ["pad_value", "NaN"]),
    (1e300, ValueError, ["pad_value", "float32", "1e+300"]),  # inf on one backend, an overflow error on another
    (-1e39, ValueError, ["pad_value", "float32", "-1e+39"]),
])
def test_bad_pad_value_at_every_entry_point(entry, value, error, words):
    _raises(lambda: ENTROPY_ENTRY_POINTS[entry](pad_value=value), error, words)


def test_tokenizer_pad_value_below_a_threshold_would_keep_padded_patches():
    _raises(lambda: PatchTokenizer(3, 16, 40, [5.75, 4.0], pad_value=0.0), ValueError,
            ["pad_value", "at least every threshold", "border rule", "0.0", "[5.75, 4.0]"])
    tokenizer = PatchTokenizer(2, 16, 40, [5.0], pad_value=math.inf)  # any number >= the thresholds will do
    masks = tokenizer(torch.zeros(1, 3, 40, 40))["masks"]
    assert masks[32][0].tolist() == [[1.0, 0.0], [0.0, 0.0]], "flat, but the padded patches stay small"


@pytest.mark.parametrize("scales,patch,words", [
    (12, 16, ["num_scales=12", "2**11 = 32768 px", "dwarfs", "at most", "256 px", "num_scales <= 5"]),
    (1, 2**20, ["=1048576", "dwarfs", "256 px"]),
    (10**6, 16, ["num_scales=1000000", "more than 2**64 px", "num_scales <= 5"]),
])
def test_coarsest_patch_that_dwarfs_the_image_is_refused_before_any_work(scales, patch, words):
    _raises(lambda: compute_patch_entropy_batched(GOOD, patch, scales, 64), ValueError, ["patch_size", *words])
    _raises(lambda: compute_importance_maps(GOOD, "upsample_mse", patch, scales), ValueError, ["patch_size", *words])
    _raises(lambda: PatchTokenizer(scales, patch, 32, [5.0] * (scales - 1)), ValueError, ["base_patch_size", *words[:2]])


def test_limit_on_the_coarsest_patch_grows_with_the_image():
    assert compute_patch_entropy_batched(torch.zeros(1, 1, 3, 5), 16, 5, 64)[256].shape == (1, 1, 1)
    assert compute_patch_entropy_batched(torch.zeros(1, 1, 300, 20), 16, 6, 64)[512].shape == (1, 1, 1)
    _raises(lambda: compute_patch_entropy_batched(torch.zeros(1, 1, 255, 20), 16, 6, 64), ValueError,
            ["num_scales=6", "510 px", "num_scales <= 5"])


@pytest.mark.parametrize("kwargs,error,words", [
    ({"mean": "abc"}, TypeError, ["mean", "1 or 3 finite numbers", "'abc'"]),
    ({"mean": [0.5, None, 0.5]}, TypeError, ["mean", "1 or 3 finite numbers", "None"]),
    ({"mean": [0.5, 0.5]}, ValueError, ["mean", "1 or 3 finite numbers", "[0.5, 0.5]"]),
    ({"mean": [0.5, math.nan, 0.5]}, ValueError, ["mean", "finite", "nan"]),
    ({"std": True}, TypeError, ["std", "positive numbers", "True"]),
    ({"std": [0.0] * 3}, ValueError, ["std", "positive numbers", "[0.0, 0.0, 0.0]"]),
    ({"std": [-0.2] * 3}, ValueError, ["std", "positive numbers", "-0.2"]),
    ({"std": [1e-45] * 3}, ValueError, ["std is too small", "1 / std", "1e-45"]),
    ({"mean": [1e30] * 3, "std": [1e-10] * 3}, ValueError, ["std is too small", "mean / std", "1e+30"]),
])
def test_bad_normalisation(kwargs, error, words):
    _raises(lambda: PatchTokenizer(2, 16, 32, [5.0], **kwargs), error, words)


@pytest.mark.parametrize("denormalize,error,words", [
    ("shift", TypeError, ["denormalize", "pair", "'shift'"]),
    ((torch.zeros(3), torch.zeros(3)), ValueError, ["denormalize scale", "positive"]),
    ((torch.zeros(3), torch.full((3,), math.inf)), ValueError, ["denormalize scale", "finite"]),
    ((torch.zeros(2), torch.ones(3)), ValueError, ["denormalize shift", "1 or 3"]),
])
def test_bad_denormalize(denormalize, error, words):
    _raises(lambda: compute_patch_entropy_batched(GOOD, denormalize=denormalize), error, words)


def test_denormalize_with_three_values_needs_three_channels():
    _raises(lambda: compute_patch_entropy_batched(GOOD[:, :1], denormalize=(torch.zeros(3), torch.ones(3))),
            ValueError, ["denormalize shift", "3 values", "1 channel"])


def test_backend_on_the_wrong_device():
    _raises(lambda: compute_patch_entropy_batched(GOOD, backend="triton"), ValueError,
            ["backend 'triton'", "CUDA", "cpu"])


def test_numba_kernel_that_cannot_allocate_raises(tmp_path):
    """numba swallows an allocation failure inside a parallel loop: the kernel's output must not be used.

    In a child process whose address space is capped 300 MB above what it holds, a 1 x 65536 image with
    a 2048-px coarsest patch needs a 2048 x 65536 int32 band buffer (512 MB) per thread, which cannot be had.
    """
    script = textwrap.dedent("""
        import resource
        import torch
        from apt_research import PatchTokenizer, compute_patch_entropy_batched
        images = torch.zeros(1, 1, 1, 65536, dtype=torch.uint8)
        compute_patch_entropy_batched(images, 16, 1, 64, backend="numba")  # kernel compiled, threads started
        small = PatchTokenizer(1, 16, (1, 65536), [], [0.5], [0.5], bins=64)
        small(images.float()), small.compute_importance_maps(images.float())  # the tokenizer's kernels too
        status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
        resource.setrlimit(resource.RLIMIT_AS, (int(status) * 1024 + (300 << 20), resource.RLIM_INFINITY))
        try:
            maps = compute_patch_entropy_batched(images, 16, 8, 64, backend="numba")
        except MemoryError as error:
            print("MemoryError:", error)
        else:
            print("returned", float(maps[16].min()), float(maps[16].max()))
        # The tokenizer's calls (the second one planned) report it the same way.
        tokenizer = PatchTokenizer(8, 16, (1, 65536), [7.0] * 7, [0.5], [0.5], bins=64)
        for call in (tokenizer.compute_importance_maps, tokenizer.compute_importance_maps, tokenizer):
            try:
                call(images.float())
            except MemoryError as error:
                print("tokenizer MemoryError:", str(error)[:40])
            else:
                print("tokenizer returned")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MemoryError: the numba entropy kernel could not allocate" in result.stdout, result.stdout
    assert result.stdout.count("tokenizer MemoryError: the numba entropy kernel could not") == 3, result.stdout


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
    with pytest.raises(ValueError, match="method must be one of .*'sobel'"):
        PatchTokenizer(2, 16, 224, [5.0], method="sobel")
    with pytest.raises(TypeError, match=r"method 'laplacian' takes options \['aggregate'\].*\['bins'\]"):
        PatchTokenizer(2, 16, 224, [5.0], method="laplacian", bins=256)
    with pytest.raises(ValueError, match="aggregate must be one of .*'median'"):
        PatchTokenizer(2, 16, 224, [5.0], method="laplacian", aggregate="median")
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
