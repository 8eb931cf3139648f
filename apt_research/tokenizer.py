"""``PatchTokenizer``: importance maps, masks, patch groups and the packed sequence (``docs/contract.md``).

The tokenizer holds the settings, checks them once, checks each batch, and hands the work to the backend
``backends.choose`` picks (``torch_backend``, ``numba_backend``, ``triton_backend``); it computes nothing
itself. A batch like one it has already checked goes straight to the numba kernels through a kept plan
(``numba_backend.PlanCache``): a data-loader transform calls it once per image.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import backends
from ._validation import (
    check_channel_stats,
    check_extent,
    check_images,
    check_int,
    check_maps,
    check_pad_value,
    check_thresholds,
)
from .backends import numba_backend, torch_backend
from .backends.numba_backend import PlanCache
from .backends.torch_backend import denormalize_pixels, downsample_patches
from .contract import CLASS_TOKEN, DEFAULT_PAD_VALUE, grid_shape, scale_sizes
from .scorers import entropy_scorer, get_scorer, importance_maps_unchecked
from .selection import select_patches_by_threshold

__all__ = ["CLASS_TOKEN", "PatchTokenizer", "downsample_patches", "patch_groups"]


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
    return backends.patch_groups(images, masks, base_patch_size)


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
    mean : sequence of float
        The per-channel mean of the normalisation the input images carry (as
        a ViT expects), 1 or 3 values; undone, times 255, before scoring.
    std : sequence of float
        The per-channel standard deviation of that normalisation, 1 or 3 values.
    method : str
        Registered importance scorer (``entropy``, ``laplacian``, ``upsample_mse``,
        or one added with ``register_scorer``); the maps come from the registry.
    pad_value : float
        Score of padded border patches; at least every threshold, so that they
        are never kept above scale 0 (the border rule).
    **method_options
        Options of the scorer, checked here, e.g. ``bins=512`` for entropy.

    Notes
    -----
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
        self._plans = PlanCache()  # the numba kernels' plans, by the kind of images (numba_backend.PlanCache)

    _CACHES = {"_plans": PlanCache, "_threshold_cache": dict}

    def __getstate__(self) -> dict:
        # The caches hold compiled kernels, views of this process's memory and device copies, and are remade on
        # the first call: a pickled tokenizer (a data-loader worker's copy, a saved model) leaves them out.
        return {**self.__dict__, **{name: make() for name, make in self._CACHES.items()}}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state.pop("_numba_cache", None)  # (a pickle from before the plans; its thresholds an attribute then)
        state.pop("_normalisation_views", None)  # (a pickle from before the PlanCache kept them)
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
        # image, where each Python call and check costs a noticeable part of the kernel's time.
        planned = self._plans.lookup("maps", images, self)
        if planned is None:
            self._check_kind(images)
            route = self._route(images)
            self._check_input(images, values=route.maps != "numba")
            if route.maps != "numba":
                return self._importance_maps(images)
            planned = self._plans.build("maps", images, self)
        return numba_backend.maps_by_plan(*planned)

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
        return masks, torch_backend.output_mask(counts, seqlens, self.num_scales), seqlens

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
        planned = None if importance_maps is not None else self._plans.lookup("forward", images, self)
        if planned is not None:
            return self._finish(numba_backend.forward_by_plan(*planned, self._cpu_thresholds()), images.shape[0])
        self._check_kind(images)
        route = self._route(images, importance_maps)
        # The fused entropy kernels (Triton, numba) check the values themselves: no pass over the batch of
        # their own (and on CUDA no host sync).
        self._check_input(images, values=not route.kernel_checks)
        if importance_maps is not None:
            self._check_importance_maps(importance_maps, images)
        if route.forward == "triton":
            out = self._forward_triton(images, None if route.maps == "triton" else
                                       importance_maps or self._importance_maps(images))
        elif route.forward == "numba" and route.maps == "numba":
            out = numba_backend.forward_by_plan(*self._plans.build("forward", images, self), self._cpu_thresholds())
        else:
            maps = importance_maps or self._importance_maps(images, check_finite=route.kernel_checks)
            out = self._forward_by(route, images, maps)
        return self._finish(out, images.shape[0])

    def _route(self, images: torch.Tensor, importance_maps=None) -> backends.Route:
        """Which backend does each step for ``images`` (``backends.choose``)."""
        return backends.choose(images, entropy=self.scorer.function is entropy_scorer,
                               backend=self.method_options.get("backend", "auto"), maps=importance_maps)

    def _forward_by(self, route: backends.Route, images: torch.Tensor, maps: dict[int, torch.Tensor]) -> dict:
        """The forward from maps: the numba kernel (float32 CPU maps), else torch selection and grouping."""
        if backends.choose(images, maps=maps).forward == "numba":
            return numba_backend.forward(images, maps, self._cpu_thresholds(), self.patch_sizes, self.base_patch_size)
        masks, counts, counts_host = self._select(maps)
        group = numba_backend.patch_groups if route.grouping == "numba" else torch_backend.patch_groups
        return torch_backend.forward(images, masks, counts, counts_host, self.base_patch_size, group)

    def _forward_triton(self, images: torch.Tensor, importance_maps) -> dict:
        """The CUDA forward (``triton_backend.forward``): the entropy kernel scores where ``importance_maps`` is None."""
        from .backends import triton_backend

        return triton_backend.forward(images, importance_maps, sizes=self.patch_sizes, base=self.base_patch_size,
                                      bins=self.method_options.get("bins"), pad_value=self.pad_value,
                                      denormalize=(self.unnorm_mean, self.unnorm_std),
                                      thresholds=self._thresholds_on(images.device))

    def _finish(self, out: dict, batch: int) -> dict:
        """The forward's ``max_seqlen`` and ``retained_frac``."""
        seqlens = out["seqlens"]
        out["max_seqlen"] = max(seqlens)
        height, width = self.image_size
        out["retained_frac"] = sum(seqlens) / (batch * height * width / self.base_patch_size**2)
        return out

    @staticmethod
    def _check_kind(images) -> None:
        """Refuse what is not a strided tensor (sparse, meta, not a tensor) before any other step."""
        if not isinstance(images, torch.Tensor) or images.layout != torch.strided or images.is_meta:
            check_images(images)  # raises what is wrong

    def _importance_maps(self, images: torch.Tensor, check_finite: bool = False) -> dict[int, torch.Tensor]:
        options = {**self.method_options, "check_finite": True} if check_finite else self.method_options
        return importance_maps_unchecked(self.scorer, images, self.base_patch_size, self.num_scales, self.pad_value,
                                         options, denormalize=(self.unnorm_mean, self.unnorm_std))

    def _select(self, importance_maps):
        """Masks, and the kept patches per image and scale ``(B, S)`` on the device and on the host (one sync)."""
        _check_border_rule(self.thresholds, self._pad_value)  # (the list may have been changed in place)
        masks = select_patches_by_threshold(importance_maps, self.thresholds)
        counts = torch.stack([masks[size].flatten(1).sum(1) for size in self.patch_sizes], dim=1).long()
        return masks, counts, counts.cpu()

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
