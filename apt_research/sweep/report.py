"""Aggregate a sweep directory's records into ``summary.parquet``/``summary.csv``, ``report.md`` and figures."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..presentation import figures
from .._io import atomic_path, remove_file, require_owned
from .report_html import markdown_table, write_html_report
from ..selection import select_patches_by_threshold
from .layout import read_skipped, run_state, spec_run_ids
from .cache import load_entry
from .maps import entry_path
from ..models.vit import VIT_CONFIGS
from .parameters import PARAMETERS
from .parameters import varied_parameters as varied_by_value

SETTING_COLUMNS = ("target_retention", "thresholds")
"""Per-record parameters: each threshold setting (or target retention) of a run is its own row."""


@dataclass
class Report:
    path: Path
    records: pd.DataFrame
    summary: pd.DataFrame
    markdown: str


def load_records(sweep_dir) -> tuple[pd.DataFrame, list[dict]]:
    """Records of every finished run of the sweep's spec (``spec_run_ids``: exactly those, never a run of an
    earlier spec left in ``runs/``), and ``run_id``, ``state`` and ``error`` of every one that did not finish.

    A run whose records cannot be read counts as not finished, with the cause; it never stops the report.
    """
    tables, problems = [], []
    for run_id in spec_run_ids(sweep_dir):
        run_dir = Path(sweep_dir) / "runs" / run_id
        state, error = run_state(run_dir)
        if state == "finished":
            try:
                read_skipped(run_dir)
            except ValueError as failure:
                state, error = "incomplete", str(failure)
        if state == "finished":
            try:
                tables.append(pd.read_parquet(run_dir / "records.parquet"))
                continue
            except (OSError, ValueError) as failure:
                state, error = "incomplete", f"records.parquet cannot be read ({type(failure).__name__}: {failure})"
        problems.append({"run_id": run_dir.name, "state": state, "error": error})
    records = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return records, problems


def skipped_images(sweep_dir, run_ids) -> pd.DataFrame:
    """The images that runs ``run_ids`` could not read: run, item and error."""
    rows = [{"run_id": run, **entry} for run in run_ids
            for entry in read_skipped(Path(sweep_dir) / "runs" / str(run))]
    return pd.DataFrame(rows, columns=["run_id", "item", "error"])


def _scale_sizes(records: pd.DataFrame) -> list[int]:
    return sorted(int(c.split("_")[1]) for c in records.columns if c.startswith("tokens_") and c[7:].isdigit())


def varied_parameters(records: pd.DataFrame) -> list[str]:
    """The parameters (besides the data set, the threshold setting and the execution ones) whose value differs
    between records (``parameters.varied_parameters``)."""
    return [key for key in varied_by_value(records) if key not in ("dataset", *SETTING_COLUMNS)]


def config_columns(records: pd.DataFrame) -> list[str]:
    """The columns that tell configurations apart: the data set, every varied parameter, the threshold setting.

    Every table of the report starts with them and every figure facets on them, so two configurations
    never share a row.
    """
    return ["dataset", *varied_parameters(records), *[c for c in SETTING_COLUMNS if c in records]]


def fixed_parameters(records: pd.DataFrame) -> dict:
    """The parameters that hold one value in every record (shown once above the tables)."""
    return {key: records[key].iloc[0] for key in PARAMETERS
            if key in records and key not in SETTING_COLUMNS and records[key].nunique(dropna=False) == 1}


def configuration_label(records: pd.DataFrame) -> pd.Series:
    """Each record's varied parameters as one label (``bins=256, num_scales=3``); ``all`` when none varies."""
    varied = varied_parameters(records)
    if not varied:
        return pd.Series("all", index=records.index)
    return records[varied].astype(str).apply(lambda row: ", ".join(f"{k}={v}" for k, v in row.items()), axis=1)


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """One row per data set x configuration x threshold setting: counts, retention spread, savings, scale mix,
    entropy, fidelity."""
    keys = config_columns(records)
    records = records.copy()
    sizes = _scale_sizes(records)
    for size in sizes:
        records[f"mix_{size}"] = records[f"tokens_{size}"].fillna(0) / records["tokens_total"]
    records["psnr_finite"] = records["psnr"].replace([np.inf, -np.inf], np.nan)
    aggregations = {
        "images": ("image", "count"),
        "retention_mean": ("retention", "mean"),
        "retention_median": ("retention", "median"),
        "retention_p10": ("retention", lambda s: s.quantile(0.1)),
        "retention_p90": ("retention", lambda s: s.quantile(0.9)),
        "savings_mean": ("savings", "mean"),
        "tokens_mean": ("tokens_total", "mean"),
        "psnr_mean": ("psnr_finite", "mean"),
        "ssim_mean": ("ssim", "mean"),
    }
    for size in sizes:
        aggregations[f"mix_{size}"] = (f"mix_{size}", "mean")
        for stat in ("mean", "std", "p50"):
            column = f"score_{size}_{stat}"
            if column in records.columns:
                aggregations[f"score_{size}_{stat}"] = (column, "mean")
    if "agreement" in records:  # a classifier ran on uniform and APT tokens (sweep key 'model')
        for column in ("agreement", "top1_correct", "uniform_top1_correct"):
            records[column] = records[column].astype(float)
        aggregations.update(agreement=("agreement", "mean"), top1_accuracy=("top1_correct", "mean"),
                            uniform_top1_accuracy=("uniform_top1_correct", "mean"),
                            kl_mean=("kl", "mean"))
    for column in records.columns:
        if column.startswith("measured_speedup_"):
            aggregations[column] = (column, "mean")
    grouped = records.groupby(keys, dropna=False, sort=True)
    summary = grouped.agg(**aggregations)
    for model in VIT_CONFIGS:  # the cost model's ViTs
        if f"gflops_apt_{model}" in records.columns:
            summary[f"speedup_pred_{model}"] = (grouped[f"gflops_uniform_{model}"].sum()
                                                / grouped[f"gflops_apt_{model}"].sum())
    return summary.reset_index()


def _threshold_axis(table: pd.DataFrame) -> pd.Series:
    """The largest threshold of each setting: one number to order settings along an x axis."""
    return table["thresholds"].map(lambda t: max((float(v) for v in str(t).split(",") if v), default=np.nan))


def example_patch_grids(sweep_dir, records: pd.DataFrame, per_data_set: int = 3) -> dict:
    """A few images of each data set with their selection, for ``figures.plot_dataset_examples``.

    For each data set, the first finished run's cached maps (``cache/<maps_key>.npz``, the key its records
    kept) and its first threshold setting; data sets whose maps are not cached are left out. Nothing lists
    the data sets, so a sweep directory whose data sets moved or are gone still makes its report.

    Parameters
    ----------
    sweep_dir : path
        The sweep directory.
    records : pandas.DataFrame
        The sweep's records (``dataset``, ``run_id``, ``thresholds`` columns).
    per_data_set : int
        Images shown per data set.

    Returns
    -------
    dict
        ``{dataset: [(image name, pixels (C, H, W), masks {patch_size: (h, w)}), ...]}``.
    """
    examples = {}
    for dataset, rows in records.groupby("dataset", sort=True):
        first = rows.iloc[0]
        key = first.get("maps_key")
        entry = load_entry(entry_path(Path(sweep_dir) / "cache", key)) if isinstance(key, str) else None
        if entry is None:
            continue
        thresholds = [float(value) for value in str(first["thresholds"]).split(",") if value]
        items = []
        for pixels, maps, meta in list(zip(*entry[:3]))[:per_data_set]:
            masks = select_patches_by_threshold({size: scale_map[None] for size, scale_map in maps.items()}, thresholds)
            items.append((meta["name"], pixels, {size: mask[0] for size, mask in masks.items()}))
        examples[dataset] = items
    return examples


def make_figures(records: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[str]:
    """The report's figures as PDF and PNG in ``out_dir``; returns their names."""
    figures.paper_style()
    made = []
    records = records.assign(threshold=_threshold_axis(records), configuration=configuration_label(records))
    summary = summary.assign(configuration=configuration_label(summary))
    order = sorted(records["dataset"].unique())
    palette = figures.dataset_palette(order)
    hue = {"hue": "dataset", "hue_order": order, "palette": palette}

    def save(figure, name):
        figures.save_figure(figure, out_dir / name)
        plt.close(figure)
        made.append(name)

    figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
    sns.lineplot(data=records, x="threshold", y="retention", style="configuration", marker="o", errorbar=("pi", 50),
                 ax=ax, **hue)
    ax.set(xlabel="threshold (largest of the setting)", ylabel="retention (tokens / base grid)",
           title="line: mean over images, band: interquartile range")
    save(figure, "retention_vs_threshold")

    sizes = _scale_sizes(records)
    long = records.melt(id_vars=["dataset"], value_vars=[f"score_{s}_mean" for s in sizes if f"score_{s}_mean" in records],
                        var_name="scale", value_name="score")
    long["scale"] = long["scale"].str.split("_").str[1] + " px"
    figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
    sns.boxplot(data=long.dropna(), x="scale", y="score", fliersize=1, ax=ax, **hue)
    ax.set(ylabel="mean patch score per image (bits for entropy)", xlabel="patch size")
    save(figure, "entropy_distributions")

    mix = summary.assign(setting=summary[config_columns(summary)].astype(str).agg(" | ".join, axis=1))
    mix_cols = [f"mix_{s}" for s in sizes if f"mix_{s}" in mix]
    figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN * 2, 0.25 * len(mix) + 1.0))
    mix.set_index("setting")[mix_cols].rename(columns=lambda c: c[4:] + " px").plot.barh(stacked=True, ax=ax, width=0.8)
    ax.set(xlabel="share of tokens per patch size", ylabel="")
    ax.legend(loc="lower right", fontsize=6)
    save(figure, "scale_mix")

    figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
    sns.scatterplot(data=summary, x="retention_mean", y="psnr_mean", style="configuration", ax=ax, **hue)
    for dataset, part in summary.sort_values("retention_mean").groupby("dataset"):
        ax.plot(part["retention_mean"], part["psnr_mean"], linewidth=0.6, alpha=0.6, color=palette[dataset])
    ax.set(xlabel="retention (mean)", ylabel="PSNR of reconstruction (dB)")
    save(figure, "fidelity_vs_retention")

    if "speedup_pred_vit_b" in summary:
        figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
        base = float(records["tokens_base_grid"].mean())
        patch = int(records["patch_size"].iloc[0])
        models = [model for model in VIT_CONFIGS if f"speedup_pred_{model}" in summary]
        figures.plot_speedup_curves(ax, base, patch, models)
        for model, marker in zip(models, itertools.cycle("os^D")):
            ax.scatter(summary["retention_mean"], summary[f"speedup_pred_{model}"], marker=marker, s=10,
                       color="0.3", zorder=3)
            if f"measured_speedup_{model}" in summary:
                ax.scatter(summary["retention_mean"], summary[f"measured_speedup_{model}"], marker=marker, s=28,
                           facecolor="none", edgecolor="C3", zorder=4, label=f"{model} measured")
        ax.set(xlabel="retention (mean)", ylabel="ViT speedup over uniform patches",
               title="lines: cost model; dots: configurations; circles: measured")
        ax.legend(fontsize=6)
        save(figure, "speedup_vs_retention")

        figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
        sns.scatterplot(data=summary, x="speedup_pred_vit_b", y="psnr_mean", style="configuration", ax=ax, **hue)
        ax.set(xlabel="predicted ViT-B speedup (cost model)", ylabel="PSNR of reconstruction (dB)")
        save(figure, "fidelity_vs_speedup")

    if "agreement" in summary:
        curve = "configuration" if summary["dataset"].nunique() == 1 else "data set | configuration"
        curves = summary.assign(**{"data set | configuration": summary["dataset"].astype(str) + " | "
                                                                + summary["configuration"]})
        save(figures.plot_model_vs_retention(curves, curve=curve), "model_vs_retention")

    for column in varied_parameters(records):  # one panel per varied parameter: the ablation of that parameter
        figure, axes = plt.subplots(1, 2, figsize=(figures.COLUMN_WIDTH_IN * 2, 2.4))
        dodge = 0.3 if records["dataset"].nunique() > 1 else False
        sns.pointplot(data=records, x=column, y="retention", errorbar=("pi", 50), dodge=dodge, ax=axes[0], **hue)
        sns.pointplot(data=records, x=column, y="ssim", errorbar=("pi", 50), dodge=dodge, ax=axes[1], **hue)
        axes[0].set(ylabel="retention (mean, interquartile bars)")
        axes[1].set(ylabel="SSIM of reconstruction")
        figure.tight_layout()
        save(figure, f"{column}_ablation")

    examples = example_patch_grids(out_dir.parent, records)
    if examples:
        save(figures.plot_dataset_examples(examples, columns=2, palette=palette), "dataset_examples")
    return made


FIGURES = ("dataset_examples", "retention_vs_threshold", "entropy_distributions", "scale_mix", "fidelity_vs_retention",
           "speedup_vs_retention", "fidelity_vs_speedup", "model_vs_retention",
           *(f"{key}_ablation" for key in PARAMETERS))
"""Every figure ``make_figures`` can write: those not made this time are removed, so none is stale."""


def _remove_stale(sweep_dir: Path, made: list[str]) -> None:
    """Remove the summary (when nothing finished) and figures that an earlier report wrote and this one did not."""
    if not made:
        for name in ("summary.parquet", "summary.csv"):
            remove_file(sweep_dir / name)
    for name in set(FIGURES) - set(made):
        for suffix in (".pdf", ".png"):
            remove_file(sweep_dir / "figures" / f"{name}{suffix}")


def report_tables(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The report's tables by title; each starts with the columns that tell configurations apart."""
    keys = config_columns(summary)
    return {
        "Token savings and fidelity per data set and configuration":
            summary[keys + ["images", "retention_mean", "retention_p10", "retention_p90", "savings_mean", "psnr_mean",
                            "ssim_mean"]],
        "Token budgets and speed (cost model; measured where the spec asked)":
            summary[keys + ["retention_mean", "psnr_mean", "ssim_mean"]
                    + [c for c in summary if c.startswith(("speedup_pred_", "measured_"))]],
        **({"Classifier on APT against uniform tokens (agreement, top-1 accuracy, KL)":
            summary[keys + ["retention_mean", "agreement", "top1_accuracy", "uniform_top1_accuracy",
                            "kl_mean", "psnr_mean", "ssim_mean"]]} if "agreement" in summary else {}),
        "Scale mix (share of tokens per patch size)": summary[keys + [c for c in summary if c.startswith("mix_")]],
        "Entropy statistics (mean over images of each image's per-scale statistic)":
            summary[[k for k in keys if k not in SETTING_COLUMNS]
                    + [c for c in summary if c.startswith("score_")]].drop_duplicates(),
    }


def _results_markdown(sweep_dir: Path, records: pd.DataFrame, summary: pd.DataFrame, made: list[str]) -> list[str]:
    fixed = ", ".join(f"{k}={v}" for k, v in fixed_parameters(records).items())
    lines = [f"{len(records)} records from {records['run_id'].nunique()} finished run(s), "
             f"{records['image'].nunique()} distinct images.", "", f"Fixed parameters: {fixed}.", ""]
    for title, table in report_tables(summary).items():
        lines += [f"## {title}", "", markdown_table(table, ".3f"), ""]
    lines += ["## Figures", ""]
    lines += [f"![{name}](figures/{name}.png) ([PDF](figures/{name}.pdf))" for name in made]
    lines.append("")
    first_run = sweep_dir / "runs" / str(records["run_id"].iloc[0]) / "provenance.json"
    if first_run.exists():
        info = json.loads(first_run.read_text())
        lines += ["## Provenance", "", f"git commit `{info.get('git_commit')}`, Python {info.get('python')}, "
                  f"device {info.get('device')}, {info.get('platform')}", "",
                  "packages: " + ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items()), ""]
    skipped = skipped_images(sweep_dir, records["run_id"].unique())
    if not skipped.empty:
        lines += ["## Skipped images (could not be read)", "", markdown_table(skipped, ".3f"), ""]
    return lines


def build_report(sweep_dir) -> Report:
    """Write ``summary.parquet``, ``summary.csv``, ``report.md``, ``report.html`` and ``figures/`` for a sweep directory.

    The one entry point of the report: a run that failed, or whose records cannot be read, is listed
    with its cause; when no run finished, no earlier summary or figure is left beside the report.

    Parameters
    ----------
    sweep_dir : path
        A sweep directory apt-research made (with its marker, ``_io.require_owned``): nothing is written or
        removed in any other folder.

    Returns
    -------
    Report
        Where ``report.md`` is, the records, the summary and the markdown text.
    """
    sweep_dir = require_owned(sweep_dir, "sweep", "sweep_dir")
    records, problems = load_records(sweep_dir)
    lines = [f"# Sweep report: {sweep_dir.name}", ""]
    if records.empty:
        summary, made = pd.DataFrame(), []
        lines += ["No run finished.", ""]
    else:
        summary = summarise(records)
        with atomic_path(sweep_dir / "summary.parquet") as temporary:
            summary.to_parquet(temporary, index=False)
        with atomic_path(sweep_dir / "summary.csv") as temporary:
            summary.to_csv(temporary, index=False)
        made = make_figures(records, summary, sweep_dir / "figures")
        lines += _results_markdown(sweep_dir, records, summary, made)
    _remove_stale(sweep_dir, made)
    if problems:
        lines += ["## Runs that did not finish", ""]
        lines += [f"- `{p['run_id']}`: {p['state']}: {str(p['error'] or '').splitlines()[0] if p['error'] else ''}"
                  for p in problems]
        lines.append("")
    markdown = "\n".join(lines)
    write_html_report(sweep_dir, markdown)
    return Report(sweep_dir / "report.md", records, summary, markdown)
