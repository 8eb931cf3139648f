"""Attention over packed sequences: images end to end in one ``(T, ...)`` tensor, no padding.

``PackedLayout`` describes where each image's tokens lie; ``packed_attention`` runs multi-head
attention in which each token attends only to its own image's tokens, with the kernel
``choose_kernel`` picks; ``packed_self_attention`` runs a timm attention module (ViT's
``Attention``, EVA's ``EvaAttention`` and ``AttentionRope``) by hand on a packed sequence with
that kernel; ``packed_drop_path`` is timm's stochastic depth with one draw per image;
``packed_mean`` and ``packed_attention_pool`` pool each image's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("auto", "sdpa", "flex", "varlen")


@dataclass
class PackedLayout:
    """Where each image's tokens lie in a packed sequence of ``T = sum(seqlens)`` tokens.

    Attributes
    ----------
    seqlens : list of int
        Tokens per image, in packing order.
    lengths : Tensor
        ``seqlens`` as an int64 ``(B,)`` tensor on the sequence's device.
    starts : Tensor
        Index of each image's first token, int64 ``(B,)``.
    cu_seqlens : Tensor
        ``[0, cumsum(seqlens)]``, int32 ``(B + 1,)`` (as varlen kernels take it).
    image : Tensor
        Each token's image index, int64 ``(T,)``.
    """

    seqlens: list
    lengths: torch.Tensor
    starts: torch.Tensor
    cu_seqlens: torch.Tensor
    image: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_seqlens(cls, seqlens, device) -> "PackedLayout":
        """The layout of images of ``seqlens`` tokens each (a sequence of positive ints), on ``device``."""
        seqlens = [int(length) for length in seqlens]
        if not seqlens or min(seqlens) < 1:
            raise ValueError(f"seqlens must be a non-empty sequence of positive lengths, got {seqlens}")
        lengths = torch.tensor(seqlens, dtype=torch.int64, device=device)
        ends = torch.cumsum(lengths, 0)
        cu_seqlens = torch.cat([ends.new_zeros(1), ends]).to(torch.int32)
        image = torch.repeat_interleave(torch.arange(len(seqlens), device=device), lengths,
                                        output_size=sum(seqlens))
        return cls(seqlens, lengths, ends - lengths, cu_seqlens, image)

    @property
    def batch(self) -> int:
        return len(self.seqlens)

    @property
    def total(self) -> int:
        return sum(self.seqlens)

    @property
    def max_seqlen(self) -> int:
        return max(self.seqlens)

    def position(self) -> torch.Tensor:
        """Each token's index within its image, int64 ``(T,)``."""
        if "position" not in self._cache:
            self._cache["position"] = torch.arange(self.total, device=self.image.device) - self.starts[self.image]
        return self._cache["position"]

    def pad(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(T, ...)`` to a zero-padded ``(B, max_seqlen, ...)`` batch and its validity mask ``(B, max_seqlen)``
        (None where every image has the same length: the batch is then a view)."""
        batch, longest = self.batch, self.max_seqlen
        if all(length == longest for length in self.seqlens):
            return packed.view(batch, longest, *packed.shape[1:]), None
        padded = packed.new_zeros(batch, longest, *packed.shape[1:])
        padded = padded.index_put((self.image, self.position()), packed)
        valid = torch.arange(longest, device=packed.device)[None] < self.lengths[:, None]
        return padded, valid

    def runs(self) -> list[tuple[int, int, int]]:
        """Consecutive images of equal length: ``(first token, images, length)`` (one run where nothing merged)."""
        if "runs" not in self._cache:
            runs, first = [], 0
            for length in self.seqlens:
                if runs and runs[-1][2] == length:
                    runs[-1][1] += 1
                else:
                    runs.append([first, 1, length])
                first += length
            self._cache["runs"] = [tuple(run) for run in runs]
        return self._cache["runs"]


def choose_kernel(q: torch.Tensor, dropout_p: float = 0.0) -> str:
    """The kernel ``packed_attention`` uses for ``q`` ``(T, H, head_dim)`` with ``kernel="auto"``, and why.

    - ``"varlen"``: CUDA with float16 or bfloat16 inputs. torch's flash-attention varlen kernel
      (``torch.nn.attention.varlen.varlen_attn``) runs the packed sequence as it is, forward
      and backward, with ``cu_seqlens``: no padding, no per-image launches. It has no dropout,
      so attention dropout in training takes ``"sdpa"``.
    - ``"sdpa"`` otherwise (CPU, CUDA float32, attention dropout): one
      ``scaled_dot_product_attention`` per run of consecutive images of equal length, each a
      view of the packed tensors (one call where nothing merged). Exact (each image's own
      attention, no mask) and differentiable on every device.

    FlexAttention with a document mask (``"flex"``) is never chosen here: on CPU, uncompiled,
    it materialises the whole ``T x T`` score matrix. Measured on this project's 2-core
    machine, no grad: attention alone for 32 images of 60 to 196 tokens (6 heads of 64), 2.4 s
    against 0.05 s for SDPA per image; ``vit_small_patch16_224`` on 32 images at 224, 120 s
    against 8.8 s (``docs/models.md``). Compiled it only matched SDPA per image, after 20 s of compilation
    per sequence length; and its backward is not implemented on CPU.
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and not dropout_p:
        return "varlen"
    return "sdpa"


def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def _sdpa(q, k, v, layout: PackedLayout, dropout_p: float) -> torch.Tensor:
    """One SDPA per run of consecutive images of equal length (one call in all where nothing merged); the outputs
    concatenated in packing order.

    The runs are taken with ``split``, not by slicing: autograd turns the gradient of each slice into a
    zero-filled tensor of the whole packed size and adds them up (work quadratic in the batch), where
    ``split``'s backward concatenates the pieces once.
    """
    runs = list(layout.runs())
    sizes = [images * length for _, images, length in runs]
    pieces = [x.split(sizes) for x in (q, k, v)]
    outputs = []
    for index, (_, images, length) in enumerate(runs):
        run = [piece[index].unflatten(0, (images, length)).transpose(1, 2) for piece in pieces]
        outputs.append(F.scaled_dot_product_attention(*run, dropout_p=dropout_p).transpose(1, 2).flatten(0, 1))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _flex(q, k, v, layout: PackedLayout) -> torch.Tensor:
    """FlexAttention on the whole sequence with a document mask (a token sees its own image's tokens)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)) and q.device.type == "cpu":
        raise NotImplementedError("kernel='flex' has no backward on CPU (FlexAttention's backward is not implemented "
                                  "there): run it under torch.no_grad(), or use kernel='sdpa'")
    if "block_mask" not in layout._cache:
        image = layout.image

        def same_image(batch, head, query, key):
            return image[query] == image[key]

        layout._cache["block_mask"] = create_block_mask(same_image, None, None, layout.total, layout.total,
                                                        device=q.device)
    out = flex_attention(*(x.transpose(0, 1)[None] for x in (q, k, v)), block_mask=layout._cache["block_mask"])
    return out[0].transpose(0, 1)


def _varlen(q, k, v, layout: PackedLayout) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    cu_seqlens = layout.cu_seqlens
    return varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens, cu_seqlens,
                       layout.max_seqlen, layout.max_seqlen)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout,
                     kernel: str = "auto", dropout_p: float = 0.0) -> torch.Tensor:
    """Multi-head attention within each image of a packed sequence.

    Parameters
    ----------
    q, k, v : Tensor
        ``(T, H, head_dim)``: queries, keys, values of ``layout``'s tokens.
    layout : PackedLayout
        The images' token ranges.
    kernel : str
        ``"auto"`` (``choose_kernel``), ``"sdpa"``, ``"flex"`` or ``"varlen"``.
    dropout_p : float
        Attention dropout (``"sdpa"`` only).

    Returns
    -------
    Tensor
        ``(T, H, head_dim)``, each token's attention over its own image's tokens (default scale
        ``head_dim ** -0.5``, as timm's fused attention).
    """
    kernel = choose_kernel(q, dropout_p) if _check_kernel(kernel) == "auto" else kernel
    if dropout_p and kernel != "sdpa":
        raise ValueError(f"attention dropout (p={dropout_p}) needs kernel='sdpa', got kernel={kernel!r}")
    if kernel == "varlen":
        return _varlen(q, k, v, layout)
    if kernel == "flex":
        return _flex(q, k, v, layout)
    return _sdpa(q, k, v, layout, dropout_p)


def _rope_layout_half(attn: nn.Module) -> bool:
    return bool(getattr(attn, "rotate_half", False))


def _apply_rope(x: torch.Tensor, rope: torch.Tensor, half: bool) -> torch.Tensor:
    """timm's ``apply_rot_embed_cat`` on ``(T, H, head_dim)`` with per-token ``rope`` ``(T, 2 * head_dim)``."""
    from timm.layers.pos_embed_sincos import apply_rot_embed_cat

    return apply_rot_embed_cat(x, rope[:, None, :], half=half)


def packed_self_attention(attn: nn.Module, x: torch.Tensor, layout: PackedLayout, kernel: str = "auto",
                          rope: torch.Tensor | None = None) -> torch.Tensor:
    """A timm attention module's forward on a packed sequence ``x`` ``(T, D)``, with its own modules.

    ``attn`` is timm's ``Attention`` (ViT), ``EvaAttention`` or ``AttentionRope`` (EVA): the
    fused or separate q/k/v projections (EVA's separate q and v biases), ``q_norm``/``k_norm``,
    rotary embedding ``rope`` ``(T, 2 * head_dim)`` (identity rows, sin 0 and cos 1, for prefix
    tokens), grouped key/value heads, ``attn_drop`` (its ``p`` in training), ``norm``, the
    optional gate, ``proj`` and ``proj_drop``.
    """
    tokens = x.shape[0]
    heads = attn.num_heads
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    if attn.qkv is not None:
        q_bias = getattr(attn, "q_bias", None)
        if q_bias is None:
            qkv = attn.qkv(x)
        else:  # EvaAttention: a bias for q and v, none (a zero buffer) for k
            bias = torch.cat((q_bias, attn.k_bias, attn.v_bias))
            qkv = attn.qkv(x) + bias if attn.qkv_bias_separate else F.linear(x, attn.qkv.weight, bias)
        q, k, v = qkv.reshape(tokens, 3, heads, -1).unbind(1)
    else:
        kv_heads = getattr(attn, "num_kv_heads", heads)
        q = attn.q_proj(x).reshape(tokens, heads, -1)
        k = attn.k_proj(x).reshape(tokens, kv_heads, -1)
        v = attn.v_proj(x).reshape(tokens, kv_heads, -1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        half = _rope_layout_half(attn)
        q = _apply_rope(q, rope, half).type_as(v)
        k = _apply_rope(k, rope, half).type_as(v)
    groups = getattr(attn, "num_kv_groups", 1)
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    dropout_p = attn.attn_drop.p if attn.training else 0.0
    out = packed_attention(q, k, v, layout, kernel, dropout_p).reshape(tokens, -1)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def packed_drop_path(x: torch.Tensor, module: nn.Module, layout: PackedLayout) -> torch.Tensor:
    """timm's ``DropPath`` on a packed ``x`` ``(T, D)``: one Bernoulli draw per image, repeated over its tokens.

    As timm's ``drop_path``: active in training with ``drop_prob > 0``, kept paths scaled by
    ``1 / keep_prob`` (``scale_by_keep``), the draws made in the same order from the same
    generator (so that a seeded run drops the same images as the padded path).
    """
    drop_prob = getattr(module, "drop_prob", 0.0)
    if not drop_prob or not module.training:
        return x
    keep_prob = 1 - drop_prob
    keep = x.new_empty(layout.batch).bernoulli_(keep_prob)
    if keep_prob > 0.0 and getattr(module, "scale_by_keep", True):
        keep.div_(keep_prob)
    return x * keep[layout.image][:, None]


def packed_mean(x: torch.Tensor, layout: PackedLayout, skip: int = 0) -> torch.Tensor:
    """Each image's mean over its tokens after the first ``skip`` (its prefix tokens): ``(B, D)``."""
    weights = (layout.position() >= skip).to(x.dtype)
    sums = x.new_zeros(layout.batch, x.shape[1]).index_add(0, layout.image, x * weights[:, None])
    counts = x.new_zeros(layout.batch).index_add(0, layout.image, weights)
    return sums / counts[:, None]


def check_attention_pool(pool: nn.Module, owner: str) -> None:
    """Refuse an attention pool that ``packed_attention_pool`` cannot run exactly."""
    from timm.layers import AttentionPoolLatent

    if type(pool) is not AttentionPoolLatent:
        raise ValueError(f"model ({owner}) must pool with timm's AttentionPoolLatent (global_pool='map') for APT, "
                         f"got attn_pool={type(pool).__name__}")
    if pool.pos_embed is not None:
        raise ValueError(f"model ({owner}).attn_pool must have no position embedding of its own for APT (it is "
                         f"fixed to {tuple(pool.pos_embed.shape)}, one row per base-grid token, and a merged "
                         f"sequence has other tokens), got pos_embed='abs'")


def padded_attention_pool(pool: nn.Module, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """timm's ``AttentionPoolLatent`` on a padded batch ``(B, N, D)``, padding masked out of its keys."""
    if valid is None:
        return pool(x)
    mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, float("-inf"))
    return pool(x, attn_mask=mask[:, None, None, :])


def packed_attention_pool(pool: nn.Module, x: torch.Tensor, layout: PackedLayout, skip: int = 0) -> torch.Tensor:
    """timm's ``AttentionPoolLatent`` per image on a packed ``x`` ``(T, D)``, without padding: ``(B, out)``.

    The latent queries attend to each image's tokens after its first ``skip``: a softmax over
    each image's scores (its maximum subtracted, sums by ``index_add``), exact and
    differentiable on any device; then the pool's own projection, MLP and reduction.
    """
    keep = layout.position() >= skip
    if skip:
        x, image = x[keep], layout.image[keep]
    else:
        image = layout.image
    batch, heads, head_dim = layout.batch, pool.num_heads, pool.head_dim
    latent_len = pool.latent_len
    q = pool.q(pool.latent[0]).reshape(latent_len, heads, head_dim)
    k, v = pool.kv(x).reshape(x.shape[0], 2, heads, head_dim).unbind(1)
    q, k = pool.q_norm(q), pool.k_norm(k)
    scores = torch.einsum("lhd,thd->thl", q, k) * pool.scale  # (T, H, L)
    peak = scores.new_full((batch, heads, latent_len), float("-inf"))
    peak = peak.scatter_reduce(0, image[:, None, None].expand_as(scores), scores.detach(), "amax")
    weights = torch.exp(scores - peak[image])
    total = weights.new_zeros(batch, heads, latent_len).index_add(0, image, weights)
    summed = v.new_zeros(batch, heads, latent_len, head_dim).index_add(0, image, weights[..., None] * v[:, :, None])
    out = (summed / total[..., None]).permute(0, 2, 1, 3).reshape(batch, latent_len, heads * head_dim)
    out = pool.proj_drop(pool.proj(out))
    if pool.mlp is not None:
        out = out + pool.mlp(pool.norm(out))
    if pool.pool == "token":
        return out[:, 0]
    if pool.pool == "avg":
        return out.mean(1)
    return out
