"""A configuration's importance maps: loaded, resized and scored once, then served from the cache."""

from __future__ import annotations

from pathlib import Path

from ..datasets import iter_batches, iter_images, load_dataset
from ..scorers import compute_importance_maps
from .cache import cache_key, load_entry, save_entry, source_fingerprint


def scorer_options(params: dict) -> dict:
    """The scorer's keyword options of a configuration (``bins`` joins them for the entropy scorer)."""
    options = dict(params["method_options"])
    if params["method"] == "entropy":
        options["bins"] = params["bins"]
    return options


def _source(params: dict, shard: tuple[int, int] | None):
    source = load_dataset(params["dataset"], **params["dataset_options"])
    if params["limit"]:
        source.items = source.items[: params["limit"]]
    if shard is not None:
        source.items = source.items[shard[0] : shard[1]]
    return source


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
                                             params["num_scales"], **scorer_options(params))
        for i, meta in enumerate(batch_metas):
            pixels.append(batch[i])
            maps.append({size: scale_map[i].cpu() for size, scale_map in batch_maps.items()})
            metas.append(meta)
    return pixels, maps, metas, source.skipped


def maps_for(params: dict, cache_dir: Path | None, progress: bool = False, shard: tuple[int, int] | None = None):
    """Maps from the cache when present and sound, else computed (and stored): ``compute_maps``'s tuple and a
    cache hit flag. A folder's key includes its files' fingerprint, so a changed folder gets new maps."""
    source = _source(params, shard)
    path = Path(cache_dir) / f"{cache_key(params, shard, source_fingerprint(source))}.npz" if cache_dir else None
    if path is not None:
        entry = load_entry(path)
        if entry is not None:
            return (*entry, True)
    pixels, maps, metas, skipped = compute_maps(params, progress, shard, source)
    if path is not None and pixels:
        save_entry(path, pixels, maps, metas, skipped)
    return pixels, maps, metas, skipped, False
