"""A configuration's importance maps: loaded, resized and scored once, then served from the cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..datasets import ImageSource, iter_batches, iter_images, load_dataset
from ..scorers import compute_importance_maps
from .cache import cache_key, load_entry, save_entry, source_fingerprint
from .parameters import dataset_key, run_scorer_options


def list_images(params: dict, built: dict | None = None) -> ImageSource:
    """A validated configuration's images, listed once (a folder is walked here): its data set cut to ``limit``.

    ``built``: data sets already listed, by ``parameters.dataset_key`` (``validate_params``'s ``checked``);
    read, and filled where this one is not in it, so that one caller walks each folder once.
    """
    key = dataset_key(params)
    source = built.get(key) if built is not None else None
    if source is None:
        source = load_dataset(params["dataset"], **params["dataset_options"])
        if built is not None:
            built[key] = source
    items = source.items[: params["limit"]] if params["limit"] else source.items
    return dataclasses.replace(source, items=list(items), skipped=list(source.skipped))


def shard_images(source: ImageSource, shard: tuple[int, int] | None) -> ImageSource:
    """Images ``start:stop`` of a listed configuration (all when ``shard`` is ``None``), with a list of skipped
    images of their own: each shard of a listing made once, with no walk of the folder again."""
    items = source.items if shard is None else source.items[shard[0] : shard[1]]
    return dataclasses.replace(source, items=list(items), skipped=list(source.skipped))


def _source(params: dict, shard: tuple[int, int] | None):
    return shard_images(list_images(params), shard)


def compute_maps(params: dict, progress: bool = False, shard: tuple[int, int] | None = None, source=None):
    """Load, resize and score a configuration's images.

    Parameters
    ----------
    params : dict
        A validated configuration.
    progress : bool
        Show a progress bar while images are decoded.
    shard : (int, int), optional
        Only images ``start:stop`` of the data set (after ``limit``); all when ``None``.
    source : ImageSource, optional
        The configuration's images, already listed (and sharded); listed here when ``None``.

    Returns
    -------
    tuple
        ``(pixels, maps, metas, skipped)``: one entry per image, and the images that could not be read.
    """
    source = source if source is not None else _source(params, shard)
    images = iter_images(source, params["resize"], params["image_size"], params["patch_size"], progress=progress)
    pixels, maps, metas = [], [], []
    for batch, batch_metas in iter_batches(images, params["batch_size"]):
        batch_maps = compute_importance_maps(batch.to(params["device"]), params["method"], params["patch_size"],
                                             params["num_scales"], **run_scorer_options(params))
        for i, meta in enumerate(batch_metas):
            pixels.append(batch[i])
            maps.append({size: scale_map[i].cpu() for size, scale_map in batch_maps.items()})
            metas.append(meta)
    return pixels, maps, metas, source.skipped


def maps_for(params: dict, cache_dir: Path | None, progress: bool = False, shard: tuple[int, int] | None = None,
             source: ImageSource | None = None):
    """Maps from the cache when present and sound, else computed (and stored).

    A folder's key includes its files' fingerprint, so a changed folder gets new maps.

    Parameters
    ----------
    params : dict
        A validated configuration.
    cache_dir : path, optional
        Where maps are cached; no cache when ``None``.
    progress : bool
        Show a progress bar while images are decoded.
    shard : (int, int), optional
        Only images ``start:stop`` of the data set (after ``limit``).
    source : ImageSource, optional
        The shard's images already listed (``shard_images``); listed here when ``None``.

    Returns
    -------
    tuple
        ``compute_maps``'s tuple, a cache hit flag and the cache key (``None`` without a cache), which the
        records keep so that a report finds the entry without listing the data set again.
    """
    source = source if source is not None else _source(params, shard)
    key = cache_key(params, shard, source_fingerprint(source)) if cache_dir else None
    path = entry_path(cache_dir, key) if key else None
    if path is not None:
        entry = load_entry(path)
        if entry is not None:
            return (*entry, True, key)
    pixels, maps, metas, skipped = compute_maps(params, progress, shard, source)
    if path is not None and pixels:
        save_entry(path, pixels, maps, metas, skipped)
    return pixels, maps, metas, skipped, False, key


def entry_path(cache_dir: Path, key: str) -> Path:
    """The cache entry of key ``key`` (``cache_key``) in ``cache_dir``."""
    return Path(cache_dir) / f"{key}.npz"
