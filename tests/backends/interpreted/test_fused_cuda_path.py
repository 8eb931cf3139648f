"""The CUDA path's Triton kernels, run by Triton's interpreter on CPU tensors, against the CPU path.

The fused forward (entropy kernels into one buffer, the selection kernel, the grouping kernels with the
packed sequence and class tokens) must give exactly what the CPU path gives: same seqlens, masks,
patches, boxes, labels and dtypes. A real GPU runs the same checks in ``tests/crosscutting/test_cuda.py``.
"""

import math

import pytest
import torch

from apt_research.testing import reference
from apt_research import PatchTokenizer
from apt_research.backends.triton_backend.kernels import entropy_flat_triton
from apt_research.contract import DEFAULT_PAD_VALUE, MAX_BINS
from apt_research.backends import patch_groups as _patch_groups_gather
from apt_research.backends.triton_backend import patch_groups as _patch_groups_triton
from images import skimage_batch

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def normalised(height, width, names=("astronaut", "camera")):
    pixels = skimage_batch(height, width, names)
    return (pixels / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def median_thresholds(images, num_scales, base):
    """Thresholds just above the median interior score of each scale, so that every scale keeps patches."""
    probe = PatchTokenizer(num_scales, base, tuple(images.shape[-2:]), [0.0] * (num_scales - 1), MEAN, STD)
    maps = probe.compute_importance_maps(images)
    sizes = sorted(maps)[1:]
    return [float(maps[size][maps[size] < 1e5].median()) + 1e-3 for size in sizes]


def assert_same(fused: dict, cpu: dict):
    assert fused.keys() == cpu.keys()
    for key, value in cpu.items():
        if key == "masks":
            for size in value:
                assert torch.equal(fused[key][size], value[size]), (key, size)
        elif isinstance(value, torch.Tensor):
            assert fused[key].dtype == value.dtype and fused[key].shape == value.shape, key
            assert torch.equal(fused[key], value), key
        else:
            assert fused[key] == value, key


@pytest.mark.parametrize("height,width,base,num_scales", [
    (64, 64, 16, 3), (61, 97, 14, 3), (40, 72, 16, 2), (32, 48, 16, 1), (70, 70, 8, 4),
])
def test_fused_forward_equals_cpu(height, width, base, num_scales):
    images = normalised(height, width)
    thresholds = median_thresholds(images, num_scales, base)
    tokenizer = PatchTokenizer(num_scales, base, (height, width), thresholds, MEAN, STD)
    cpu = tokenizer(images)
    fused = tokenizer._forward_triton(images, None)
    fused["max_seqlen"], fused["retained_frac"] = cpu["max_seqlen"], cpu["retained_frac"]
    assert_same(fused, cpu)
    if num_scales > 1:  # the case does exercise merging at every scale
        assert all(int(cpu["masks"][size].sum()) > 0 for size in cpu["masks"])


@pytest.mark.parametrize("only_largest", [False, True])
def test_fused_forward_with_custom_maps(only_largest):
    """Caller's maps, including large patches that stick out of the image (zero padding inside them).

    ``only_largest``: every image is four 56-px patches, no scale-0 patch anywhere in the batch (the
    class tokens are then written by programs of a launch that has no cell to cut).
    """
    images = torch.randn(3, 3, 61, 97)
    tokenizer = PatchTokenizer(3, 14, (61, 97), [6.0, 5.0], MEAN, STD)
    maps = {14: torch.zeros(3, 5, 7), 28: torch.zeros(3, 3, 4), 56: torch.rand(3, 2, 2) * 2}
    if not only_largest:
        maps[56][1] = 9.0  # image 1 keeps no 56-px patch
    cpu = tokenizer(images, importance_maps=maps)
    fused = tokenizer._forward_triton(images, maps)
    fused["max_seqlen"], fused["retained_frac"] = cpu["max_seqlen"], cpu["retained_frac"]
    assert_same(fused, cpu)
    assert (cpu["seqlens"] == [5, 5, 5]) == only_largest


def test_fused_forward_takes_custom_maps_with_nan_and_inf_as_the_cpu_path_does():
    """Non-finite scores in a caller's maps are scores, not bad pixels: selected as on the CPU, no error."""
    images = torch.randn(2, 3, 64, 64)
    tokenizer = PatchTokenizer(3, 16, 64, [6.0, 5.0], MEAN, STD)
    maps = {16: torch.rand(2, 4, 4) * 8, 32: torch.rand(2, 2, 2) * 8, 64: torch.full((2, 1, 1), 9.0)}
    maps[16][0, 0, 0], maps[16][1, 3, 3] = float("nan"), float("-inf")
    maps[32][0, 1, 1], maps[32][1, 0, 0] = float("nan"), float("-inf")
    cpu = tokenizer(images, importance_maps=maps)
    fused = tokenizer._forward_triton(images, maps)
    fused["max_seqlen"], fused["retained_frac"] = cpu["max_seqlen"], cpu["retained_frac"]
    assert_same(fused, cpu)
    assert bool(cpu["masks"][32][1, 0, 0]) and not bool(cpu["masks"][32][0, 1, 1])


@pytest.mark.parametrize("value,word", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "inf")])
def test_fused_forward_rejects_non_finite(value, word):
    images = normalised(45, 45)  # a border row and column: bad pixels there are caught too
    tokenizer = PatchTokenizer(2, 16, (45, 45), [5.0], MEAN, STD)
    images[1, 2, 44, 44] = value
    with pytest.raises(ValueError, match=rf"images must be finite, got an? {word} value in image 1"):
        tokenizer._forward_triton(images, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("bins", [64, 512, MAX_BINS])
def test_entropy_kernel_matches_reference(dtype, bins):
    pixels = skimage_batch(50, 37, ("coffee",)).round().to(dtype)
    expected = reference.entropy_maps(pixels.float(), 8, 3, bins)
    flat, maps = entropy_flat_triton(pixels, 8, 3, bins, DEFAULT_PAD_VALUE)
    for size in expected:
        assert float((maps[size] - expected[size]).abs().max()) <= 1e-5
    assert flat.numel() == sum(m.numel() for m in maps.values())


def test_patch_groups_of_given_masks():
    """``construct_patch_groups`` on CUDA (global slots from a cumulative sum) equals the gather path."""
    images = normalised(61, 97)
    tokenizer = PatchTokenizer(3, 14, (61, 97), median_thresholds(images, 3, 14), MEAN, STD)
    masks = tokenizer.construct_masks(tokenizer.compute_importance_maps(images))[0]
    fused, cpu = _patch_groups_triton(images, masks, 14), _patch_groups_gather(images, masks, 14)
    assert fused.keys() == cpu.keys()
    for key in cpu:
        assert torch.equal(fused[key], cpu[key]), key


def test_fused_forward_issues_only_its_kernels():
    """Host overhead on CUDA is launches: forward runs no torch compute op, only the 2S + 1 Triton kernels.

    (Allocations, views and the two host copies aside. The interpreter runs on the CPU, where those
    copies are no-ops; on CUDA they are the counts' copy to the host, the one sync, and the offsets'
    copy back.)
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime.interpreter import InterpretedFunction

    free = {"empty", "empty_like", "empty_strided", "view", "_unsafe_view", "slice", "select", "expand", "detach",
            "alias", "lift_fresh", "as_strided", "unsqueeze", "_to_copy", "_reshape_alias"}
    launches, ops, inside = [], [], [False]
    run = InterpretedFunction.run

    def counting_run(self, *args, **kwargs):
        launches.append(self.fn.__name__)
        inside[0] = True
        try:
            return run(self, *args, **kwargs)
        finally:
            inside[0] = False

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not inside[0]:
                ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    images = normalised(64, 64)
    tokenizer = PatchTokenizer(3, 16, 64, median_thresholds(images, 3, 16), MEAN, STD)
    InterpretedFunction.run = counting_run
    try:
        with Ops():
            out = tokenizer._forward_triton(images, None)
    finally:
        InterpretedFunction.run = run
    assert sorted(set(launches)) == ["_entropy_kernel", "_group_kernel", "_select_kernel"]
    assert len(launches) == 2 * 3 + 1
    assert [op for op in ops if op not in free] == []
    assert out["seqlens"]


def test_selection_kernel_on_grids_larger_than_one_block():
    """More base cells than the kernel's block (1024): the per-image slots carry over between chunks."""
    from apt_research import select_patches_by_threshold
    from apt_research.backends.triton_backend.kernels import select_triton

    generator = torch.Generator().manual_seed(0)
    maps = {8: torch.rand(2, 40, 37, generator=generator) * 8, 16: torch.rand(2, 20, 19, generator=generator) * 8,
            32: torch.rand(2, 10, 10, generator=generator) * 8}
    thresholds = [3.0, 2.0]
    expected = select_patches_by_threshold(maps, thresholds)
    flat = torch.cat([maps[size].flatten() for size in (8, 16, 32)])
    masks, keep, slots, counts = select_triton(flat, torch.tensor([0.0, *thresholds]), 2, 40, 37, 3)
    start = 0
    for scale, size in enumerate((8, 16, 32)):
        cells = expected[size].numel()
        got = masks[start : start + cells].view_as(expected[size])
        assert torch.equal(got, expected[size]), size
        assert torch.equal(keep[start : start + cells].view_as(got).bool(), got.bool())
        per_image = expected[size].flatten(1)
        assert counts[:, scale].tolist() == per_image.sum(1).int().tolist()
        place = (per_image.cumsum(1) - 1).int()
        kept = per_image.bool()
        assert torch.equal(slots[start : start + cells].view(2, -1)[kept], place[kept])
        start += cells
    assert counts[:, 3:].abs().sum() == 0
    assert bool(expected[8].flatten(1)[:, 1024:].any(1).all())  # each image keeps cells in the second chunk
