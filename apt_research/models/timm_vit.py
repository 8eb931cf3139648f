"""``from_timm``: a timm Vision Transformer that runs APT's packed, mixed-scale token sequences.

The embedding follows the APT reference (its zero-initialised merge): a kept
patch of side ``p * 2**j`` is embedded as "resize to ``p``, patch-embed, add the
position embedding resampled to that scale's grid", plus a learned merge of its
full-resolution base sub-patches that starts at zero. With thresholds that merge
nothing the token sequence is the model's own and the output equals timm's.

The blocks run on the packed sequence itself (``attention="packed"``, each block's
modules called by hand, attention by ``attention.packed_attention``) or on a padded
batch with a key mask (``attention="padded"``, timm's own block forward, the reference).
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn

from ..tokenizer import CLASS_TOKEN, PatchTokenizer
from .attention import (
    KERNELS,
    PackedLayout,
    check_attention_pool,
    packed_attention_pool,
    packed_drop_path,
    packed_mean,
    packed_self_attention,
    padded_attention_pool,
)

POOLS = ("token", "avg", "map")
ATTENTIONS = ("packed", "padded")


def _import_timm():
    try:
        import timm
    except ImportError as error:
        raise ImportError(
            "apt_research.models.from_timm needs timm: pip install 'apt-research[models]' "
            "(python3 run.py installs it)"
        ) from error
    return timm


def _check_patch_embed(model, name: str) -> int:
    """Refuse a patch embedding other than one square, non-overlapping convolution; return its patch size."""
    from timm.layers import PatchEmbed

    if not (isinstance(model.patch_embed, PatchEmbed) and isinstance(model.patch_embed.proj, nn.Conv2d)):
        raise ValueError(f"model ({name}) must have timm's PatchEmbed with a convolution for APT, got "
                         f"patch_embed={type(model.patch_embed).__name__}")
    proj = model.patch_embed.proj
    if proj.kernel_size != proj.stride or proj.kernel_size[0] != proj.kernel_size[1] or proj.padding != (0, 0):
        raise ValueError(
            f"model.patch_embed.proj must be a square, non-overlapping patch convolution (kernel = stride), got "
            f"kernel_size={proj.kernel_size}, stride={proj.stride}, padding={proj.padding}"
        )
    if getattr(model.patch_embed, "dynamic_img_pad", False):
        raise ValueError("model.patch_embed must not pad images (dynamic_img_pad=False), got dynamic_img_pad=True")
    patch = proj.kernel_size[0]
    height, width = model.patch_embed.img_size
    if height % patch or width % patch:
        raise ValueError(f"model image size {height} x {width} must be a multiple of its patch size {patch}")
    return patch


def _check_pool(model, name: str) -> None:
    if model.global_pool not in POOLS:
        raise ValueError(f"model ({name}) must have global_pool in {POOLS} for APT, got "
                         f"global_pool={model.global_pool!r}")
    if model.global_pool == "map":
        check_attention_pool(model.attn_pool, name)
    elif getattr(model, "attn_pool", None) is not None:
        raise ValueError(f"model ({name}) must have no attention pool with global_pool={model.global_pool!r} for "
                         f"APT, got attn_pool={type(model.attn_pool).__name__}")


def _check_supported(model) -> int:
    """Refuse a timm ViT this wrapper cannot run exactly; return its square base patch size."""
    timm = _import_timm()

    name = type(model).__name__
    if not isinstance(model, timm.models.VisionTransformer):
        raise TypeError(
            "model must be a timm VisionTransformer (ViT, DeiT, DeiT III, CLIP, SigLIP and DINOv2 families) or "
            f"a timm Eva (EVA, EVA02), got {name}"
        )
    registers = model.num_reg_tokens
    expected_prefix = int(model.cls_token is not None) + registers
    checks = [
        (model.num_prefix_tokens == expected_prefix,
         f"prefix tokens that are the class token and registers only ({expected_prefix})",
         f"{model.num_prefix_tokens} prefix tokens (a distillation token)"),
        (model.pos_embed is not None, "an absolute position embedding", "pos_embed=None (no position embedding)"),
        (isinstance(model.patch_drop, nn.Identity), "no patch dropout (patch_drop_rate=0)",
         f"patch_drop={type(model.patch_drop).__name__}"),
    ]
    for ok, expected, got in checks:
        if not ok:
            raise ValueError(f"model ({name}) must have {expected} for APT, got {got}")
    _check_pool(model, name)
    return _check_patch_embed(model, name)


_WRAPPERS: list[type] = []
"""Wrappers of other timm architectures (``AptEva``), registered by ``register_wrapper``; ``from_timm`` asks each."""


def register_wrapper(wrapper: type) -> type:
    """Make ``from_timm`` wrap the models ``wrapper.accepts`` in ``wrapper`` (a subclass of ``AptViT``).

    ``apt_research.models.eva`` registers ``AptEva`` so (the package imports it), which keeps
    this module free of imports of the wrappers built on it.
    """
    if not (isinstance(wrapper, type) and issubclass(wrapper, AptViT)):
        raise TypeError(f"wrapper must be a subclass of AptViT, got {wrapper!r}")
    if wrapper not in _WRAPPERS:
        _WRAPPERS.append(wrapper)
    return wrapper


def _data_config(model) -> dict:
    """Mean and std of the model's ``pretrained_cfg`` (timm's defaults where it has none)."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


class AptViT(nn.Module):
    """A timm ``VisionTransformer`` fed APT's packed token sequences (made by ``from_timm``).

    Parameters
    ----------
    model : timm.models.VisionTransformer
        The model (checked by ``from_timm``).
    tokenizer : PatchTokenizer
        For the model's image size and patch size.
    attention : {"packed", "padded"}
        How the blocks run: on the packed sequence (each block's modules by hand, attention
        within each image by ``attention.packed_attention``), or as timm's own blocks on a
        padded batch with a key mask (the reference).
    kernel : {"auto", "sdpa", "flex", "varlen"}
        The packed attention kernel (``attention.choose_kernel`` for ``"auto"``).

    Attributes
    ----------
    model : timm.models.VisionTransformer
        The wrapped model; its parameters are trained along with the merge.
    tokenizer : PatchTokenizer
        Built for the model's image size, patch size, ``pretrained_cfg`` mean and std.
    num_prefix : int
        The model's prefix tokens per image: its class token (if any), then its registers.
    merge_conv : nn.Conv2d or None
        ``D -> D``, kernel 2, stride 2: applied ``j`` times to the ``2**j x 2**j`` grid of a
        scale-``j`` patch's base sub-patch embeddings (None for one scale).
    merge_proj : nn.Linear or None
        ``D -> D``, weight and bias initialised to zero: the merge's contribution.
    """

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        """Whether ``from_timm`` wraps ``model`` in this class (registered wrappers are asked first)."""
        return isinstance(model, _import_timm().models.VisionTransformer)

    @classmethod
    def check_supported(cls, model: nn.Module) -> int:
        """Refuse a model this class cannot run exactly (naming the property); return its base patch size."""
        return _check_supported(model)

    def __init__(self, model: nn.Module, tokenizer: PatchTokenizer, attention: str = "packed", *,
                 kernel: str = "auto"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.patch_size = tokenizer.base_patch_size
        self.num_prefix = model.num_prefix_tokens
        self.prefix_pos = 0 if model.no_embed_class else self.num_prefix
        self.attention = attention
        self.kernel = kernel
        dim = model.embed_dim
        if tokenizer.num_scales > 1:
            self.merge_conv = nn.Conv2d(dim, dim, kernel_size=2, stride=2)
            self.merge_proj = nn.Linear(dim, dim)
            nn.init.zeros_(self.merge_proj.weight)
            nn.init.zeros_(self.merge_proj.bias)
        else:
            self.merge_conv = self.merge_proj = None

    @property
    def attention(self) -> str:
        """``"packed"`` or ``"padded"``; assigning checks the value (and that packed can run the blocks)."""
        return self._attention

    @attention.setter
    def attention(self, value: str) -> None:
        if value not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {value!r}")
        if value == "packed":
            for index, block in enumerate(self.model.blocks):
                self._check_packed_block(index, block)
        self._attention = value

    @property
    def kernel(self) -> str:
        """The packed attention kernel, one of ``attention.KERNELS``; assigning checks it."""
        return self._kernel

    @kernel.setter
    def kernel(self, value: str) -> None:
        if value not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {value!r}")
        self._kernel = value

    def _check_packed_block(self, index: int, block: nn.Module) -> None:
        """Refuse a block the packed path does not run by hand (timm's ``Block`` with its ``Attention``)."""
        from timm.layers import Attention
        from timm.models.vision_transformer import Block

        if type(block) is not Block or type(block.attn) is not Attention:
            raise ValueError(
                f"attention='packed' runs timm's Block with its Attention by hand, got model.blocks[{index}] = "
                f"{type(block).__name__} with attn {type(getattr(block, 'attn', None)).__name__}; "
                "pass attention='padded' to run the model's own blocks"
            )

    def extra_repr(self) -> str:
        return (f"model={type(self.model).__name__}, patch_size={self.patch_size}, pool={self.model.global_pool!r}, "
                f"attention={self.attention!r}, kernel={self.kernel!r}")

    def set_thresholds(self, thresholds: Sequence[float]) -> None:
        """Use other thresholds from now on (``PatchTokenizer.set_thresholds``: count, finiteness, border rule)."""
        self.tokenizer.set_thresholds(thresholds)

    def tokenize(self, images: torch.Tensor, importance_maps: dict | None = None) -> dict:
        """The tokenizer's dict for ``images`` ``(B, 3, H, W)`` normalised as the model expects."""
        if isinstance(images, torch.Tensor) and not images.is_floating_point():
            raise TypeError(f"images must be floating-point images normalised as the model expects (timm's "
                            f"transform: (pixels / 255 - mean) / std), got dtype {images.dtype}")
        return self.tokenizer(images, importance_maps)

    def sequence_lengths(self, tokens: dict) -> list[int]:
        """Each image's sequence length in the model: ``tokens["seqlens"]`` with its one class-token slot
        replaced by the model's ``num_prefix`` prefix tokens (equal for a model with one class token)."""
        return [length - 1 + self.num_prefix for length in tokens["seqlens"]]

    def layout(self, tokens: dict, device=None) -> PackedLayout:
        """The ``PackedLayout`` of the model's sequences (``sequence_lengths``) for ``tokens``."""
        device = tokens["output_mask"].device if device is None else device
        return PackedLayout.from_seqlens(self.sequence_lengths(tokens), device)

    def _patch_embed(self, patches: torch.Tensor) -> torch.Tensor:
        """``(N, C, p, p)`` patches to ``(N, D)`` with the model's own patch embedding (projection, norm)."""
        return self.model.patch_embed.norm(self.model.patch_embed.proj(patches).flatten(1))

    def _pos_grid(self, size: int) -> tuple[torch.Tensor | None, int]:
        """Position embeddings of the whole cells of the scale with patch side ``size``: ``(h * w, D)`` (None for
        a model without one), w."""
        from timm.layers import resample_abs_pos_embed

        height, width = self.tokenizer.image_size
        pos_embed = self.model.pos_embed
        if pos_embed is None:
            return None, width // size
        if size != self.patch_size:
            pos_embed = resample_abs_pos_embed(
                pos_embed, new_size=(height // size, width // size), old_size=self.model.patch_embed.grid_size,
                num_prefix_tokens=self.prefix_pos,
            )
        return pos_embed[0, self.prefix_pos:], width // size

    def _merge(self, full_patches: torch.Tensor) -> torch.Tensor:
        """``(N, 4**j, C, p, p)`` base sub-patches to the merge term ``(N, D)``."""
        side = round(full_patches.shape[1] ** 0.5)
        embedded = self._patch_embed(full_patches.flatten(0, 1))
        grid = rearrange(embedded, "(n h w) d -> n d h w", h=side, w=side)
        while grid.shape[-1] > 1:
            grid = self.merge_conv(grid)
        return self.merge_proj(grid.flatten(1))

    def _scale_embeddings(self, tokens: dict, size: int) -> torch.Tensor:
        """Embeddings ``(N_s, D)`` of the kept patches of side ``size``, in (image, row, column) order."""
        pos_grid, columns = self._pos_grid(size)
        boxes = tokens[f"token_boxes_{size}"]
        rows, cols = boxes[:, 1] // size, boxes[:, 2] // size
        if size != self.patch_size and boxes.shape[0]:
            height, width = self.tokenizer.image_size
            outside = (rows >= height // size) | (cols >= width // size)
            if bool(outside.any()):
                raise ValueError(
                    f"tokens keep a {size}-px patch at {boxes[outside][0, 1:3].tolist()} that sticks out of the "
                    f"{height} x {width} image; expected whole cells only above the base scale (the border rule)"
                )
        embeddings = self._patch_embed(tokens[f"resized_patches_{size}"])
        if pos_grid is not None:
            embeddings = embeddings + pos_grid[rows * columns + cols]
        if size != self.patch_size:
            embeddings = embeddings + self._merge(tokens[f"full_patches_{size}"])
        return embeddings

    def _merge_in_use(self) -> torch.Tensor:
        """A zero that depends on every merge parameter, so that a batch without large patches still uses them.

        Distributed data parallel training fails on parameters a step did not use.
        """
        dim = self.model.embed_dim
        probe = self.merge_conv.weight.new_zeros(1, dim, 2, 2)
        return 0.0 * self.merge_proj(self.merge_conv(probe).flatten(1)).sum()

    def _prefix_embeddings(self) -> torch.Tensor:
        """The prefix tokens ``(num_prefix, D)``: class token, then registers (timm's order), each with its
        position embedding where the model has one for them (not ``no_embed_class``)."""
        model = self.model
        parts = [token[0] for token in (model.cls_token, model.reg_token) if token is not None]
        if not parts:
            return self.model.patch_embed.proj.weight.new_zeros(0, model.embed_dim)
        prefix = torch.cat(parts)
        if self.prefix_pos and model.pos_embed is not None:
            prefix = prefix + model.pos_embed[0, : self.num_prefix]
        return prefix

    def _check_class_slots(self, tokens: dict) -> torch.Tensor:
        """Check that each image's sequence starts with its one class-token slot; return the patch-token mask."""
        output_mask, seqlens = tokens["output_mask"], tokens["seqlens"]
        is_patch = output_mask != CLASS_TOKEN
        starts = torch.as_tensor([0, *seqlens[:-1]], device=output_mask.device).cumsum(0)
        if (output_mask.shape[0] != sum(seqlens) or int((~is_patch).sum()) != len(seqlens)
                or not bool((output_mask[starts] == CLASS_TOKEN).all())):
            raise ValueError(
                f"tokens['output_mask'] must hold one class token (CLASS_TOKEN = {CLASS_TOKEN}) at the start of each "
                f"image's sequence, and sum(seqlens) = {sum(seqlens)} entries, as the tokenizer makes it; got "
                f"{int((~is_patch).sum())} class tokens in {output_mask.shape[0]} entries for {len(seqlens)} images"
            )
        return is_patch

    def _scatter_by_scale(self, tokens: dict, is_patch: torch.Tensor, per_scale) -> tuple[torch.Tensor, bool]:
        """``per_scale(size)`` ``(N_s, ...)`` of every scale written in packed patch order: ``(N_patches, ...)``."""
        patch_scale = tokens["output_mask"][is_patch]
        out, merged_any = None, False
        for scale, size in enumerate(self.tokenizer.patch_sizes):
            if scale and tokens[f"resized_patches_{size}"].shape[0] == 0:
                continue
            merged_any |= scale > 0
            values = per_scale(size)
            if out is None:
                out = values.new_zeros(patch_scale.shape[0], *values.shape[1:])
            out[patch_scale == scale + 1] = values
        return out, merged_any

    def embed(self, tokens: dict) -> torch.Tensor:
        """Packed embeddings ``(sum(sequence_lengths(tokens)), D)`` before ``norm_pre``.

        Each image's sequence is the model's prefix tokens (class token, then registers, as
        timm orders them; ``num_prefix`` rows in place of the tokenizer's one class-token
        slot), then its patch tokens in ``output_mask`` order. For a model with one class token
        the rows are in ``output_mask`` order, ``sum(tokens["seqlens"])`` of them.

        Prefix tokens: ``cls_token`` and ``reg_token`` plus their position embeddings (none
        for ``no_embed_class`` models); base patches: the model's patch and position
        embeddings; larger patches: the embedding of the resized patch, the position
        embedding resampled to the scale's grid, and the merge of the full-resolution
        sub-patches (zero at initialisation).
        """
        is_patch = self._check_class_slots(tokens)
        patches, merged_any = self._scatter_by_scale(
            tokens, is_patch, lambda size: self._scale_embeddings(tokens, size))
        if self.merge_proj is not None and not merged_any and torch.is_grad_enabled():
            patches = patches + self._merge_in_use()
        layout = self.layout(tokens, patches.device)
        is_prefix = layout.position() < self.num_prefix
        packed = patches.new_zeros(layout.total, patches.shape[1])
        packed[~is_prefix] = patches
        if self.num_prefix:
            packed[is_prefix] = self._prefix_embeddings().repeat(layout.batch, 1)
        return self.model.pos_drop(packed)

    # The blocks. A subclass (AptEva) adds keyword arguments for every block (its rotary embedding).

    def _block_context(self, tokens: dict, layout: PackedLayout) -> dict:
        """Per-forward inputs of every block besides the sequence (none for a ViT)."""
        return {}

    def _packed_block(self, block: nn.Module, x: torch.Tensor, layout: PackedLayout, kernel: str) -> torch.Tensor:
        """timm's ``Block`` on a packed ``(T, D)`` sequence: pre-norm attention and MLP, layer scale, drop path."""
        attended = packed_self_attention(block.attn, block.norm1(x), layout, kernel)
        x = x + packed_drop_path(block.ls1(attended), block.drop_path1, layout)
        return x + packed_drop_path(block.ls2(block.mlp(block.norm2(x))), block.drop_path2, layout)

    def _padded_block(self, block: nn.Module, x: torch.Tensor, attn_mask, context: dict) -> torch.Tensor:
        return block(x, attn_mask=attn_mask)

    def forward_packed_features(self, tokens: dict, kernel: str | None = None) -> torch.Tensor:
        """Token features after the final ``norm``, packed: ``(sum(sequence_lengths(tokens)), D)``, rows as ``embed``.

        Each block runs by hand on the packed sequence (no padding): attention within each
        image by ``attention.packed_attention`` with ``kernel`` (this wrapper's ``kernel`` when
        None), drop path with one draw per image.
        """
        kernel = self.kernel if kernel is None else kernel
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        x = self.model.norm_pre(self.embed(tokens))
        layout = self.layout(tokens, x.device)
        context = self._block_context(tokens, layout)
        for block in self.model.blocks:
            x = self._packed_block(block, x, layout, kernel, **context)
        return self.model.norm(x)

    def forward_padded_features(self, tokens: dict) -> torch.Tensor:
        """Token features after the final ``norm``, padded per image: ``(B, max_seqlen, D)``.

        Each image's sequence runs through the model's own blocks as one row of a padded
        batch whose attention mask hides the padding (block-diagonal attention); rows past an
        image's length (``sequence_lengths(tokens)``) are undefined.
        """
        packed = self.model.norm_pre(self.embed(tokens))
        layout = self.layout(tokens, packed.device)
        padded, valid = layout.pad(packed)
        attn_mask = None if valid is None else valid[:, None, None, :]
        context = self._padded_context(self._block_context(tokens, layout), layout)
        for block in self.model.blocks:
            padded = self._padded_block(block, padded, attn_mask, context)
        return self.model.norm(padded)

    def _padded_context(self, context: dict, layout: PackedLayout) -> dict:
        return context

    def forward_features(self, tokens: dict) -> torch.Tensor:
        """Token features after the final ``norm``, as ``attention`` runs the blocks.

        ``"packed"``: ``(sum(sequence_lengths(tokens)), D)``, the rows of ``embed``
        (``forward_packed_features``); ``"padded"``: ``(B, max_seqlen, D)``, rows past an
        image's length undefined (``forward_padded_features``).
        """
        if self.attention == "packed":
            return self.forward_packed_features(tokens)
        return self.forward_padded_features(tokens)

    # Pooling.

    def _pool_skip(self) -> int:
        """Leading tokens of each image that avg and attention pooling leave out (the prefix tokens, as timm)."""
        return 0 if getattr(self.model, "pool_include_prefix", False) else self.num_prefix

    def _attention_pool_skip(self) -> int:
        return self._pool_skip()

    def pool(self, features: torch.Tensor, seqlens) -> torch.Tensor:
        """Each image's pooled features ``(B, D)`` as the model's ``global_pool``.

        ``features``: packed ``(T, D)`` or padded ``(B, max_seqlen, D)`` (``forward_features``);
        ``seqlens``: the model's sequence lengths (``sequence_lengths(tokens)``, which is
        ``tokens["seqlens"]`` for a model with one class token). ``"token"``: each image's class
        token; ``"avg"``: the mean of its tokens after the prefix tokens (all of them with
        ``pool_include_prefix``); ``"map"``: the model's attention pool on those tokens, per
        image (``attention.packed_attention_pool``; padded: the padding masked out).
        """
        layout = PackedLayout.from_seqlens(seqlens, features.device)
        packed = features.dim() == 2
        pool = self.model.global_pool
        if pool == "map":
            skip = self._attention_pool_skip()
            if packed:
                return packed_attention_pool(self.model.attn_pool, features, layout, skip)
            valid = torch.arange(features.shape[1], device=features.device)[None] < layout.lengths[:, None]
            valid = None if bool(valid.all()) else valid[:, skip:]
            return padded_attention_pool(self.model.attn_pool, features[:, skip:], valid)
        if pool == "token":
            return features[layout.starts] if packed else features[:, 0]
        skip = self._pool_skip()
        if packed:
            return packed_mean(features, layout, skip)
        position = torch.arange(features.shape[1], device=features.device)[None]
        weights = ((position >= skip) & (position < layout.lengths[:, None])).to(features.dtype)
        return (features * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)

    def forward(self, inputs: torch.Tensor | dict) -> torch.Tensor:
        """What the timm model's forward returns (logits, or pooled features for a headless model).

        ``inputs``: normalised images ``(B, 3, H, W)``, or a dict the tokenizer
        (or ``apt_research.models.PackCollate``) made.
        """
        tokens = self.tokenize(inputs) if isinstance(inputs, torch.Tensor) else inputs
        pooled = self.pool(self.forward_features(tokens), self.sequence_lengths(tokens))
        model = self.model
        return model.head(model.head_drop(model.fc_norm(pooled)))


def from_timm(model: nn.Module, num_scales: int, thresholds: Sequence[float], method: str = "entropy",
              attention: str = "packed", **scorer_options) -> AptViT:
    """Wrap a timm Vision Transformer so that it runs APT's mixed-scale token sequences.

    Parameters
    ----------
    model : timm.models.VisionTransformer or timm.models.eva.Eva
        A ViT with an absolute position embedding, a square patch convolution (patch 14,
        16, 32, or any other square size), a class token and/or register tokens (or neither),
        pooling ``"token"``, ``"avg"`` or ``"map"`` (timm's ``AttentionPoolLatent``) and no
        patch dropout: the ViT, DeiT, DeiT III, CLIP, SigLIP and DINOv2 families, with
        registers too. An ``Eva`` (EVA, EVA02, timm's RoPE ViTs) gets an ``AptEva``.
        Distillation tokens, other pools and models without a position embedding are refused.
    num_scales : int
        Patch scales: ``p, 2p, ..., 2**(num_scales - 1) p`` for the model's patch ``p``.
    thresholds : sequence of float
        ``num_scales - 1`` thresholds, as ``PatchTokenizer`` takes them.
    method : str
        Registered importance scorer.
    attention : {"packed", "padded"}
        ``"packed"``: the blocks run on the packed sequence, no padding (``AptViT``);
        ``"padded"``: timm's own blocks on a padded batch with a key mask.
    **scorer_options
        Options of the scorer, e.g. ``bins=512``.

    Returns
    -------
    AptViT
        ``tokenize(images)``, ``embed(tokens)``, ``forward(images or tokens)``; the
        model is shared, not copied, and the merge layers start at zero.

    Examples
    --------
    >>> import timm, torch
    >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval()
    >>> apt = from_timm(model, num_scales=1, thresholds=[])
    >>> images = torch.randn(2, 3, 224, 224)
    >>> torch.allclose(apt(images), model(images), atol=1e-5)
    True
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    wrapper = next((other for other in _WRAPPERS if other.accepts(model)), AptViT)
    patch = wrapper.check_supported(model)
    config = _data_config(model)
    tokenizer = PatchTokenizer(
        num_scales, patch, model.patch_embed.img_size, thresholds, config["mean"], config["std"], method,
        **scorer_options,
    )
    return wrapper(model, tokenizer, attention).to(model.patch_embed.proj.weight.device)
