"""Figures for notebooks and papers: entropy heatmaps, patch grids, reconstructions, panels.

Every function returns a matplotlib ``Figure``; ``save_figure`` writes it as
PDF and PNG atomically, with every legend outside the data. ``paper_style`` sets
one seaborn theme with fonts sized for a paper column; ``figure_size`` gives one-
and two-column sizes; ``dataset_palette`` gives each data set one colour, the same
in every figure drawn with that palette.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .._io import atomic_path  # noqa: E402
from ..contract import DEFAULT_PAD_VALUE  # noqa: E402

COLUMN_WIDTH_IN = 3.35
TWO_COLUMN_WIDTH_IN = 6.9
SCALE_COLOURS = sns.color_palette("colorblind", 6)
DATASET_COLOURS = sns.color_palette("tab10", 10)
BUILTIN_DATASET_COLOURS = {"skimage": DATASET_COLOURS[0], "synthetic": DATASET_COLOURS[1]}
HEATMAP_CMAP = "Reds"


def paper_style() -> None:
    """Seaborn 'paper' theme, white grid, 8-pt fonts, tight PDF fonts (Type 42).

    Also hides the one deprecation seaborn 0.13 triggers in matplotlib >= 3.11 on every box plot
    (it passes ``vert=`` to ``Axes.boxplot``); any other warning still reaches the user.
    """
    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9,
                  rc={"pdf.fonttype": 42, "ps.fonttype": 42, "savefig.dpi": 200, "figure.dpi": 100,
                      "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
                      "ytick.labelsize": 7})
    # seaborn's own call, not the user's: matplotlib attributes the warning to seaborn's module, so a
    # user's own ``vert=`` still warns.
    warnings.filterwarnings("ignore", message="vert: bool was deprecated", category=matplotlib.MatplotlibDeprecationWarning,
                            module=r"seaborn\.")


def figure_size(columns: int = 1, aspect: float = 0.72) -> tuple[float, float]:
    """``(width, height)`` in inches of a figure one or two paper columns wide.

    Parameters
    ----------
    columns : {1, 2}
        1 for one column (3.35 in), 2 for the full text width of a two-column paper (6.9 in).
    aspect : float
        Height over width.
    """
    if columns not in (1, 2):
        raise ValueError(f"columns must be 1 or 2 (paper columns), got {columns!r}")
    if not aspect > 0:
        raise ValueError(f"aspect must be a positive height/width ratio, got {aspect!r}")
    width = COLUMN_WIDTH_IN if columns == 1 else TWO_COLUMN_WIDTH_IN
    return width, width * aspect


def dataset_palette(names) -> dict[str, tuple[float, float, float]]:
    """One colour per data set name: fixed for the bundled sets, distinct within one call.

    The bundled data sets have their own colours; any other name (a folder) gets the colour a hash
    of its name picks, moved to the next free colour when two names of one call would share it. So
    a folder's colour may depend on the other names of the call: make one palette of every data set
    of a report and pass it to each of its figures (``plot_dataset_examples(..., palette=)``,
    seaborn's ``palette=``).

    Parameters
    ----------
    names : iterable of str
        Data set names as the records spell them.

    Returns
    -------
    dict
        ``{name: RGB}``, usable as seaborn's ``palette=``.
    """
    names = list(names)
    palette = {name: BUILTIN_DATASET_COLOURS[name] for name in names if name in BUILTIN_DATASET_COLOURS}
    free = [i for i, colour in enumerate(DATASET_COLOURS) if colour not in palette.values()]
    for name in sorted(set(names) - set(palette)):
        start = zlib.crc32(str(name).encode()) % len(DATASET_COLOURS)
        order = sorted(free, key=lambda i: (i - start) % len(DATASET_COLOURS)) or [start]
        palette[name] = DATASET_COLOURS[order[0]]
        if free:
            free.remove(order[0])
    return palette


def legends_outside(figure) -> None:
    """Move every legend of ``figure`` off the data: right of the last axes of its row.

    A legend of another axes in that row with the same labels as the one kept is removed; one with
    other labels goes below its axes.
    """
    axes = [ax for ax in figure.get_axes() if ax.get_legend() is not None and ax.get_label() != "<colorbar>"]
    for ax in axes:
        row = [other for other in axes if abs(other.get_position().y0 - ax.get_position().y0) < 1e-6]
        rightmost = max(row, key=lambda other: other.get_position().x1)
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        if ax is rightmost:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        elif labels == [text.get_text() for text in rightmost.get_legend().get_texts()]:
            ax.get_legend().remove()
        else:
            sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.25), frameon=False, ncol=2)


def save_figure(figure, path, formats=("pdf", "png"), legends: str = "outside") -> list[Path]:
    """Write ``figure`` to ``path`` with each suffix in ``formats`` (or to ``path`` itself if it has one), atomically.

    ``legends="outside"`` first moves every legend off the data (``legends_outside``); ``"keep"`` leaves them.
    """
    if legends not in ("outside", "keep"):
        raise ValueError(f"legends must be 'outside' or 'keep', got {legends!r}")
    if legends == "outside":
        legends_outside(figure)
    path = Path(path)
    targets = [path] if path.suffix else [path.with_suffix(f".{fmt}") for fmt in formats]
    for target in targets:
        with atomic_path(target) as temporary:
            figure.savefig(temporary, bbox_inches="tight", format=target.suffix[1:].replace("jpg", "jpeg"))
    return targets


def _image_array(pixels: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` pixels in [0, 255] to an ``(H, W, 3)`` uint8 array for imshow."""
    array = pixels.detach().cpu().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def plot_heatmap(scale_map: torch.Tensor, patch_size: int, pad_value: float = DEFAULT_PAD_VALUE, ax=None,
                 label="entropy (bits)"):
    """One scale's ``(h, w)`` score map: high scores dark red, padded border patches grey, colour bar in bits."""
    values = scale_map.detach().cpu().double().numpy()
    values = np.ma.masked_where(values >= pad_value, values)
    figure = ax.figure if ax is not None else plt.figure(figsize=(COLUMN_WIDTH_IN * 0.8, COLUMN_WIDTH_IN * 0.7))
    ax = ax if ax is not None else figure.add_subplot()
    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad="0.6")
    shown = ax.imshow(values, cmap=cmap, interpolation="nearest")
    ax.set_title(f"{patch_size} px patches")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=label)
    return figure


def plot_heatmaps(maps: dict[int, torch.Tensor], index: int = 0, pad_value: float = DEFAULT_PAD_VALUE,
                  label="entropy (bits)"):
    """Heatmaps of every scale of image ``index``, side by side."""
    sizes = sorted(maps)
    figure, axes = plt.subplots(1, len(sizes), figsize=(COLUMN_WIDTH_IN * 0.9 * len(sizes), COLUMN_WIDTH_IN * 0.75),
                                squeeze=False)
    for ax, size in zip(axes[0], sizes):
        plot_heatmap(maps[size][index], size, pad_value, ax=ax, label=label)
    figure.tight_layout()
    return figure


def plot_patch_grid(pixels: torch.Tensor, masks: dict[int, torch.Tensor], index: int = 0, ax=None):
    """The image with every kept patch outlined once, coloured by scale; the legend gives token counts."""
    image = _image_array(pixels[index] if pixels.dim() == 4 else pixels)
    size_in = (max(COLUMN_WIDTH_IN, image.shape[1] / 80), max(COLUMN_WIDTH_IN * image.shape[0] / image.shape[1],
                                                              image.shape[0] / 80))
    figure = ax.figure if ax is not None else plt.figure(figsize=size_in)
    ax = ax if ax is not None else figure.add_subplot()
    ax.imshow(image)
    handles = []
    for scale, size in enumerate(sorted(masks)):
        cells = masks[size][index].nonzero().cpu().numpy()
        colour = SCALE_COLOURS[scale % len(SCALE_COLOURS)]
        boxes = [Rectangle((x * size - 0.5, y * size - 0.5), size, size) for y, x in cells]
        ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=colour, linewidth=0.8))
        handles.append(Rectangle((0, 0), 1, 1, facecolor="none", edgecolor=colour, label=f"{size} px: {len(cells)}"))
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    total = sum(int(masks[size][index].sum()) for size in masks)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=f"{total} tokens", frameon=False)
    return figure


def plot_dataset_examples(examples, columns: int = 2, palette: dict | None = None):
    """Example images with their patch grids, one row per data set, the row named in the data set's colour.

    Parameters
    ----------
    examples : dict
        ``{dataset: [(title, pixels, masks), ...]}``: ``pixels`` one ``(C, H, W)`` image in [0, 255],
        ``masks`` its selection ``{patch_size: (h, w) bool}``.
    columns : {1, 2}
        Paper columns the figure spans.
    palette : dict, optional
        ``{dataset: colour}`` of the report the figure belongs to (``dataset_palette`` of all its
        data sets), so that each row has its colour in the other figures; by default
        ``dataset_palette`` of the data sets in ``examples``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not examples or not all(examples.values()):
        raise ValueError(f"examples must map each data set to at least one (title, pixels, masks), got {examples!r}")
    colours = dataset_palette(list(examples)) if palette is None else palette
    missing = [name for name in examples if name not in colours]
    if missing:
        raise ValueError(f"palette must give a colour to every data set of examples; it lacks {missing}, "
                         f"has {sorted(colours)}")
    width = figure_size(columns)[0]
    per_row = max(len(items) for items in examples.values())
    cell = width / per_row
    figure, axes = plt.subplots(len(examples), per_row, figsize=(width, cell * len(examples) + 0.3 * len(examples)),
                                squeeze=False)
    for row, (dataset, items) in zip(axes, examples.items()):
        for ax in row:
            ax.set_axis_off()
        for ax, (title, pixels, masks) in zip(row, items):
            ax.set_axis_on()
            plot_patch_grid(pixels[None], {size: mask[None] for size, mask in masks.items()}, ax=ax)
            ax.get_legend().remove()
            tokens = sum(int(mask.sum()) for mask in masks.values())
            ax.set_title(f"{title}: {tokens} tokens", fontsize=7)
        row[0].set_ylabel(dataset, color=colours[dataset], fontsize=8)
    figure.tight_layout()
    return figure


def plot_image(pixels: torch.Tensor, title: str = "", ax=None):
    """One ``(C, H, W)`` image in [0, 255]."""
    height, width = pixels.shape[-2:]
    dpi = plt.rcParams["savefig.dpi"]
    inches_per_pixel = 1.25 / (plt.rcParams["figure.dpi"] if dpi == "figure" else dpi)  # about 1.25 saved px per px
    size_in = (max(COLUMN_WIDTH_IN, width * inches_per_pixel),
               max(COLUMN_WIDTH_IN * height / width, height * inches_per_pixel))
    figure = ax.figure if ax is not None else plt.figure(figsize=size_in)
    ax = ax if ax is not None else figure.add_subplot()
    ax.imshow(_image_array(pixels))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    return figure


def plot_panel(pixels, maps, masks, reconstruction, metrics: dict | None = None, index: int = 0,
               pad_value=DEFAULT_PAD_VALUE):
    """Resized image | coarsest-scale heatmap | patch grid | reconstruction (with PSNR/SSIM)."""
    figure, axes = plt.subplots(1, 4, figsize=(COLUMN_WIDTH_IN * 2.2, COLUMN_WIDTH_IN * 0.7))
    plot_image(pixels[index], "resized image", ax=axes[0])
    coarsest = max(maps)
    plot_heatmap(maps[coarsest][index], coarsest, pad_value, ax=axes[1])
    plot_patch_grid(pixels, masks, index, ax=axes[2])
    axes[2].get_legend().remove()
    total = sum(int(masks[size][index].sum()) for size in masks)
    axes[2].set_title(f"{total} tokens")
    title = "reconstruction"
    if metrics:
        title += f"\nPSNR {metrics['psnr']:.1f} dB, SSIM {metrics['ssim']:.3f}"
    plot_image(reconstruction[index], title, ax=axes[3])
    figure.tight_layout()
    return figure


def plot_threshold_sweep(table, x="threshold", y="retention", hue=None, ax=None):
    """Retention (or any column) against a threshold, one line per ``hue`` value, with spread."""
    figure = ax.figure if ax is not None else plt.figure(figsize=(COLUMN_WIDTH_IN, COLUMN_WIDTH_IN * 0.75))
    ax = ax if ax is not None else figure.add_subplot()
    sns.lineplot(data=table, x=x, y=y, hue=hue, marker="o", errorbar=("pi", 80), ax=ax)
    return figure


def plot_speedup_curves(ax, base_tokens: float, patch_size: int = 16, models=("vit_s", "vit_b", "vit_l", "vit_h")):
    """The cost model's speedup against retention for each model (class token included), on ``ax``."""
    from ..models.costmodel import vit_flops

    retention = np.linspace(0.2, 1.0, 81)
    for model, colour in zip(models, sns.color_palette("Greys", len(models) + 2)[2:]):
        uniform = vit_flops(base_tokens + 1, model, patch_size)
        ax.plot(retention, uniform / vit_flops(1 + retention * base_tokens, model, patch_size), color=colour,
                linewidth=1.0, label=f"{model} model")
    return ax


MODEL_PANELS = (("agreement", "top-1 agreement with uniform tokens"), ("top1_accuracy", "top-1 accuracy (dashed: uniform)"),
                ("psnr_mean", "PSNR of reconstruction (dB)"), ("ssim_mean", "SSIM of reconstruction"))
"""The panels of ``plot_model_vs_retention``: summary column and axis label."""


def plot_model_vs_retention(summary, curve: str = "configuration"):
    """A classifier's agreement and accuracy on APT tokens against retention, beside PSNR and SSIM.

    Parameters
    ----------
    summary : pandas.DataFrame
        One row per threshold setting: ``retention_mean``, ``agreement`` (share of images whose APT top-1
        equals their uniform top-1), ``top1_accuracy`` and ``uniform_top1_accuracy`` (NaN without labels;
        that panel is then left out), ``psnr_mean``, ``ssim_mean``, and ``curve``.
    curve : str
        The column whose values get one line each (e.g. the scorer); the points are the threshold settings.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per metric, the legend right of the last; dashed lines: accuracy on uniform tokens.
    """
    panels = [(column, label) for column, label in MODEL_PANELS if column in summary and summary[column].notna().any()]
    names = sorted(summary[curve].astype(str).unique())
    colours = dict(zip(names, sns.color_palette("colorblind", len(names))))
    figure, axes = plt.subplots(1, len(panels), figsize=(TWO_COLUMN_WIDTH_IN, 2.2), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        for name, part in summary.sort_values("retention_mean").groupby(summary[curve].astype(str)):
            ax.plot(part["retention_mean"], part[column], marker="o", markersize=3, linewidth=1.0,
                    color=colours[name], label=name)
            if column == "top1_accuracy":
                ax.axhline(part["uniform_top1_accuracy"].iloc[0], color=colours[name], linestyle="--", linewidth=0.8)
        ax.set(xlabel="retention (mean)", ylabel=label)
    axes[0, -1].legend(fontsize=6, title=curve, title_fontsize=6)
    figure.tight_layout()
    return figure
