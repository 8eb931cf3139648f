"""``apt-research visualize``: the seed's output layout for one image, written atomically.

    OUT/<name>/01_heatmaps/importance_map_scale_{ps}.png
    OUT/<name>/02_patches_grid/patches_visualization.jpg
    OUT/<name>/03_original_resized/original_image.jpg, resized_image.jpg
    OUT/<name>/04_reconstruction/reconstruction.png
    OUT/<name>/summary.json

``<name>`` comes from the image's name through ``output_names``: one plain directory name, never
empty, ``.``, ``..``, hidden, absolute or containing a separator, distinct for distinct images. A
directory is only ever replaced by ``write_visualization`` if ``foreign_content`` finds nothing in it
that this module did not write.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import torch

from . import figures
from .._io import read_marker, write_marker
from .._validation import check_bins, check_device, check_int, check_thresholds
from ..analysis import fidelity, reconstruct, token_record
from ..datasets import RESIZE_POLICIES, resize_image
from ..scorers import compute_importance_maps, options_with_bins, scorer_options
from ..selection import select_patches_by_threshold

WRITTEN_BY = "apt-research visualize"
"""``summary.json["written_by"]``: how ``foreign_content`` recognises a directory this module wrote."""

MAX_NAME_LENGTH = 100
DISPLAY_MAX_SIDE = 1024
"""The original, resized and reconstructed images are shown with their long side at most this many pixels."""

# The smallest side SSIM (scikit-image's default 7 x 7 window) is computed on.
MIN_IMAGE_SIDE = 7

_LAYOUT = re.compile(
    r"summary\.json|01_heatmaps|01_heatmaps/importance_map_scale_\d+\.png|02_patches_grid"
    r"|02_patches_grid/patches_visualization\.jpg|03_original_resized"
    r"|03_original_resized/(original|resized)_image\.jpg|04_reconstruction|04_reconstruction/reconstruction\.png"
    r"|\.apt-research\.json"
)
_UNSAFE = re.compile(r"[^\w.-]")
_EDGE = re.compile(r"^[.-]+|\.+$")


@dataclass
class VisualizeConfig:
    """The parameters of one visualisation; ``check`` validates them, naming the command line option."""

    image_size: int = 336
    resize: str = "short_side"
    patch_size: int = 16
    num_scales: int = 3
    thresholds: list[float] = field(default_factory=lambda: [5.75, 4.0])
    method: str = "entropy"
    bins: int = 512
    device: str = "cpu"
    max_pixels: int = 25_000_000

    def check(self) -> "VisualizeConfig":
        """Validate every field (each error names its ``--option`` and value); returns ``self``."""
        check_int("--patch-size", self.patch_size, 1)
        check_int("--num-scales", self.num_scales, 1)
        check_bins(self.bins, "--bins")
        check_int("--max-pixels", self.max_pixels, 1)
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"--resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        check_int("--image-size", self.image_size, 1)
        if self.resize != "native":
            self.check_side(self.image_size, "--image-size")
            if self.image_size**2 > self.max_pixels:
                raise ValueError(f"--image-size {self.image_size} makes images of at least {self.image_size}^2 "
                                 f"pixels, above --max-pixels {self.max_pixels}")
        self.thresholds = check_thresholds(self.thresholds, self.num_scales, "--thresholds")
        try:
            scorer_options(self.method)
        except ValueError as error:
            raise ValueError(f"--method: {error}") from error
        check_device("--device", self.device)
        return self

    def scorer_options(self) -> dict:
        """The scorer's keyword options: ``bins`` for a scorer that takes it (see ``options_with_bins``)."""
        return options_with_bins(self.method, {}, self.bins)

    def check_side(self, side: int, what: str) -> None:
        """Refuse an analysed short side ``side`` that cannot hold the coarsest patch or the SSIM window."""
        coarsest = self.patch_size * 2 ** (self.num_scales - 1)
        if side < max(coarsest, MIN_IMAGE_SIDE):
            raise ValueError(
                f"{what} must be at least {max(coarsest, MIN_IMAGE_SIDE)} (the coarsest patch, --patch-size * "
                f"2**(--num-scales - 1) = {coarsest} px, and the {MIN_IMAGE_SIDE} px SSIM window), got {side}"
            )


def output_names(keys: Sequence[str]) -> dict[str, str]:
    """One safe, distinct directory name per image name.

    Parameters
    ----------
    keys : sequence of str
        Image names unique among themselves, such as file names (``photo.jpg``) or paths relative to a
        data set's folder (``cats/a.png``); the last suffix (``.png``) is dropped.

    Returns
    -------
    dict
        ``{key: name}``. Folders are joined by ``__``, every character other than a letter, digit,
        ``_``, ``-`` or ``.`` becomes ``_``, as does each leading dot or dash and each trailing dot
        (``..png`` -> ``_``, ``-rf.png`` -> ``_rf``), and an empty name becomes ``image``. Names that
        then coincide, ignoring case (``photo.jpg`` and ``photo.png``, ``a/b.png`` and ``a__b.png``),
        or exceed ``MAX_NAME_LENGTH`` characters get ``+`` and the first 10 hex digits of the key's
        SHA-256; no other name contains ``+``.

    Examples
    --------
    >>> output_names(["a/b.png", "a__b.png", "...png", "cat.jpg"])["cat.jpg"]
    'cat'
    >>> output_names(["...png"])
    {'...png': '__'}
    """
    bases = {}
    for key in keys:
        parts = str(key).split("/")
        stem, dot, suffix = parts[-1].rpartition(".")
        if dot and stem and suffix:
            parts[-1] = stem
        name = "__".join(_EDGE.sub(lambda m: "_" * len(m.group()), _UNSAFE.sub("_", part)) for part in parts)
        bases[key] = name or "image"
    counts: dict[str, int] = {}
    for name in bases.values():
        counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    names = {}
    for key, name in bases.items():
        if counts[name.casefold()] > 1 or len(name) > MAX_NAME_LENGTH:
            digest = hashlib.sha256(str(key).encode("utf-8", "surrogateescape")).hexdigest()[:10]
            name = f"{name[:MAX_NAME_LENGTH - 11]}+{digest}"
        names[key] = name
    return names


def foreign_content(directory, source: str | None = None) -> str | None:
    """Why ``directory`` is not a visualisation this module wrote (of ``source``, when given), or ``None`` if it
    is one.

    It is one if it is a real directory (not a link) whose ``summary.json`` says ``written_by:
    "apt-research visualize"`` and which holds nothing else than the layout's files and folders; with
    ``source``, its summary must name that source (another image of the same output name is not replaced).
    """
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return f"{directory} is not a directory"
    try:
        summary = json.loads((directory / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict) or summary.get("written_by") != WRITTEN_BY:
        return f"{directory} has no summary.json written by {WRITTEN_BY}"
    if source is not None and summary.get("source") != source:
        return f"{directory} holds the visualisation of {summary.get('source')!r}, not of {source!r}"
    return _foreign_files(directory)


def _foreign_files(directory: Path) -> str | None:
    """Why ``directory`` holds something beside the layout's files (a link, another name), or ``None``."""
    for top, folders, files in os.walk(directory):
        for entry in folders + files:
            path = Path(top, entry)
            relative = path.relative_to(directory).as_posix()
            if path.is_symlink() or not _LAYOUT.fullmatch(relative):
                return f"{directory} holds {relative}, which {WRITTEN_BY} does not write"
    return None


def _remove_leftovers(out_dir: Path) -> None:
    """Remove what a killed ``write_visualization`` of ``out_dir`` left beside it: its staging folders
    (``.NAME.tmp-*``) and retired copies (``.NAME.old-*``), each known by our marker (``_io.MARKER``), never by
    its name alone."""
    for path in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*-*"):
        if path.is_symlink() or not path.is_dir():
            continue
        kind = path.name[len(out_dir.name) + 2 :].split("-", 1)[0]
        marked = path / out_dir.name if kind == "old" else path
        if kind == "old" and [entry.name for entry in path.iterdir()] != [out_dir.name]:
            continue
        if kind in ("tmp", "old") and (read_marker(marked) or {}).get("kind") == "visualize":
            shutil.rmtree(path)


def analyse(pixels: torch.Tensor, config: VisualizeConfig):
    """Resize, score, select, reconstruct one ``(3, H, W)`` image; returns everything the figures need.

    With ``resize="native"`` an image too small for ``config.check_side`` is refused (``ValueError``); the
    other policies resize it to ``image_size``, which ``config.check`` bounds.
    """
    if config.resize == "native":
        height, width = pixels.shape[-2:]
        config.check_side(min(height, width), f"--no-resize: the short side of this {height}x{width} image")
    resized = resize_image(pixels, config.resize, config.image_size, config.patch_size)[None].to(config.device)
    maps = compute_importance_maps(resized, config.method, config.patch_size, config.num_scales,
                                   **config.scorer_options())
    masks = select_patches_by_threshold(maps, config.thresholds)
    recon = reconstruct(resized, masks, config.patch_size)
    metrics = fidelity(resized[0], recon[0])
    return resized, maps, masks, recon, metrics


def _json_number(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _display_copy(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` with the long side shrunk to ``DISPLAY_MAX_SIDE`` (antialiased) if it is longer."""
    height, width = pixels.shape[-2:]
    scale = DISPLAY_MAX_SIDE / max(height, width)
    if scale >= 1:
        return pixels
    return resize_image(pixels, "resize", (max(1, round(height * scale)), max(1, round(width * scale))))


def write_visualization(pixels: torch.Tensor, meta: dict, out_dir, config: VisualizeConfig) -> Path:
    """Write the layout for one ``(3, H, W)`` image into ``out_dir``; returns ``out_dir``.

    The files are written under a new temporary directory beside ``out_dir``, which is then renamed
    onto it. An existing ``out_dir`` is replaced only if ``foreign_content`` finds it to be an earlier
    visualisation and nothing else (else ``FileExistsError``); nothing else beside it is touched.
    """
    out_dir = Path(out_dir)
    if out_dir.name in ("", ".", ".."):
        raise ValueError(f"out_dir must end in a directory name, got {str(out_dir)!r}")
    if os.path.lexists(out_dir) and (reason := foreign_content(out_dir, meta.get("source"))):
        raise FileExistsError(f"will not replace {out_dir}: {reason}")
    resized, maps, masks, recon, metrics = analyse(pixels, config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    write_marker(staging, "visualize")  # first: a folder data set skips it, and leftovers are known as ours
    retired = None
    try:
        label = "entropy (bits)" if config.method == "entropy" else f"{config.method} score"
        for size in sorted(maps):
            figure = figures.plot_heatmaps({size: maps[size]}, label=label)
            figures.save_figure(figure, staging / "01_heatmaps" / f"importance_map_scale_{size}.png")
            plt.close(figure)
        for name, figure in [
            ("02_patches_grid/patches_visualization.jpg", figures.plot_patch_grid(resized, masks)),
            ("03_original_resized/original_image.jpg", figures.plot_image(_display_copy(pixels), "original")),
            ("03_original_resized/resized_image.jpg", figures.plot_image(_display_copy(resized[0]), "resized")),
            ("04_reconstruction/reconstruction.png", figures.plot_image(
                _display_copy(recon[0]), f"PSNR {metrics['psnr']:.1f} dB, SSIM {metrics['ssim']:.3f}")),
        ]:
            figures.save_figure(figure, staging / name)
            plt.close(figure)
        summary = {
            "written_by": WRITTEN_BY,
            "source": meta.get("source"),
            "image": meta,
            "image_size": list(resized.shape[-2:]),
            **token_record(masks, 0),
            "psnr": _json_number(metrics["psnr"]),
            "ssim": metrics["ssim"],
            "parameters": asdict(config),
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if os.path.lexists(out_dir):
            if reason := foreign_content(out_dir, meta.get("source")):  # again: something may have been added
                raise FileExistsError(f"will not replace {out_dir}: {reason}")
            retired = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
            out_dir.rename(retired / out_dir.name)
            try:
                staging.rename(out_dir)
            except OSError:
                (retired / out_dir.name).rename(out_dir)
                raise
        else:
            staging.rename(out_dir)
    finally:
        for directory in (staging, retired):
            if directory is not None and directory.exists():
                shutil.rmtree(directory)
    return out_dir
