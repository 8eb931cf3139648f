"""The sweep report's figures, at a paper's sizes: what a reader of an APT paper expects to see.

Each function takes a sweep's ``records`` (one row per image and threshold setting) and/or its
``summary`` (one row per data set x configuration x setting) and returns a matplotlib ``Figure``
exactly 3.35 in (one column) or 6.9 in (two columns) wide, drawn in the one style of ``style``
(apply it first: ``style.paper()``), with a key for every encoding and no overlapping bands:

- ``plot_retention_vs_threshold``: retention against threshold, one panel per data set and
  configuration, mean line and the images' interquartile band;
- ``plot_fidelity_vs_retention``: PSNR and SSIM against retention;
- ``plot_scale_mix``: the share of tokens per patch size, one stacked bar per setting, grouped under
  their configuration, one panel per data set;
- ``plot_speedup_vs_retention``: the cost model's speedup per ViT (one panel each), each setting's
  prediction, and measured speedups where the sweep measured them (``measured_speedup_<model>``);
- ``plot_fidelity_vs_speedup``: PSNR and SSIM against the predicted ViT-B speedup;
- ``plot_entropy_distributions``: per-image mean score per patch size, per data set and configuration;
- ``plot_ablation``: retention and SSIM against the values of one varied parameter.

The columns they read: ``dataset``; ``configuration`` (each row's varied parameters as one label,
``"all"`` when none varies; ``sweep.report.configuration_label``); in ``records`` ``threshold`` (one
number per setting for an x axis: its largest threshold), ``thresholds``, ``retention``, ``psnr``,
``ssim``, ``score_<size>_mean``, ``tokens_base_grid``, ``patch_size``; in ``summary`` ``thresholds``
or ``target_retention``, ``retention_mean``, ``psnr_mean``, ``ssim_mean``, ``mix_<size>``,
``speedup_pred_<model>``, ``measured_speedup_<model>``. Colours are the data sets'
(``figures.dataset_palette``, the same in every figure of a report: pass ``palette=``); markers and
line styles tell configurations apart.
"""

from __future__ import annotations

import inspect
import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, PercentFormatter

from . import figures, style

BAND_ALPHA = 0.25
"""Opacity of a spread band."""
SPREAD = (0.25, 0.75)
"""The spread every figure shows around a mean over images: the interquartile range of the images (a skewed
metric such as SSIM can have its mean outside it)."""
SPREAD_LABEL = "interquartile range"
MAX_PANEL_COLUMNS = 4
"""Panels per row before a small-multiples figure wraps."""


def _natural_key(text: str) -> tuple:
    """Sort key reading the numbers in ``text`` as numbers: ``bins=64`` before ``bins=128`` before ``bins=1024``."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", str(text))
    return tuple((1, float(part), "") if index % 2 else (0, 0.0, part) for index, part in enumerate(parts) if part)


def _configurations(table: pd.DataFrame) -> list[str]:
    """The configurations of ``table`` in natural order (numbers as numbers); ``["all"]`` when none is named."""
    if "configuration" not in table:
        return ["all"]
    return sorted(table["configuration"].astype(str).unique(), key=_natural_key)


def _scorers(table: pd.DataFrame) -> int:
    """How many scorers (``method`` with its ``method_options``) ``table`` holds: scores of different scorers are on
    different scales, so a figure never puts them on one axis."""
    columns = [column for column in ("method", "method_options") if column in table]
    return len(table[columns].astype(str).drop_duplicates()) if columns else 1


def _with_configuration(table: pd.DataFrame) -> pd.DataFrame:
    if "configuration" in table:
        return table.assign(configuration=table["configuration"].astype(str))
    return table.assign(configuration="all")


def _palette(table: pd.DataFrame, palette: dict | None) -> dict:
    return figures.dataset_palette(sorted(table["dataset"].astype(str).unique())) if palette is None else palette


def _datasets(table: pd.DataFrame) -> list[str]:
    return sorted(table["dataset"].astype(str).unique())


def _markers(configurations) -> dict[str, str]:
    return {name: style.MARKERS[index % len(style.MARKERS)] for index, name in enumerate(configurations)}


def _linestyles(configurations) -> dict[str, object]:
    return {name: style.LINESTYLES[index % len(style.LINESTYLES)] for index, name in enumerate(configurations)}


def _fit(text: str, width_in: float, size_pt: float = 7.0) -> str:
    """``text`` broken at spaces into the fewest lines each at most ``width_in`` inches wide at ``size_pt``, as
    measured in the style's font (a word longer than the width stays whole on its line)."""
    text = str(text)
    if figures.text_width_in(text, size_pt) <= width_in:
        return text
    lines = []
    for word in text.split(" "):
        if lines and figures.text_width_in(f"{lines[-1]} {word}", size_pt) <= width_in:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def _label_pt() -> float:
    """The size of an axis label in the current style, in points."""
    return FontProperties(size=plt.rcParams["axes.labelsize"]).get_size_in_points()


def _panel_width_in(figure, ncols: int) -> float:
    """About the width of one of ``ncols`` panels side by side in ``figure`` (its axis labels and gaps taken off)."""
    return (figure.get_size_inches()[0] - 0.45) / ncols - 0.3


def _score_unit(records: pd.DataFrame) -> str:
    methods = set(records["method"].astype(str)) if "method" in records else {"entropy"}
    return "bits" if methods == {"entropy"} else "score"


def _dataset_handles(datasets, palette, marker: str | None = "o") -> list:
    return [Line2D([], [], color=palette[name], marker=marker, linestyle="-" if marker is None else "", label=name)
            for name in datasets]


def _configuration_handles(configurations, markers, linestyles=None) -> list:
    if configurations == ["all"]:
        return []
    return [Line2D([], [], color="0.25", marker=markers[name], linestyle=(linestyles or {}).get(name, ""),
                   label=name) for name in configurations]


def _legend(figure, handles, where: str = "lower center", ncol: int | None = None, title=None):
    """One key for the whole figure, outside every panel (constrained layout makes room for it)."""
    if not handles:
        return None
    ncol = ncol or min(len(handles), 4)
    return figure.legend(handles=handles, loc=f"outside {where}", ncol=ncol, title=title)


KEY_ROW_IN = figures.KEY_ROW_IN
HEADER_IN = 1.5
"""Widest a configuration's name is left of its bars in the scale mix (inches): a longer one takes more lines."""


def _setting_label(row) -> str:
    """A setting as a bar label: ``6.5/5.5`` (the thresholds of the coarser scales) or ``0.5`` (a target retention)."""
    target = row.get("target_retention")
    if target is not None and not (isinstance(target, float) and math.isnan(target)):
        return f"{float(target):g}"
    values = [v for v in str(row.get("thresholds", "")).split(",") if v]
    try:
        return "/".join(f"{float(v):g}" for v in values) or "-"
    except ValueError:
        return str(row.get("thresholds"))


def _setting_order(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its settings in order: by target retention, then by their thresholds (as numbers, largest
    first: ``4.5/3.5`` before ``5/3.75`` before ``10/4``)."""
    if "thresholds" in table:
        order = table["thresholds"].map(lambda t: sorted((float(v) for v in str(t).split(",") if v), reverse=True))
        table = table.assign(_order=order.map(tuple))
    elif "threshold" in table:
        table = table.assign(_order=table["threshold"].map(lambda t: (float(t),)))
    keys = [column for column in ("target_retention", "_order") if column in table]
    return (table.sort_values(keys, kind="stable") if keys else table).drop(columns="_order", errors="ignore")


def _threshold_axis(table: pd.DataFrame) -> pd.Series:
    if "threshold" in table:
        return table["threshold"].astype(float)
    return table["thresholds"].map(lambda t: max((float(v) for v in str(t).split(",") if v), default=np.nan))


def _shared_limits(values, pad: float = 0.04, low=None, high=None) -> tuple[float, float]:
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    lo = float(values.min()) if values.size else 0.0
    hi = float(values.max()) if values.size else 1.0
    lo = lo if low is None else min(lo, low)
    hi = hi if high is None else max(hi, high)
    span = hi - lo or 1.0
    return lo - pad * span, hi + pad * span


# --------------------------------------------------------------------------------------------------------------
def _bottom_axes(axes, used: int) -> list:
    """The lowest of the first ``used`` panels of each column of ``axes`` (a grid filled row by row): where the
    x axis is labelled, also when the last row is not full (its tick labels shown again under shared axes)."""
    ncols = axes.shape[1]
    bottom = []
    for column in range(ncols):
        rows = [row for row in range(axes.shape[0]) if row * ncols + column < used]
        if rows:
            ax = axes[rows[-1], column]
            ax.xaxis.set_tick_params(labelbottom=True)
            bottom.append(ax)
    return bottom


def _retention_panel(ax, part: pd.DataFrame, colour) -> None:
    """Mean retention against threshold over the images of ``part``, with their interquartile band."""
    setting = "thresholds" if "thresholds" in part else "threshold"
    stats = part.groupby(setting, sort=False).agg(x=("threshold", "first"), mean=("retention", "mean"),
                                                  low=("retention", lambda s: s.quantile(SPREAD[0])),
                                                  high=("retention", lambda s: s.quantile(SPREAD[1])))
    stats = stats.sort_values("x")
    unthresholded = stats[~np.isfinite(stats["x"].astype(float))]  # a setting without thresholds (one scale)
    stats = stats[np.isfinite(stats["x"].astype(float))]
    if len(stats) > 1:
        ax.fill_between(stats["x"], stats["low"], stats["high"], color=colour, alpha=BAND_ALPHA, linewidth=0)
        ax.plot(stats["x"], stats["mean"], color=colour, marker="o")
    elif len(stats) == 1:  # one setting: its spread as a bar, in the band's colour
        ax.vlines(stats["x"], stats["low"], stats["high"], color=colour, alpha=BAND_ALPHA, linewidth=6)
        ax.plot(stats["x"], stats["mean"], color=colour, marker="o", linestyle="")
    if len(unthresholded):
        ax.text(0.5, 0.5, "no thresholds:\nmean retention " + f"{float(unthresholded['mean'].iloc[0]):.0%}",
                transform=ax.transAxes, ha="center", va="center", fontsize=7)
    elif not len(stats):
        ax.text(0.5, 0.5, "no records", transform=ax.transAxes, ha="center", va="center", fontsize=7)


def plot_retention_vs_threshold(records: pd.DataFrame, palette: dict | None = None):
    """Retention against threshold: one panel per data set and configuration, mean over images and its spread (band:
    the images' interquartile range).

    Small multiples instead of overlapping bands, on shared axes: with one configuration, a panel per data
    set (named in its colour); with more, a block of panels per data set (named above it in its colour),
    a panel per configuration (named in its title). One column wide for up to two panels a row, else
    two; four panels a row at most.
    """
    records = _with_configuration(records).assign(threshold=lambda t: _threshold_axis(t))
    palette = _palette(records, palette)
    datasets, configurations = _datasets(records), _configurations(records)
    separate = _scorers(records) > 1  # each scorer's thresholds on its own scale: a panel's x axis is its own
    limits = {c: _shared_limits(records.loc[records["configuration"] == c, "threshold"] if separate
                                else records["threshold"]) for c in configurations}
    unit = _score_unit(records)

    def finish(ax, ncols, configuration=None):
        ax.set(xlim=limits[configuration or configurations[0]], ylim=(0, 1.05))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4 if ncols > 1 else 6, steps=[1, 2, 2.5, 5, 10]))
        ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}")

    def label(axes, used):
        for ax in axes[:, 0]:
            ax.set_ylabel("retention")
        for ax in _bottom_axes(axes, used):
            ax.set_xlabel(f"largest threshold ({unit})")

    if len(configurations) == 1:  # a panel per data set
        ncols = min(len(datasets), MAX_PANEL_COLUMNS)
        nrows = math.ceil(len(datasets) / ncols)
        columns = 1 if ncols <= 2 else 2
        figure, axes = style.subplots(columns, nrows * 1.35 + 0.45, nrows, ncols, sharex=True, sharey=True,
                                      squeeze=False)
        for ax in axes.flat[len(datasets):]:
            ax.set_visible(False)
        for ax, dataset in zip(axes.flat, datasets):
            _retention_panel(ax, records[records["dataset"].astype(str) == dataset], palette[dataset])
            ax.set_title(dataset, color=palette[dataset], fontsize=8, fontweight="bold")
            finish(ax, ncols)
        label(axes, len(datasets))
    else:  # a block of panels per data set, a panel per configuration
        ncols = min(len(configurations), MAX_PANEL_COLUMNS)
        columns = 1 if ncols <= 2 else 2
        blocks = math.ceil(len(configurations) / ncols)
        height = len(datasets) * (blocks * 1.18 + 0.22) + 0.75
        figure = plt.figure(figsize=(style.width_in(columns), height), layout="constrained")
        subfigures = np.atleast_1d(figure.subfigures(len(datasets), 1))
        panel_width = style.width_in(columns) / ncols
        for subfigure, dataset in zip(subfigures, datasets):
            subfigure.suptitle(dataset, color=palette[dataset], fontsize=8, fontweight="bold")
            axes = subfigure.subplots(blocks, ncols, sharex=not separate, sharey=True, squeeze=False)
            for ax in axes.flat[len(configurations):]:
                ax.set_visible(False)
            for ax, configuration in zip(axes.flat, configurations):
                part = records[(records["dataset"].astype(str) == dataset) & (records["configuration"] == configuration)]
                _retention_panel(ax, part, palette[dataset])
                ax.set_title(_fit(configuration, panel_width - 0.1), fontsize=7)
                finish(ax, ncols, configuration)
            label(axes, len(configurations))
    handles = [Line2D([], [], color="0.25", marker="o", label="mean over images"),
               Patch(facecolor="0.25", alpha=BAND_ALPHA, linewidth=0, label=f"{SPREAD_LABEL} of the images")]
    _legend(figure, handles, ncol=2)
    return figure


def _fidelity_figure(summary, palette, x, xlabel):
    """PSNR and SSIM against ``x``: a line per data set (colour) and configuration (marker, line style).

    One column wide, or two when the key would take more than three rows in one column."""
    summary = _with_configuration(summary)
    palette = _palette(summary, palette)
    datasets, configurations = _datasets(summary), _configurations(summary)
    markers, linestyles = _markers(configurations), _linestyles(configurations)
    groups = [("data set", _dataset_handles(datasets, palette)),
              ("configuration", _configuration_handles(configurations, markers, linestyles))]
    columns = 1 if len(figures.legend_rows(style.ONE_COLUMN_IN, groups)) <= 3 else 2  # two columns for a long key
    rows = len(figures.legend_rows(style.width_in(columns), groups))
    figure, axes = style.subplots(columns, 1.85 + KEY_ROW_IN * rows, 1, 2)
    for ax, (column, label) in zip(axes, (("psnr_mean", "PSNR (dB)"), ("ssim_mean", "SSIM"))):
        for (dataset, configuration), part in summary.groupby([summary["dataset"].astype(str), "configuration"]):
            part = part.sort_values(x)
            ax.plot(part[x], part[column].replace([np.inf, -np.inf], np.nan), color=palette[dataset],
                    marker=markers[configuration], linestyle=linestyles[configuration], linewidth=0.8,
                    markeredgecolor="white", markeredgewidth=0.4, markersize=4)
        ax.set(xlabel=_fit(xlabel, _panel_width_in(figure, 2), _label_pt()), ylabel=label)
    figures.grouped_legend(figure, groups)
    return figure, axes


def plot_fidelity_vs_retention(summary: pd.DataFrame, palette: dict | None = None):
    """PSNR and SSIM of the reconstruction against mean retention: one point per setting, a line per data set and
    configuration (colour: data set; marker and line style: configuration). One column wide (two for a long key)."""
    figure, axes = _fidelity_figure(summary, palette, "retention_mean", "retention (mean)")
    for ax in axes:
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    return figure


def plot_fidelity_vs_speedup(summary: pd.DataFrame, palette: dict | None = None, model: str = "vit_b"):
    """PSNR and SSIM against the cost model's predicted speedup of ``model`` (one column wide, two for a long key)."""
    name = figures.MODEL_NAMES.get(model, model)
    figure, axes = _fidelity_figure(summary, palette, f"speedup_pred_{model}", f"{name} speedup (predicted)")
    for ax in axes:
        ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}x")
    return figure


# --------------------------------------------------------------------------------------------------------------
def plot_scale_mix(summary: pd.DataFrame):
    """The share of tokens per patch size: one stacked bar per setting, one panel per data set.

    The bars of a configuration sit under its name (``bins=512, num_scales=3``, in bold); each bar is
    labelled by its setting only (``6.5/5.5``: the thresholds of the 32 and 64 px scales in bits, as the
    axis label says, or the target retention ``0.5``), so no label repeats the data set or the fixed
    parameters. The key above names the patch sizes (the colours of ``style.scale_colours``). One column
    wide for one data set, else two.
    """
    summary = _with_configuration(summary)
    datasets, configurations = _datasets(summary), _configurations(summary)
    sizes = sorted(int(column[4:]) for column in summary if column.startswith("mix_") and column[4:].isdigit())
    colours = style.scale_colours(sizes)
    rows = []  # (label, is_header, configuration, setting label, slots: bar rows the label takes)
    for configuration in configurations:
        part = _setting_order(summary[summary["configuration"] == configuration])
        settings = list(dict.fromkeys(part.apply(_setting_label, axis=1)))
        if configuration != "all":  # bold, so about 15% wider than ``_fit`` measures
            name = _fit(configuration, HEADER_IN / 1.15, 7)
            rows.append((name, True, configuration, None, name.count("\n") + 1))
        rows += [(setting, False, configuration, setting, 1) for setting in settings]
    slots = sum(row[-1] for row in rows)
    ncols = min(len(datasets), 3)
    columns = 1 if ncols == 1 else 2
    nrows = math.ceil(len(datasets) / ncols)
    if "target_retention" in summary and summary["target_retention"].notna().any():
        unit = "target retention"
    else:
        unit = f"thresholds ({'bits' if _score_unit(summary) == 'bits' else 'score'}) of " + "/".join(
            f"{size}" for size in sizes[1:]) + " px"
    row_in = 0.135
    panel_in = slots * row_in + 0.05  # the height of a panel's bars
    unit = _fit(unit, max(panel_in, 0.9 if nrows == 1 else 0.9 / nrows), 7)  # an axis label never taller than
    panel_in = max(panel_in, figures.text_width_in(unit, 7) / (1 if nrows == 1 else nrows) + 0.05)  # its panels
    height = nrows * (panel_in + 0.5) + 0.35
    figure, axes = style.subplots(columns, height, nrows, ncols, sharex=True, sharey=True, squeeze=False)
    tops = np.cumsum([0] + [row[-1] for row in rows])[:-1]  # each label centred on its rows, first at the top
    positions = slots - 1 - (tops + (np.array([row[-1] for row in rows]) - 1) / 2)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    for ax, dataset in zip(axes.flat, datasets):
        part = summary[summary["dataset"].astype(str) == dataset]
        labels = part.apply(_setting_label, axis=1)
        for position, (_, header, configuration, setting, _slots) in zip(positions, rows):
            if header:
                continue
            match = part[(part["configuration"] == configuration) & (labels == setting)]
            if match.empty:
                continue
            left = 0.0
            for size in sizes:
                share = float(np.nan_to_num(match[f"mix_{size}"].iloc[0]))
                ax.barh(position, share, left=left, height=0.78, color=colours[size], edgecolor="white", linewidth=0.3)
                left += share
        ax.set_title(dataset, fontsize=8)
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.grid(False, axis="y")
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
    for ax in _bottom_axes(axes, len(datasets)):
        ax.set_xlabel("share of tokens")
    first = axes[0, 0]
    first.set_yticks(positions, [label for label, *_ in rows])
    first.set_ylim(-0.6, slots - 0.4)
    for ax in axes[:, 0]:
        for tick, (_, header, *_rest) in zip(ax.get_yticklabels(), rows):
            if header:
                tick.set_fontweight("bold")
            tick.set_fontsize(7)
    if nrows == 1:
        axes[0, 0].set_ylabel(unit, fontsize=7)
    else:
        figure.supylabel(unit, fontsize=7)
    handles = [Patch(facecolor=colours[size], edgecolor="white", label=f"{size} px") for size in sizes]
    figures.grouped_legend(figure, [("tokens of patch size", handles)], where="upper center")
    return figure


# --------------------------------------------------------------------------------------------------------------
def plot_speedup_vs_retention(records: pd.DataFrame, summary: pd.DataFrame, palette: dict | None = None):
    """The cost model's ViT speedup against retention, one panel per ViT (ViT-S/B/L/H), two columns wide.

    In each panel: the cost model's curve for the sweep's mean base grid (black), each setting's
    predicted speedup (filled circles, colour: data set) and, only where the sweep measured the model
    (``measured_speedup_<model>``), the measured speedup (open diamonds, in the key as "measured").
    """
    summary = _with_configuration(summary)
    palette = _palette(summary, palette)
    datasets = _datasets(summary)
    models = [column[len("speedup_pred_"):] for column in summary if column.startswith("speedup_pred_")]
    measured = {model for model in models if f"measured_speedup_{model}" in summary
                and summary[f"measured_speedup_{model}"].notna().any()}
    base = float(records["tokens_base_grid"].mean())
    patch = int(records["patch_size"].iloc[0])
    low = max(0.05, min(0.2, float(summary["retention_mean"].min()) - 0.05))
    retention = np.linspace(low, 1.0, 81)
    ncols = min(len(models), MAX_PANEL_COLUMNS)
    nrows = math.ceil(len(models) / ncols)
    columns = 1 if ncols == 1 else 2
    figure, axes = style.subplots(columns, 1.75 * nrows + 0.45, nrows, ncols, sharex=True, sharey=True,
                                  squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, models):
        figures.plot_speedup_curves(ax, base, patch, [model], colour="black", retention=retention)
        for index, dataset in enumerate(datasets):  # each data set's dots smaller than the last: one on another shows
            part = summary[summary["dataset"].astype(str) == dataset]
            size = 14 + 12 * (len(datasets) - 1 - index) / max(len(datasets) - 1, 1)
            ax.scatter(part["retention_mean"], part[f"speedup_pred_{model}"], s=size, color=palette[dataset],
                       edgecolor="white", linewidth=0.4, zorder=3)
            if model in measured:
                ax.scatter(part["retention_mean"], part[f"measured_speedup_{model}"], s=18, marker="D",
                           facecolor="none", edgecolor=palette[dataset], linewidth=0.9, zorder=4)
        name = figures.MODEL_NAMES.get(model, model)
        ax.set_title(name + (" (measured too)" if model in measured else ""), fontsize=8)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.yaxis.set_major_formatter(lambda value, _: f"{value:g}x")
    for ax in axes[:, 0]:
        ax.set_ylabel("speedup over uniform")
    for ax in _bottom_axes(axes, len(models)):
        ax.set_xlabel("retention (mean)")
    kinds = [Line2D([], [], color="black", label=f"cost model ({base:.0f}-token grid)"),
             Line2D([], [], color="0.25", marker="o", linestyle="", label="predicted per setting")]
    if measured:
        kinds.append(Line2D([], [], color="0.25", marker="D", markerfacecolor="none", linestyle="",
                            label="measured on this machine"))
    figures.grouped_legend(figure, [("data set", _dataset_handles(datasets, palette)), ("", kinds)])
    return figure


# --------------------------------------------------------------------------------------------------------------
def _boxplot(ax, values, positions, colour, width):
    """Horizontal boxes (median, quartiles, 1.5 IQR whiskers), compatible with matplotlib 3.7 to 3.11+."""
    kwargs = dict(positions=positions, widths=width, patch_artist=True, manage_ticks=False, showfliers=False,
                  medianprops={"color": "black"}, boxprops={"facecolor": (*colour[:3], 0.35), "edgecolor": colour},
                  whiskerprops={"color": colour}, capprops={"color": colour})
    if "orientation" in inspect.signature(ax.boxplot).parameters:
        kwargs["orientation"] = "horizontal"
    else:
        kwargs["vert"] = False
    return ax.boxplot(values, **kwargs)


def plot_entropy_distributions(records: pd.DataFrame, palette: dict | None = None, max_points: int = 60):
    """Each image's mean patch score (entropy in bits) per patch size: one panel per size, a box per configuration
    and data set (colour), each image a dot when a box has at most ``max_points``. Two columns wide for two sizes
    or more.

    Scores of different scorers (``method``, ``method_options``) are on different scales: when the configurations
    differ in their scorer, each configuration has its own row of panels with its own x axis."""
    records = _with_configuration(records)
    palette = _palette(records, palette)
    datasets, configurations = _datasets(records), _configurations(records)
    sizes = sorted(int(c.split("_")[1]) for c in records if c.startswith("score_") and c.endswith("_mean")
                   and c.split("_")[1].isdigit())
    images = records.drop_duplicates(["dataset", "configuration", "image"]) if "image" in records else records
    separate = len(configurations) > 1 and _scorers(records) > 1
    names = {c: _fit(c, 1.3) if c != "all" else "" for c in configurations}
    lines = max(name.count("\n") + 1 for name in names.values())
    per_configuration = max(0.2, 0.13 * len(datasets) + 0.07, 0.115 * lines + 0.04)  # its boxes, or its name
    slot = 0.8 / len(datasets)
    if separate:  # a row of panels per configuration, each on its scorer's own scale
        ncols, nrows = len(sizes), len(configurations)
        height = nrows * (per_configuration + 0.22) + 0.75
        rows = [[c] for c in configurations]
    else:
        ncols = min(len(sizes), MAX_PANEL_COLUMNS)
        nrows = math.ceil(len(sizes) / ncols)
        height = nrows * (0.5 + len(configurations) * per_configuration) + 0.55
        rows = [configurations] * nrows
    columns = 1 if ncols == 1 else 2
    figure, axes = style.subplots(columns, height, nrows, ncols, sharey=not separate, squeeze=False)
    rng = np.random.default_rng(0)
    unit = _score_unit(records)
    dots = False
    panels = ([(axes[r, c], size, rows[r]) for r in range(nrows) for c, size in enumerate(sizes)] if separate
              else [(ax, size, configurations) for ax, size in zip(axes.flat, sizes)])
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, size, shown in panels:
        column = f"score_{size}_mean"
        for c_index, configuration in enumerate(shown):
            for d_index, dataset in enumerate(datasets):
                values = images.loc[(images["dataset"].astype(str) == dataset)
                                    & (images["configuration"] == configuration), column].dropna().to_numpy(float)
                if values.size == 0:
                    continue
                position = len(shown) - 1 - c_index + (len(datasets) - 1 - 2 * d_index) * slot / 2
                _boxplot(ax, [values], [position], palette[dataset], slot * 0.8)
                if values.size <= max_points:
                    jitter = rng.uniform(-slot * 0.25, slot * 0.25, values.size)
                    ax.scatter(values, position + jitter, s=3, color=palette[dataset], linewidth=0, zorder=3)
                    dots = True
        if ax in axes[0]:
            ax.set_title(f"{size} px patches", fontsize=8)
        ax.grid(False, axis="y")
        ax.set_ylim(-0.6, len(shown) - 0.4)
        if ax in axes[:, 0]:
            ax.tick_params(axis="y", length=0)  # the other panels of a row share its y axis, or hide their labels
            ax.set_yticks(np.arange(len(shown))[::-1], [names[c] for c in shown])
        elif separate:
            ax.set_yticks(np.arange(len(shown))[::-1])
            ax.tick_params(axis="y", labelleft=False, length=0)
    for ax in _bottom_axes(axes, len(panels)):
        ax.set_xlabel("mean patch entropy (bits)" if unit == "bits" else "mean patch score")
    handles = [Patch(facecolor=(*palette[d][:3], 0.35), edgecolor=palette[d], label=d) for d in datasets]
    kinds = [Line2D([], [], color="0.25", marker="o", markersize=2, linestyle="", label="one image (its mean)")]
    kinds = (kinds if dots else []) + [Line2D([], [], color="black", label="median; box: quartiles, whiskers: 1.5 IQR")]
    figures.grouped_legend(figure, [("data set", handles), ("", kinds)])
    return figure


# --------------------------------------------------------------------------------------------------------------
def plot_ablation(records: pd.DataFrame, column: str, palette: dict | None = None):
    """Retention and SSIM against the values of parameter ``column`` (one column wide): the mean over images (dot) and
    their interquartile range (bar), a colour per data set side by side."""
    palette = _palette(records, palette)
    datasets = _datasets(records)
    values = sorted(records[column].dropna().unique(), key=lambda v: (not isinstance(v, (int, float, np.number)),
                                                                        v if isinstance(v, (int, float, np.number))
                                                                        else str(v)))
    slot = (style.ONE_COLUMN_IN - 0.45) / 2 / max(len(values), 1) - 0.3 / max(len(values), 1)  # inches per value
    labels = [_fit(str(v), slot - 0.06) for v in values]  # a label wider than its slot is written at 45 degrees
    widest = max((figures.text_width_in(label) for label in labels), default=0.0)
    rotate = widest > slot - 0.06
    if rotate:
        labels = [str(v) for v in values]
        widest = max(figures.text_width_in(label) for label in labels)
    groups_rows = len(figures.legend_rows(style.ONE_COLUMN_IN, [("data set", _dataset_handles(datasets, palette)),
                                                        ("", [Line2D([], [], label=SPREAD_LABEL)] * 2)]))
    extra = min(1.2, 0.72 * widest + 0.05) if rotate else 0.11 * (max(label.count("\n") for label in labels))
    figure, axes = style.subplots(1, 1.85 + KEY_ROW_IN * groups_rows + extra, 1, 2)
    offsets = (np.arange(len(datasets)) - (len(datasets) - 1) / 2) * min(0.18, 0.6 / max(len(datasets), 1))
    for ax, (metric, label) in zip(axes, (("retention", "retention"), ("ssim", "SSIM"))):
        for offset, dataset in zip(offsets, datasets):
            part = records[records["dataset"].astype(str) == dataset]
            stats = [part.loc[part[column] == value, metric].replace([np.inf, -np.inf], np.nan).dropna()
                     for value in values]
            x = np.arange(len(values)) + offset
            mean = np.array([s.mean() if len(s) else np.nan for s in stats])
            low = np.array([s.quantile(SPREAD[0]) if len(s) else np.nan for s in stats])
            high = np.array([s.quantile(SPREAD[1]) if len(s) else np.nan for s in stats])
            ax.vlines(x, low, high, color=palette[dataset], linewidth=2.5, alpha=0.45)
            ax.plot(x, mean, color=palette[dataset], marker="o", linewidth=0.8)
        ax.set_xticks(np.arange(len(values)), labels, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                      rotation_mode="anchor" if rotate else "default")
        ax.set(xlabel=_fit(column, _panel_width_in(figure, 2), _label_pt()), ylabel=label,
               xlim=(-0.5, len(values) - 0.5))
        ax.grid(False, axis="x")
        if metric == "retention":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    kinds = [Line2D([], [], color="0.25", marker="o", linestyle="", label="mean over images"),
             Line2D([], [], color="0.25", alpha=0.45, marker="|", markersize=7, markeredgewidth=2.5, linestyle="",
                    label=SPREAD_LABEL)]
    figures.grouped_legend(figure, [("data set", _dataset_handles(datasets, palette)), ("", kinds)])
    return figure
