"""Selection against the loop reference, and its properties (spec section 2)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apt_research import (
    compute_patch_entropy_batched,
    retention,
    savings,
    select_patches_by_threshold,
    token_counts,
    tokens_per_scale,
)

from apt_research.testing import reference
from conftest import skimage_batch


def _cover_counts(masks):
    """How many kept patches cover each base-grid cell."""
    sizes = sorted(masks)
    base = masks[sizes[0]]
    cover = torch.zeros_like(base)
    for scale, size in enumerate(sizes):
        factor = 2**scale
        up = masks[size].repeat_interleave(factor, 1).repeat_interleave(factor, 2)
        cover += up[:, : base.shape[1], : base.shape[2]]
    return cover


@pytest.mark.parametrize("height,width", [(224, 224), (336, 336), (230, 333), (61, 97), (1000, 872)])
@pytest.mark.parametrize("patch_size", [14, 16])
def test_masks_equal_loop_reference_on_real_images(height, width, patch_size):
    images = skimage_batch(height, width, names=("astronaut", "coffee"))
    for num_scales, bins, thresholds in [(1, 512, []), (2, 256, [5.5]), (3, 512, [5.75, 4.0]), (4, 64, [4.5, 4.0, 3.5])]:
        maps = compute_patch_entropy_batched(images, patch_size, num_scales, bins)
        got = select_patches_by_threshold(maps, thresholds)
        expected = reference.select(maps, thresholds)
        for size in expected:
            assert torch.equal(got[size], expected[size]), (height, width, num_scales, size)


sizes = st.integers(min_value=1, max_value=150)
threshold = st.floats(min_value=0.0, max_value=9.0)


@settings(max_examples=40, deadline=None)
@given(height=sizes, width=sizes, num_scales=st.integers(1, 4), data=st.data())
def test_exact_cover_and_border_rule(height, width, num_scales, data):
    thresholds = data.draw(st.lists(threshold, min_size=num_scales - 1, max_size=num_scales - 1))
    seed = data.draw(st.integers(0, 2**16))
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255
    images[1, :, : height // 2] = 90.0  # a flat region, so that large patches get kept
    maps = compute_patch_entropy_batched(images, 8, num_scales, 64)
    masks = select_patches_by_threshold(maps, thresholds)
    assert torch.all(_cover_counts(masks) == 1)
    for scale, size in enumerate(sorted(masks)):
        if scale == 0:
            continue
        if masks[size].shape[1] * size > height:
            assert masks[size][:, -1, :].sum() == 0
        if masks[size].shape[2] * size > width:
            assert masks[size][:, :, -1].sum() == 0


@settings(max_examples=40, deadline=None)
@given(
    height=sizes,
    width=sizes,
    num_scales=st.integers(2, 4),
    data=st.data(),
)
def test_raising_a_threshold_never_adds_tokens(height, width, num_scales, data):
    thresholds = data.draw(st.lists(threshold, min_size=num_scales - 1, max_size=num_scales - 1))
    which = data.draw(st.integers(0, num_scales - 2))
    raised = list(thresholds)
    raised[which] += data.draw(st.floats(min_value=0.0, max_value=4.0))
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height * width)) * 255
    images[..., : height // 2, : width // 2] = 30.0
    maps = compute_patch_entropy_batched(images, 8, num_scales, 128)
    before = token_counts(select_patches_by_threshold(maps, thresholds))
    after = token_counts(select_patches_by_threshold(maps, raised))
    assert torch.all(after <= before)


def test_counts_retention_savings():
    maps = {16: torch.zeros(2, 4, 4), 32: torch.tensor([[[1.0, 9.0], [9.0, 9.0]], [[9.0] * 2] * 2])}
    masks = select_patches_by_threshold(maps, [5.0])
    assert tokens_per_scale(masks)[32].tolist() == [1, 0]
    assert tokens_per_scale(masks)[16].tolist() == [12, 16]
    assert token_counts(masks).tolist() == [13, 16]
    assert token_counts(masks, class_token=True).tolist() == [14, 17]
    assert retention(masks).tolist() == [13 / 16, 1.0]
    assert savings(masks).tolist() == [3 / 16, 0.0]


def test_seed_example_thresholds_3_2():
    # The seed's drawing: 4x4 base grid of 14-px patches, the bottom-right 28-px patch flat.
    maps = {14: torch.zeros(1, 4, 4), 28: torch.tensor([[[9.0, 9.0], [9.0, 1.0]]]), 56: torch.tensor([[[9.0]]])}
    masks = select_patches_by_threshold(maps, [3, 2])
    assert masks[14][0].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert masks[28][0].tolist() == [[0, 0], [0, 1]]
    assert masks[56].sum() == 0
