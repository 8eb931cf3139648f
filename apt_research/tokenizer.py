"""``PatchTokenizer``: importance maps, masks, patch groups and the packed sequence (``docs/contract.md``)."""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._validation import (
    check_channel_stats,
    check_extent,
    check_images,
    check_int,
    check_maps,
    check_pad_value,
    check_thresholds,
)
from .contract import CLASS_TOKEN, DEFAULT_PAD_VALUE
from .entropy import (
    Layout,
    denormalize_pixels,
    grid_shape,
    kernel_arguments,
    map_slices,
    numba_available,
    numba_failure,
    numba_denormalize,
    numba_kernel,
    numba_pixels,
    pixel_strides,
    raise_for_status,
    scale_sizes,
    triton_available,
)
from .scorers import entropy_scorer, get_scorer, importance_maps_unchecked
from .selection import select_patches_by_threshold


class _NumbaPlan(NamedTuple):
    """What a numba call of the tokenizer needs besides the pixels and the normalisation's arrays, made once
    for images of one kind (``PatchTokenizer._plan``)."""

    kernel: Callable  # _entropy_cpu.entropy_flat ("maps") or _grouping_cpu.tokenize ("forward"), or a serial twin
    unpack: Callable | None  # _grouping_cpu.outputs for "forward"
    channels_last: bool  # the pixels are read (B, H, W, C)
    head: tuple  # the kernel's arguments from bins to pad_value (entropy.KernelArguments)
    tail: tuple  # its arguments after the normalisation's (denormalize, cells)
    sizes: list
    layout: Layout
    maps: tuple  # (p_s, first cell, end, (B, h_s, w_s)) per scale
    strides: tuple  # the pixels' element strides (entropy.pixel_strides)


def _check_border_rule(thresholds: list[float], pad_value: float) -> None:
    """``pad_value`` must be at least every threshold, so that padded border patches are never kept."""
    if thresholds and pad_value < max(thresholds):
        raise ValueError(f"pad_value must be at least every threshold, so that padded border patches are never "
                         f"kept (the border rule); got pad_value={pad_value!r} below thresholds {list(thresholds)}")


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be an int or a pair (H, W), got {value!r}")
    return check_int(f"{name}[0]", value[0], 1), check_int(f"{name}[1]", value[1], 1)


def _unnormalisation(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's second normalisation ``(-mean / std, 1 / std)``, float32, checked finite."""
    mean_t, std_t = check_channel_stats("mean", mean), check_channel_stats("std", std, positive=True)
    shift, scale = -mean_t / std_t, 1.0 / std_t
    if not bool(torch.isfinite(shift).all() and torch.isfinite(scale).all()):
        raise ValueError(f"std is too small for these means: 1 / std or mean / std overflows float32, got "
                         f"mean={mean!r}, std={std!r}; expected the normalisation the images carry")
    return shift, scale


def _needs_grad(images: torch.Tensor) -> bool:
    """Whether autograd follows ``images``: then the patches are cut with differentiable torch indexing."""
    return images.requires_grad and torch.is_grad_enabled()


def _numba_gather(images: torch.Tensor) -> bool:
    return (images.device.type == "cpu" and images.dtype == torch.float32 and numba_available()
            and not _needs_grad(images))


def _gather_patches(images, image_idx, row_idx, col_idx, size: int) -> torch.Tensor:
    """The ``size x size`` patches at the given grid cells, ``(N, C, size, size)`` (plain torch).

    ``images`` is zero-padded to a multiple of the base patch: the grid of whole patches is
    viewed and indexed. Patches above scale 0 that stick out of the image are never kept (the
    border rule); should custom maps keep one, the image is padded for that scale.
    """
    rows, cols = images.shape[-2] // size, images.shape[-1] // size
    if image_idx.numel() and bool(((row_idx >= rows) | (col_idx >= cols)).any()):
        # Custom maps can keep a large patch that sticks out of the image: pad for this scale.
        images = F.pad(images, (0, -(-images.shape[-1] // size) * size - images.shape[-1],
                                0, -(-images.shape[-2] // size) * size - images.shape[-2]))
        rows, cols = images.shape[-2] // size, images.shape[-1] // size
    grid = rearrange(images[..., : rows * size, : cols * size], "b c (h p1) (w p2) -> b h w c p1 p2", p1=size, p2=size)
    return grid[image_idx, row_idx, col_idx]


def downsample_patches(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """``F.interpolate(patches, scale_factor=1/factor, mode="bilinear", align_corners=False)`` for a power of two.

    Bilinear downsampling by ``factor = 2**s`` without antialiasing reads two
    rows and two columns per output pixel, each with weight 1/2 (source
    ``factor * i + factor / 2 - 1`` and the next). Written as four strided views
    summed in the CPU kernel's order it is bit-identical to ``F.interpolate`` on
    the CPU (within one float32 rounding of the CUDA kernel), and much faster for
    many small patches than ``upsample_bilinear2d`` on CUDA.
    """
    first = factor // 2 - 1
    rows_a, rows_b = patches[..., first::factor, :], patches[..., first + 1 :: factor, :]
    return (
        0.25 * rows_a[..., first::factor] + 0.25 * rows_a[..., first + 1 :: factor]
    ) + 0.25 * rows_b[..., first::factor] + 0.25 * rows_b[..., first + 1 :: factor]


def patch_groups(images: torch.Tensor, masks: dict[int, torch.Tensor], base_patch_size: int) -> dict[str, torch.Tensor]:
    """Cut the kept patches of every scale from ``images`` ``(B, C, H, W)``, in (batch, row, column) order.

    Returns ``resized_patches_{p_s}`` ``(N_s, C, p, p)`` (the patch resized by
    ``0.5**s``, bilinear, no antialias), ``full_patches_{p_s}``
    ``(N_s, 4**s, C, p, p)`` for s >= 1 (its base patches, row-major),
    ``pos_embed_mask_{p_s}`` ``(B, h_s * w_s)`` bool and ``token_boxes_{p_s}``
    ``(N_s, 4)`` int64 rows ``(image, y0, x0, side)`` in pixels; ``p`` is
    ``base_patch_size``. The images may hold pixels or normalised values.

    Only the kept patches are gathered and resized: bilinear downsampling by
    ``2**s`` with ``align_corners=False`` reads pixels inside the patch only, so
    this equals resizing the whole padded image and cutting it.
    """
    if images.device.type == "cuda" and triton_available() and not _needs_grad(images):
        return _patch_groups_triton(images, masks, base_patch_size)
    return _patch_groups_gather(images, masks, base_patch_size)


def _patch_groups_gather(images, masks, base: int) -> dict[str, torch.Tensor]:
    """CPU (numba: each kept patch written once to its slot) or plain torch: gather each scale's kept patches."""
    if _numba_gather(images):
        from ._grouping_cpu import group_patches

        sizes = sorted(masks)
        return group_patches(images, [masks[size].bool() for size in sizes], sizes, base)
    height, width = images.shape[-2:]
    rows, cols = grid_shape(height, width, base)
    if (rows * base, cols * base) != (height, width):
        images = F.pad(images, (0, cols * base - width, 0, rows * base - height))
    groups = {}
    for scale, size in enumerate(sorted(masks)):
        keep = masks[size].bool()
        image_idx, row_idx, col_idx = keep.nonzero(as_tuple=True)
        patches = _gather_patches(images, image_idx, row_idx, col_idx, size)
        if scale == 0:
            groups[f"resized_patches_{size}"] = patches
        else:
            groups[f"resized_patches_{size}"] = downsample_patches(patches, size // base)
            groups[f"full_patches_{size}"] = rearrange(
                patches, "n c (n1 p1) (n2 p2) -> n (n1 n2) c p1 p2", p1=base, p2=base
            )
        groups[f"pos_embed_mask_{size}"] = keep.flatten(1)
        groups[f"token_boxes_{size}"] = torch.stack(
            [image_idx, row_idx * size, col_idx * size, torch.full_like(image_idx, size)], dim=1
        )
    return groups


def _patch_groups_triton(images, masks, base: int) -> dict[str, torch.Tensor]:
    """CUDA: one Triton program per grid cell writes each kept patch (resized, full, box) to its slot."""
    from ._entropy_cuda import patch_groups_triton

    totals = torch.stack([masks[size].flatten(1).sum(1) for size in sorted(masks)], 1).long().sum(0).tolist()
    groups = {}
    for scale, size in enumerate(sorted(masks)):
        keep = masks[size] > 0
        resized, full, boxes = patch_groups_triton(images, keep, int(totals[scale]), size, base)
        groups[f"resized_patches_{size}"] = resized
        if full is not None:
            groups[f"full_patches_{size}"] = full
        groups[f"pos_embed_mask_{size}"] = keep.flatten(1)
        groups[f"token_boxes_{size}"] = boxes
    return groups


class PatchTokenizer(nn.Module):
    """Adaptive patch tokenizer: large patches where the image is flat, small ones where it is busy.

    Parameters
    ----------
    num_scales : int
        Number of patch scales S; scale s uses ``base_patch_size * 2**s`` pixels.
    base_patch_size : int
        Patch size of scale 0 (the ViT's patch size), e.g. 14 or 16.
    image_size : int or (int, int)
        Height and width of the images ``forward`` takes; any values, but the
        coarsest patch ``base_patch_size * 2**(num_scales - 1)`` may be at most
        twice the longer side or 256 px, whichever is larger.
    thresholds : sequence of float
        S - 1 thresholds; ``thresholds[s - 1]`` keeps scale-s patches whose score is below it.
    mean, std : sequence of float
        The normalisation the input images carry (as a ViT expects), 1 or 3
        values each; undone, times 255, before scoring.
    method : str
        Registered importance scorer (``entropy``, ``laplacian``, ``upsample_mse``,
        or one added with ``register_scorer``); the maps come from the registry.
    pad_value : float
        Score of padded border patches; at least every threshold, so that they
        are never kept above scale 0 (the border rule).
    **method_options
        Options of the scorer, checked here, e.g. ``bins=512`` for entropy.

    Everything is checked when the tokenizer is built, so that ``forward``
    checks only the images. Images that require grad are accepted: the
    patches then keep their gradient (torch indexing instead of the copy kernels).

    Examples
    --------
    >>> import torch
    >>> from skimage import data
    >>> mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    >>> pixels = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    >>> pixels = torch.nn.functional.interpolate(pixels, size=(224, 224), mode="bilinear")
    >>> images = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    >>> tokenizer = PatchTokenizer(3, 16, 224, [5.75, 4.0], mean, std)
    >>> out = tokenizer(images)
    >>> out["seqlens"][0] == 1 + sum(out[f"resized_patches_{ps}"].shape[0] for ps in (16, 32, 64))
    True
    """

    def __init__(
        self,
        num_scales: int,
        base_patch_size: int,
        image_size: int | Sequence[int],
        thresholds: Sequence[float],
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        method: str = "entropy",
        *,
        pad_value: float = DEFAULT_PAD_VALUE,
        **method_options,
    ):
        super().__init__()
        self.num_scales = check_int("num_scales", num_scales, 1)
        self.base_patch_size = check_int("base_patch_size", base_patch_size, 1)
        self.image_size = _pair("image_size", image_size)
        check_extent(self.base_patch_size, self.num_scales, *self.image_size, names=("base_patch_size", "num_scales"))
        self.pad_value = check_pad_value(pad_value)
        self.set_thresholds(thresholds)
        self.scorer = get_scorer(method)
        self.method = method
        self.method_options = self.scorer.resolve(method_options)
        self.patch_sizes = scale_sizes(base_patch_size, num_scales)
        # The reference undoes the normalisation as a second one, (x - m') / s'; kept for exact token counts.
        shift, scale = _unnormalisation(mean, std)
        self.register_buffer("unnorm_mean", shift.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("unnorm_std", scale.view(1, -1, 1, 1), persistent=False)
        self._threshold_cache = {}  # by device: (the thresholds' values, float32 tensor, its numpy array or None)
        self._plans = {}  # _NumbaPlan by everything the checks and the numba kernels' arguments depend on

    _CACHES = {"_plans": dict, "_normalisation_views": lambda: None, "_threshold_cache": dict}

    def __getstate__(self) -> dict:
        # The caches hold compiled kernels, views of this process's memory and device copies, and are remade on
        # the first call: a pickled tokenizer (a data-loader worker's copy, a saved model) leaves them out.
        return {**self.__dict__, **{name: make() for name, make in self._CACHES.items()}}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state.pop("_numba_cache", None)  # (a pickle from before the plans; its thresholds an attribute then)
        for name in ("thresholds", "pad_value"):
            if name in state:
                state["_" + name] = state.pop(name)
        super().__setstate__(state)
        self.__dict__.update({name: make() for name, make in self._CACHES.items()})

    @property
    def thresholds(self) -> list[float]:
        """``thresholds[s - 1]`` belongs to scale s. Assigning checks the new ones as ``set_thresholds`` does."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, values) -> None:
        self.set_thresholds(values)

    @property
    def pad_value(self) -> float:
        """The score of padded border patches. Assigning checks it (finite float32, at least every threshold)."""
        return self._pad_value

    @pad_value.setter
    def pad_value(self, value) -> None:
        value = check_pad_value(value)
        _check_border_rule(self.__dict__.get("_thresholds", []), value)
        self._pad_value = value

    def set_thresholds(self, thresholds: Sequence[float]) -> None:
        """Use ``thresholds`` from now on, checked as the constructor checks them.

        Parameters
        ----------
        thresholds : sequence of float
            ``num_scales - 1`` finite numbers, none above ``pad_value`` (the border rule:
            padded border patches are never kept above scale 0).

        Raises
        ------
        TypeError, ValueError
            Naming ``thresholds`` or ``pad_value``, the values and what was expected;
            the tokenizer keeps its previous thresholds.
        """
        checked = check_thresholds(thresholds, self.num_scales)
        _check_border_rule(checked, self._pad_value)
        self._thresholds = checked

    def extra_repr(self) -> str:
        return (
            f"num_scales={self.num_scales}, base_patch_size={self.base_patch_size}, image_size={self.image_size}, "
            f"thresholds={self.thresholds}, method={self.method!r}"
        )

    def _check_input(self, images: torch.Tensor, values: bool = True) -> torch.Tensor:
        check_images(images, pixel_range=False, values=values)
        height, width = images.shape[-2:]
        if (height, width) != self.image_size:
            raise ValueError(
                f"images have height x width {height} x {width}, but this tokenizer was built for image_size "
                f"{self.image_size[0]} x {self.image_size[1]}"
            )
        if self.unnorm_mean.shape[1] == 3 and images.shape[1] != 3:
            raise ValueError(f"images must have 3 channels to match mean/std of 3 values, got {images.shape[1]}")
        if images.device.type == "cpu" and not self.__dict__.get("_range_checked"):
            self.__dict__["_range_checked"] = True  # the first CPU batch only: a user passes pixels consistently
            self._warn_if_pixels(images)
        return images

    def _warn_if_pixels(self, images: torch.Tensor) -> None:
        """Warn where ``images`` look like raw pixels in [0, 255] rather than values normalised with mean/std."""
        # A normalised value is at most (1 - mean) / std = scale + shift of the second normalisation.
        largest = float((self.unnorm_std + self.unnorm_mean).max())
        high = float(images.detach().amax())
        if high > max(10 * largest, 20.0):  # far beyond any normalised value (random normal test data included)
            warnings.warn(f"images look like raw pixels (largest value {high:g}), but PatchTokenizer expects images "
                          f"normalised with its mean and std (largest about {largest:.3g}): normalise them first, "
                          "(pixels / 255 - mean) / std, as a ViT's transform does", UserWarning, stacklevel=4)

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images back to pixels in [0, 255] (float32), the reference's way."""
        return denormalize_pixels(images, self.unnorm_mean, self.unnorm_std)

    def compute_importance_maps(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{p_s: (B, h_s, w_s)}`` scores of the normalised ``images``, from the scorer registry.

        A scorer that takes ``denormalize`` (the entropy kernels) undoes the
        normalisation on the fly; other scorers get a pixel copy from ``to_pixels``.
        """
        # Images of a kind already checked skip to the kernel: a data-loader transform calls this once per
        # image, where each Python call and check costs a noticeable part of the kernel's time (so all is inline).
        planned = self._planned("maps", images)
        if planned is None:
            if not isinstance(images, torch.Tensor) or images.layout != torch.strided or images.is_meta:
                check_images(images)  # raises what is wrong (sparse, meta, not a tensor), before any other step
            kernel_checks = self._entropy_by_numba(images)
            self._check_input(images, values=not kernel_checks)
            if not kernel_checks:
                return self._importance_maps(images)
            planned = self._plan("maps", images)
        plan, pixels, mean, std = planned
        try:
            out, status = plan.kernel(pixels, plan.channels_last, *plan.head, mean, std, *plan.tail)
        except SystemError as error:
            out, status = None, numba_failure(error)
        if status != -1:
            raise_for_status(status, True, plan.head)
        maps = {}
        for size, first, last, shape in plan.maps:
            maps[size] = torch.from_numpy(out[first:last].reshape(shape))
        return maps

    def _entropy_by_kernel(self) -> bool:
        """Whether CUDA scoring goes through the Triton entropy kernel (which also checks the values)."""
        return self.scorer.function is entropy_scorer and self.method_options["backend"] in ("auto", "triton")

    def _entropy_by_numba(self, images: torch.Tensor) -> bool:
        """Whether CPU scoring goes through the numba entropy kernel (which then also checks the values)."""
        return (self.scorer.function is entropy_scorer and images.device.type == "cpu" and numba_available()
                and self.method_options["backend"] in ("auto", "numba"))

    def _importance_maps(self, images: torch.Tensor, check_finite: bool = False) -> dict[int, torch.Tensor]:
        options = {**self.method_options, "check_finite": True} if check_finite else self.method_options
        return importance_maps_unchecked(self.scorer, images, self.base_patch_size, self.num_scales, self.pad_value,
                                         options, denormalize=(self.unnorm_mean, self.unnorm_std))

    def construct_masks(self, importance_maps: dict[int, torch.Tensor]):
        """Masks per scale, the packed sequence's scale labels and the length of each image's sequence.

        Returns
        -------
        masks : dict[int, Tensor]
            ``{p_s: (B, h_s, w_s)}`` 0/1 float.
        output_mask : Tensor
            ``(sum(seqlens),)`` int64: -1 for each image's class token, ``s + 1`` for a token of scale s.
        seqlens : list[int]
            Tokens per image, class token included.
        """
        masks, counts, counts_host = self._select(importance_maps)
        seqlens = (counts_host.sum(1) + 1).tolist()
        return masks, self._output_mask(counts, seqlens), seqlens

    def _select(self, importance_maps):
        """Masks, and the kept patches per image and scale ``(B, S)`` on the device and on the host (one sync)."""
        _check_border_rule(self.thresholds, self._pad_value)  # (the list may have been changed in place)
        masks = select_patches_by_threshold(importance_maps, self.thresholds)
        counts = torch.stack([masks[size].flatten(1).sum(1) for size in self.patch_sizes], dim=1).long()
        return masks, counts, counts.cpu()

    def _output_mask(self, counts: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        labels = torch.tensor([CLASS_TOKEN, *range(1, self.num_scales + 1)], device=counts.device)
        per_image = torch.cat([torch.ones_like(counts[:, :1]), counts], dim=1)
        return torch.repeat_interleave(labels.repeat(counts.shape[0]), per_image.flatten(), output_size=sum(seqlens))

    def construct_patch_groups(self, images: torch.Tensor, masks: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cut the kept patches of every scale, in (batch, row, column) order (see ``patch_groups``)."""
        return patch_groups(images, masks, self.base_patch_size)

    def forward(self, images: torch.Tensor, importance_maps: dict[int, torch.Tensor] | None = None) -> dict:
        """Tokenize normalised ``images`` ``(B, C, H, W)``.

        ``importance_maps`` computed beforehand (e.g. in data-loader workers or
        from a cache) skip the scoring step.

        Returns the patch groups of ``construct_patch_groups`` plus ``masks``
        (``{p_s: (B, h_s, w_s)}``), ``output_mask``, ``seqlens``, ``cu_seqlens``
        (int32), ``max_seqlen``, ``retained_frac`` and ``token_boxes``
        ``(sum(seqlens), 4)`` aligned with ``output_mask`` (class tokens:
        ``(image, -1, -1, 0)``).
        """
        if not isinstance(images, torch.Tensor) or images.layout != torch.strided or images.is_meta:
            check_images(images)  # raises what is wrong (sparse, meta, not a tensor), before any other step
        planned = None if importance_maps is not None else self._planned("forward", images)
        if planned is not None:
            return self._finish(self._forward_by_plan(*planned), images.shape[0])
        fused = images.device.type == "cuda" and triton_available() and not _needs_grad(images)
        # The fused entropy kernels (Triton, numba) check the values themselves: no pass over the batch of
        # their own (and on CUDA no host sync).
        kernel_checks = importance_maps is None and (
            self._entropy_by_kernel() if fused else self._entropy_by_numba(images)
        )
        self._check_input(images, values=not kernel_checks)
        if importance_maps is not None:
            self._check_importance_maps(importance_maps, images)
        if fused:
            out = self._forward_triton(images, importance_maps)
        else:
            out = self._forward_gather(images, importance_maps, check_finite=kernel_checks)
        return self._finish(out, images.shape[0])

    def _finish(self, out: dict, batch: int) -> dict:
        """The forward's ``max_seqlen`` and ``retained_frac``."""
        seqlens = out["seqlens"]
        out["max_seqlen"] = max(seqlens)
        height, width = self.image_size
        out["retained_frac"] = sum(seqlens) / (batch * height * width / self.base_patch_size**2)
        return out

    def _forward_gather(self, images, importance_maps, check_finite: bool = False) -> dict:
        """CPU (numba) or plain torch forward; ``check_finite``: the entropy kernel checks the values."""
        if importance_maps is None and check_finite and _numba_gather(images):
            return self._forward_numba(images)  # the numba entropy kernel's maps, never split into tensors
        if importance_maps is None:
            importance_maps = self._importance_maps(images, check_finite)
        if _numba_gather(images) and all(importance_maps[size].dtype == torch.float32 for size in self.patch_sizes):
            return self._forward_numba(images, importance_maps)
        masks, counts, counts_host = self._select(importance_maps)
        seqlens = (counts_host.sum(1) + 1).tolist()
        out = _patch_groups_gather(images, masks, self.base_patch_size)
        out["masks"] = masks
        out["output_mask"] = self._output_mask(counts, seqlens)
        out["seqlens"] = seqlens
        seq_tensor = torch.tensor([0] + seqlens, dtype=torch.int64, device=images.device)
        out["cu_seqlens"] = seq_tensor.cumsum(0).to(torch.int32)
        out["token_boxes"] = self._packed_boxes(out, images.shape[0], images.device)
        return out

    def _forward_numba(self, images, importance_maps=None) -> dict:
        """CPU float32: selection (which also lays out the packed sequence) and one grouping kernel, which writes
        every scale's patches and boxes, the packed boxes and labels and the class tokens. Without
        ``importance_maps`` the numba entropy kernel runs first, in the same call from here (one image at a
        time, as a data-loader transform calls it, costs little more than its share of a batch)."""
        from ._grouping_cpu import forward

        if importance_maps is None:
            return self._forward_by_plan(*self._plan("forward", images))
        sizes, thresholds = self.patch_sizes, self._cpu_thresholds()
        grids = tuple(tuple(importance_maps[size].shape[1:]) for size in sizes)
        flat = torch.cat([importance_maps[size].reshape(-1) for size in sizes]).numpy()
        return forward(images, flat, grids, thresholds, sizes, self.base_patch_size)

    def _planned(self, kind: str, images, new_plan: _NumbaPlan | None = None) -> tuple | None:
        """``_plan``'s result for ``images`` like ones this tokenizer has already checked and planned for, else
        None (then the full path runs); with ``new_plan``, keep it for such images instead (returns None).

        The key is everything the input checks, the choice of the numba path and the kernels' arguments depend
        on, bar the values of the pixels and of the normalisation (which the kernels read on every call): the
        images' shape, strides and dtype, and the settings. Per call this costs the images' numpy view, a look
        at the buffers' identity and layout, and one dict look-up."""
        if type(images) is not torch.Tensor:
            return None
        buffers = self._buffers
        mean, std = buffers["unnorm_mean"], buffers["unnorm_std"]
        # The normalisation's buffers as flat numpy arrays over their own memory (contiguous float32 CPU buffers
        # only), made again where a buffer changed other than in value (module.to(), .data = ..., set_(),
        # as_strided_(), resize_()): its object, address, shape, strides or dtype. That check is what keeps the
        # views right; the kernels read the values on every call. (After a kernel has run, each numpy() call
        # costs several microseconds: the views save two per call.)
        views = self.__dict__.get("_normalisation_views")
        try:  # numpy() refuses what the kernels cannot read in place: CUDA, autograd, types numpy lacks
            pixels = images.numpy()  # (first: CUDA images leave here)
            state = (mean.data_ptr(), std.data_ptr(), mean.shape, std.shape, mean.stride(), std.stride(), mean.dtype,
                     std.dtype)
            if views is None or views[0] is not mean or views[1] is not std or views[2] != state:
                if not all(buffer.dtype == torch.float32 and buffer.is_contiguous() for buffer in (mean, std)):
                    return None
                views = (mean, std, state, mean.numpy().reshape(-1), std.numpy().reshape(-1))
                self.__dict__["_normalisation_views"] = views
        except (TypeError, RuntimeError):
            return None
        mean, std = views[3], views[4]
        options = self.method_options
        key = (kind, pixels.shape, pixels.strides, pixels.dtype, mean.shape, std.shape, torch.get_num_threads() > 1,
               self.scorer.function, options.get("backend"), options.get("bins"), self._pad_value, self.image_size,
               self.base_patch_size, self.num_scales)
        plans = self._plans
        try:  # (a setting of a type that cannot be hashed, e.g. image_size a list: the full path checks it)
            if new_plan is not None:
                if len(plans) > 16:
                    plans.clear()
                plans[key] = new_plan
                return None
            plan = plans.get(key)
        except TypeError:
            return None
        if plan is None:
            return None
        return plan, pixels.transpose(0, 2, 3, 1) if plan.channels_last else pixels, mean, std

    def _plan(self, kind: str, images: torch.Tensor) -> tuple:
        """The numba kernels' plan for checked ``images`` (``kind``: "maps" or "forward"), the pixels as they
        read them and the normalisation's arrays. Kept for ``_planned`` where the kernels read ``images``' own
        memory (float32 or uint8, contiguous or channels-last)."""
        pixels, channels_last = numba_pixels(images)
        mean, std = numba_denormalize((self._buffers["unnorm_mean"], self._buffers["unnorm_std"]))
        batch, _, height, width = images.shape
        arguments = kernel_arguments(batch, height, width, self.base_patch_size, self.num_scales,
                                     self.method_options["bins"], self.pad_value, True)
        if kind == "maps":
            from ._entropy_cpu import entropy_flat, entropy_flat_serial

            kernel, unpack = numba_kernel(entropy_flat, entropy_flat_serial), None
        else:
            from ._grouping_cpu import outputs, tokenize, tokenize_serial

            kernel, unpack = numba_kernel(tokenize, tokenize_serial), outputs
        plan = _NumbaPlan(kernel, unpack, channels_last, arguments.head, arguments.tail, arguments.sizes,
                          arguments.layout, map_slices(batch, arguments.sizes, arguments.layout),
                          pixel_strides(pixels, channels_last))
        if images.dtype in (torch.uint8, torch.float32) and not images.requires_grad:
            direct = images.numpy()
            if (direct.transpose(0, 2, 3, 1) if channels_last else direct).flags.c_contiguous:
                self._planned(kind, images, plan)
        return plan, pixels, mean, std

    def _forward_by_plan(self, plan: _NumbaPlan, pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict:
        """The numba forward (entropy, selection and grouping in one kernel call), values checked by the kernel."""
        layout, channels_last = plan.layout, plan.channels_last
        try:
            status, *outputs = plan.kernel(pixels, channels_last, *plan.head, mean, std, *plan.tail,
                                           self._cpu_thresholds(), pixels.reshape(-1), plan.strides, layout.row_offsets)
        except SystemError as error:
            status = numba_failure(error)
        if status != -1:
            raise_for_status(status, True, plan.head)
        batch, channels = (pixels.shape[0], pixels.shape[3]) if channels_last else pixels.shape[:2]
        return plan.unpack(batch, channels, plan.sizes, self.base_patch_size, layout, *outputs)

    def _threshold_entry(self, device) -> tuple:
        """``(values, float32 (S,) tensor on device, its numpy array where the device is the CPU)``: entry s of the
        tensor is scale s's threshold (entry 0 unused). Made once per setting and device, and checked then (the
        list may have been changed in place)."""
        device = str(device)
        key = (tuple(self._thresholds), self.num_scales, self._pad_value)
        entry = self._threshold_cache.get(device)
        if entry is None or entry[0] != key:
            checked = check_thresholds(self._thresholds, self.num_scales)
            _check_border_rule(checked, self._pad_value)
            values = torch.tensor([0.0, *checked], dtype=torch.float32, device=device)
            entry = (key, values, values.numpy() if values.device.type == "cpu" else None)
            self._threshold_cache[device] = entry
        return entry

    def _thresholds_on(self, device) -> torch.Tensor:
        """The thresholds as a float32 ``(S,)`` tensor on ``device`` (``_threshold_entry``)."""
        return self._threshold_entry(device)[1]

    def _cpu_thresholds(self) -> np.ndarray:
        """The thresholds as the numba kernels' float32 numpy array (``_threshold_entry``)."""
        return self._threshold_entry("cpu")[2]

    def _forward_triton(self, images, importance_maps) -> dict:
        """CUDA forward in a handful of launches and one host sync.

        Entropy kernel per scale into one flat buffer (with the input check folded into the scale-0
        kernel), one selection kernel for every scale's mask, per-image slots and counts, one copy of the
        counts to the host, one copy of the packing offsets back, and one grouping kernel per scale that
        writes the patches, their boxes, the packed boxes and labels, and (scale 0) the class tokens.
        """
        from ._entropy_cuda import entropy_flat_triton, patch_groups_triton, select_triton

        batch, _, height, width = images.shape
        sizes, num_scales, base = self.patch_sizes, self.num_scales, self.base_patch_size
        kernel_checks = importance_maps is None and self._entropy_by_kernel()
        if kernel_checks:
            flat, importance_maps = entropy_flat_triton(
                images, base, num_scales, self.method_options["bins"], self.pad_value,
                (self.unnorm_mean, self.unnorm_std), check_finite=True,
            )
        else:
            if importance_maps is None:
                importance_maps = self._importance_maps(images)
            flat = torch.cat([importance_maps[size].reshape(-1).float() for size in sizes])
        grids = [grid_shape(height, width, size) for size in sizes]
        masks_flat, keep, slots, counts = select_triton(flat, self._thresholds_on(flat.device), batch, *grids[0],
                                                        num_scales)
        counts = counts.cpu().numpy()  # the one host sync
        # NaN / -inf cells of scale 0 mean bad pixels only in maps the kernel made; a caller's maps may hold them.
        for column, word in ((num_scales, "a nan"), (num_scales + 1, "an inf")) if kernel_checks else ():
            bad = np.flatnonzero(counts[:, column])
            if bad.size:
                raise ValueError(
                    f"images must be finite, got {word} value in image {int(bad[0])} of the batch; "
                    "expected normalised pixel values"
                )
        kept = counts[:, :num_scales].astype(np.int64)
        seqlens = kept.sum(1) + 1
        cu_seqlens = np.concatenate([[0], np.cumsum(seqlens)])
        offsets = np.cumsum(kept, 0) - kept  # kept patches of the images before, per scale
        packed_starts = cu_seqlens[:-1, None] + 1 + np.cumsum(kept, 1) - kept  # first token of (image, scale)
        ints = torch.from_numpy(np.concatenate([offsets.T.ravel(), packed_starts.T.ravel(), cu_seqlens])
                                .astype(np.int32)).to(images.device)
        offsets = ints[: batch * num_scales].view(num_scales, batch)
        packed_starts = ints[batch * num_scales : 2 * batch * num_scales].view(num_scales, batch)
        cu = ints[2 * batch * num_scales :]
        token_boxes = torch.empty(int(cu_seqlens[-1]), 4, dtype=torch.int64, device=images.device)
        output_mask = torch.empty(int(cu_seqlens[-1]), dtype=torch.int64, device=images.device)
        out, masks, start = {}, {}, 0
        totals = kept.sum(0).tolist()
        keep_bool = keep.view(torch.bool)
        for scale, (size, (rows, cols)) in enumerate(zip(sizes, grids)):
            cells = slice(start, start + batch * rows * cols)
            start += batch * rows * cols
            keep_scale = keep[cells].view(batch, rows, cols)
            resized, full, boxes = patch_groups_triton(
                images, keep_scale, totals[scale], size, base,
                packed=(token_boxes, output_mask, packed_starts[scale], scale + 1),
                slots=slots[cells], offsets=offsets[scale], class_starts=cu[:-1] if scale == 0 else None,
            )
            out[f"resized_patches_{size}"] = resized
            if full is not None:
                out[f"full_patches_{size}"] = full
            out[f"pos_embed_mask_{size}"] = keep_bool[cells].view(batch, rows * cols)
            out[f"token_boxes_{size}"] = boxes
            masks[size] = masks_flat[cells].view(batch, rows, cols)
        out["masks"] = masks
        out["output_mask"] = output_mask
        out["seqlens"] = seqlens.tolist()
        out["cu_seqlens"] = cu
        out["token_boxes"] = token_boxes
        return out

    def _check_importance_maps(self, maps, images: torch.Tensor) -> None:
        sizes = check_maps(maps, "importance_maps")
        if sizes != self.patch_sizes:
            raise ValueError(f"importance_maps must have the patch sizes {self.patch_sizes} of this tokenizer, "
                             f"got {sizes}")
        expected = (images.shape[0], *grid_shape(*self.image_size, self.base_patch_size))
        got = tuple(maps[sizes[0]].shape)
        if got != expected:
            raise ValueError(f"importance_maps[{sizes[0]}] must have shape {expected} for these images, got {got}")
        for size in sizes:
            if maps[size].device != images.device:
                raise ValueError(f"importance_maps[{size}] is on {maps[size].device}, the images on {images.device}; "
                                 "expected the same device")

    def _packed_boxes(self, groups: dict, batch: int, device) -> torch.Tensor:
        class_boxes = torch.tensor([[0, -1, -1, 0]], device=device).repeat(batch, 1)
        class_boxes[:, 0] = torch.arange(batch, device=device)
        boxes = [class_boxes] + [groups[f"token_boxes_{size}"] for size in self.patch_sizes]
        labels = [torch.full((batch,), CLASS_TOKEN, device=device)] + [
            torch.full((b.shape[0],), scale + 1, device=device) for scale, b in enumerate(boxes[1:])
        ]
        boxes, labels = torch.cat(boxes), torch.cat(labels)
        order = torch.argsort(boxes[:, 0] * (self.num_scales + 2) + labels + 1, stable=True)
        return boxes[order]
