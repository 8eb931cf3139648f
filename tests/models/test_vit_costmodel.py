"""The ViT encoder's packed path equals running each image alone; the cost model equals hand-computed FLOPs."""

import pytest
import torch

from apt_research.models.costmodel import predicted_speedup, tokenizer_ops, vit_flops, vit_memory_bytes, vit_params
from apt_research.models.vit import ViTEncoder, packed_attention


def test_packed_attention_equals_per_image_attention():
    torch.manual_seed(0)
    lengths = [5, 9, 1, 7]
    q, k, v = (torch.randn(sum(lengths), 4, 8) for _ in range(3))
    cu = torch.tensor([0] + lengths).cumsum(0)
    out = packed_attention(q, k, v, cu, max(lengths))
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[start:end].transpose(0, 1), k[start:end].transpose(0, 1), v[start:end].transpose(0, 1)
        ).transpose(0, 1)
        assert torch.allclose(out[start:end], expected, atol=1e-6)


def test_encoder_packed_equals_uniform_per_image():
    torch.manual_seed(0)
    encoder = ViTEncoder("vit_s", patch_size=4).eval()
    images = torch.randn(3, 6, 48)
    with torch.inference_mode():
        uniform = encoder(images)
        packed = encoder(images.reshape(18, 48), torch.tensor([0, 6, 12, 18]), 6)
    assert torch.allclose(packed.view(3, 6, -1), uniform, atol=1e-4)


def test_vit_b16_224_flops_by_hand():
    n, d, depth = 197, 768, 12
    qkv, attention, projection, mlp = 2 * n * d * 3 * d, 2 * 2 * n * n * d, 2 * n * d * d, 2 * 2 * n * d * 4 * d
    embed = 2 * 196 * (3 * 16 * 16) * d
    expected = depth * (qkv + attention + projection + mlp) + embed
    assert vit_flops(197, "vit_b", 16) == pytest.approx(expected, rel=1e-12)
    assert 35.0e9 < expected < 35.3e9  # the 17.6 GMACs usually quoted


def test_params_match_the_module():
    assert vit_params("vit_b", 16) == sum(p.numel() for p in ViTEncoder("vit_b", 16).parameters())


def test_fewer_tokens_predict_a_speedup():
    assert predicted_speedup([197, 197], 197, "vit_b") == pytest.approx(1.0)
    assert predicted_speedup([100, 150], 197, "vit_l") > 1.4
    assert vit_memory_bytes(100) < vit_memory_bytes(197)
    with pytest.raises(ValueError, match="model must be one of .*'vit_x'"):
        vit_flops(197, "vit_x")


def test_tokenizer_cost_is_small_next_to_the_vit():
    # grayscale (2 per channel), bin (2), one count per scale (2 each): 14 operations per pixel at 3 scales
    assert tokenizer_ops(224, 224, 3) == 224 * 224 * 14
    assert tokenizer_ops(224, 224, 3) < 1e-3 * vit_flops(197, "vit_b")
