"""The exploration notebook's logic: one image's maps cached, selection redone per threshold, ipywidgets controls.

``Explorer`` holds one image and its settings. Its importance maps are computed
only when the image or a setting they depend on changes (``map_computations``
counts it); a threshold change costs selection, reconstruction, PSNR/SSIM and
one redraw of the patch grid. ``explore_widget`` puts controls for image,
scorer, scales, one threshold per scale and bins around an ``Explorer``.
"""

from __future__ import annotations

import dataclasses
import html
import io
import math

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from . import figures
from ..analysis import fidelity, reconstruct, token_record
from ..contract import DEFAULT_PAD_VALUE
from ..datasets import SKIMAGE_NAMES, SYNTHETIC_KINDS, read_image_file, resize_image, skimage_dataset, synthetic_image
from ..scorers import SCORERS, compute_importance_maps, takes_bins
from ..selection import base_grid_tokens, select_patches_by_threshold, token_counts
from .visualize import VisualizeConfig

BIN_CHOICES = (16, 32, 64, 128, 256, 512, 1024)


def load_one(image: str, synthetic_size: int = 256) -> tuple[torch.Tensor, dict]:
    """``(pixels (3, H, W) float32, metadata)`` of a file path, ``skimage:NAME`` or ``synthetic:KIND``."""
    if image.startswith("skimage:"):
        source = skimage_dataset([image.split(":", 1)[1]])
        array, meta = source.loader(source.items[0])
    elif image.startswith("synthetic:"):
        kind = image.split(":", 1)[1]
        if kind not in SYNTHETIC_KINDS:
            raise ValueError(f"image 'synthetic:KIND' needs KIND in {SYNTHETIC_KINDS}, got {kind!r}")
        array, meta = synthetic_image(kind, synthetic_size, 0), {"name": kind, "source": f"synthetic:{kind}"}
    else:
        array, meta = read_image_file(image), {"name": image, "source": image}
    return torch.from_numpy(array).permute(2, 0, 1).float(), meta


def threshold_curve(maps: dict[int, torch.Tensor], values) -> pd.DataFrame:
    """Tokens and retention per image when every scale above 0 uses the same threshold, for each value."""
    rows = []
    scales = len(maps)
    for value in values:
        masks = select_patches_by_threshold(maps, [float(value)] * (scales - 1))
        counts = token_counts(masks)
        for index, count in enumerate(counts.tolist()):
            rows.append({"image": index, "threshold": float(value), "tokens": count,
                         "retention": count / base_grid_tokens(masks)})
    return pd.DataFrame(rows)


def _resized_thresholds(thresholds: list[float], num_scales: int) -> list[float]:
    """``thresholds`` cut or extended (repeating the last, or 5.0) to ``num_scales - 1`` entries."""
    wanted = max(num_scales - 1, 0)
    last = thresholds[-1] if thresholds else 5.0
    return (list(thresholds) + [last] * wanted)[:wanted]


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _full_masks(maps: dict[int, torch.Tensor], keep: int) -> dict[int, torch.Tensor]:
    """Masks that keep every patch of scale ``keep`` and none of the others."""
    return {size: torch.full(scale_map.shape, size == keep) for size, scale_map in maps.items()}


def _rgb(pixels: torch.Tensor) -> torch.Tensor:
    """``(..., C, H, W)`` pixels in [0, 255] as ``(..., H, W, C)`` uint8."""
    return pixels.clamp(0, 255).round().to(torch.uint8).movedim(-3, -1).contiguous()


class _Layers:
    """What a threshold change needs from the maps, computed once per maps.

    ``stacked`` ``(S + 1, C, H, W)``: each scale's reconstruction of every patch, then zeros (pixels no
    kept patch covers); ``edges`` ``(S + 1, H, W)``: each scale's patch outlines, then none; ``cells``:
    for each scale, the index of the patch holding each base-grid cell (rows, columns).
    """

    def __init__(self, resized: torch.Tensor, maps: dict[int, torch.Tensor], base: int):
        self.sizes = sorted(maps)
        height, width = resized.shape[-2:]
        rows, cols = maps[base].shape[-2:]
        per_scale = [reconstruct(resized, _full_masks(maps, size), base)[0] for size in self.sizes]
        self.stacked = torch.stack(per_scale + [torch.zeros_like(per_scale[0])])
        self.stacked_rgb = _rgb(self.stacked)
        self.image_rgb = _rgb(resized[0])
        pixel_rows, pixel_cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
        self.edges = torch.stack([(pixel_rows % size == 0) | (pixel_rows % size == size - 1)
                                  | (pixel_cols % size == 0) | (pixel_cols % size == size - 1) for size in self.sizes]
                                 + [torch.zeros(height, width, dtype=torch.bool)])
        self.cells = {size: (torch.arange(rows) * base // size, torch.arange(cols) * base // size) for size in self.sizes}
        self.pixel_cells = (pixel_rows // base, pixel_cols // base)

    def labels(self, masks: dict[int, torch.Tensor]) -> torch.Tensor:
        """``(H, W)`` index of the scale whose kept patch covers each pixel; ``S`` where none does."""
        base_rows, base_cols = self.cells[self.sizes[0]]
        label = torch.full((len(base_rows), len(base_cols)), len(self.sizes), dtype=torch.long)
        for scale, size in enumerate(self.sizes):
            rows, cols = self.cells[size]
            label[masks[size][0].bool()[rows][:, cols]] = scale
        return label[self.pixel_cells[0], self.pixel_cells[1]]

    def reconstruction(self, labels: torch.Tensor) -> torch.Tensor:
        """``(1, C, H, W)``: each pixel from the reconstruction of the scale that covers it (equals ``reconstruct``)."""
        index = labels[None, None].expand(1, self.stacked.shape[1], *labels.shape)
        return self.stacked.gather(0, index)

    def reconstruction_rgb(self, labels: torch.Tensor) -> torch.Tensor:
        """``(H, W, 3)`` uint8 of ``reconstruction(labels)``."""
        index = labels[None, :, :, None].expand(1, *labels.shape, self.stacked_rgb.shape[-1])
        return self.stacked_rgb.gather(0, index)[0]

    def outlines(self, labels: torch.Tensor) -> torch.Tensor:
        """``(H, W)`` bool: pixels on the outline of the kept patch that covers them."""
        return self.edges.gather(0, labels[None])[0]


class Explorer:
    """One image under APT, for interactive use: maps cached, everything else recomputed on demand.

    Parameters
    ----------
    image : str
        A file path, ``skimage:NAME`` or ``synthetic:KIND``.
    config : VisualizeConfig, optional
        Image size, resize policy, base patch, scales, thresholds, scorer, bins and device
        (``apt-research visualize``'s settings); its defaults otherwise.

    Attributes
    ----------
    map_computations : int
        How many times the importance maps were computed: only the image and the settings the maps
        depend on (everything but the thresholds) make it grow.

    Notes
    -----
    With the maps, each scale's reconstruction of every patch is kept, so that the
    reconstruction of a selection is a per-pixel choice among them (equal to
    ``analysis.reconstruct``, since kept patches do not overlap): a threshold change
    costs selection, that choice, PSNR/SSIM and one image encoding.
    """

    def __init__(self, image: str = "skimage:astronaut", config: VisualizeConfig | None = None):
        self.map_computations = 0
        self._image, self._config = image, (config or VisualizeConfig()).check()
        self._pixels, self.meta = load_one(image)
        self._maps_key = None
        self._scored_state = None
        self._selection = None

    @property
    def image(self) -> str:
        return self._image

    @property
    def config(self) -> VisualizeConfig:
        return self._config

    def update(self, image: str | None = None, **settings) -> "Explorer":
        """Change the image and/or any ``VisualizeConfig`` field; returns ``self``.

        A change of ``num_scales`` without ``thresholds`` cuts the thresholds, or extends them by
        repeating the last. Invalid settings raise and leave the explorer as it was.
        """
        unknown = set(settings) - {field.name for field in dataclasses.fields(VisualizeConfig)}
        if unknown:
            raise TypeError(f"update() got unknown settings {sorted(unknown)}; expected fields of VisualizeConfig")
        if "num_scales" in settings and "thresholds" not in settings:
            settings["thresholds"] = _resized_thresholds(self._config.thresholds, settings["num_scales"])
        config = dataclasses.replace(self._config, **settings).check()
        if image is not None and image != self._image:
            self._pixels, self.meta = load_one(image)
            self._image, self._maps_key = image, None
        self._config, self._selection = config, None
        return self

    def _map_key(self) -> tuple:
        return (self._image, *(value for name, value in sorted(dataclasses.asdict(self._config).items())
                               if name != "thresholds"))

    @property
    def resized(self) -> torch.Tensor:
        """The resized image ``(1, 3, H, W)`` the maps are computed on."""
        return self._scored()[0]

    @property
    def maps(self) -> dict[int, torch.Tensor]:
        """``{patch_size: (1, h, w)}`` score maps, computed when the image or a map setting changed."""
        return self._scored()[1]

    def _scored(self):
        """``(resized, maps, per-scale reconstructions)``, recomputed when the map key changed."""
        if self._maps_key != self._map_key():
            config = self._config
            resized = resize_image(self._pixels, config.resize, config.image_size, config.patch_size)[None]
            maps = compute_importance_maps(resized.to(config.device), config.method, config.patch_size,
                                           config.num_scales, **config.scorer_options())
            maps = {size: scale_map.cpu() for size, scale_map in maps.items()}
            self._scored_state = resized, maps, _Layers(resized, maps, config.patch_size)
            self._maps_key = self._map_key()
            self.map_computations += 1
        return self._scored_state

    def selection(self) -> dict:
        """Masks, reconstruction, token record and PSNR/SSIM for the current thresholds (cached until a change)."""
        if self._selection is None:
            resized, maps, layers = self._scored()
            masks = select_patches_by_threshold(maps, self._config.thresholds)
            labels = layers.labels(masks)
            recon = layers.reconstruction(labels)
            self._selection = {"masks": masks, "labels": labels, "reconstruction": recon, **token_record(masks, 0),
                               **fidelity(resized[0], recon[0])}
        return self._selection

    def score_range(self) -> tuple[float, float]:
        """Smallest and largest score of the maps (padded border patches left out): the threshold sliders' range."""
        values = torch.cat([scale_map[scale_map < DEFAULT_PAD_VALUE].flatten() for scale_map in self.maps.values()])
        finite = values[torch.isfinite(values)]
        if finite.numel() == 0:
            return 0.0, 1.0
        low, high = float(finite.min()), float(finite.max())
        return (low, high) if high > low else (low, low + 1.0)

    def heatmap_figure(self, dpi: int = 80) -> Figure:
        """Every scale's heatmap side by side (high scores dark red, colour bar in bits for entropy)."""
        maps = self.maps
        label = "entropy (bits)" if self._config.method == "entropy" else f"{self._config.method} score"
        figure = Figure(figsize=(figures.TWO_COLUMN_WIDTH_IN, figures.TWO_COLUMN_WIDTH_IN / max(len(maps), 2) * 0.9),
                        dpi=dpi, layout="constrained")
        for ax, size in zip(figure.subplots(1, len(maps), squeeze=False)[0], sorted(maps)):
            figures.plot_heatmap(maps[size][0], size, DEFAULT_PAD_VALUE, ax=ax, label=label)
        return figure

    def selection_image(self) -> np.ndarray:
        """``(H, 2W + gap, 3)`` uint8: the patch grid (kept patches outlined in their scale's colour) and the reconstruction."""
        chosen = self.selection()
        layers = self._scored()[2]
        grid = layers.image_rgb.clone()
        palette = torch.tensor([[round(255 * c) for c in figures.SCALE_COLOURS[scale % len(figures.SCALE_COLOURS)]]
                                for scale in range(len(layers.sizes) + 1)], dtype=torch.uint8)
        outline = layers.outlines(chosen["labels"])
        grid[outline] = palette[chosen["labels"][outline]]
        recon = layers.reconstruction_rgb(chosen["labels"])
        gap = torch.full((grid.shape[0], 8, 3), 255, dtype=torch.uint8)
        return torch.cat([grid, gap, recon], dim=1).numpy()

    def selection_png(self) -> bytes:
        """``selection_image`` encoded as PNG (what the widget shows after a threshold change)."""
        buffer = io.BytesIO()
        Image.fromarray(self.selection_image()).save(buffer, format="png", compress_level=1)
        return buffer.getvalue()

    def heatmap_png(self) -> bytes:
        """``heatmap_figure`` encoded as PNG (what the widget shows when the maps change)."""
        return _png(self.heatmap_figure())

    def caption(self) -> str:
        """Token counts per scale, total, retention and PSNR/SSIM of the current selection, as one line of text."""
        chosen = self.selection()
        per_scale = ", ".join(f"{size} px: {int(mask.sum())}" for size, mask in sorted(chosen["masks"].items()))
        psnr = "inf (exact)" if not math.isfinite(chosen["psnr"]) else f"{chosen['psnr']:.2f} dB"
        return (f"{int(chosen['tokens_total'])} tokens ({per_scale}); retention {chosen['retention']:.3f} of "
                f"{int(chosen['tokens_base_grid'])} base patches; PSNR {psnr}, SSIM {chosen['ssim']:.4f}")

    def summary(self) -> dict:
        """Image, settings, tokens per scale, total, retention and PSNR/SSIM as one flat dict."""
        chosen = self.selection()
        return {"image": self._image, **dataclasses.asdict(self._config),
                **{key: value for key, value in chosen.items() if key not in ("masks", "labels", "reconstruction")}}


def explore_widget(explorer: Explorer | None = None):
    """ipywidgets controls around ``explorer``: image, scorer, scales, one threshold per scale, bins.

    The heatmaps are redrawn only when the maps change; a threshold change redraws the patch grid,
    reconstruction, token counts and PSNR/SSIM from the cached maps.

    Returns
    -------
    ipywidgets.VBox
        The controls above the figures; display it in a notebook.
    """
    import ipywidgets as widgets

    explorer = explorer or Explorer()
    config = explorer.config
    style = {"description_width": "7em"}
    image = widgets.Combobox(value=explorer.image, description="image", style=style, ensure_option=False,
                             continuous_update=False,
                             options=[f"skimage:{n}" for n in SKIMAGE_NAMES] + [f"synthetic:{k}" for k in SYNTHETIC_KINDS],
                             placeholder="skimage:NAME, synthetic:KIND or a path",
                             layout=widgets.Layout(width="28em"))
    scorer = widgets.Dropdown(options=sorted(SCORERS), value=config.method, description="scorer", style=style)
    scales = widgets.IntSlider(value=config.num_scales, min=1, max=5, description="scales", style=style,
                               continuous_update=False)
    bins = widgets.Dropdown(options=BIN_CHOICES if config.bins in BIN_CHOICES else sorted({*BIN_CHOICES, config.bins}),
                            value=config.bins, description="bins", style=style,
                            disabled=not takes_bins(config.method))
    thresholds = widgets.VBox()
    heatmaps, grid = widgets.Image(format="png"), widgets.Image(format="png")
    caption, message = widgets.HTML(), widgets.HTML()

    def threshold_sliders():
        low, high = explorer.score_range()
        step = (high - low) / 200
        sliders = []
        for scale, value in enumerate(explorer.config.thresholds, start=1):
            slider = widgets.FloatSlider(value=min(max(value, low), high), min=low, max=high, step=step,
                                         description=f"threshold {scale}", style=style, continuous_update=False,
                                         readout_format=".4g")
            slider.observe(on_threshold, names="value")
            sliders.append(slider)
        explorer.update(thresholds=[slider.value for slider in sliders])
        thresholds.children = sliders

    def draw_selection():
        grid.value = explorer.selection_png()
        caption.value = f"<b>{html.escape(explorer.caption())}</b>"

    def draw_all():
        heatmaps.value = explorer.heatmap_png()
        threshold_sliders()
        draw_selection()

    def report(error: Exception | None):
        message.value = "" if error is None else f"<span style='color:#b00'>{html.escape(f'{type(error).__name__}: {error}')}</span>"

    def on_threshold(_change):
        explorer.update(thresholds=[slider.value for slider in thresholds.children])
        draw_selection()

    def on_maps(_change):
        try:
            explorer.update(image.value, method=scorer.value, num_scales=scales.value, bins=bins.value)
        except (ValueError, TypeError, OSError) as error:
            report(error)
            return
        report(None)
        bins.disabled = not takes_bins(scorer.value)
        draw_all()

    for control in (image, scorer, scales, bins):
        control.observe(on_maps, names="value")
    draw_all()
    return widgets.VBox([widgets.HBox([widgets.VBox([image, scorer, scales, bins]), thresholds]), message,
                         heatmaps, caption, grid])
