"""``from_timm``: equivalence with timm, the zero-initialised merge, packed attention, state and training."""

import io

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm", reason="timm is the optional [models] extra (python3 run.py installs it)")

from timm.layers import resample_abs_pos_embed  # noqa: E402

from apt_research.models import from_timm  # noqa: E402
from images import skimage_batch  # noqa: E402
from tiny_vits import NAMES, THRESHOLDS, normalised, tiny  # noqa: E402


def relative_error(got, expected):
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "vit_base_patch16_clip_224",
                                  "vit_small_patch14_dinov2"])
def test_nothing_merged_equals_timm(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=224).eval()
    # A flat patch scores -1.4e-10 bits (the log's epsilon), so only a negative threshold keeps every patch.
    apt = from_timm(model, num_scales=3, thresholds=[-1.0, -1.0])
    flat = torch.full((1, 3, 224, 224), 128.0)
    images = normalised(torch.cat([skimage_batch(224, 224, NAMES[:1]), flat]), model)
    with torch.no_grad():
        tokens = apt.tokenize(images)
        patch = model.patch_embed.patch_size[0]
        assert tokens["seqlens"] == [1 + (224 // patch) ** 2] * 2
        expected = model(images)
        got = apt(tokens)
    assert expected.abs().max() > 0
    assert got.shape == expected.shape
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("options", [{}, {"class_token": True, "no_embed_class": True}, {"global_pool": "avg"},
                                     {"num_classes": 0, "pre_norm": True}])
def test_merged_forward_is_each_image_through_timm(options):
    model = tiny(**options)
    apt = from_timm(model, num_scales=3, thresholds=THRESHOLDS)
    images = normalised(skimage_batch(64, 64, NAMES), model)
    with torch.no_grad():
        tokens = apt.tokenize(images)
        assert len(set(tokens["seqlens"])) > 1, "the images should give sequences of different lengths"
        packed = apt.embed(tokens)
        got = apt(tokens)
        bounds = tokens["cu_seqlens"].tolist()
        expected = []
        for start, end in zip(bounds[:-1], bounds[1:]):  # one image at a time, no mask: timm's own path
            features = model.norm(model.blocks(model.norm_pre(packed[start:end][None])))
            expected.append(model.forward_head(features))
        expected = torch.cat(expected)
    assert relative_error(got, expected) <= 1e-5


def test_set_thresholds_keeps_the_tokenizer_s_rules():
    apt = from_timm(tiny(), num_scales=3, thresholds=THRESHOLDS)
    with pytest.raises(ValueError, match="pad_value must be at least every threshold"):
        apt.set_thresholds([2e6, 1.0])  # above the default pad value 1e6: padded border patches would be kept
    with pytest.raises(ValueError, match="num_scales - 1 = 2 entries"):
        apt.set_thresholds([1.0])
    assert apt.tokenizer.thresholds == THRESHOLDS
    apt.set_thresholds([1.0, 2.0])
    assert apt.tokenizer.thresholds == [1.0, 2.0]


def reference_embeddings(model, images, tokens, merge=None):
    """Each packed token embedded from its box, one at a time: resize to p, embed, add its position
    embedding (resampled to the scale's grid), plus ``merge(sub-patch embedding grid)`` if given."""
    patch = model.patch_embed.patch_size[0]
    grid = model.patch_embed.grid_size
    height, width = images.shape[-2:]
    rows = []
    for image, y0, x0, side in tokens["token_boxes"].tolist():
        if side == 0:
            rows.append(model.cls_token[0, 0] + model.pos_embed[0, 0])
            continue
        region = images[image : image + 1, :, y0 : y0 + side, x0 : x0 + side]
        resized = F.interpolate(region, size=(patch, patch), mode="bilinear", align_corners=False)
        pos = resample_abs_pos_embed(model.pos_embed, new_size=(height // side, width // side), old_size=grid,
                                     num_prefix_tokens=1)
        embedding = model.patch_embed.proj(resized).flatten() + pos[0, 1 + (y0 // side) * (width // side) + x0 // side]
        if merge is not None and side > patch:
            sub = model.patch_embed.proj(region)  # (1, D, side / p, side / p): the base sub-patches' embeddings
            embedding = embedding + merge(sub)
        rows.append(embedding)
    return torch.stack(rows)


def test_fresh_wrap_is_resize_then_embed():
    model = tiny()
    apt = from_timm(model, num_scales=3, thresholds=THRESHOLDS)
    images = normalised(skimage_batch(64, 64, NAMES), model)
    with torch.no_grad():
        tokens = apt.tokenize(images)
        assert tokens["resized_patches_16"].shape[0] and tokens["resized_patches_32"].shape[0]
        assert relative_error(apt.embed(tokens), reference_embeddings(model, images, tokens)) <= 1e-5


def test_trained_merge_is_the_conv_of_sub_patches_then_the_linear_layer():
    model = tiny()
    apt = from_timm(model, num_scales=3, thresholds=THRESHOLDS)
    torch.nn.init.normal_(apt.merge_proj.weight, std=0.2)
    torch.nn.init.normal_(apt.merge_proj.bias, std=0.2)
    images = normalised(skimage_batch(64, 64, NAMES), model)

    def merge(grid):
        while grid.shape[-1] > 1:
            grid = apt.merge_conv(grid)
        return apt.merge_proj(grid.flatten())

    with torch.no_grad():
        tokens = apt.tokenize(images)
        got = apt.embed(tokens)
        assert relative_error(got, reference_embeddings(model, images, tokens, merge)) <= 1e-5
        assert relative_error(got, reference_embeddings(model, images, tokens)) > 1e-2


def test_state_dict_round_trip():
    apt = from_timm(tiny(seed=0), num_scales=3, thresholds=THRESHOLDS)
    torch.nn.init.normal_(apt.merge_proj.weight, std=0.2)
    assert {"merge_conv.weight", "merge_conv.bias", "merge_proj.weight", "merge_proj.bias"} <= set(apt.state_dict())
    buffer = io.BytesIO()
    torch.save(apt.state_dict(), buffer)
    other = from_timm(tiny(seed=1), num_scales=3, thresholds=THRESHOLDS)
    images = normalised(skimage_batch(64, 64, NAMES), apt.model)
    with torch.no_grad():
        assert not torch.allclose(other(images), apt(images))
        buffer.seek(0)
        other.load_state_dict(torch.load(buffer))
        assert torch.equal(other(images), apt(images))


def test_one_optimisation_step_trains_the_merge():
    apt = from_timm(tiny(), num_scales=3, thresholds=THRESHOLDS).train()
    images = normalised(skimage_batch(64, 64, NAMES), apt.model)
    labels = torch.tensor([0, 1, 2, 3])
    tokens = apt.tokenize(images)
    optimiser = torch.optim.SGD(apt.parameters(), lr=0.05)
    loss = F.cross_entropy(apt(tokens), labels)
    loss.backward()
    assert all(p.grad is not None for p in apt.parameters() if p.requires_grad)
    assert apt.merge_proj.weight.grad.abs().max() > 0
    optimiser.step()
    assert apt.merge_proj.weight.abs().max() > 0
    with torch.no_grad():
        assert F.cross_entropy(apt(tokens), labels) < loss


def test_merge_parameters_are_used_when_nothing_merges():
    apt = from_timm(tiny(), num_scales=2, thresholds=[0.0]).train()
    apt(normalised(skimage_batch(64, 64, NAMES[:1]), apt.model)).sum().backward()
    assert apt.merge_conv.weight.grad is not None and apt.merge_proj.weight.grad is not None


@pytest.mark.parametrize("options, message", [
    ({"global_pool": "max"}, r"global_pool in \('token', 'avg', 'map'\) for APT, got global_pool='max'"),
    ({"pos_embed": "none"}, r"an absolute position embedding"),
    ({"patch_drop_rate": 0.1}, r"no patch dropout"),
])
def test_unsupported_models_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        from_timm(tiny(**options), num_scales=2, thresholds=[5.0])


def test_non_vit_is_refused():
    with pytest.raises(TypeError, match="model must be a timm VisionTransformer .* got Linear"):
        from_timm(torch.nn.Linear(3, 3), num_scales=2, thresholds=[5.0])
