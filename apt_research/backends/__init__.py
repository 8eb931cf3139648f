"""The backends that compute the contract, and the one function that decides which runs (``choose``).

Three backends compute the same numbers (``docs/contract.md``; the tests hold each to the slow reference):

- ``torch_backend``: plain torch on any device; the contract written out, the fallback, and the only path
  autograd follows.
- ``numba_backend``: CPU kernels (entropy, selection, grouping and packing in one call), compiled once per
  machine into a verified cache (``docs/kernels.md``).
- ``triton_backend``: CUDA kernels, a forward in a handful of launches and one host sync.

Each offers the entropy maps and a forward (masks, patch groups and the packed sequence) for a tokenizer's
settings. ``choose`` looks at the images (device, dtype, autograd), the scorer, the ``backend`` option and
any maps given, and returns a ``Route``; ``PatchTokenizer`` and the public functions follow it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BACKENDS = ("auto", "numba", "triton", "torch")
"""The values of the entropy scorer's ``backend`` option."""


def triton_available() -> bool:
    """Whether the Triton kernels can be used (triton importable; it ships with CUDA builds of torch)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def numba_available() -> bool:
    """Whether the CPU kernels can be used (numba importable)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def needs_grad(images: torch.Tensor) -> bool:
    """Whether autograd follows ``images``: then the patches are cut with differentiable torch indexing."""
    return images.requires_grad and torch.is_grad_enabled()


@dataclass(frozen=True)
class Route:
    """Which backend does each step for one call.

    maps : {"numba", "triton", "scorer"}
        ``"numba"`` / ``"triton"``: the fused entropy kernel scores the images and checks their values on the
        way (no pass of its own over the batch); ``"scorer"``: the scorer registry (any scorer, any backend
        option), after a separate check of the values.
    forward : {"numba", "triton", "torch"}
        Who selects, groups and packs: the CPU kernel (float32 images and maps), the CUDA kernels, or torch
        selection followed by ``grouping``.
    grouping : {"numba", "triton", "torch"}
        Who cuts the kept patches when they are cut on their own (``patch_groups``, and a torch forward).
    """

    maps: str
    forward: str
    grouping: str

    @property
    def kernel_checks(self) -> bool:
        """Whether the maps' kernel checks the images' values (so the caller does not)."""
        return self.maps != "scorer"


def entropy_backend(images: torch.Tensor, backend: str) -> str:
    """The backend that computes entropy maps of ``images`` for the option ``backend`` ("auto" resolved).

    Raises
    ------
    ValueError
        ``backend`` names a kernel for another device than the images'.
    """
    device = images.device.type
    if backend == "auto":
        if device == "cpu":
            return "numba" if numba_available() else "torch"
        return "triton" if device == "cuda" and triton_available() else "torch"
    if backend == "triton" and device != "cuda":
        raise ValueError(f"backend 'triton' needs CUDA tensors, got images on {images.device}")
    if backend == "numba" and device != "cpu":
        raise ValueError(f"backend 'numba' needs CPU tensors, got images on {images.device}")
    return backend


def choose(images: torch.Tensor, *, entropy: bool = False, backend: str = "auto", maps=None) -> Route:
    """The ``Route`` for a tokenizer call on ``images``: the one place a backend is chosen.

    Parameters
    ----------
    images : Tensor
        The batch (checked by the caller).
    entropy : bool
        Whether the scorer is the built-in entropy (the only one with kernels).
    backend : str
        The entropy scorer's ``backend`` option (one of ``BACKENDS``).
    maps : dict[int, Tensor], optional
        Importance maps the caller gives; then no maps are computed, and the CPU kernel forward needs them
        float32.
    """
    device, grad = images.device.type, needs_grad(images)
    if device == "cuda" and triton_available() and not grad:
        kernel = entropy and maps is None and backend in ("auto", "triton")
        return Route("triton" if kernel else "scorer", "triton", "triton")
    kernel = entropy and maps is None and device == "cpu" and numba_available() and backend in ("auto", "numba")
    copies = device == "cpu" and images.dtype == torch.float32 and numba_available() and not grad
    grouping = "numba" if copies else "torch"
    float_maps = maps is None or all(scale_map.dtype == torch.float32 for scale_map in maps.values())
    return Route("numba" if kernel else "scorer", "numba" if copies and float_maps else "torch", grouping)


def entropy_maps(images, patch_size, num_scales, bins, pad_value, backend="auto", denormalize=None,
                 check_finite=False) -> dict[int, torch.Tensor]:
    """Entropy maps by the backend ``entropy_backend`` picks, arguments unchecked (``entropy`` checks them).

    ``check_finite``: the numba kernel reports NaN / inf pixels (raising ``ValueError``) instead of the caller
    making a pass over the batch first; the caller asks for it only where numba runs.
    """
    images = images.detach()
    chosen = entropy_backend(images, backend)
    if chosen == "numba":
        from .numba_backend import entropy_maps as numba_maps

        return numba_maps(images, patch_size, num_scales, bins, pad_value, denormalize, check_finite)
    if chosen == "triton":
        from .triton_backend import entropy_maps as maps
    else:
        from .torch_backend import entropy_maps as maps
    return maps(images, patch_size, num_scales, bins, pad_value, denormalize)


def patch_groups(images: torch.Tensor, masks: dict[int, torch.Tensor], base: int) -> dict[str, torch.Tensor]:
    """Each scale's kept patches, cut by the backend ``choose`` picks for ``images`` (see ``tokenizer.patch_groups``)."""
    grouping = choose(images, maps=masks).grouping
    if grouping == "triton":
        from .triton_backend import patch_groups as group
    elif grouping == "numba":
        from .numba_backend import patch_groups as group
    else:
        from .torch_backend import patch_groups as group
    return group(images, masks, base)
