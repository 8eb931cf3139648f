"""PatchTokenizer: patch groups against the reference's grouping, packing properties (docs/contract.md)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apt_research import PatchTokenizer

from apt_research.testing import reference
from conftest import cuda, skimage_batch

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def normalise(pixels):
    return (pixels / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("height,width,base,scales,thresholds", [
    (224, 224, 16, 3, [5.75, 4.0]),
    (336, 336, 14, 3, [6.0, 6.0]),
    (230, 333, 16, 2, [5.5]),
    (61, 97, 14, 4, [6.0, 5.0, 4.0]),
])
def test_groups_equal_reference_grouping(height, width, base, scales, thresholds):
    images = normalise(skimage_batch(height, width))
    tokenizer = PatchTokenizer(scales, base, (height, width), thresholds, MEAN, STD)
    out = tokenizer(images)
    expected = reference.patch_groups(images, out["masks"], base)
    for key, value in expected.items():
        assert out[key].shape == value.shape, key
        assert torch.allclose(out[key], value, atol=1e-6, rtol=0), key
    assert sum(out[f"resized_patches_{ps}"].shape[0] for ps in tokenizer.patch_sizes) > 0


def test_maps_undo_normalisation_the_reference_way():
    pixels = skimage_batch(224, 224)
    images = normalise(pixels)
    tokenizer = PatchTokenizer(3, 16, 224, [5.75, 4.0], MEAN, STD)
    maps = tokenizer.compute_importance_maps(images)
    mean_r = -torch.tensor(MEAN) / torch.tensor(STD)
    std_r = 1.0 / torch.tensor(STD)
    restored = ((images - mean_r.view(1, 3, 1, 1)) / std_r.view(1, 3, 1, 1) * 255).clamp(0, 255)
    expected = reference.entropy_maps(restored, 16, 3, 512)
    for size in expected:
        assert float((maps[size] - expected[size]).abs().max()) <= 1e-5


def _check_packing(out, tokenizer, batch):
    masks = out["masks"]
    seqlens = out["seqlens"]
    assert len(seqlens) == batch
    counts = [1 + sum(int(masks[ps][b].sum()) for ps in tokenizer.patch_sizes) for b in range(batch)]
    assert seqlens == counts
    assert out["cu_seqlens"].dtype == torch.int32
    assert out["cu_seqlens"].tolist() == [0] + torch.tensor(seqlens).cumsum(0).tolist()
    assert out["max_seqlen"] == max(seqlens)
    labels = out["output_mask"]
    boxes = out["token_boxes"]
    assert labels.shape[0] == boxes.shape[0] == sum(seqlens)
    start = 0
    for b, length in enumerate(seqlens):
        seq = labels[start : start + length]
        assert seq[0] == -1 and torch.all(seq[1:] >= 1)
        assert torch.all(seq[1:].diff() >= 0), "scale 0 tokens first, then scale 1, ..."
        assert torch.all(boxes[start : start + length, 0] == b)
        for scale, ps in enumerate(tokenizer.patch_sizes):
            kept = masks[ps][b].nonzero()
            sel = boxes[start : start + length][seq == scale + 1]
            assert torch.equal(sel[:, 1], kept[:, 0] * ps) and torch.equal(sel[:, 2], kept[:, 1] * ps)
            assert torch.all(sel[:, 3] == ps)
            assert out[f"pos_embed_mask_{ps}"][b].sum() == kept.shape[0]
        start += length
    height, width = tokenizer.image_size
    assert out["retained_frac"] == pytest.approx(sum(seqlens) / (batch * height * width / tokenizer.base_patch_size**2))


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 130),
    width=st.integers(1, 130),
    batch=st.integers(1, 3),
    num_scales=st.integers(1, 3),
    data=st.data(),
)
def test_packing_and_boxes_agree_with_masks(height, width, batch, num_scales, data):
    thresholds = data.draw(st.lists(st.floats(0, 9), min_size=num_scales - 1, max_size=num_scales - 1))
    pixels = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(height + width)) * 255
    pixels[:, :, : height // 2] = 60.0
    tokenizer = PatchTokenizer(num_scales, 8, (height, width), thresholds, MEAN, STD)
    out = tokenizer(normalise(pixels))
    _check_packing(out, tokenizer, batch)


@settings(max_examples=20, deadline=None)
@given(height=st.integers(8, 120), width=st.integers(8, 120), data=st.data())
def test_full_patches_tile_their_large_patch(height, width, data):
    pixels = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height * 7 + width)) * 255
    pixels[:, :, : height * 3 // 4] = 200.0
    images = normalise(pixels)
    tokenizer = PatchTokenizer(3, 8, (height, width), [data.draw(st.floats(0, 9)), data.draw(st.floats(0, 9))], MEAN, STD)
    out = tokenizer(images)
    padded = torch.nn.functional.pad(images, (0, 32 * -(-width // 32) - width, 0, 32 * -(-height // 32) - height))
    for scale, ps in enumerate(tokenizer.patch_sizes[1:], start=1):
        full = out[f"full_patches_{ps}"]
        n = 2**scale
        for token, (b, y0, x0, side) in enumerate(out[f"token_boxes_{ps}"].tolist()):
            region = padded[b, :, y0 : y0 + side, x0 : x0 + side]
            tiles = full[token].view(n, n, 3, 8, 8).permute(2, 0, 3, 1, 4).reshape(3, side, side)
            assert torch.equal(tiles, region)


def test_forward_accepts_precomputed_maps_and_uint8_free_of_bins():
    images = normalise(skimage_batch(96, 128))
    tokenizer = PatchTokenizer(2, 16, (96, 128), [5.0], MEAN, STD, bins=256)
    maps = tokenizer.compute_importance_maps(images)
    a, b = tokenizer(images), tokenizer(images, importance_maps=maps)
    assert a["seqlens"] == b["seqlens"]
    assert torch.equal(a["output_mask"], b["output_mask"])


@pytest.mark.parametrize("method,options", [("laplacian", {"aggregate": "std"}), ("upsample_mse", {}), ("entropy", {"bins": 64})])
def test_every_scorer_gives_exact_cover(method, options):
    images = normalise(skimage_batch(100, 150))
    probe = PatchTokenizer(2, 16, (100, 150), [0.0], MEAN, STD, method=method, **options)
    scores = probe.compute_importance_maps(images)[32][:, :-1, :-1]
    median = float(scores.median())
    tokenizer = PatchTokenizer(2, 16, (100, 150), [median], MEAN, STD, method=method, **options)
    out = tokenizer(images)
    _check_packing(out, tokenizer, 4)
    masks = out["masks"]
    cover = masks[16] + masks[32].repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :7, :10]
    assert torch.all(cover == 1)
    assert masks[32].sum() > 0, "flat regions of real images should give some large patches"


def test_single_channel_images():
    images = (skimage_batch(64, 64)[:, :1] / 255 - 0.5) / 0.25
    tokenizer = PatchTokenizer(2, 16, 64, [5.0], [0.5], [0.25])
    out = tokenizer(images)
    assert out["resized_patches_16"].shape[1:] == (1, 16, 16)


@pytest.mark.parametrize("custom_maps", [False, True])
def test_torch_gather_path_equals_reference(custom_maps):
    # float64 images take the plain torch gather (the CUDA path); float32 CPU images take the numba kernel.
    images = normalise(skimage_batch(61, 97))
    tokenizer = PatchTokenizer(3, 14, (61, 97), [6.0, 5.0], MEAN, STD)
    if custom_maps:  # no border rule: large patches that stick out of the image get kept
        maps = {14: torch.zeros(4, 5, 7), 28: torch.zeros(4, 3, 4), 56: torch.zeros(4, 2, 2)}
    else:
        maps = tokenizer.compute_importance_maps(images)
    masks = tokenizer.construct_masks(maps)[0]
    expected = reference.patch_groups(images, masks, 14)
    for pixels in (images, images.double()):
        groups = tokenizer.construct_patch_groups(pixels, masks)
        for key, value in expected.items():
            assert torch.allclose(groups[key].float(), value, atol=1e-6), key
    if custom_maps:
        assert expected["resized_patches_56"].shape[0] == 16


def _check_gradient_flows(device):
    images = normalise(skimage_batch(61, 97)).to(device)
    tokenizer = PatchTokenizer(3, 14, (61, 97), [6.0, 5.0], MEAN, STD).to(device)
    plain = tokenizer(images)
    leaf = images.clone().requires_grad_()
    out = tokenizer(leaf)
    assert out["seqlens"] == plain["seqlens"]
    for key, value in plain.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(out[key].detach(), value), key
    out["resized_patches_14"].sum().backward()
    kept = out["masks"][14].repeat_interleave(14, 1).repeat_interleave(14, 2)[:, :61, :97]
    assert torch.equal(leaf.grad, kept[:, None].expand_as(leaf).float()), "d(sum of kept 14-px patches)/d(pixel)"
    assert kept.sum() > 0


def test_images_that_require_grad_give_the_same_tokens_and_a_gradient():
    _check_gradient_flows("cpu")


@cuda
def test_images_that_require_grad_on_cuda():
    _check_gradient_flows("cuda")


def test_construction_checks_the_scorer_once():
    """forward checks only the images: the scorer's option checker runs when the tokenizer is built."""
    from apt_research import SCORERS, register_scorer

    calls = []

    def check(options):
        calls.append(options)
        return options

    def flat(images, patch_size, num_scales, *, level=0.0):
        return {patch_size * 2**s: torch.full((images.shape[0], *[-(-n // (patch_size * 2**s)) for n in
                                                                  images.shape[-2:]]), level)
                for s in range(num_scales)}

    register_scorer("flat_check", check=check)(flat)
    try:
        tokenizer = PatchTokenizer(2, 16, 64, [1.0], method="flat_check", level=0.5)
        for _ in range(3):
            assert tokenizer(torch.zeros(1, 3, 64, 64))["seqlens"] == [5]
    finally:
        SCORERS.pop("flat_check")
    assert calls == [{"level": 0.5}]


@pytest.mark.parametrize("thresholds,error,message", [
    ([5.0], ValueError, "num_scales - 1 = 2 entries"),
    ([float("nan"), 1.0], ValueError, "thresholds must be finite"),
    ("5,4", TypeError, "thresholds must be a list of 2 numbers"),
    ([11.0, 1.0], ValueError, "pad_value must be at least every threshold"),
])
def test_set_thresholds_checks_as_the_constructor(thresholds, error, message):
    with pytest.raises(error, match=message):
        PatchTokenizer(3, 16, 64, thresholds, pad_value=10.0)
    tokenizer = PatchTokenizer(3, 16, 64, [5.0, 4.0], pad_value=10.0)
    with pytest.raises(error, match=message):
        tokenizer.set_thresholds(thresholds)
    assert tokenizer.thresholds == [5.0, 4.0]  # a refused setting leaves the old one


def test_set_thresholds_gives_a_fresh_tokenizer_s_tokens():
    images = normalise(skimage_batch(64, 64, ["astronaut", "camera"]))
    tokenizer = PatchTokenizer(3, 8, 64, [-1.0, -1.0], MEAN, STD)
    assert tokenizer(images)["seqlens"] == [65, 65]  # nothing merged
    tokenizer.set_thresholds([6.5, 7.0])
    assert tokenizer.thresholds == [6.5, 7.0]
    merged = PatchTokenizer(3, 8, 64, [6.5, 7.0], MEAN, STD)(images)["seqlens"]
    assert tokenizer(images)["seqlens"] == merged and merged != [65, 65]


def test_maps_of_images_that_require_grad_equal_the_detached_ones():
    images = normalise(skimage_batch(61, 97))
    tokenizer = PatchTokenizer(3, 14, (61, 97), [6.0, 5.0], MEAN, STD)
    got = tokenizer.compute_importance_maps(images.clone().requires_grad_())
    expected = tokenizer.compute_importance_maps(images)
    assert all(torch.equal(got[size], expected[size]) for size in expected)


def _same_maps(got, expected):
    return got.keys() == expected.keys() and all(torch.equal(got[size], expected[size]) for size in expected)


def _same_forward(got, expected):
    return got.keys() == expected.keys() and all(
        _same_maps(got[key], expected[key]) if isinstance(got[key], dict)
        else torch.equal(got[key], expected[key]) if isinstance(got[key], torch.Tensor) else got[key] == expected[key]
        for key in expected)


@pytest.mark.parametrize("layout", ["planes", "channels_last", "uint8"])
def test_a_planned_call_gives_what_the_full_path_gives(layout):
    # After one call the tokenizer keeps a plan for images of that shape, strides and dtype, and later calls
    # skip the checks and the arguments' making: their maps and tokens must be those of the full path.
    pixels = skimage_batch(64, 80)
    images = {"planes": normalise(pixels), "channels_last": normalise(pixels).contiguous(
        memory_format=torch.channels_last), "uint8": pixels.round().to(torch.uint8)}[layout]
    tokenizer = PatchTokenizer(3, 8, (64, 80), [6.0, 5.0], MEAN, STD)
    full = PatchTokenizer(3, 8, (64, 80), [6.0, 5.0], MEAN, STD, backend="torch")
    for image in (images[i : i + 1] for i in range(images.shape[0])):
        first = tokenizer.compute_importance_maps(image)
        assert tokenizer._plans.lookup("maps", image, tokenizer) is not None
        planned = tokenizer.compute_importance_maps(image.clone())
        expected = full.compute_importance_maps(image)
        assert _same_maps(planned, first)
        assert all(torch.allclose(planned[size], expected[size], atol=1e-5, rtol=0) for size in expected)
        if layout != "uint8":  # the forward takes normalised float32 images
            first = tokenizer(image)
            assert tokenizer._plans.lookup("forward", image, tokenizer) is not None
            assert _same_forward(tokenizer(image.clone()), first)
            assert _same_forward(first, tokenizer(image, tokenizer.compute_importance_maps(image)))


def test_planned_calls_still_refuse_bad_images():
    images = normalise(skimage_batch(64, 64, ["astronaut", "camera"]))
    tokenizer = PatchTokenizer(3, 8, 64, [6.0, 5.0], MEAN, STD)
    tokenizer(images), tokenizer.compute_importance_maps(images)
    for value in (float("nan"), float("inf")):
        bad = images.clone()
        bad[1, 0, 63, 63] = value
        with pytest.raises(ValueError, match="finite.*image 1 of the batch"):
            tokenizer.compute_importance_maps(bad)
        with pytest.raises(ValueError, match="finite.*image 1 of the batch"):
            tokenizer(bad)
    with pytest.raises(ValueError, match="image_size 64 x 64"):
        tokenizer.compute_importance_maps(images[:, :, :32])
    with pytest.raises(ValueError, match="3 channels"):
        tokenizer(images[:, :1])
    decoded = skimage_batch(64, 64, ["astronaut", "camera"]).round().to(torch.uint8)
    tokenizer.compute_importance_maps(decoded), tokenizer.compute_importance_maps(decoded)
    with pytest.raises(TypeError, match="real numbers"):  # the strides of uint8, not its dtype
        tokenizer.compute_importance_maps(decoded > 0)


def test_images_a_plan_does_not_fit_take_the_full_path():
    # Same shape, other strides, dtype or type, or autograd: the planned call must not read them as planned.
    images = normalise(skimage_batch(64, 64, ["astronaut", "camera"]))
    tokenizer = PatchTokenizer(3, 8, 64, [6.0, 5.0], MEAN, STD)
    expected_maps, expected = tokenizer.compute_importance_maps(images), tokenizer(images)
    transposed = images.transpose(2, 3).contiguous().transpose(2, 3)  # the same values, column-major
    assert not transposed.is_contiguous() and torch.equal(transposed, images)
    for other in (transposed, images.double(), torch.nn.Parameter(images.clone()), images.clone().requires_grad_()):
        assert tokenizer._plans.lookup("maps", other, tokenizer) is None and tokenizer._plans.lookup("forward", other, tokenizer) is None
        assert _same_maps(tokenizer.compute_importance_maps(other), expected_maps)
        with torch.no_grad():
            assert tokenizer(other)["seqlens"] == expected["seqlens"]


def test_a_plan_follows_the_settings_it_was_made_under():
    images = normalise(skimage_batch(64, 80, ["astronaut", "camera"]))
    tokenizer = PatchTokenizer(3, 8, (64, 80), [6.0, 5.0], MEAN, STD)
    tokenizer(images), tokenizer.compute_importance_maps(images)
    tokenizer.method_options["bins"] = 64
    fresh = PatchTokenizer(3, 8, (64, 80), [6.0, 5.0], MEAN, STD, bins=64)
    assert _same_maps(tokenizer.compute_importance_maps(images), fresh.compute_importance_maps(images))
    assert _same_forward(tokenizer(images), fresh(images))
    tokenizer.pad_value = fresh.pad_value = 1e4
    maps = tokenizer.compute_importance_maps(images)
    assert _same_maps(maps, fresh.compute_importance_maps(images)) and bool((maps[32] == 1e4).any())  # padded
    # The normalisation's buffer replaced through .data: the planned call reads the new one.
    other = PatchTokenizer(3, 8, (64, 80), [6.0, 5.0], [0.5, 0.4, 0.3], [0.25, 0.2, 0.3], bins=64, pad_value=1e4)
    tokenizer.unnorm_mean.data = other.unnorm_mean.clone()
    tokenizer.unnorm_std.data = other.unnorm_std.clone()
    assert _same_maps(tokenizer.compute_importance_maps(images), other.compute_importance_maps(images))
    assert _same_forward(tokenizer(images), other(images))
    # A view of the same memory, at the same address, of one channel: the first channel's numbers for all.
    tokenizer.unnorm_mean.data, tokenizer.unnorm_std.data = tokenizer.unnorm_mean[:, :1], tokenizer.unnorm_std[:, :1]
    first = PatchTokenizer(3, 8, (64, 80), [6.0, 5.0], [0.5], [0.25], bins=64, pad_value=1e4)
    assert _same_maps(tokenizer.compute_importance_maps(images), first.compute_importance_maps(images))
    tokenizer.unnorm_mean.data, tokenizer.unnorm_std.data = other.unnorm_mean.clone(), other.unnorm_std.clone()
    threads = torch.get_num_threads()
    try:  # one thread (a data-loader worker) takes the serial kernels, whatever the plans of two threads
        torch.set_num_threads(1)
        assert _same_forward(tokenizer(images), other(images))
        assert tokenizer._plans.lookup("forward", images, tokenizer)[0].kernel.__name__ == "tokenize_serial"
    finally:
        torch.set_num_threads(threads)


def test_a_plan_sees_the_normalisation_restrided_in_place():
    # Same buffer object, address and shape, other strides: the planned call must read the new layout.
    images = normalise(skimage_batch(64, 64, ["astronaut"]))
    tokenizers = [PatchTokenizer(3, 8, 64, [6.0, 5.0], MEAN, STD) for _ in range(2)]
    tokenizers[0].compute_importance_maps(images), tokenizers[0](images)
    for tokenizer in tokenizers:  # the first channel's numbers for all three, through a stride of 0
        tokenizer.unnorm_mean.data = tokenizer.unnorm_mean.data[:, :1].expand(1, 3, 1, 1)
        tokenizer.unnorm_std.as_strided_((1, 3, 1, 1), (3, 0, 1, 1))
    planned, fresh = tokenizers
    assert _same_maps(planned.compute_importance_maps(images), fresh.compute_importance_maps(images))
    assert _same_forward(planned(images), fresh(images))
    first = PatchTokenizer(3, 8, 64, [6.0, 5.0], MEAN[:1], STD[:1])
    assert _same_maps(planned.compute_importance_maps(images), first.compute_importance_maps(images))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_a_tokenizer_of_another_precision_reads_its_normalisation_as_float32(dtype):
    # tokenizer.half() / .double(): the CPU kernels read the buffers' values converted to float32, as before.
    images = normalise(skimage_batch(64, 64, ["astronaut", "camera"]))
    tokenizer = PatchTokenizer(3, 8, 64, [6.0, 5.0], MEAN, STD).to(dtype)
    reference = PatchTokenizer(3, 8, 64, [6.0, 5.0], MEAN, STD)
    reference.unnorm_mean.data, reference.unnorm_std.data = tokenizer.unnorm_mean.float(), tokenizer.unnorm_std.float()
    for _ in range(2):  # the full path, then the one a plan would take
        assert _same_maps(tokenizer.compute_importance_maps(images), reference.compute_importance_maps(images))
        assert _same_forward(tokenizer(images), reference(images))


def test_thresholds_assigned_directly_are_checked_and_followed():
    images = normalise(skimage_batch(64, 64, ["astronaut"]))
    tokenizer = PatchTokenizer(3, 8, 64, [6.0, 5.0], MEAN, STD)
    values = torch.tensor([0.5, 0.5])
    tokenizer.thresholds = values  # checked and copied as set_thresholds does
    assert tokenizer.thresholds == [0.5, 0.5]
    assert tokenizer(images)["seqlens"] == PatchTokenizer(3, 8, 64, [0.5, 0.5], MEAN, STD)(images)["seqlens"]
    values.copy_(torch.tensor([6.0, 5.0]))  # the caller's tensor is not the tokenizer's: nothing changes
    assert tokenizer(images)["seqlens"] == PatchTokenizer(3, 8, 64, [0.5, 0.5], MEAN, STD)(images)["seqlens"]
    for bad, message in (([], "2 entries"), ([6.0], "2 entries"), ([float("nan"), 5.0], "finite"), (["a", 5.0], "numbers"),
                         ([6.0, 2e6], "pad_value")):
        with pytest.raises((ValueError, TypeError), match=message):
            tokenizer.thresholds = bad
        assert tokenizer.thresholds == [0.5, 0.5]  # a refused setting leaves the old one
    tokenizer.thresholds[0] = 6.0  # the list changed in place: followed at the next call
    assert tokenizer(images)["seqlens"] == PatchTokenizer(3, 8, 64, [6.0, 0.5], MEAN, STD)(images)["seqlens"]
    tokenizer.thresholds[1] = float("nan")  # and checked there, on every path
    maps = tokenizer.compute_importance_maps(images)
    for call in (lambda: tokenizer(images), lambda: tokenizer(images.double()), lambda: tokenizer.construct_masks(maps)):
        with pytest.raises(ValueError, match="finite"):
            call()
    tokenizer.thresholds = [6.0, 5.0]
    tokenizer.thresholds[0] = 2e6  # above pad_value, in place: the border rule, at the next call on every path
    for call in (lambda: tokenizer(images), lambda: tokenizer(images.double()), lambda: tokenizer.construct_masks(maps)):
        with pytest.raises(ValueError, match="border rule"):
            call()
    tokenizer.thresholds = [6.0, 5.0]
    for bad, error in ((1.0, "border rule"), (float("nan"), "NaN"), (None, "real number")):
        with pytest.raises((ValueError, TypeError), match=error):
            tokenizer.pad_value = bad
    assert tokenizer.pad_value == 1e6
    tokenizer.image_size = [64, 32]  # a list, as a careless user assigns it: the full path's message
    with pytest.raises(ValueError, match="image_size"):
        tokenizer.compute_importance_maps(images)


def test_a_pickled_tokenizer_leaves_its_plans_behind():
    import pickle

    images = normalise(skimage_batch(64, 64, ["astronaut"]))
    tokenizer = PatchTokenizer(3, 8, 64, [6.0, 5.0], MEAN, STD)
    expected = tokenizer(images)
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert len(tokenizer._plans) and not len(copy._plans) and copy._plans._views is None
    assert _same_forward(copy(images), expected)
    assert _same_forward(copy(images), expected)  # and planned again
    # A tokenizer pickled by an earlier version: no plans, its argument cache, the thresholds an attribute, a
    # threshold cache of another shape.
    old_state = {key: value for key, value in tokenizer.__dict__.items() if key not in ("_plans", "_normalisation_views")}
    old_state["thresholds"], old_state["pad_value"] = old_state.pop("_thresholds"), old_state.pop("_pad_value")
    old_state["_numba_cache"], old_state["_normalisation_views"] = {}, None
    old_state["_threshold_cache"] = (((6.0, 5.0), "cpu"), torch.tensor([0.0, 6.0, 5.0]))
    old = PatchTokenizer.__new__(PatchTokenizer)
    old.__setstate__(old_state)
    assert _same_forward(old(images), expected) and old.thresholds == [6.0, 5.0] and "_numba_cache" not in old.__dict__


def test_the_numba_path_follows_every_change_of_the_tokenizer():
    # The CPU forward keeps its kernel arguments between calls: a change of thresholds (even by plain
    # assignment), of the normalisation (even in place through .data, which no version counter sees)
    # or of the batch size must reach the next call.
    images = normalise(skimage_batch(64, 64, ["astronaut", "camera", "coffee"]))
    other_mean, other_std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    tokenizer = PatchTokenizer(3, 8, 64, [6.0, 5.0], MEAN, STD)
    tokenizer(images)
    tokenizer.thresholds = [6.5, 7.0]
    assert tokenizer(images)["seqlens"] == PatchTokenizer(3, 8, 64, [6.5, 7.0], MEAN, STD)(images)["seqlens"]
    fresh = PatchTokenizer(3, 8, 64, [6.5, 7.0], other_mean, other_std)
    tokenizer.unnorm_mean.data.copy_(fresh.unnorm_mean)
    tokenizer.unnorm_std.data.copy_(fresh.unnorm_std)
    for batch in (images, images[:1]):
        got, expected = tokenizer(batch), fresh(batch)
        assert got["seqlens"] == expected["seqlens"]
        assert torch.equal(got["resized_patches_8"], expected["resized_patches_8"])
        maps, fresh_maps = tokenizer.compute_importance_maps(batch), fresh.compute_importance_maps(batch)
        assert all(torch.equal(maps[size], fresh_maps[size]) for size in fresh_maps)
