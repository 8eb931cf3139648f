"""More model families under ``from_timm``: register tokens, attention pooling (SigLIP), EVA with RoPE.

Random weights, no downloads. With thresholds that merge nothing each equals timm's own forward; with merging each
image's sequence through timm's own blocks gives the batched (packed and padded) output.
"""

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is the optional [models] extra (python3 run.py installs it)")

from timm.layers import AttentionPoolLatent  # noqa: E402
from timm.layers.pos_embed_sincos import build_rotary_pos_embed  # noqa: E402

from apt_research.models import AptEva, AptViT, from_timm  # noqa: E402
from images import skimage_batch  # noqa: E402
from tiny_vits import NAMES, THRESHOLDS, normalised  # noqa: E402

NOTHING = [-1.0, -1.0]  # a flat patch scores -1.4e-10 bits: only a negative threshold keeps every patch


def relative_error(got, expected):
    return float((got - expected).abs().max() / expected.abs().max())


TINY = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}


def tiny_vit(**options):
    torch.manual_seed(0)
    return timm.models.VisionTransformer(**{**TINY, **options}).eval()


def tiny_eva(**options):
    """A small EVA02-style model (RoPE over a 4 x 4 reference grid), weights drawn large enough to matter."""
    torch.manual_seed(0)
    model = timm.models.eva.Eva(**{**TINY, "use_rot_pos_emb": True, "ref_feat_shape": (4, 4), **options}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.2)
    return model


FAMILIES = {
    "vit_small_patch14_reg4_dinov2": {"img_size": 224, "depth": 2},  # registers after the class token
    "vit_base_patch16_reg4_gap_256": {"depth": 1},  # registers, no class token, avg pooling
    "vit_base_patch16_siglip_224": {"depth": 1},  # attention pooling (map), no class token
    "eva02_tiny_patch14_224": {"depth": 2},  # EVA02: RoPE, SwiGLU, class token
    "vit_medium_patch16_rope_reg1_gap_256": {"depth": 1},  # Eva with RoPE, one register, no absolute positions
}


@pytest.mark.parametrize("attention", ["packed", "padded"])
@pytest.mark.parametrize("name", FAMILIES)
def test_nothing_merged_equals_timm(name, attention):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **FAMILIES[name]).eval()
    apt = from_timm(model, num_scales=3, thresholds=NOTHING, attention=attention)
    assert type(apt) is (AptEva if isinstance(model, timm.models.eva.Eva) else AptViT)
    size = model.patch_embed.img_size[0]
    flat = torch.full((1, 3, size, size), 128.0)
    images = normalised(torch.cat([skimage_batch(size, size, NAMES[:1]), flat]), model)
    with torch.no_grad():
        tokens = apt.tokenize(images)
        grid = model.patch_embed.grid_size
        assert apt.sequence_lengths(tokens) == [model.num_prefix_tokens + grid[0] * grid[1]] * 2
        expected = model(images)
        got = apt(tokens)
    assert expected.abs().max() > 0
    assert got.shape == expected.shape
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("options", [{"reg_tokens": 3}, {"reg_tokens": 3, "no_embed_class": True},
                                     {"class_token": False, "reg_tokens": 2, "global_pool": "avg"},
                                     {"class_token": False, "global_pool": "map"}])
def test_prefix_tokens_are_timm_s(options):
    """Unmerged, ``embed`` is timm's sequence: class token, registers (timm's order and positions), patches."""
    model = tiny_vit(**options)
    apt = from_timm(model, num_scales=3, thresholds=NOTHING)
    images = normalised(skimage_batch(64, 64, NAMES[:2]), model)
    with torch.no_grad():
        tokens = apt.tokenize(images)
        assert tokens["seqlens"] == [1 + 64] * 2  # the tokenizer's: one class-token slot per image
        assert apt.sequence_lengths(tokens) == [model.num_prefix_tokens + 64] * 2
        expected = model._pos_embed(model.patch_embed(images)).flatten(0, 1)
        assert relative_error(apt.embed(tokens), expected) <= 1e-6


def each_image_through_timm(apt, tokens, rope=False):
    """Each image's packed sequence through timm's own blocks, one image at a time, no mask; then its head."""
    model = apt.model
    packed = apt.embed(tokens)
    rows = apt.rope(tokens) if rope else None
    bounds = apt.layout(tokens).cu_seqlens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        x = model.norm_pre(packed[start:end][None])
        for block in model.blocks:
            x = block(x, rope=rows[start + apt.num_prefix : end]) if rope else block(x)
        outputs.append(model.forward_head(model.norm(x)))
    return torch.cat(outputs)


VIT_OPTIONS = [{"reg_tokens": 4, "no_embed_class": True}, {"reg_tokens": 2, "global_pool": "avg"},
               {"class_token": False, "reg_tokens": 4, "no_embed_class": True, "global_pool": "avg"},
               {"class_token": False, "global_pool": "map"}, {"reg_tokens": 1, "global_pool": "map"},
               {"reg_tokens": 1, "global_pool": "map", "pool_include_prefix": True}]


@pytest.mark.parametrize("options", VIT_OPTIONS)
def test_merged_vit_is_each_image_through_timm(options):
    model = tiny_vit(**options)
    apt = from_timm(model, num_scales=3, thresholds=THRESHOLDS)
    with torch.no_grad():
        tokens = apt.tokenize(normalised(skimage_batch(64, 64, NAMES), model))
        assert len(set(tokens["seqlens"])) > 1
        expected = each_image_through_timm(apt, tokens)
        for attention in ("packed", "padded"):
            apt.attention = attention
            assert relative_error(apt(tokens), expected) <= 1e-5, attention


EVA_OPTIONS = [{"swiglu_mlp": True, "scale_mlp": True}, {"global_pool": "map"}, {"use_post_norm": True},
               {"class_token": False, "num_reg_tokens": 2, "use_abs_pos_emb": False, "init_values": 0.1},
               {"attn_type": "rope", "qkv_fused": False, "rope_grid_indexing": "xy", "qk_norm": True},
               {"rope_rotate_half": True, "num_reg_tokens": 3, "no_embed_class": True, "global_pool": "token"}]


@pytest.mark.parametrize("options", EVA_OPTIONS)
def test_merged_eva_is_each_image_through_timm(options):
    model = tiny_eva(**options)
    apt = from_timm(model, num_scales=3, thresholds=THRESHOLDS)
    images = normalised(skimage_batch(64, 64, NAMES), model)
    with torch.no_grad():
        tokens = apt.tokenize(images)
        assert len(set(tokens["seqlens"])) > 1
        expected = each_image_through_timm(apt, tokens, rope=True)
        for attention in ("packed", "padded"):
            apt.attention = attention
            assert relative_error(apt(tokens), expected) <= 1e-5, attention
        assert relative_error(from_timm(model, 3, NOTHING)(images), model(images)) <= 1e-5


@pytest.mark.parametrize("options", [{}, {"rope_grid_indexing": "xy", "rope_rotate_half": True},
                                     {"ref_feat_shape": None, "rope_grid_offset": 0.5}])
def test_eva_rope_is_timm_s_at_each_patch_centre(options):
    """Base patches get timm's own rotary rows; a patch of k x k base cells the rows of timm's grid at its centre,
    (r + (k - 1) / 2, c + (k - 1) / 2): a coarse grid of k-cell steps offset by (k - 1) / 2k of a step."""
    model = tiny_eva(**options)
    rope = model.rope
    apt = from_timm(model, num_scales=3, thresholds=THRESHOLDS)
    with torch.no_grad():
        tokens = apt.tokenize(normalised(skimage_batch(64, 64, NAMES), model))
        rows = apt.rope(tokens)
    head = rows.shape[1] // 2
    layout = apt.layout(tokens)
    prefix = layout.position() < apt.num_prefix
    assert torch.equal(rows[prefix], torch.cat([torch.zeros(head), torch.ones(head)]).expand(int(prefix.sum()), -1))
    patch_rows = rows[~prefix]
    patch_scale = tokens["output_mask"][tokens["output_mask"] >= 1]
    grid = list(model.patch_embed.grid_size)
    reference = list(rope.ref_feat_shape) if rope.ref_feat_shape is not None else grid
    for scale, size in enumerate(apt.tokenizer.patch_sizes):
        cells = size // apt.patch_size
        coarse = [side // cells for side in grid]
        offset = ((cells - 1) / 2 + rope.grid_offset) / cells
        sin, cos = build_rotary_pos_embed(coarse, bands=rope.bands, in_pixels=False, ref_feat_shape=reference,
                                          grid_offset=offset, grid_indexing=rope.grid_indexing,
                                          rotate_half=rope.rotate_half)
        expected_grid = torch.cat([sin, cos], -1)
        boxes = tokens[f"token_boxes_{size}"]
        index = (boxes[:, 1] // size) * coarse[1] + boxes[:, 2] // size
        got = patch_rows[patch_scale == scale + 1]
        assert got.shape[0] == boxes.shape[0] > 0
        assert float((got - expected_grid[index]).abs().max()) <= 1e-5, size
        if scale == 0:
            assert torch.equal(got, rope.get_embed()[index])  # timm's own rows, bit for bit


def test_vit_refusals():
    with pytest.raises(ValueError, match=r"class token and registers only \(1\) for APT, got 2 prefix tokens "
                                         r"\(a distillation token\)"):
        from_timm(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=1), 2, [5.0])
    with pytest.raises(ValueError, match=r"global_pool in \('token', 'avg', 'map'\) for APT, got global_pool='max'"):
        from_timm(tiny_vit(global_pool="max"), 2, [5.0])
    model = tiny_vit(class_token=False, global_pool="map")
    model.attn_pool = AttentionPoolLatent(32, num_heads=2, feat_size=64, pos_embed="abs")
    with pytest.raises(ValueError, match=r"attn_pool must have no position embedding of its own .* got pos_embed="):
        from_timm(model, 2, [5.0])


@pytest.mark.parametrize("options, message", [
    ({"rope_type": "mixed"}, r"no per-depth mixed RoPE .* got rope_type='mixed'"),
    ({"rope_type": "dinov3"}, r"RoPE of rope_type 'cat' \(RotaryEmbeddingCat\) or none for APT, got "
                              r"rope=RotaryEmbeddingDinoV3"),
    ({"rope_shift_coords": 0.5}, r"no RoPE coordinate augmentation"),
    ({"patch_drop_rate": 0.1}, r"no patch dropout"),
    ({"global_pool": "max"}, r"global_pool in \('token', 'avg', 'map'\)"),
])
def test_eva_refusals(options, message):
    with pytest.raises(ValueError, match=message):
        from_timm(tiny_eva(**options), 2, [5.0])
