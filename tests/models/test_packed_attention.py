"""Packed attention (``attention="packed"``): the same logits and gradients as the padded reference, every kernel,
drop path per image, pooling from packed features."""

import warnings

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is the optional [models] extra (python3 run.py installs it)")

from timm.layers import DropPath  # noqa: E402
from timm.models.vision_transformer import ResPostBlock  # noqa: E402

from apt_research.models import from_timm  # noqa: E402
from apt_research.models.attention import PackedLayout, choose_kernel, packed_attention, packed_drop_path  # noqa: E402
from conftest import cuda  # noqa: E402
from images import skimage_batch  # noqa: E402
from tiny_vits import NAMES, THRESHOLDS, normalised, tiny  # noqa: E402


def wrapped(model, thresholds, size, device="cpu"):
    """``from_timm`` with a random (trained-looking) merge, and tokens of four real images of different lengths."""
    apt = from_timm(model, num_scales=3, thresholds=thresholds)
    torch.manual_seed(1)
    torch.nn.init.normal_(apt.merge_proj.weight, std=0.1)
    tokens = apt.tokenize(normalised(skimage_batch(size, size, NAMES), model).to(device))
    assert len(set(tokens["seqlens"])) > 1, "the images should give sequences of different lengths"
    return apt, tokens


def logits_and_gradients(apt, tokens, attention):
    apt.attention = attention
    apt.zero_grad()
    logits = apt(tokens)
    # Every logit counts, with its own weight.
    weights = torch.linspace(-1, 1, logits.numel(), device=logits.device, dtype=logits.dtype).view_as(logits)
    (logits * weights).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in apt.named_parameters() if p.grad is not None}


def max_difference(got, expected):
    return float((got - expected).abs().max())


def relative_error(got, expected):
    """The largest difference relative to the largest value."""
    return max_difference(got, expected) / max(float(expected.abs().max()), 1e-12)


MODELS = {
    "vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval(),
    "deit_tiny": lambda: timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2).eval(),
    "avg_pool": lambda: tiny(global_pool="avg"),
    "qk_norm": lambda: tiny(qk_norm=True),
    "layer_scale": lambda: tiny(init_values=0.1),
    "deit3_style": lambda: tiny(no_embed_class=True, init_values=0.1, pre_norm=True),
    "registers": lambda: tiny(reg_tokens=4, no_embed_class=True),
    "map_pool": lambda: tiny(class_token=False, global_pool="map"),
}


@pytest.mark.parametrize("name", MODELS)
def test_packed_equals_padded_logits_and_gradients(name):
    model = MODELS[name]()
    size = model.patch_embed.img_size[0]
    apt, tokens = wrapped(model, [5.5, 4.0] if size == 224 else THRESHOLDS, size)
    assert apt.attention == "packed"  # the default
    packed_logits, packed_grads = logits_and_gradients(apt, tokens, "packed")
    padded_logits, padded_grads = logits_and_gradients(apt, tokens, "padded")
    assert packed_logits.abs().max() > 0
    assert relative_error(packed_logits, padded_logits) <= 1e-5
    assert packed_grads.keys() == padded_grads.keys()
    assert {"merge_proj.weight", "model.patch_embed.proj.weight", "model.blocks.0.attn.qkv.weight"} <= set(packed_grads)
    # Relative to the largest gradient: some are zero but for rounding (k_norm's bias: softmax ignores a shift).
    scale = max(float(grad.abs().max()) for grad in padded_grads.values())
    for key, grad in packed_grads.items():
        assert max_difference(grad, padded_grads[key]) <= 1e-5 * scale, key


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_each_cpu_kernel_equals_padded(kernel):
    apt, tokens = wrapped(tiny(qk_norm=True, init_values=0.1), THRESHOLDS, 64)
    seqlens = apt.sequence_lengths(tokens)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex, uncompiled: "an unfused implementation" (chosen only when asked)
        packed = apt.pool(apt.forward_packed_features(tokens, kernel=kernel), seqlens)
    with torch.no_grad():
        padded = apt.pool(apt.forward_padded_features(tokens), seqlens)
    assert max_difference(packed, padded) <= 1e-5


def test_flex_is_refused_with_gradients_on_cpu():
    apt, tokens = wrapped(tiny(), THRESHOLDS, 64)
    with pytest.raises(NotImplementedError, match="kernel='flex' has no backward on CPU"):
        apt.forward_packed_features(tokens, kernel="flex")


def test_auto_kernel_is_sdpa_on_cpu():
    q = torch.zeros(10, 2, 8)
    assert choose_kernel(q) == "sdpa"
    assert choose_kernel(q.bfloat16()) == "sdpa"


def test_packed_attention_is_each_image_alone():
    torch.manual_seed(0)
    seqlens = [3, 5, 5, 1]
    layout = PackedLayout.from_seqlens(seqlens, "cpu")
    q, k, v = (torch.randn(sum(seqlens), 2, 4) for _ in range(3))
    got = packed_attention(q, k, v, layout)
    bounds = layout.cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        one = torch.nn.functional.scaled_dot_product_attention(*(x[start:end].transpose(0, 1) for x in (q, k, v)))
        assert max_difference(got[start:end], one.transpose(0, 1)) <= 1e-6


def test_drop_path_drops_whole_images():
    seqlens = [3, 1, 4, 2] * 16
    layout = PackedLayout.from_seqlens(seqlens, "cpu")
    module = DropPath(0.5).train()
    x = torch.ones(sum(seqlens), 6)
    torch.manual_seed(0)
    out = packed_drop_path(x, module, layout)
    per_image = [out[start:end] for start, end in zip(layout.cu_seqlens[:-1].tolist(), layout.cu_seqlens[1:].tolist())]
    values = {float(rows[0, 0]) for rows in per_image}
    assert values == {0.0, 2.0}  # dropped, or kept and scaled by 1 / keep_prob
    assert all(bool((rows == rows[0, 0]).all()) for rows in per_image)
    assert torch.equal(packed_drop_path(x, module.eval(), layout), x)


def test_drop_path_draws_as_timm_per_image():
    """Seeded alike, the packed path drops the same images in the same blocks as timm's DropPath on the padded batch."""
    apt, tokens = wrapped(tiny(drop_path_rate=0.5, depth=4), THRESHOLDS, 64)
    apt.train()
    outputs = {}
    for attention in ("packed", "padded"):
        apt.attention = attention
        torch.manual_seed(123)
        outputs[attention] = apt(tokens).detach()
    torch.manual_seed(7)
    other = apt(tokens).detach()
    assert max_difference(outputs["packed"], outputs["padded"]) <= 1e-5
    assert max_difference(other, outputs["packed"]) > 1e-3  # another seed drops other paths


def test_attention_is_checked():
    model = tiny()
    with pytest.raises(ValueError, match=r"attention must be one of \('packed', 'padded'\), got 'flash'"):
        from_timm(model, num_scales=2, thresholds=[5.0], attention="flash")
    apt = from_timm(model, num_scales=2, thresholds=[5.0])
    with pytest.raises(ValueError, match=r"kernel must be one of \('auto', 'sdpa', 'flex', 'varlen'\), got 'fa2'"):
        apt.kernel = "fa2"


def test_blocks_packed_cannot_run_are_refused_and_padded_runs_them():
    model = tiny(block_fn=ResPostBlock)
    with pytest.raises(ValueError, match=r"model.blocks\[0\] = ResPostBlock .* pass attention='padded'"):
        from_timm(model, num_scales=3, thresholds=THRESHOLDS)
    apt = from_timm(model, num_scales=3, thresholds=THRESHOLDS, attention="padded")
    images = normalised(skimage_batch(64, 64, NAMES), model)
    with torch.no_grad():
        assert apt(images).shape == (4, 5)


@cuda
@pytest.mark.cuda
def test_varlen_on_cuda_equals_padded():
    apt, tokens = wrapped(tiny(qk_norm=True).cuda(), THRESHOLDS, 64, "cuda")
    apt = apt.to(torch.bfloat16)
    tokens = {key: value.to(torch.bfloat16) if torch.is_tensor(value) and value.is_floating_point() else value
              for key, value in tokens.items()}
    torch.manual_seed(0)
    layout = PackedLayout.from_seqlens([37, 5, 64, 64, 1], "cuda")
    q, k, v = (torch.randn(layout.total, 2, 16, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert choose_kernel(q) == "varlen"
    assert max_difference(packed_attention(q, k, v, layout, "varlen").float(),
                          packed_attention(q.float(), k.float(), v.float(), layout, "sdpa")) <= 2e-2
    logits, grads = logits_and_gradients(apt, tokens, "packed")
    padded, _ = logits_and_gradients(apt, tokens, "padded")
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    assert max_difference(logits.float(), padded.float()) <= 0.05 * float(padded.float().abs().max())
