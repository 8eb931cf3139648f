"""The numba selection and grouping (``apt_research/backends/numba_backend/grouping_kernels.py``) against the plain torch path, bit for bit.

The plain torch path (``select_patches_by_threshold``, ``nonzero`` gathers, strided downsampling,
``argsort`` packing) is itself checked against ``apt_research/testing/reference.py`` in ``test_tokenizer.py`` and
``test_selection.py``; here every output of the CPU forward must equal it exactly.
"""

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import apt_research.backends as backends_module
from apt_research import PatchTokenizer
from apt_research.selection import select_patches_by_threshold

from apt_research.testing import reference
from conftest import skimage_batch

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def normalise(pixels):
    return (pixels / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def plain_torch(call):
    """``call()`` with numba hidden from the tokenizer: the plain torch selection, grouping and packing."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(backends_module, "numba_available", lambda: False)
        return call()


def assert_same(fast: dict, plain: dict):
    assert fast.keys() == plain.keys()
    for key, value in plain.items():
        if isinstance(value, torch.Tensor):
            assert fast[key].dtype == value.dtype and torch.equal(fast[key], value), key
        elif isinstance(value, dict):
            assert all(torch.equal(fast[key][size], value[size]) for size in value), key
        else:
            assert fast[key] == value, key


@pytest.mark.parametrize("height,width,base,scales,thresholds", [
    (224, 224, 14, 3, [6.0, 5.0]),
    (256, 256, 16, 3, [5.75, 4.0]),
    (61, 97, 14, 4, [6.0, 5.0, 4.0]),
    (230, 333, 16, 2, [5.5]),
    (40, 40, 8, 1, []),
])
def test_forward_equals_plain_torch_path(height, width, base, scales, thresholds):
    images = normalise(skimage_batch(height, width))
    tokenizer = PatchTokenizer(scales, base, (height, width), thresholds, MEAN, STD)
    fast = tokenizer(images)
    assert_same(fast, plain_torch(lambda: tokenizer(images)))
    maps = tokenizer.compute_importance_maps(images)
    expected = select_patches_by_threshold(maps, thresholds)
    assert all(torch.equal(fast["masks"][size], expected[size]) for size in expected)
    for key, value in reference.patch_groups(images, fast["masks"], base).items():
        assert torch.allclose(fast[key], value, atol=1e-6, rtol=0), key


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 90), width=st.integers(1, 90), batch=st.integers(1, 3), num_scales=st.integers(1, 4),
       data=st.data())
def test_forward_on_any_size_equals_plain_torch_path(height, width, batch, num_scales, data):
    thresholds = data.draw(st.lists(st.floats(0, 9), min_size=num_scales - 1, max_size=num_scales - 1))
    pixels = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(height * 91 + width)) * 255
    pixels[:, :, : height // 2] = 90.0
    tokenizer = PatchTokenizer(num_scales, 4, (height, width), thresholds, MEAN, STD)
    images = normalise(pixels)
    assert_same(tokenizer(images), plain_torch(lambda: tokenizer(images)))


def test_thresholds_compare_in_float32_as_torch_does():
    # A score one float32 step below the threshold: kept by torch's float32 comparison; so by the kernel.
    threshold = 5.0
    below = torch.nextafter(torch.tensor(threshold), torch.tensor(0.0))
    maps = {8: torch.full((2, 4, 4), 9.0), 16: torch.stack([torch.full((2, 2), float(below)), torch.full((2, 2), 5.0)])}
    images = normalise(skimage_batch(32, 32)[:2])
    tokenizer = PatchTokenizer(2, 8, 32, [threshold], MEAN, STD)
    fast = tokenizer(images, maps)
    assert fast["seqlens"] == [5, 17]
    assert_same(fast, plain_torch(lambda: tokenizer(images, maps)))


def test_groups_of_custom_masks_with_patches_outside_the_image_equal_plain_torch():
    images = normalise(skimage_batch(61, 97))
    tokenizer = PatchTokenizer(3, 14, (61, 97), [6.0, 5.0], MEAN, STD)
    masks = {14: torch.zeros(4, 5, 7), 28: torch.ones(4, 3, 4), 56: torch.ones(4, 2, 2)}
    fast = tokenizer.construct_patch_groups(images, masks)
    assert fast["resized_patches_56"].shape[0] == 16
    assert_same(fast, plain_torch(lambda: tokenizer.construct_patch_groups(images, masks)))


@pytest.mark.parametrize("value,word", [(float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "inf")])
@pytest.mark.parametrize("call", ["forward", "compute_importance_maps", "forward with maps"])
def test_non_finite_pixels_are_reported_by_the_entropy_kernel(value, word, call):
    # On the CPU the numba entropy kernel checks the values as it reads them (no pass of its own).
    images = normalise(skimage_batch(50, 70)[:3])
    tokenizer = PatchTokenizer(3, 8, (50, 70), [6.0, 5.0], MEAN, STD)
    maps = tokenizer.compute_importance_maps(images)
    images[1, 2, 49, 69] = value
    run = {"forward": lambda: tokenizer(images), "compute_importance_maps": lambda: tokenizer.compute_importance_maps(images),
           "forward with maps": lambda: tokenizer(images, maps)}[call]
    with pytest.raises(ValueError, match="images must be finite") as info:
        run()
    assert word in str(info.value)
    if call != "forward with maps":
        assert "image 1 of the batch" in str(info.value)


class _MapsOfImages(torch.utils.data.Dataset):
    def __init__(self, pixels, tokenizer):
        self.pixels, self.tokenizer = pixels, tokenizer

    def __len__(self):
        return self.pixels.shape[0]

    def __getitem__(self, index):
        image = normalise(self.pixels[index : index + 1])
        return self.tokenizer.compute_importance_maps(image)[16][0], self.tokenizer(image)["seqlens"][0]


def test_data_loader_workers_forked_after_the_parallel_kernels_ran():
    # Workers run with one torch thread and take the serial kernels: GNU OpenMP would kill a forked worker.
    pixels = skimage_batch(64, 64)
    tokenizer = PatchTokenizer(3, 16, 64, [5.75, 4.0], MEAN, STD)
    if torch.get_num_threads() < 2:
        pytest.skip("needs the parallel kernels in the parent (2+ torch threads)")
    expected = tokenizer(normalise(pixels))
    loader = torch.utils.data.DataLoader(_MapsOfImages(pixels, tokenizer), batch_size=2, num_workers=2,
                                         multiprocessing_context="fork")
    maps, seqlens = zip(*loader)
    assert torch.equal(torch.cat(maps), tokenizer.compute_importance_maps(normalise(pixels))[16])
    assert torch.cat(seqlens).tolist() == expected["seqlens"]


def test_one_thread_stays_one_thread(tmp_path):
    # A compiled function that refers to a parallel kernel starts numba's OpenMP pool when loaded, which
    # resets OpenMP's thread count and with it torch's: after that a data-loader worker (one thread) would
    # take the parallel kernels, which do not survive a fork. Every CPU path must leave one thread alone.
    script = tmp_path / "one_thread.py"
    script.write_text(
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from apt_research import PatchTokenizer, compute_patch_entropy_batched, patch_histograms\n"
        "images = torch.rand(2, 3, 64, 80) * 4 - 2\n"
        "tokenizer = PatchTokenizer(3, 16, (64, 80), [5.75, 4.0])\n"
        "maps = tokenizer.compute_importance_maps(images)\n"
        "tokenizer(images)\n"
        "tokenizer(images, maps)\n"
        "tokenizer.construct_patch_groups(images, tokenizer.construct_masks(maps)[0])\n"
        "compute_patch_entropy_batched(torch.rand(2, 3, 64, 80) * 255, 16, 3, 512)\n"
        "patch_histograms(torch.rand(2, 3, 64, 80) * 255, 16, 512, backend='numba')\n"
        "print(torch.get_num_threads())\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]
