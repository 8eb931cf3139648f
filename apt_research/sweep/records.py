"""A run's records: one row per image per threshold setting (tokens, retention, fidelity, cost)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from ..analysis import entropy_statistics, fidelity, reconstruct, token_record
from ..models.costmodel import vit_flops
from ..selection import select_patches_by_threshold
from ..models.vit import VIT_CONFIGS


def threshold_label(thresholds) -> str:
    """A threshold setting as text that tells every two distinct settings apart: each number's shortest exact
    form (``repr``; ``7.0`` as ``7``), comma-separated.

    >>> threshold_label([7.0, 7.000001, 7.0000004])
    '7,7.000001,7.0000004'
    """
    return ",".join(repr(float(t)).removesuffix(".0") for t in thresholds)


def image_columns(image: torch.Tensor, image_maps: dict, meta: dict) -> dict:
    """The columns of an image's records that no threshold changes: its names, sizes and score statistics."""
    return {
        "image": meta["name"],
        "label": meta.get("label"),
        "source": meta.get("source"),
        "original_height": meta.get("original_height"),
        "original_width": meta.get("original_width"),
        "height": int(image.shape[-2]),
        "width": int(image.shape[-1]),
        **entropy_statistics({size: scale_map[None] for size, scale_map in image_maps.items()}, 0),
    }


def threshold_records(params: dict, thresholds: list[float], pixels, maps, columns) -> list[dict]:
    """One record per image for one threshold setting: tokens, retention, PSNR/SSIM, time.

    ``columns``: each image's ``image_columns``, computed once for all threshold settings. Images are
    processed in worker threads (the metrics' filters release the GIL).
    """

    def record(item):
        image, image_maps, image_row = item
        start = time.perf_counter()
        batched = {size: scale_map[None] for size, scale_map in image_maps.items()}
        masks = select_patches_by_threshold(batched, thresholds)
        recon = reconstruct(image[None], masks, params["patch_size"])
        row = {
            **image_row,
            "thresholds": threshold_label(thresholds),
            **{f"threshold_{s + 1}": t for s, t in enumerate(thresholds)},
            **token_record(masks, 0),
            **fidelity(image, recon[0]),
        }
        for model in VIT_CONFIGS:
            row[f"gflops_apt_{model}"] = float(vit_flops(row["tokens_total"] + 1, model, params["patch_size"])) / 1e9
            row[f"gflops_uniform_{model}"] = float(vit_flops(row["tokens_base_grid"] + 1, model,
                                                             params["patch_size"])) / 1e9
        row["time_s"] = time.perf_counter() - start
        return row

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(record, zip(pixels, maps, columns)))
