"""Cost model of a ViT forward pass as a function of each image's token count.

FLOPs count a multiply-add as 2. Per block, for N tokens of width D and MLP
ratio r: ``qkv 6ND^2 + attention scores and weighted sum 4N^2 D + projection 2ND^2
+ MLP 4rND^2``; the patch embedding adds ``2 (N - 1) C p^2 D``. Memory traffic is
the weights read once per forward plus each block's activations read and
written (``(12 + 4r) N D`` values, attention fused as flash attention does, so
no ``N^2`` matrix is stored). ViT-B/16 at 224 (197 tokens) comes to 35.1
GFLOPs, the 17.6 GMACs usually quoted.
"""

from __future__ import annotations

import numpy as np

from .vit import vit_config


def vit_flops(tokens, model: str = "vit_b", patch_size: int = 16, channels: int = 3):
    """FLOPs of one forward pass for sequences of ``tokens`` tokens (class token included); array-like in, array out."""
    config = vit_config(model)
    n = np.asarray(tokens, dtype=np.float64)
    d, r = config.dim, config.mlp_ratio
    per_block = (8 + 4 * r) * n * d * d + 4 * n * n * d
    embed = 2 * np.maximum(n - 1, 0) * channels * patch_size**2 * d
    return config.depth * per_block + embed


def vit_params(model: str = "vit_b", patch_size: int = 16, channels: int = 3) -> int:
    """Parameters of the encoder (blocks, embedding, norms; no head)."""
    config = vit_config(model)
    d, hidden = config.dim, int(config.dim * config.mlp_ratio)
    per_block = 3 * d * d + 3 * d + d * d + d + d * hidden + hidden + hidden * d + d + 4 * d
    return config.depth * per_block + channels * patch_size**2 * d + d + 2 * d


def vit_memory_bytes(tokens, model: str = "vit_b", patch_size: int = 16, bytes_per_value: int = 2):
    """Bytes moved by one forward pass: weights once, plus every block's activations read and written."""
    config = vit_config(model)
    n = np.asarray(tokens, dtype=np.float64)
    activations = config.depth * (12 + 4 * config.mlp_ratio) * n * config.dim
    return bytes_per_value * (vit_params(model, patch_size) + activations)


def tokenizer_ops(height: int, width: int, num_scales: int, channels: int = 3) -> float:
    """Arithmetic operations of the entropy step per image: grayscale and bin per pixel, one count per pixel per scale."""
    return height * width * (2 * channels + 2 + 2 * num_scales)


def predicted_speedup(apt_tokens, uniform_tokens: int, model: str = "vit_b", patch_size: int = 16) -> float:
    """FLOPs of the uniform batch over FLOPs of the APT batch (both lists of per-image sequence lengths)."""
    apt = float(np.sum(vit_flops(apt_tokens, model, patch_size)))
    uniform = float(vit_flops(uniform_tokens, model, patch_size)) * len(np.atleast_1d(apt_tokens))
    return uniform / apt
