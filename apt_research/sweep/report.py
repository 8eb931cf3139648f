"""Aggregate a sweep directory's records into ``summary.parquet``/``summary.csv``, ``report.md`` and figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .. import figures
from .._io import atomic_path, write_atomic
from .layout import is_finished

CONFIG_COLUMNS = ["resize", "image_size", "patch_size", "num_scales", "bins", "method", "method_options",
                  "target_retention", "calibration", "thresholds"]
MODELS = ("vit_s", "vit_b", "vit_l", "vit_h")


@dataclass
class Report:
    path: Path
    records: pd.DataFrame
    summary: pd.DataFrame
    markdown: str


def load_records(sweep_dir) -> tuple[pd.DataFrame, list[dict]]:
    """Records of every finished run, and the status of every run that did not finish."""
    runs = sorted((Path(sweep_dir) / "runs").glob("*/"))
    tables, problems = [], []
    for run_dir in runs:
        if is_finished(run_dir):
            tables.append(pd.read_parquet(run_dir / "records.parquet"))
        else:
            status_path = run_dir / "status.json"
            status = json.loads(status_path.read_text()) if status_path.exists() else {"state": "incomplete"}
            problems.append({"run_id": run_dir.name, **status})
    records = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return records, problems


def _scale_sizes(records: pd.DataFrame) -> list[int]:
    return sorted(int(c.split("_")[1]) for c in records.columns if c.startswith("tokens_") and c[7:].isdigit())


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """One row per data set x configuration: counts, retention spread, savings, scale mix, entropy, fidelity."""
    keys = ["dataset"] + [c for c in CONFIG_COLUMNS if c in records.columns]
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
    for column in records.columns:
        if column.startswith("measured_speedup_"):
            aggregations[column] = (column, "mean")
    if "target_retention" not in records.columns:
        keys = [k for k in keys if k not in ("target_retention", "calibration")]
    grouped = records.groupby(keys, dropna=False, sort=True)
    summary = grouped.agg(**aggregations)
    for model in MODELS:
        if f"gflops_apt_{model}" in records.columns:
            summary[f"speedup_pred_{model}"] = (grouped[f"gflops_uniform_{model}"].sum()
                                                / grouped[f"gflops_apt_{model}"].sum())
    return summary.reset_index()


def _threshold_axis(table: pd.DataFrame) -> pd.Series:
    """The largest threshold of each setting: one number to order settings along an x axis."""
    return table["thresholds"].map(lambda t: max((float(v) for v in str(t).split(",") if v), default=np.nan))


def make_figures(records: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[str]:
    """The report's figures as PDF and PNG in ``out_dir``; returns their names."""
    figures.paper_style()
    made = []
    records = records.assign(threshold=_threshold_axis(records))
    order = sorted(records["dataset"].unique())
    palette = dict(zip(order, sns.color_palette("colorblind", len(order))))
    hue = {"hue": "dataset", "hue_order": order, "palette": palette}

    def save(figure, name):
        figures.save_figure(figure, out_dir / name)
        plt.close(figure)
        made.append(name)

    figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
    sns.lineplot(data=records, x="threshold", y="retention", style="num_scales", marker="o", errorbar=("pi", 50),
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

    mix = summary.assign(setting=summary["dataset"] + " | " + summary["thresholds"].astype(str) + " | S="
                         + summary["num_scales"].astype(str) + " | bins=" + summary["bins"].astype(str))
    mix_cols = [f"mix_{s}" for s in sizes if f"mix_{s}" in mix]
    figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN * 2, 0.25 * len(mix) + 1.0))
    mix.set_index("setting")[mix_cols].rename(columns=lambda c: c[4:] + " px").plot.barh(stacked=True, ax=ax, width=0.8)
    ax.set(xlabel="share of tokens per patch size", ylabel="")
    ax.legend(loc="lower right", fontsize=6)
    save(figure, "scale_mix")

    figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
    sns.scatterplot(data=summary, x="retention_mean", y="psnr_mean", style="num_scales", ax=ax, **hue)
    for dataset, part in summary.sort_values("retention_mean").groupby("dataset"):
        ax.plot(part["retention_mean"], part["psnr_mean"], linewidth=0.6, alpha=0.6, color=palette[dataset])
    ax.set(xlabel="retention (mean)", ylabel="PSNR of reconstruction (dB)")
    save(figure, "fidelity_vs_retention")

    if "speedup_pred_vit_b" in summary:
        figure, ax = plt.subplots(figsize=(figures.COLUMN_WIDTH_IN, 2.4))
        base = float(records["tokens_base_grid"].mean())
        patch = int(records["patch_size"].iloc[0])
        figures.plot_speedup_curves(ax, base, patch, MODELS)
        for model, marker in zip(MODELS, "os^D"):
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
        sns.scatterplot(data=summary, x="speedup_pred_vit_b", y="psnr_mean", style="num_scales", ax=ax, **hue)
        ax.set(xlabel="predicted ViT-B speedup (cost model)", ylabel="PSNR of reconstruction (dB)")
        save(figure, "fidelity_vs_speedup")

    for column, name in (("bins", "bins_ablation"), ("num_scales", "scales_ablation"), ("method", "scorers_ablation"),
                         ("image_size", "resolutions_ablation")):
        if column in records and records[column].nunique() > 1:
            figure, axes = plt.subplots(1, 2, figsize=(figures.COLUMN_WIDTH_IN * 2, 2.4))
            dodge = 0.3 if records["dataset"].nunique() > 1 else False
            sns.pointplot(data=records, x=column, y="retention", errorbar=("pi", 50), dodge=dodge, ax=axes[0], **hue)
            sns.pointplot(data=records, x=column, y="ssim", errorbar=("pi", 50), dodge=dodge, ax=axes[1], **hue)
            axes[0].set(ylabel="retention (mean, interquartile bars)")
            axes[1].set(ylabel="SSIM of reconstruction")
            figure.tight_layout()
            save(figure, name)
    return made


def _markdown_table(table: pd.DataFrame, floatfmt=".3f") -> str:
    return table.to_markdown(index=False, floatfmt=floatfmt)


def build_report(sweep_dir) -> Report:
    """Write ``summary.parquet``, ``summary.csv``, ``report.md`` and ``figures/`` for a sweep directory."""
    sweep_dir = Path(sweep_dir)
    records, problems = load_records(sweep_dir)
    lines = [f"# Sweep report: {sweep_dir.name}", ""]
    if records.empty:
        summary = pd.DataFrame()
        lines += ["No finished run yet.", ""]
        made = []
    else:
        summary = summarise(records)
        with atomic_path(sweep_dir / "summary.parquet") as temporary:
            summary.to_parquet(temporary, index=False)
        with atomic_path(sweep_dir / "summary.csv") as temporary:
            summary.to_csv(temporary, index=False)
        made = make_figures(records, summary, sweep_dir / "figures")
        shown = ["dataset", "image_size", "num_scales", "bins", "method", "thresholds", "images", "retention_mean",
                 "retention_p10", "retention_p90", "savings_mean", "psnr_mean", "ssim_mean"]
        lines += [f"{len(records)} records from {records['run_id'].nunique()} finished run(s), "
                  f"{records['image'].nunique()} distinct images.", "",
                  "## Token savings and fidelity per data set and configuration", "",
                  _markdown_table(summary[[c for c in shown if c in summary]]), "",
                  "## Token budgets and speed (cost model; measured where the spec asked)", "",
                  _markdown_table(summary[[c for c in ["dataset", "target_retention", "calibration", "thresholds",
                                                       "retention_mean", "psnr_mean", "ssim_mean"] if c in summary]
                                          + [c for c in summary if c.startswith(("speedup_pred_", "measured_"))]],
                                  floatfmt=".3f"), "",
                  "## Scale mix (share of tokens per patch size)", "",
                  _markdown_table(summary[["dataset", "num_scales", "thresholds"]
                                          + [c for c in summary if c.startswith("mix_")]]), "",
                  "## Entropy statistics (mean over images of each image's per-scale statistic)", "",
                  _markdown_table(summary[["dataset", "num_scales", "bins"]
                                          + [c for c in summary if c.startswith("score_")]].drop_duplicates()), "",
                  "## Figures", ""]
        lines += [f"![{name}](figures/{name}.png) ([PDF](figures/{name}.pdf))" for name in made]
        lines.append("")
        first_run = sweep_dir / "runs" / str(records["run_id"].iloc[0]) / "provenance.json"
        if first_run.exists():
            info = json.loads(first_run.read_text())
            lines += ["## Provenance", "", f"git commit `{info.get('git_commit')}`, Python {info.get('python')}, "
                      f"device {info.get('device')}, {info.get('platform')}", "",
                      "packages: " + ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items()), ""]
    if problems:
        lines += ["## Runs that did not finish", ""]
        lines += [f"- `{p['run_id']}`: {p.get('state')}: {str(p.get('error', '')).splitlines()[0] if p.get('error') else ''}"
                  for p in problems]
        lines.append("")
    markdown = "\n".join(lines)
    write_atomic(sweep_dir / "report.md", markdown)
    return Report(sweep_dir / "report.md", records, summary, markdown)
