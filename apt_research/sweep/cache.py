"""Cached importance maps: computed once per key, stored as ``.npz`` without pickle.

The maps depend on the data set, resize policy, image size, scorer and its
options, base patch, scales and bins, never on thresholds: a threshold axis then
costs selection only. Each entry also holds the resized pixels (for the
reconstruction) and the images' metadata (as JSON text).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path

MAP_KEYS = ("dataset", "dataset_options", "resize", "image_size", "patch_size", "num_scales", "method",
            "method_options", "limit")


def cache_key(params: dict, shard: tuple[int, int] | None = None) -> str:
    """Hash of what the maps depend on (bins only for the entropy scorer; the shard of images when given)."""
    fields = {key: params[key] for key in MAP_KEYS}
    if params["method"] == "entropy":
        fields["bins"] = params["bins"]
    if shard is not None:
        fields["shard"] = list(shard)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def save_entry(path: Path, pixels: list[torch.Tensor], maps: list[dict[int, torch.Tensor]], metas: list[dict]) -> None:
    """Write one cache entry atomically (temporary file, then rename)."""
    arrays = {"metas": np.array(json.dumps(metas, default=str))}
    for i, (image, image_maps) in enumerate(zip(pixels, maps)):
        arrays[f"pixels_{i}"] = image.cpu().numpy().astype(np.float32)
        for size, scale_map in image_maps.items():
            arrays[f"map_{i}_{size}"] = scale_map.cpu().numpy().astype(np.float32)
    with atomic_path(path) as temporary:
        np.savez(temporary, **arrays)


def load_entry(path: Path):
    """``(pixels, maps, metas)`` of a cache entry; ``None`` if it does not exist."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        metas = json.loads(str(data["metas"]))
        pixels, maps = [], []
        for i in range(len(metas)):
            pixels.append(torch.from_numpy(data[f"pixels_{i}"]))
            prefix = f"map_{i}_"
            maps.append({int(k[len(prefix):]): torch.from_numpy(data[k]) for k in data.files if k.startswith(prefix)})
    return pixels, maps, metas
