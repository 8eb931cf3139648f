"""Figures for notebooks and papers: entropy heatmaps, patch grids, reconstructions, panels.

Every function returns a matplotlib ``Figure`` made at its print size with constrained layout;
``save_figure`` writes it as PDF and PNG atomically at exactly that size, with every legend outside
the data. ``paper_style`` applies the one style of ``style`` (fonts, lines, colours); ``figure_size``
gives one- and two-column sizes; ``dataset_palette`` gives each data set one colour, the same in
every figure drawn with that palette. The sweep report's figures are in ``report_figures``.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.backends.backend_agg import RendererAgg  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .._io import atomic_path  # noqa: E402
from ..contract import DEFAULT_PAD_VALUE  # noqa: E402
from . import style  # noqa: E402

COLUMN_WIDTH_IN = style.ONE_COLUMN_IN
TWO_COLUMN_WIDTH_IN = style.TWO_COLUMN_IN
SCALE_COLOURS = style.SCALE_COLOURS
DATASET_COLOURS = style.DATASET_COLOURS
BUILTIN_DATASET_COLOURS = {"skimage": DATASET_COLOURS[0], "synthetic": DATASET_COLOURS[1]}
HEATMAP_CMAP = "Reds"
MODEL_NAMES = {"vit_s": "ViT-S", "vit_b": "ViT-B", "vit_l": "ViT-L", "vit_h": "ViT-H"}
"""How the figures name the cost model's ViTs."""


def paper_style() -> None:
    """The one style of every figure (``style.paper()``: ``apt-paper.mplstyle``): 7-9 pt DejaVu Sans embedded
    as TrueType (Type 42), thin lines, no top or right spines, Okabe-Ito colours, constrained layout.

    Also hides the one deprecation seaborn 0.13 triggers in matplotlib >= 3.11 on every box plot
    (it passes ``vert=`` to ``Axes.boxplot``); any other warning still reaches the user.
    """
    style.paper()


def figure_size(columns: int = 1, aspect: float = 0.72) -> tuple[float, float]:
    """``(width, height)`` in inches of a figure one or two paper columns wide.

    Parameters
    ----------
    columns : {1, 2}
        1 for one column (3.35 in), 2 for the full text width of a two-column paper (6.9 in).
    aspect : float
        Height over width.
    """
    width = style.width_in(columns)
    if not aspect > 0:
        raise ValueError(f"aspect must be a positive height/width ratio, got {aspect!r}")
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


def text_width_in(text: str, size_pt: float = 7.0) -> float:
    """Width of ``text`` (its longest line) in the style's font at ``size_pt``, in inches (measured by Agg)."""
    font = FontProperties(family=plt.rcParams["font.sans-serif"][:1] or "DejaVu Sans", size=size_pt)
    renderer = RendererAgg(1, 1, 72)
    return max((renderer.get_text_width_height_descent(line, font, ismath=False)[0] for line in str(text).split("\n")
                if line), default=0.0) / 72


LEGEND_ENTRY_IN = 0.3
"""Width of a key entry besides its text: the handle (1.6 em), its padding and the column spacing (7 pt)."""


def legend_rows(width: float, groups) -> list[list[tuple]]:
    """The rows of a grouped key ``figure.legend`` can draw in ``width`` inches: ``[(handle, label), ...]`` each.

    As many entries a row as fit, the rows aligned as a table (a column is as wide as its widest label).
    """
    groups = [(title, handles) for title, handles in groups if handles]
    if not groups:
        return []
    blank = Line2D([], [], linestyle="", marker="")
    longest = max(len(handles) for _, handles in groups)
    titled = any(title for title, _ in groups)
    for per_row in range(longest, 0, -1):
        rows = []
        for title, handles in groups:
            for start in range(0, len(handles), per_row):
                heading = [(blank, f"{title}:" if start == 0 and title else "")] if titled else []
                rows.append(heading + [(h, h.get_label()) for h in handles[start:start + per_row]])
        ncol = max(len(row) for row in rows)
        rows = [row + [(blank, "")] * (ncol - len(row)) for row in rows]
        needed = sum(max(text_width_in(row[c][1]) for row in rows) + LEGEND_ENTRY_IN for c in range(ncol))
        if needed <= width - 0.1:
            break
    return rows


def grouped_legend(figure, groups, where: str = "lower center"):
    """One key of several groups (``[(title, handles), ...]``), a row per group, ``title:`` first, outside the panels.

    A group too long for the figure's width wraps onto further rows; rows are aligned as a table.
    """
    rows = legend_rows(figure.get_size_inches()[0], groups)
    if not rows:
        return None
    ncol = len(rows[0])
    entries = [rows[r][c] for c in range(ncol) for r in range(len(rows))]  # matplotlib fills column by column
    return figure.legend([h for h, _ in entries], [label for _, label in entries], loc=f"outside {where}", ncol=ncol,
                         handletextpad=0.4, columnspacing=0.8)


KEY_ROW_IN = 0.16
"""Height of one row of a key (7 pt text and its spacing), to size a figure before its key is drawn."""


def _with_layout(figure) -> None:
    """Give a figure made without a layout engine constrained layout, so that nothing is cut at its own size.

    A figure with a colour bar made under no engine keeps none (matplotlib refuses the change); every
    figure of this module is made with one.
    """
    if figure.get_layout_engine() is None:
        try:
            figure.set_layout_engine("constrained")
        except RuntimeError:
            pass


def save_figure(figure, path, formats=("pdf", "png"), legends: str = "outside") -> list[Path]:
    """Write ``figure`` to ``path`` with each suffix in ``formats`` (or to ``path`` itself if it has one), atomically.

    The file has the figure's own size (``figure.get_size_inches()``): nothing is cropped (no
    ``bbox_inches="tight"``, which changes the width); a figure without a layout engine gets
    constrained layout first. ``legends="outside"`` first moves every legend off the data
    (``legends_outside``); ``"keep"`` leaves them. Fonts are embedded as TrueType (Type 42).
    """
    if legends not in ("outside", "keep"):
        raise ValueError(f"legends must be 'outside' or 'keep', got {legends!r}")
    _with_layout(figure)
    if legends == "outside":
        legends_outside(figure)
    path = Path(path)
    targets = [path] if path.suffix else [path.with_suffix(f".{fmt}") for fmt in formats]
    # fonts embedded as TrueType (Type 42) whatever the rc settings at save time: a figure drawn in
    # ``style.paper_context()`` and saved after it would otherwise get matplotlib's default Type 3
    with plt.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        for target in targets:
            with atomic_path(target) as temporary:
                figure.savefig(temporary, bbox_inches=None, format=target.suffix[1:].replace("jpg", "jpeg"))
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
    figure = ax.figure if ax is not None else plt.figure(figsize=(COLUMN_WIDTH_IN, COLUMN_WIDTH_IN * 0.8),
                                                         layout="constrained")
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
    """Heatmaps of every scale of image ``index``, side by side: one column wide for one scale, else two."""
    sizes = sorted(maps)
    width = COLUMN_WIDTH_IN if len(sizes) == 1 else TWO_COLUMN_WIDTH_IN
    figure, axes = plt.subplots(1, len(sizes), figsize=(width, min(width / len(sizes) * 0.85, 3.0)), squeeze=False,
                                layout="constrained")
    for ax, size in zip(axes[0], sizes):
        plot_heatmap(maps[size][index], size, pad_value, ax=ax, label=label)
    return figure


def _outline_patches(ax, masks: dict[int, torch.Tensor], index: int, colours: dict) -> list:
    """Outline every kept patch of ``masks[size][index]`` in its size's colour over a thin dark halo; legend handles."""
    handles = []
    halo = [patheffects.Stroke(linewidth=1.6, foreground=(0, 0, 0, 0.55)), patheffects.Normal()]
    for size in sorted(masks):
        cells = masks[size][index].nonzero().cpu().numpy()
        boxes = [Rectangle((x * size - 0.5, y * size - 0.5), size, size) for y, x in cells]
        collection = PatchCollection(boxes, facecolor="none", edgecolor=colours[size], linewidth=0.8)
        collection.set_path_effects(halo)
        ax.add_collection(collection)
        handles.append(Rectangle((0, 0), 1, 1, facecolor="none", edgecolor=colours[size], linewidth=1.2,
                                 label=f"{size} px: {len(cells)}"))
    return handles


def plot_patch_grid(pixels: torch.Tensor, masks: dict[int, torch.Tensor], index: int = 0, ax=None, colours=None):
    """The image with every kept patch outlined once, coloured by patch size; the legend gives token counts.

    ``colours``: ``{patch_size: colour}`` (default ``style.scale_colours`` of the sizes of ``masks``).
    """
    image = _image_array(pixels[index] if pixels.dim() == 4 else pixels)
    size_in = (max(COLUMN_WIDTH_IN, image.shape[1] / 80), max(COLUMN_WIDTH_IN * image.shape[0] / image.shape[1],
                                                              image.shape[0] / 80))
    figure = ax.figure if ax is not None else plt.figure(figsize=size_in, layout="constrained")
    ax = ax if ax is not None else figure.add_subplot()
    ax.imshow(image)
    handles = _outline_patches(ax, masks, index, colours or style.scale_colours(masks))
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

    Every kept patch is outlined in its patch size's colour (``style.scale_colours``: yellow, pink,
    indigo, apart from every data-set colour); the key above the images names them.

    Parameters
    ----------
    examples : dict
        ``{dataset: [(title, pixels, masks), ...]}``: ``pixels`` one ``(C, H, W)`` image in [0, 255],
        ``masks`` its selection ``{patch_size: (h, w) bool}``.
    columns : {1, 2}
        Paper columns the figure spans (3.35 or 6.9 in wide).
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
    cell = (width - 0.25) / per_row
    sizes = sorted({size for items in examples.values() for _, _, masks in items for size in masks})
    scale_palette = style.scale_colours(sizes)
    figure, axes = plt.subplots(len(examples), per_row, figsize=(width, (cell + 0.2) * len(examples) + 0.3),
                                squeeze=False, layout="constrained")
    for row, (dataset, items) in zip(axes, examples.items()):
        for ax in row:
            ax.set_axis_off()
        for ax, (title, pixels, masks) in zip(row, items):
            ax.set_axis_on()
            plot_patch_grid(pixels[None], {size: mask[None] for size, mask in masks.items()}, ax=ax,
                            colours=scale_palette)
            ax.get_legend().remove()
            tokens = sum(int(mask.sum()) for mask in masks.values())
            ax.set_title(f"{title}: {tokens} tokens", fontsize=7)
            for spine in ax.spines.values():
                spine.set_visible(False)
        row[0].set_ylabel(dataset, color=colours[dataset], fontsize=8)
    key = [Rectangle((0, 0), 1, 1, facecolor="none", edgecolor=scale_palette[size], linewidth=1.5, label=f"{size} px")
           for size in sizes]
    figure.legend(handles=key, loc="outside upper center", ncol=len(key), title="kept patches, outlined by patch size",
                  frameon=False)
    return figure


def plot_image(pixels: torch.Tensor, title: str = "", ax=None):
    """One ``(C, H, W)`` image in [0, 255]."""
    height, width = pixels.shape[-2:]
    dpi = plt.rcParams["savefig.dpi"]
    inches_per_pixel = 1.25 / (plt.rcParams["figure.dpi"] if dpi == "figure" else dpi)  # about 1.25 saved px per px
    size_in = (max(COLUMN_WIDTH_IN, width * inches_per_pixel),
               max(COLUMN_WIDTH_IN * height / width, height * inches_per_pixel))
    figure = ax.figure if ax is not None else plt.figure(figsize=size_in, layout="constrained")
    ax = ax if ax is not None else figure.add_subplot()
    ax.imshow(_image_array(pixels))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    return figure


def plot_panel(pixels, maps, masks, reconstruction, metrics: dict | None = None, index: int = 0,
               pad_value=DEFAULT_PAD_VALUE):
    """Resized image | coarsest-scale heatmap | patch grid | reconstruction (with PSNR/SSIM), two columns wide."""
    figure, axes = plt.subplots(1, 4, figsize=(TWO_COLUMN_WIDTH_IN, 2.0), layout="constrained")
    plot_image(pixels[index], "resized image", ax=axes[0])
    coarsest = max(maps)
    plot_heatmap(maps[coarsest][index], coarsest, pad_value, ax=axes[1])
    plot_patch_grid(pixels, masks, index, ax=axes[2])
    axes[2].get_legend().remove()
    total = sum(int(masks[size][index].sum()) for size in masks)
    axes[2].set_title(f"{total} tokens: " + ", ".join(f"{size} px" for size in sorted(masks)))
    title = "reconstruction"
    if metrics:
        title += f"\nPSNR {metrics['psnr']:.1f} dB, SSIM {metrics['ssim']:.3f}"
    plot_image(reconstruction[index], title, ax=axes[3])
    return figure


def plot_threshold_sweep(table, x="threshold", y="retention", hue=None, ax=None):
    """Retention (or any column) against a threshold, one line per ``hue`` value, with spread (10th-90th percentile)."""
    figure = ax.figure if ax is not None else plt.figure(figsize=figure_size(1), layout="constrained")
    ax = ax if ax is not None else figure.add_subplot()
    sns.lineplot(data=table, x=x, y=y, hue=hue, marker="o", errorbar=("pi", 80), ax=ax)
    return figure


def plot_speedup_curves(ax, base_tokens: float, patch_size: int = 16, models=("vit_s", "vit_b", "vit_l", "vit_h"),
                        colour=None, retention=None):
    """The cost model's speedup against retention for each model (class token included), on ``ax``.

    Each model has its own line style and, unless ``colour`` gives one for all, its own colour of the style's
    cycle (``C0``, ``C1``, ... in the order of ``models``); the label names the model (``ViT-B (cost model)``).
    ``retention``: the x values (default 0.2 to 1).
    """
    from ..models.costmodel import vit_flops

    retention = np.linspace(0.2, 1.0, 81) if retention is None else np.asarray(retention, dtype=float)
    for index, model in enumerate(models):
        uniform = vit_flops(base_tokens + 1, model, patch_size)
        ax.plot(retention, uniform / vit_flops(1 + retention * base_tokens, model, patch_size),
                color=colour or f"C{index}", linestyle=style.LINESTYLES[index % len(style.LINESTYLES)], linewidth=1.0,
                label=f"{MODEL_NAMES.get(model, model)} (cost model)")
    return ax


MODEL_PANELS = (("agreement", "top-1 agreement with uniform tokens"), ("top1_accuracy", "top-1 accuracy (dashed: uniform)"),
                ("psnr_mean", "PSNR of reconstruction (dB)"), ("ssim_mean", "SSIM of reconstruction"))
"""The panels of ``plot_model_vs_retention``: summary column and axis label."""


def plot_model_vs_retention(summary, curve: str = "configuration", colour_by: str | None = None,
                            marker_by: str | None = None, palette: dict | None = None):
    """A classifier's agreement and accuracy on APT tokens against retention, beside PSNR and SSIM.

    Parameters
    ----------
    summary : pandas.DataFrame
        One row per threshold setting: ``retention_mean``, ``agreement`` (share of images whose APT top-1
        equals their uniform top-1), ``top1_accuracy`` and ``uniform_top1_accuracy`` (NaN without labels;
        that panel is then left out), ``psnr_mean``, ``ssim_mean``, and ``curve``.
    curve : str
        The column whose values get one line each (e.g. the scorer); the points are the threshold settings.
    colour_by, marker_by : str, optional
        Columns whose values give a line its colour and its marker and line style (e.g. ``dataset`` and
        ``configuration`` when ``curve`` combines them); by default both follow ``curve``.
    palette : dict, optional
        ``{value of colour_by: colour}`` (the report's ``dataset_palette``); by default the style's cycle.

    Returns
    -------
    matplotlib.figure.Figure
        6.9 in wide, one panel per metric, one key below them; dashed lines: accuracy on uniform tokens.
    """
    panels = [(column, label) for column, label in MODEL_PANELS if column in summary and summary[column].notna().any()]
    colour_by, marker_by = colour_by or curve, marker_by or curve
    colour_values = sorted(summary[colour_by].astype(str).unique())
    marker_values = sorted(summary[marker_by].astype(str).unique())
    colours = palette or {name: f"C{index % 8}" for index, name in enumerate(colour_values)}
    markers = {name: style.MARKERS[index % len(style.MARKERS)] for index, name in enumerate(marker_values)}
    linestyles = {name: style.LINESTYLES[index % len(style.LINESTYLES)] for index, name in enumerate(marker_values)}
    if colour_by == marker_by:
        linestyles = {name: "-" for name in marker_values}
    keyed = summary.assign(_colour=summary[colour_by].astype(str), _marker=summary[marker_by].astype(str))
    figure, axes = plt.subplots(1, len(panels), figsize=(TWO_COLUMN_WIDTH_IN, 2.3), squeeze=False, layout="constrained")
    for ax, (column, label) in zip(axes[0], panels):
        for name, part in keyed.sort_values("retention_mean").groupby(keyed[curve].astype(str)):
            colour, marker = colours[part["_colour"].iloc[0]], part["_marker"].iloc[0]
            ax.plot(part["retention_mean"], part[column], marker=markers[marker], linestyle=linestyles[marker],
                    color=colour, label=name)
            if column == "top1_accuracy":
                ax.axhline(part["uniform_top1_accuracy"].iloc[0], color=colour, linestyle="--", linewidth=0.6)
        ax.set(xlabel="retention (mean)")
        ax.set_ylabel(label, wrap=True)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    uniform = ([Line2D([], [], color="0.3", linestyle="--", linewidth=0.6, label="accuracy on uniform tokens")]
               if any(column == "top1_accuracy" for column, _ in panels) else [])
    if colour_by == marker_by:
        groups = [(curve.replace("dataset", "data set"), [Line2D([], [], color=colours[name], marker=markers[name],
                                                                 label=name) for name in colour_values]), ("", uniform)]
    else:
        by_colour = [Line2D([], [], color=colours[name], marker="o", linestyle="", label=name)
                     for name in colour_values]
        by_marker = [Line2D([], [], color="0.25", marker=markers[name], linestyle=linestyles[name], label=name)
                     for name in marker_values]
        groups = [(colour_by.replace("dataset", "data set"), by_colour), (marker_by, by_marker + uniform)]
    grouped_legend(figure, groups)
    return figure
