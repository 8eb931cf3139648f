"""``apt-research visualize``: the seed's output layout for one image, written atomically.

    OUT/<image>/01_heatmaps/importance_map_scale_{ps}.png
    OUT/<image>/02_patches_grid/patches_visualization.jpg
    OUT/<image>/03_original_resized/original_image.jpg, resized_image.jpg
    OUT/<image>/04_reconstruction/reconstruction.png
    OUT/<image>/summary.json
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from . import figures
from ._validation import check_thresholds
from .analysis import fidelity, reconstruct, token_record
from .datasets import RESIZE_POLICIES, resize_image
from .scorers import compute_importance_maps, scorer_options
from .selection import select_patches_by_threshold


@dataclass
class VisualizeConfig:
    image_size: int = 336
    resize: str = "short_side"
    patch_size: int = 16
    num_scales: int = 3
    thresholds: list[float] = field(default_factory=lambda: [5.75, 4.0])
    method: str = "entropy"
    bins: int = 512
    device: str = "cpu"

    def check(self) -> "VisualizeConfig":
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"--resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        self.thresholds = check_thresholds(self.thresholds, self.num_scales, "--thresholds")
        scorer_options(self.method)
        return self

    def scorer_options(self) -> dict:
        return {"bins": self.bins} if self.method == "entropy" else {}


def analyse(pixels: torch.Tensor, config: VisualizeConfig):
    """Resize, score, select, reconstruct one ``(3, H, W)`` image; returns everything the figures need."""
    resized = resize_image(pixels, config.resize, config.image_size, config.patch_size)[None].to(config.device)
    maps = compute_importance_maps(resized, config.method, config.patch_size, config.num_scales,
                                   **config.scorer_options())
    masks = select_patches_by_threshold(maps, config.thresholds)
    recon = reconstruct(resized, masks, config.patch_size)
    metrics = fidelity(resized[0], recon[0])
    return resized, maps, masks, recon, metrics


def _json_number(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_visualization(pixels: torch.Tensor, meta: dict, out_dir: Path, config: VisualizeConfig) -> Path:
    """Write the layout for one image into ``out_dir`` (replaced whole, never left half-written)."""
    resized, maps, masks, recon, metrics = analyse(pixels, config)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        label = "entropy (bits)" if config.method == "entropy" else f"{config.method} score"
        for size in sorted(maps):
            figure = figures.plot_heatmaps({size: maps[size]}, label=label)
            figures.save_figure(figure, staging / "01_heatmaps" / f"importance_map_scale_{size}.png")
            plt.close(figure)
        for name, figure in [
            ("02_patches_grid/patches_visualization.jpg", figures.plot_patch_grid(resized, masks)),
            ("03_original_resized/original_image.jpg", figures.plot_image(pixels, "original")),
            ("03_original_resized/resized_image.jpg", figures.plot_image(resized[0], "resized")),
            ("04_reconstruction/reconstruction.png",
             figures.plot_image(recon[0], f"PSNR {metrics['psnr']:.1f} dB, SSIM {metrics['ssim']:.3f}")),
        ]:
            figures.save_figure(figure, staging / name)
            plt.close(figure)
        summary = {
            "image": meta,
            "image_size": list(resized.shape[-2:]),
            **token_record(masks, 0),
            "psnr": _json_number(metrics["psnr"]),
            "ssim": metrics["ssim"],
            "parameters": asdict(config),
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir
