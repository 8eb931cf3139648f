"""``AptEva``: a timm ``Eva`` (EVA, EVA02, timm's RoPE ViTs) fed APT's packed token sequences.

The embedding is ``AptViT``'s (the absolute position embedding, where the model has one,
resampled per scale; the zero-initialised merge). The rotary embedding (RoPE) of a token is
taken at its centre in base-patch units: a patch covering base cells ``r .. r + k - 1`` and
``c .. c + k - 1`` (``k = side / p``) sits at ``(r + (k - 1) / 2, c + (k - 1) / 2)``, so a base
patch at its own cell, as timm's grid puts it, and a 2x2 merge at ``(r + 0.5, c + 0.5)``.
The sines and cosines there are computed as timm's ``RotaryEmbeddingCat`` computes its grid
(``build_rotary_pos_embed`` with an ``"index"`` grid: position plus ``grid_offset``, rescaled
by ``ref_feat_shape / feat_shape``, times the module's ``bands``), only at fractional positions.
With thresholds that merge nothing every position is an integer cell and the output is timm's.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import PackedLayout, packed_drop_path, packed_self_attention
from .timm_vit import AptViT, _check_patch_embed, _check_pool, _import_timm, register_wrapper


def check_supported_eva(model) -> int:
    """Refuse a timm ``Eva`` that ``AptEva`` cannot run exactly; return its square base patch size."""
    timm = _import_timm()
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat

    name = type(model).__name__
    if not isinstance(model, timm.models.eva.Eva):
        raise TypeError(f"model must be a timm Eva, got {name}")
    registers = 0 if model.reg_token is None else model.reg_token.shape[1]
    rope = model.rope
    checks = [
        (model.patch_drop is None, "no patch dropout (patch_drop_rate=0)",
         f"patch_drop={type(model.patch_drop).__name__}"),
        (not getattr(model, "rope_mixed", False), "no per-depth mixed RoPE (rope_type='mixed' learns its frequencies "
         "over a grid of integer cells)", "rope_type='mixed'"),
        (rope is None or type(rope) is RotaryEmbeddingCat, "RoPE of rope_type 'cat' (RotaryEmbeddingCat) or none",
         f"rope={type(rope).__name__}"),
        (rope is None or getattr(rope, "grid_type", "index") == "index",
         "an 'index' RoPE grid (integer cell positions, in_pixels=False)",
         f"grid_type={getattr(rope, 'grid_type', None)!r}"),
        (rope is None or not getattr(rope, "aug_active", False),
         "no RoPE coordinate augmentation (rope_shift_coords, rope_jitter_coords, rope_rescale_coords all None)",
         "coordinate augmentation"),
        (model.num_prefix_tokens == int(model.cls_token is not None) + registers,
         "prefix tokens that are the class token and registers only", f"{model.num_prefix_tokens} prefix tokens"),
    ]
    for ok, expected, got in checks:
        if not ok:
            raise ValueError(f"model ({name}) must have {expected} for APT, got {got}")
    _check_pool(model, name)
    return _check_patch_embed(model, name)


def _rope_layout(values: torch.Tensor, rotate_half: bool) -> torch.Tensor:
    """Per-band values ``(..., D / 2)`` to the rotary layout: ``[f0, f1, .., f0, f1, ..]`` (half) or interleaved."""
    return torch.cat([values, values], dim=-1) if rotate_half else values.repeat_interleave(2, -1)


@register_wrapper
class AptEva(AptViT):
    """A timm ``Eva`` fed APT's packed token sequences (made by ``from_timm``); ``AptViT``'s interface.

    ``tokenize``, ``embed``, ``forward``, ``forward_features``, ``pool``, ``set_thresholds``,
    ``attention`` (``"packed"``: ``EvaBlock`` and ``EvaBlockPostNorm`` run by hand on the
    packed sequence; ``"padded"``: the model's own blocks on a padded batch with a key mask)
    and ``kernel`` as ``AptViT``'s. ``rope(tokens)`` gives each token's rotary embedding.
    """

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return isinstance(model, _import_timm().models.eva.Eva)

    @classmethod
    def check_supported(cls, model: nn.Module) -> int:
        return check_supported_eva(model)

    def _check_packed_block(self, index: int, block: nn.Module) -> None:
        from timm.layers import AttentionRope
        from timm.models.eva import EvaAttention, EvaBlock, EvaBlockPostNorm

        if type(block) not in (EvaBlock, EvaBlockPostNorm) or type(block.attn) not in (EvaAttention, AttentionRope):
            raise ValueError(
                f"attention='packed' runs timm's EvaBlock and EvaBlockPostNorm with EvaAttention or AttentionRope by "
                f"hand, got model.blocks[{index}] = {type(block).__name__} with attn "
                f"{type(getattr(block, 'attn', None)).__name__}; pass attention='padded' to run the model's own blocks"
            )

    def _attention_pool_skip(self) -> int:
        return 0  # Eva's attention pool reads every token, its prefix tokens included (timm's Eva.pool)

    def _pool_skip(self) -> int:
        return self.num_prefix  # timm's global_pool_nlc without reduce_include_prefix

    def _centres(self, tokens: dict, is_patch: torch.Tensor) -> torch.Tensor:
        """Each patch token's centre ``(N_patches, 2)`` (row, column) in base-patch units, float32, packed order."""
        patch = self.patch_size

        def centres(size: int) -> torch.Tensor:
            boxes = tokens[f"token_boxes_{size}"]
            offset = (size // patch - 1) / 2
            return torch.stack([boxes[:, 1] // patch, boxes[:, 2] // patch], 1).to(torch.float32) + offset

        return self._scatter_by_scale(tokens, is_patch, centres)[0]

    def rope(self, tokens: dict) -> torch.Tensor | None:
        """Rotary embeddings ``(sum(sequence_lengths(tokens)), 2 * head_dim)`` in ``embed``'s row order (None for
        a model without RoPE): timm's ``[sin, cos]`` at each patch's centre (module docstring); prefix rows are the
        identity rotation (sin 0, cos 1), which leaves their queries and keys as timm leaves them."""
        rope = self.model.rope
        if rope is None:
            return None
        is_patch = self._check_class_slots(tokens)
        centres = self._centres(tokens, is_patch).to(rope.bands.device)
        shape = list(self.model.patch_embed.grid_size)
        reference = None if rope.ref_feat_shape is None else list(rope.ref_feat_shape)
        axes = [centres[:, 0], centres[:, 1]]
        if rope.grid_indexing == "xy":  # timm's grid then holds (column, row)
            axes, shape = axes[::-1], shape[::-1]
            reference = None if reference is None else reference[::-1]
        axes = [axis + rope.grid_offset for axis in axes]
        if reference is not None:
            axes = [axis / size * ref for axis, size, ref in zip(axes, shape, reference)]
        angles = torch.stack(axes, -1)[..., None] * rope.bands  # (N, 2, bands), as timm's grid * bands
        dtype = rope.pos_embed.dtype if getattr(rope, "pos_embed", None) is not None else torch.float32
        sin = _rope_layout(angles.sin().flatten(-2), rope.rotate_half).to(dtype)
        cos = _rope_layout(angles.cos().flatten(-2), rope.rotate_half).to(dtype)
        layout = self.layout(tokens, sin.device)
        is_prefix = layout.position() < self.num_prefix
        rows = sin.new_zeros(layout.total, 2 * sin.shape[1])
        rows[~is_prefix] = torch.cat([sin, cos], -1)
        rows[is_prefix, sin.shape[1]:] = 1.0
        return rows

    def _block_context(self, tokens: dict, layout: PackedLayout) -> dict:
        return {"rope": self.rope(tokens)}

    def _padded_context(self, context: dict, layout: PackedLayout) -> dict:
        """The rope rows as a padded ``(B, 1, max_seqlen - num_prefix, 2 * head_dim)`` batch (timm's attention
        rotates the tokens after its prefix tokens)."""
        rope = context["rope"]
        if rope is None:
            return context
        padded, _ = layout.pad(rope)
        return {"rope": padded[:, None, self.num_prefix:]}

    def _packed_block(self, block: nn.Module, x: torch.Tensor, layout: PackedLayout, kernel: str,
                      rope: torch.Tensor | None = None) -> torch.Tensor:
        """timm's ``EvaBlock`` (pre-norm, ``gamma_1``/``gamma_2`` layer scale) or ``EvaBlockPostNorm`` on a packed
        ``(T, D)`` sequence, drop path per image."""
        from timm.models.eva import EvaBlockPostNorm

        if type(block) is EvaBlockPostNorm:
            attended = block.norm1(packed_self_attention(block.attn, x, layout, kernel, rope))
            x = x + packed_drop_path(attended, block.drop_path1, layout)
            return x + packed_drop_path(block.norm2(block.mlp(x)), block.drop_path2, layout)
        attended = packed_self_attention(block.attn, block.norm1(x), layout, kernel, rope)
        if block.gamma_1 is not None:
            attended = block.gamma_1 * attended
        x = x + packed_drop_path(attended, block.drop_path1, layout)
        mlp = block.mlp(block.norm2(x))
        if block.gamma_2 is not None:
            mlp = block.gamma_2 * mlp
        return x + packed_drop_path(mlp, block.drop_path2, layout)

    def _padded_block(self, block: nn.Module, x: torch.Tensor, attn_mask, context: dict) -> torch.Tensor:
        return block(x, rope=context["rope"], attn_mask=attn_mask)
