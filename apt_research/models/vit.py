"""A plain ViT encoder (timm-compatible sizes, random weights) that runs uniform or APT-packed sequences.

Used to measure what APT's token savings buy: the same blocks run a uniform
batch ``(B, N, D)`` or a packed sequence ``(T, D)`` with ``cu_seqlens``, where
attention stays inside each image (variable-length flash attention on CUDA
where torch has it, one ``scaled_dot_product_attention`` per image otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    name: str
    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0


VIT_CONFIGS = {
    "vit_s": ViTConfig("vit_s", 384, 12, 6),
    "vit_b": ViTConfig("vit_b", 768, 12, 12),
    "vit_l": ViTConfig("vit_l", 1024, 24, 16),
    "vit_h": ViTConfig("vit_h", 1280, 32, 16),
}


def vit_config(name: str) -> ViTConfig:
    if name not in VIT_CONFIGS:
        raise ValueError(f"model must be one of {sorted(VIT_CONFIGS)}, got {name!r}")
    return VIT_CONFIGS[name]


def _varlen_attention():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def attention_kernel(device: torch.device | str, dtype: torch.dtype) -> str:
    """Which kernel ``packed_attention`` uses for this device and dtype."""
    usable = torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    return "varlen_attn (flash)" if usable and _varlen_attention() is not None else "sdpa per image"


def packed_attention(q, k, v, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Attention within each packed sequence: q, k, v ``(T, H, d)``; returns ``(T, H, d)``."""
    if attention_kernel(q.device, q.dtype).startswith("varlen"):
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        return _varlen_attention()(q, k, v, cu, cu, max_seqlen, max_seqlen)
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        view = slice(start, end)
        out[view] = F.scaled_dot_product_attention(
            q[view].transpose(0, 1), k[view].transpose(0, 1), v[view].transpose(0, 1)
        ).transpose(0, 1)
    return out


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def _attention(self, x, cu_seqlens, max_seqlen):
        qkv = self.qkv(self.norm1(x))
        if cu_seqlens is None:
            batch, tokens, _ = x.shape
            q, k, v = qkv.view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, -1)
        else:
            q, k, v = qkv.view(x.shape[0], 3, self.heads, -1).unbind(1)
            out = packed_attention(q, k, v, cu_seqlens, max_seqlen).reshape(x.shape[0], -1)
        return self.proj(out)

    def forward(self, x, cu_seqlens=None, max_seqlen=None):
        x = x + self._attention(x, cu_seqlens, max_seqlen)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTEncoder(nn.Module):
    """Patch embedding (a linear layer on ``p x p`` patches), transformer blocks, final norm."""

    def __init__(self, config: ViTConfig | str, patch_size: int = 16, channels: int = 3):
        super().__init__()
        config = vit_config(config) if isinstance(config, str) else config
        self.config = config
        self.embed = nn.Linear(channels * patch_size * patch_size, config.dim)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)

    def forward(self, patches, cu_seqlens=None, max_seqlen=None):
        """``patches``: ``(B, N, C*p*p)`` uniform, or ``(T, C*p*p)`` packed with ``cu_seqlens``/``max_seqlen``."""
        x = self.embed(patches)
        for block in self.blocks:
            x = block(x, cu_seqlens, max_seqlen)
        return self.norm(x)
