"""``from_timm``: a timm Vision Transformer that runs APT's packed, mixed-scale token sequences.

The embedding follows the APT reference (its zero-initialised merge): a kept
patch of side ``p * 2**j`` is embedded as "resize to ``p``, patch-embed, add the
position embedding resampled to that scale's grid", plus a learned merge of its
full-resolution base sub-patches that starts at zero. With thresholds that merge
nothing the token sequence is the model's own and the output equals timm's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn

from ..tokenizer import CLASS_TOKEN, PatchTokenizer

POOLS = ("token", "avg")


def _import_timm():
    try:
        import timm
    except ImportError as error:
        raise ImportError(
            "apt_research.models.from_timm needs timm: pip install 'apt-research[models]' "
            "(python3 run.py installs it)"
        ) from error
    return timm


def _check_supported(model) -> int:
    """Refuse a timm model this wrapper cannot run exactly; return its square base patch size."""
    timm = _import_timm()
    from timm.layers import PatchEmbed

    name = type(model).__name__
    if not isinstance(model, timm.models.VisionTransformer):
        raise TypeError(
            "model must be a timm VisionTransformer (ViT, DeiT, DeiT III, CLIP and DINOv2 families), "
            f"got {name}"
        )
    checks = [
        (model.cls_token is not None, "a class token (class_token=True)", "class_token=False"),
        (model.num_prefix_tokens == 1, "exactly one prefix token (the class token)",
         f"{model.num_prefix_tokens} prefix tokens (register or distillation tokens)"),
        (model.pos_embed is not None, "an absolute position embedding", "pos_embed=None (no position embedding)"),
        (getattr(model, "attn_pool", None) is None and model.global_pool in POOLS,
         f"global_pool in {POOLS}", f"global_pool={model.global_pool!r}"),
        (isinstance(model.patch_drop, nn.Identity), "no patch dropout (patch_drop_rate=0)",
         f"patch_drop={type(model.patch_drop).__name__}"),
        (isinstance(model.patch_embed, PatchEmbed) and isinstance(model.patch_embed.proj, nn.Conv2d),
         "timm's PatchEmbed with a convolution", f"patch_embed={type(model.patch_embed).__name__}"),
    ]
    for ok, expected, got in checks:
        if not ok:
            raise ValueError(f"model ({name}) must have {expected} for APT, got {got}")
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


def _data_config(model) -> dict:
    """Mean and std of the model's ``pretrained_cfg`` (timm's defaults where it has none)."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


class AptViT(nn.Module):
    """A timm ``VisionTransformer`` fed APT's packed token sequences (made by ``from_timm``).

    Attributes
    ----------
    model : timm.models.VisionTransformer
        The wrapped model; its parameters are trained along with the merge.
    tokenizer : PatchTokenizer
        Built for the model's image size, patch size, ``pretrained_cfg`` mean and std.
    merge_conv : nn.Conv2d or None
        ``D -> D``, kernel 2, stride 2: applied ``j`` times to the ``2**j x 2**j`` grid of a
        scale-``j`` patch's base sub-patch embeddings (None for one scale).
    merge_proj : nn.Linear or None
        ``D -> D``, weight and bias initialised to zero: the merge's contribution.
    """

    def __init__(self, model: nn.Module, tokenizer: PatchTokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.patch_size = tokenizer.base_patch_size
        self.prefix_pos = 0 if model.no_embed_class else 1
        dim = model.embed_dim
        if tokenizer.num_scales > 1:
            self.merge_conv = nn.Conv2d(dim, dim, kernel_size=2, stride=2)
            self.merge_proj = nn.Linear(dim, dim)
            nn.init.zeros_(self.merge_proj.weight)
            nn.init.zeros_(self.merge_proj.bias)
        else:
            self.merge_conv = self.merge_proj = None

    def extra_repr(self) -> str:
        return f"model={type(self.model).__name__}, patch_size={self.patch_size}, pool={self.model.global_pool!r}"

    def set_thresholds(self, thresholds: Sequence[float]) -> None:
        """Use other thresholds from now on (``PatchTokenizer.set_thresholds``: count, finiteness, border rule)."""
        self.tokenizer.set_thresholds(thresholds)

    def tokenize(self, images: torch.Tensor, importance_maps: dict | None = None) -> dict:
        """The tokenizer's dict for ``images`` ``(B, 3, H, W)`` normalised as the model expects."""
        if isinstance(images, torch.Tensor) and not images.is_floating_point():
            raise TypeError(f"images must be floating-point images normalised as the model expects (timm's "
                            f"transform: (pixels / 255 - mean) / std), got dtype {images.dtype}")
        return self.tokenizer(images, importance_maps)

    def _patch_embed(self, patches: torch.Tensor) -> torch.Tensor:
        """``(N, C, p, p)`` patches to ``(N, D)`` with the model's own patch embedding (projection, norm)."""
        return self.model.patch_embed.norm(self.model.patch_embed.proj(patches).flatten(1))

    def _pos_grid(self, size: int) -> tuple[torch.Tensor, int]:
        """Position embeddings of the whole cells of the scale with patch side ``size``: ``(h * w, D)``, w."""
        from timm.layers import resample_abs_pos_embed

        height, width = self.tokenizer.image_size
        base_grid = self.model.patch_embed.grid_size
        pos_embed = self.model.pos_embed
        if size != self.patch_size:
            pos_embed = resample_abs_pos_embed(
                pos_embed, new_size=(height // size, width // size), old_size=base_grid,
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
        embeddings = self._patch_embed(tokens[f"resized_patches_{size}"]) + pos_grid[rows * columns + cols]
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

    def embed(self, tokens: dict) -> torch.Tensor:
        """Packed embeddings ``(N_tokens, D)`` in ``output_mask`` order, before ``norm_pre``.

        Class tokens: ``cls_token`` plus its position embedding (none for
        ``no_embed_class`` models); base patches: the model's patch and position
        embeddings; larger patches: the embedding of the resized patch, the position
        embedding resampled to the scale's grid, and the merge of the full-resolution
        sub-patches (zero at initialisation).
        """
        output_mask = tokens["output_mask"]
        model = self.model
        packed = model.cls_token.new_zeros(output_mask.shape[0], model.embed_dim)
        class_token = model.cls_token[0, 0]
        if self.prefix_pos:
            class_token = class_token + model.pos_embed[0, 0]
        packed[output_mask == CLASS_TOKEN] = class_token
        merged_any = False
        for scale, size in enumerate(self.tokenizer.patch_sizes):
            if scale and tokens[f"resized_patches_{size}"].shape[0] == 0:
                continue
            merged_any |= scale > 0
            packed[output_mask == scale + 1] = self._scale_embeddings(tokens, size)
        if self.merge_proj is not None and not merged_any and torch.is_grad_enabled():
            packed = packed + self._merge_in_use()
        return model.pos_drop(packed)

    def forward_features(self, tokens: dict) -> torch.Tensor:
        """Token features after the final ``norm``, padded per image: ``(B, max_seqlen, D)``.

        Each image's sequence runs through the model's blocks as one row of a
        padded batch whose attention mask hides the padding (block-diagonal
        attention); rows past an image's length are undefined.
        """
        packed = self.model.norm_pre(self.embed(tokens))
        seqlens = torch.as_tensor(tokens["seqlens"], device=packed.device)
        batch, longest = seqlens.shape[0], int(seqlens.max())
        if bool((seqlens == longest).all()):
            padded, attn_mask = packed.view(batch, longest, -1), None
        else:
            image = torch.repeat_interleave(torch.arange(batch, device=packed.device), seqlens)
            starts = torch.cumsum(seqlens, 0) - seqlens
            position = torch.arange(packed.shape[0], device=packed.device) - starts[image]
            padded = packed.new_zeros(batch, longest, packed.shape[1])
            padded = padded.index_put((image, position), packed)
            valid = torch.arange(longest, device=packed.device)[None] < seqlens[:, None]
            attn_mask = valid[:, None, None, :]
        for block in self.model.blocks:
            padded = block(padded, attn_mask=attn_mask)
        return self.model.norm(padded)

    def pool(self, features: torch.Tensor, seqlens) -> torch.Tensor:
        """Each image's class token (``global_pool="token"``) or the mean of its tokens (``"avg"``): ``(B, D)``."""
        if self.model.global_pool == "token":
            return features[:, 0]
        seqlens = torch.as_tensor(seqlens, device=features.device)
        first = 0 if getattr(self.model, "pool_include_prefix", False) else 1
        position = torch.arange(features.shape[1], device=features.device)[None]
        weights = ((position >= first) & (position < seqlens[:, None])).to(features.dtype)
        return (features * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)

    def forward(self, inputs: torch.Tensor | dict) -> torch.Tensor:
        """What the timm model's forward returns (logits, or pooled features for a headless model).

        ``inputs``: normalised images ``(B, 3, H, W)``, or a dict the tokenizer
        (or ``apt_research.models.PackCollate``) made.
        """
        tokens = self.tokenize(inputs) if isinstance(inputs, torch.Tensor) else inputs
        pooled = self.pool(self.forward_features(tokens), tokens["seqlens"])
        model = self.model
        return model.head(model.head_drop(model.fc_norm(pooled)))


def from_timm(model: nn.Module, num_scales: int, thresholds: Sequence[float], method: str = "entropy",
              **scorer_options) -> AptViT:
    """Wrap a timm Vision Transformer so that it runs APT's mixed-scale token sequences.

    Parameters
    ----------
    model : timm.models.VisionTransformer
        A ViT with one class token, an absolute position embedding, a square
        patch convolution (patch 14, 16, 32, or any other square size), pooling
        ``"token"`` or ``"avg"`` and no patch dropout: the ViT, DeiT, DeiT III,
        CLIP and DINOv2 families. Register tokens, distillation tokens, attention
        pooling and models without a position embedding are refused.
    num_scales : int
        Patch scales: ``p, 2p, ..., 2**(num_scales - 1) p`` for the model's patch ``p``.
    thresholds : sequence of float
        ``num_scales - 1`` thresholds, as ``PatchTokenizer`` takes them.
    method : str
        Registered importance scorer.
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
    patch = _check_supported(model)
    config = _data_config(model)
    tokenizer = PatchTokenizer(
        num_scales, patch, model.patch_embed.img_size, thresholds, config["mean"], config["std"], method,
        **scorer_options,
    )
    return AptViT(model, tokenizer).to(model.cls_token.device)
