"""Cached importance maps: computed once per key, stored as ``.npz`` without pickle.

The maps depend on the parameters declared ``maps=True`` in ``parameters.Parameters``
(``MAP_KEYS``: data set, resize policy, image size, scorer and its options, base patch,
scales, bins for the entropy scorer, limit) and, for a folder, on its contents (each image
file's path and a hash of its bytes: a file replaced by another of the same size and time is
seen) and the decoder's rules (``datasets.DECODER_VERSION``): never on thresholds, so a
threshold axis costs selection only, and a folder that changed gets new maps. Each entry also holds the resized
pixels (for the reconstruction), the images' metadata and the skipped images (as JSON text),
and a SHA-256 checksum of all that: an entry that cannot be read or whose checksum does not
match is recomputed, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path
from ..datasets import DECODER_VERSION, ImageSource
from ..scorers import takes_bins
from .parameters import MAP_KEYS


def source_fingerprint(source: ImageSource) -> str | None:
    """Hash of the path and the bytes of every file a data set reads, and of the decoder's rules; ``None`` if it
    reads no file. A file that cannot be read hashes as its error (it is skipped when decoded)."""
    files = [item for item in source.items if isinstance(item, Path)]
    if not files:
        return None
    digest = hashlib.sha256(f"decoder {DECODER_VERSION}\n".encode())
    for path in files:
        digest.update(f"{path}\0".encode())
        try:
            with open(path, "rb") as file:
                digest.update(hashlib.sha256(file.read()).digest())
        except OSError as error:
            digest.update(f"unreadable {error.errno}".encode())
        digest.update(b"\n")
    return digest.hexdigest()


def cache_key(params: dict, shard: tuple[int, int] | None = None, fingerprint: str | None = None) -> str:
    """Hash of what the maps depend on: ``MAP_KEYS`` (bins only for a scorer that takes it), the shard of images
    and the data set's file fingerprint (``source_fingerprint``) when given."""
    fields = {key: params[key] for key in MAP_KEYS if key != "bins" or takes_bins(params["method"])}
    if shard is not None:
        fields["shard"] = list(shard)
    if fingerprint is not None:
        fields["files"] = fingerprint
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_entry(path: Path, pixels: list[torch.Tensor], maps: list[dict[int, torch.Tensor]], metas: list[dict],
               skipped: list[dict]) -> None:
    """Write one cache entry, with its checksum, atomically (temporary file, then rename)."""
    arrays = {"metas": np.array(json.dumps(metas, default=str)), "skipped": np.array(json.dumps(skipped))}
    for i, (image, image_maps) in enumerate(zip(pixels, maps)):
        arrays[f"pixels_{i}"] = image.cpu().numpy().astype(np.float32)
        for size, scale_map in image_maps.items():
            arrays[f"map_{i}_{size}"] = scale_map.cpu().numpy().astype(np.float32)
    arrays["checksum"] = np.array(_checksum(arrays))
    with atomic_path(path) as temporary:
        np.savez(temporary, **arrays)


def _read_entry(path: Path):
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if str(arrays.pop("checksum")) != _checksum(arrays):
        raise ValueError("checksum mismatch")
    metas = json.loads(str(arrays["metas"]))
    pixels = [torch.from_numpy(arrays[f"pixels_{i}"]) for i in range(len(metas))]
    maps = [{int(k.rsplit("_", 1)[1]): torch.from_numpy(v) for k, v in arrays.items() if k.startswith(f"map_{i}_")}
            for i in range(len(metas))]
    return pixels, maps, metas, json.loads(str(arrays["skipped"]))


def load_entry(path: Path):
    """``(pixels, maps, metas, skipped)`` of a cache entry; ``None`` if it does not exist or cannot be used.

    An entry that cannot be read (truncated, not an archive, missing arrays) or whose checksum does not
    match its contents is reported with a warning; the caller recomputes and replaces it.
    """
    if not path.exists():
        return None
    try:
        return _read_entry(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"cache entry {path} cannot be used ({type(error).__name__}: {error}); recomputing it",
                      RuntimeWarning, stacklevel=2)
        return None
