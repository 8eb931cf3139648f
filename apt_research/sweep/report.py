"""Aggregate a sweep directory's records into ``summary.parquet``/``summary.csv``, ``report.md`` and figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..presentation import figures
from .._io import atomic_path, remove_file, require_owned
from .report_html import MISSING, markdown_table, write_html_report
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


def _compact_text(value) -> str:
    """A value as a figure names it: a list or mapping (or its JSON text) without quotes, ``{aggregate: max}``."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_compact_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_compact_text(item) for item in value) + "]"
    return str(value)


def configuration_label(records: pd.DataFrame) -> pd.Series:
    """Each record's varied parameters as one label (``bins=256, num_scales=3``); ``all`` when none varies.

    Lists and mappings are written without quotes (``method_options={aggregate: max}``) unless that would make two
    configurations' labels the same."""
    varied = varied_parameters(records)
    if not varied:
        return pd.Series("all", index=records.index)
    full = records[varied].astype(str).apply(lambda row: ", ".join(f"{k}={v}" for k, v in row.items()), axis=1)
    compact = records[varied].astype(str).apply(
        lambda row: ", ".join(f"{k}={_compact_text(v)}" for k, v in row.items()), axis=1)
    return compact if compact.nunique() == full.nunique() else full


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """One row per data set x configuration x threshold setting: counts, retention spread, savings, scale mix,
    entropy, fidelity."""
    keys = config_columns(records)
    records = records.copy()
    sizes = _scale_sizes(records)
    for size in sizes:  # a scale the configuration lacks (fewer num_scales) is missing; one it has but left unused is 0
        records[f"mix_{size}"] = records[f"tokens_{size}"] / records["tokens_total"]
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

    For each data set, the run and threshold setting whose mean retention is nearest ``REFERENCE_RETENTION`` (the
    first of a tie, in the records' order), with that run's cached maps (``cache/<maps_key>.npz``, the key its
    records kept); data sets whose maps are not cached are left out. Nothing lists the data sets, so a sweep
    directory whose data sets moved or are gone still makes its report. ``example_settings`` names what is shown.

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
        first = _example_rows(rows).iloc[0]
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


def ablation_groups(records: pd.DataFrame) -> list[list[str]]:
    """The varied parameters as the ablation figures show them: ``[key]`` for each parameter whose every value ran
    with the same values of the other varied parameters (a grid axis), then one group of all the others, which
    change together (zipped: ``method`` with ``method_options``), shown as their combinations, never pooled."""
    varied = varied_parameters(records)
    text = records[varied].astype(str)
    alone, together = [], []
    for key in varied:
        others = [k for k in varied if k != key]
        seen = [frozenset(map(tuple, part[others].drop_duplicates().to_numpy())) for _, part in text.groupby(key)]
        (alone if not others or len(set(seen)) == 1 else together).append(key)
    return [[key] for key in alone] + ([together] if together else [])


def _example_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The records of one data set's run and setting whose mean retention is nearest ``REFERENCE_RETENTION``."""
    keys = [key for key in ("run_id", "thresholds", *([] if "target_retention" not in rows else ["target_retention"]))
            if key in rows]
    groups = rows.groupby(keys, sort=False, dropna=False)
    distance = (groups["retention"].mean() - REFERENCE_RETENTION).abs()
    return groups.get_group(distance.index[int(np.argmin(distance.to_numpy()))])


def example_settings(records: pd.DataFrame) -> dict[str, str]:
    """``{dataset: what its examples show}``: the configuration and setting ``example_patch_grids`` takes, with their
    mean retention, e.g. ``bins=512; thresholds 5.75/4; mean retention 52.0%``."""
    records = records.assign(configuration=configuration_label(records))
    shown = {}
    for dataset, rows in records.groupby("dataset", sort=True):
        first = _example_rows(rows)
        row = first.iloc[0]
        target = row.get("target_retention")
        values = [v for v in str(row["thresholds"]).split(",") if v]
        setting = "no thresholds" if not values else "thresholds " + "/".join(f"{float(v):.3g}" for v in values)
        if target is not None and not pd.isna(target):
            setting = f"target retention {float(target):g}"
        parts = ([] if row["configuration"] == "all" else [row["configuration"]]) + [
            setting, f"mean retention {_percent(first['retention'].mean())}"]
        shown[str(dataset)] = "; ".join(parts)
    return shown


def make_figures(records: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[str]:
    """The report's figures (``presentation.report_figures``) as PDF and PNG in ``out_dir``; returns their names.

    Each is drawn in the one paper style (``presentation.style``, applied for these figures only) and is
    3.35 in (one column) or 6.9 in (two columns) wide; every data set has one colour in all of them.
    """
    from ..presentation import report_figures, style

    made = []
    records = records.assign(threshold=_threshold_axis(records), configuration=configuration_label(records))
    summary = summary.assign(configuration=configuration_label(summary))
    palette = figures.dataset_palette(sorted(records["dataset"].astype(str).unique()))

    def save(figure, name):
        try:
            figures.save_figure(figure, out_dir / name)
        finally:
            plt.close(figure)
        made.append(name)

    with style.paper_context():
        curves = records.dropna(subset=["threshold"]).groupby(["dataset", "configuration"])["thresholds"].nunique()
        if (curves > 1).any():  # a threshold axis only where some data set and configuration ran two settings or more
            save(report_figures.plot_retention_vs_threshold(records, palette), "retention_vs_threshold")
        if any(f"score_{size}_mean" in records for size in _scale_sizes(records)):
            save(report_figures.plot_entropy_distributions(records, palette), "entropy_distributions")
        save(report_figures.plot_scale_mix(summary), "scale_mix")
        save(report_figures.plot_fidelity_vs_retention(summary, palette), "fidelity_vs_retention")
        if any(column.startswith("speedup_pred_") for column in summary):
            save(report_figures.plot_speedup_vs_retention(records, summary, palette), "speedup_vs_retention")
        if "speedup_pred_vit_b" in summary:
            save(report_figures.plot_fidelity_vs_speedup(summary, palette, "vit_b"), "fidelity_vs_speedup")
        if "agreement" in summary:  # a line per data set (colour) and configuration (marker, when one varies)
            curves = summary.assign(curve=summary["dataset"].astype(str) + " | " + summary["configuration"])
            marker = "configuration" if summary["configuration"].nunique() > 1 else "dataset"
            save(figures.plot_model_vs_retention(curves, curve="curve" if marker == "configuration" else "dataset",
                                                 colour_by="dataset", marker_by=marker, palette=palette),
                 "model_vs_retention")
        for group in ablation_groups(records):  # a figure per parameter varied alone, one for those that vary together
            column = ", ".join(group)
            shown = records
            if len(group) > 1 or not pd.api.types.is_numeric_dtype(records[column]):  # values as text, compact
                shown = records.assign(**{column: records[group].astype(str).apply(
                    lambda row: ", ".join(_compact_text(value) for value in row), axis=1)})
            save(report_figures.plot_ablation(shown, column, palette), f"{group[0]}_ablation")
        examples = example_patch_grids(out_dir.parent, records)
        if examples:
            figure = figures.plot_dataset_examples(examples, columns=2, palette=palette)
            named = example_settings(records)
            for ax in figure.axes:  # each row names the configuration and setting it shows (``example_settings``)
                if ax.get_ylabel() in named:
                    ax.yaxis.label.set_text(f"{ax.get_ylabel()}\n" + report_figures._fit(
                        named[ax.get_ylabel()], (figure.get_size_inches()[1] - 0.3) / len(examples) - 0.3, 8))
            save(figure, "dataset_examples")
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


REFERENCE_RETENTION = 0.5
"""The retention at which the opening summary gives each data set's fidelity: its configuration nearest to it."""

LABEL_CHARACTERS = 32
"""A parameter value longer than this is cut in the summary's sentences and a pivot's headers (``_short_texts``)."""

PIVOT_COLUMNS = 6
"""At most this many value columns in a pivoted table (``setting_pivot``)."""

COLUMN_LABELS = {
    "images": "images", "retention_mean": "retention mean", "retention_median": "retention median",
    "retention_p10": "retention p10", "retention_p90": "retention p90", "savings_mean": "savings mean",
    "tokens_mean": "tokens mean", "psnr_mean": "PSNR (dB)", "ssim_mean": "SSIM", "agreement": "agreement",
    "top1_accuracy": "top-1 APT", "uniform_top1_accuracy": "top-1 uniform", "kl_mean": "KL mean",
}
"""Short headers of the summary's columns in the report's tables (``column_key`` explains each)."""

_FORMATS = {"tokens_mean": ".1f", "psnr_mean": ".2f"}
"""Decimals of the columns that do not take three (``_shown``)."""

_SETTING_WORDS = {"dataset": "data set", "thresholds": "threshold setting", "target_retention": "target retention"}


def _model_name(model: str) -> str:
    """``vit_b`` as ``ViT-B``; any other model's name as it is."""
    return f"ViT-{model[4:].upper()}" if model.startswith("vit_") else model


def column_label(column: str) -> str:
    """The short header a report table gives summary column ``column`` (``mix_16``: ``16 px``)."""
    if column in COLUMN_LABELS:
        return COLUMN_LABELS[column]
    if column.startswith("mix_"):
        return f"{column[4:]} px"
    if column.startswith("speedup_pred_"):
        return _model_name(column.removeprefix("speedup_pred_"))
    if column.startswith("measured_speedup_"):
        return f"{_model_name(column.removeprefix('measured_speedup_'))} measured"
    return column


def _value_text(value) -> str:
    """A parameter's value as the report writes it: ``none`` for no value (``limit: null``, a value and not a
    missing one), JSON for lists and mappings, a whole number without ``.0``, else ``str``."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return "none"
    if isinstance(value, float) and value.is_integer():  # an integer column that a none made float (limit)
        return str(int(value))
    return str(value)


def _shown(table: pd.DataFrame) -> str:
    """``table`` as a report's markdown table: parameter values as text, metrics under their short headers, three
    decimals, every missing value written one way (``report_html.MISSING``)."""
    table = table.copy()
    for column in table:
        if column in PARAMETERS:
            table[column] = table[column].map(_value_text)
    formats = [_FORMATS.get(column, ".3f") for column in table]
    return markdown_table(table.rename(columns=column_label), formats)


def entropy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per data set x configuration (threshold settings aside: they do not change the scores) x patch size
    the configuration has: the mean over images of each image's mean, std and median score at that size.

    A patch size the configuration lacks (fewer ``num_scales``) has no row; one it has whose scores are all
    padding keeps its row, with its statistics missing.
    """
    keys = [key for key in config_columns(summary) if key not in SETTING_COLUMNS]
    sizes = sorted(int(column[4:]) for column in summary if column.startswith("mix_"))
    present = {size: summary[f"mix_{size}"].notna() for size in sizes}
    rows = []
    for index in summary[keys].astype(str).drop_duplicates().index:
        row = summary.loc[index]
        for size in sizes:
            if present[size][index]:
                rows.append({**{key: row[key] for key in keys}, "scale": f"{size} px",
                             **{stat: row.get(f"score_{size}_{stat}", np.nan) for stat in ("mean", "std", "p50")}})
    return pd.DataFrame(rows, columns=[*keys, "scale", "mean", "std", "p50"])


def report_tables(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The report's detailed tables by title, each a few columns wide; each starts with the columns that tell
    configurations apart."""
    keys = config_columns(summary)
    measured = [c for c in summary if c.startswith("measured_speedup_") and summary[c].notna().any()]
    tables = {
        "Token savings and fidelity per data set and configuration":
            summary[keys + ["images", "retention_mean", "retention_p10", "retention_p90", "tokens_mean", "psnr_mean",
                            "ssim_mean"]],
        "Token budgets and speed: ViT speedup over uniform patches, predicted by the cost model":
            summary[keys + ["retention_mean", "tokens_mean"] + [c for c in summary if c.startswith("speedup_pred_")]],
    }
    if measured:
        tables["Measured speed: ViT speedup over uniform patches, timed in the runs"] = summary[
            keys + ["retention_mean", *measured]]
    if "agreement" in summary:
        tables["Classifier on APT against uniform tokens (agreement, top-1 accuracy, KL)"] = summary[
            keys + ["retention_mean", "agreement", "top1_accuracy", "uniform_top1_accuracy", "kl_mean"]]
    tables["Scale mix (share of tokens per patch size)"] = summary[keys + [c for c in summary if c.startswith("mix_")]]
    entropy = "Entropy statistics (mean over images of each image's statistic at each patch size)"
    tables[entropy] = entropy_table(summary)
    return tables


def setting_pivot(summary: pd.DataFrame, value: str) -> pd.DataFrame:
    """Summary column ``value`` as a compact table: one row per threshold setting (and each further varied
    parameter), one column per data set, split by the varied parameter with the fewest values too where that
    keeps the table at most ``PIVOT_COLUMNS`` columns of values. Rows and columns keep the summary's order; a
    configuration the sweep did not run is missing."""
    keys = config_columns(summary)
    text = _short_texts(summary[keys])
    across = ["dataset"]
    fitting = [key for key in varied_parameters(summary)
               if len(text[[*across, key]].drop_duplicates()) <= PIVOT_COLUMNS and len(keys) > len(across) + 1]
    if fitting:  # the one that leaves the fewest rows (not one that changes with the setting), then the shortest
        across.append(min(fitting, key=lambda k: (len(text[[c for c in keys if c not in (*across, k)]]
                                                       .drop_duplicates()), text[k].str.len().max())))
    down = [key for key in keys if key not in across] or ["setting"]
    text = text.assign(setting="all") if down == ["setting"] else text
    columns = text[across].apply(lambda row: ", ".join(v if k == "dataset" else f"{k}={v}" for k, v in row.items()),
                                 axis=1)
    frame = text[down].assign(_column=columns, _value=summary[value])
    rows = frame[down].drop_duplicates()
    table = frame.pivot(index=down, columns="_column", values="_value")
    index = pd.MultiIndex.from_frame(rows) if len(down) > 1 else pd.Index(rows[down[0]], name=down[0])
    table = table.reindex(index=index, columns=list(dict.fromkeys(columns)))
    table.columns.name = None
    return table.reset_index()


def column_key(summary: pd.DataFrame) -> list[str]:
    """What each short header of the report's tables means, with its column in ``summary.csv``: markdown lines."""
    key = ["**retention mean, p10, p90**: tokens kept over the tokens of the uniform grid of base patches; mean, "
           "10th and 90th percentile over images (`retention_mean`, `retention_p10`, `retention_p90` in summary.csv; "
           "savings = 1 − retention). **tokens mean**: tokens kept per image (`tokens_mean`).",
           "**PSNR (dB)**, **SSIM**: the image rebuilt from its kept tokens against the image, mean over images; "
           "an infinite PSNR (an exact rebuild) left out (`psnr_mean`, `ssim_mean`).",
           "**ViT-S**, **ViT-B**, ...: the speedup over uniform base patches that the cost model predicts (FLOPs of "
           "the uniform tokens over FLOPs of the APT tokens, summed over images; `speedup_pred_<model>`)."]
    if any(column.startswith("measured_speedup_") for column in summary):
        key.append("**ViT-B measured**, ...: the speedup timed in the runs (`measured_speedup_<model>`).")
    if "agreement" in summary:
        key.append("**agreement**: share of images whose top-1 class on APT tokens is the one on uniform tokens; "
                   "**top-1 APT**, **top-1 uniform**: top-1 accuracy on each; **KL mean**: KL divergence of the APT "
                   "softmax from the uniform one, nats (`agreement`, `top1_accuracy`, `uniform_top1_accuracy`, "
                   "`kl_mean`).")
    key += ["**16 px**, **32 px**, ...: share of a configuration's tokens of that patch size (`mix_<size>`); 0 where "
            "the configuration has the patch size and used none of it.",
            "**scale**, **mean**, **std**, **p50**: each image's mean, standard deviation and median score at that "
            "patch size (bits for entropy), mean over images (`score_<size>_<stat>`).",
            f"**{MISSING}**: no value: a patch size the configuration does not have, a metric that was not computed, "
            "a configuration the sweep did not run."]
    return [f"- {line}" for line in key]


def _count(number, word: str) -> str:
    """``2 runs``, ``1 run``."""
    return f"{int(number)} {word}{'' if int(number) == 1 else 's'}"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _span(values: pd.Series) -> str:
    """``35.5% to 80.7%`` (lowest to highest, as percentages); one percentage where they are all one."""
    low, high = _percent(values.min()), _percent(values.max())
    return low if low == high else f"{low} to {high}"


def _short_texts(table: pd.DataFrame) -> pd.DataFrame:
    """Each column's values as text (``_value_text``); a value longer than ``LABEL_CHARACTERS`` cut in the middle
    (``/data/phot…/report``) where the cut values still tell the column's values apart."""
    def cut(text: str) -> str:
        half = (LABEL_CHARACTERS - 1) // 2
        return text if len(text) <= LABEL_CHARACTERS else f"{text[:half]}…{text[-half:]}"

    text = table.map(_value_text)
    for column in text:
        short = text[column].map(cut)
        if short.nunique() == text[column].nunique():
            text[column] = short
    return text


def _label(row: pd.Series, keys: list[str]) -> str:
    """A configuration's parameters ``keys`` as ``bins=256, thresholds=6.5,5``."""
    return ", ".join(f"{key}={_value_text(row[key])}" for key in keys)


def _fidelity_words(row: pd.Series) -> str:
    words = [f"mean SSIM {row['ssim_mean']:.3f}" if pd.notna(row.get("ssim_mean")) else "",
             f"PSNR {row['psnr_mean']:.1f} dB" if pd.notna(row.get("psnr_mean")) else ""]
    return " and ".join(word for word in words if word) or "no fidelity measured"


def _agreement_words(row: pd.Series) -> str:
    return f"{_percent(row['agreement'])} of the images at {_percent(row['retention_mean'])} retention"


def _extremes(summary: pd.DataFrame, column: str, keys: list[str], show) -> str:
    """``low (label) to high (label)`` of ``column`` over ``summary`` (the first row of each extreme); the one value
    where there is one row."""
    low, high = summary.loc[summary[column].idxmin()], summary.loc[summary[column].idxmax()]
    if len(summary) == 1:
        return f"{show(low)} ({_label(low, keys)})"
    return f"{show(low)} ({_label(low, keys)}) to {show(high)} ({_label(high, keys)})"


def _same(keys: list[str]) -> str:
    words = [_SETTING_WORDS.get(key, key) for key in keys]
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else words[0]


def _parameter_effect(summary: pd.DataFrame, key: str, keys: list[str]) -> str:
    """How mean retention changes with parameter ``key`` between configurations equal in every other column
    ``keys`` (data set, the other varied parameters, the threshold setting), per data set; where no two
    configurations differ in ``key`` alone, its range of retention at each value instead. Thresholds calibrated
    to a target retention follow from the configuration: configurations are then matched on the target."""
    others = [k for k in keys if k != key and not (k == "thresholds" and "target_retention" in keys)]
    text = summary[keys].map(_value_text)
    values = list(dict.fromkeys(text[key]))
    frame = text[others].assign(_value=text[key], _retention=summary["retention_mean"])
    base = frame[frame["_value"] == values[0]]
    clauses = []
    for value in values[1:]:
        pairs = base.merge(frame[frame["_value"] == value], on=others, suffixes=("_base", "_other"))
        if pairs.empty:
            continue
        parts = []
        for dataset, group in pairs.groupby("dataset", sort=False):
            change = 100 * (group["_retention_other"] - group["_retention_base"])
            if len(change) == 1:
                detail = "1 pair"
            elif f"{change.min():+.1f}" == f"{change.max():+.1f}":
                detail = f"{len(change)} pairs, each {change.min():+.1f} pp"
            else:
                detail = f"mean of {len(change)} pairs, {change.min():+.1f} to {change.max():+.1f} pp"
            parts.append(f"{change.mean():+.1f} pp on {dataset} ({detail})")
        clauses.append(f"{key}={value} changes mean retention by " + ", ".join(parts))
    if clauses:
        return (f"Against {key}={values[0]}, with the same {_same(others)}: " + "; ".join(clauses) + ".")
    together = [k for k in others if k != "dataset" and not set.intersection(
        *(set(text.loc[text[key] == v, k]) for v in values))]
    why = f" (it changes together with {', '.join(together)})" if together else ""
    spans = "; ".join(f"{_span(summary.loc[text[key] == value, 'retention_mean'])} with {key}={value}"
                      for value in values)
    return (f"No two configurations differ in {key} alone{why}, so its effect on retention is not separated; "
            f"over all data sets, mean retention is {spans}.")


def report_summary_text(summary: pd.DataFrame, records: pd.DataFrame, not_finished=(),
                        skipped: pd.DataFrame | None = None) -> list[str]:
    """The report's opening sentences, each computed from the summary and labelled with the configuration(s) its
    numbers come from.

    What the sweep measured; each data set's fidelity at its configuration nearest ``REFERENCE_RETENTION`` (the
    nearest, never interpolated, and named); the range of mean retention per data set; for each varied parameter,
    the change in mean retention between configurations equal in everything else (per data set); the predicted
    ViT-B speedup (the cost model: predicted, not timed); measured speedups and the classifier's agreement, where
    the sweep has them; the runs that did not finish and the images that could not be read.

    Parameters
    ----------
    summary : pandas.DataFrame
        ``summarise(records)``.
    records : pandas.DataFrame
        The finished runs' records (``run_id``, ``dataset``, ``image``).
    not_finished : sequence of dict
        The runs that did not finish (``load_records``: ``run_id``, ``state``, ``error``).
    skipped : pandas.DataFrame, optional
        The images that could not be read (``skipped_images``: ``run_id``, ``item``).

    Returns
    -------
    list of str
        One sentence each.
    """
    keys = config_columns(summary)
    labels = [key for key in keys if key != "dataset"]
    images = records.groupby("dataset")["image"].nunique()
    counts = {name: images.get(full, 0) for full, name in zip(summary["dataset"], _short_texts(summary[["dataset"]])
                                                              ["dataset"])}
    summary = summary.assign(**_short_texts(summary[keys]))  # every label below names a configuration shortly
    datasets = list(dict.fromkeys(summary["dataset"]))
    runs = records["run_id"].nunique()
    varied = [f"{key} ({', '.join(values) if len(values) <= 4 else f'{len(values)} values'})"
              for key in varied_parameters(summary) for values in [list(dict.fromkeys(summary[key]))]]
    varied += [_count(summary[key].nunique(), _SETTING_WORDS[key]) for key in SETTING_COLUMNS if key in summary]
    sentences = [f"{_count(len(summary), 'configuration')} from {_count(runs, 'finished run')} "
                 f"on {_count(len(datasets), 'data set')} ("
                 + ", ".join(f"{d}: {_count(counts[d], 'image')}" for d in datasets)
                 + f"); varied: {_same(varied)}."]

    nearest = []
    for dataset in datasets:
        rows = summary[summary["dataset"] == dataset]
        best = rows.loc[(rows["retention_mean"] - REFERENCE_RETENTION).abs().idxmin()]
        ties = int((rows["retention_mean"] == best["retention_mean"]).sum())
        where = "; ".join(part for part in [_label(best, labels),
                                            f"first of {ties} configurations at this retention" if ties > 1 else ""]
                          if part)
        nearest.append(f"{dataset} keeps {_percent(best['retention_mean'])} of its tokens with "
                       f"{_fidelity_words(best)}" + (f" ({where})" if where else ""))
    sentences.append(f"Near {100 * REFERENCE_RETENTION:g}% retention (each data set's configuration whose mean "
                     "retention is nearest; not interpolated): " + "; ".join(nearest) + ".")

    spans = [f"{_extremes(part, 'retention_mean', labels, lambda row: _percent(row['retention_mean']))} on {dataset}"
             for dataset in datasets for part in [summary[summary["dataset"] == dataset]]]
    sentences.append("Mean retention spans " + "; ".join(spans) + ".")

    sentences += [_parameter_effect(summary, key, keys) for key in varied_parameters(summary)]

    def speed(column):
        return lambda row: f"{row[column]:.2f}x at {_percent(row['retention_mean'])} retention"

    def preferred(prefix):  # ViT-B where the sweep has it, else the first; and the others
        models = [c.removeprefix(prefix) for c in summary if c.startswith(prefix) and summary[c].notna().any()]
        return ("vit_b" if "vit_b" in models else models[0], models) if models else (None, [])

    model, predicted = preferred("speedup_pred_")
    timed, measured = preferred("measured_speedup_")
    if model:
        column = f"speedup_pred_{model}"
        rows = summary[summary[column].notna()]
        sentences.append(f"The cost model predicts {_model_name(model)} speedups over uniform patches "
                         f"{'from' if len(rows) > 1 else 'of'} {_extremes(rows, column, keys, speed(column))}"
                         + ("" if timed else "; predicted, nothing was timed") + ".")
    if timed:
        column = f"measured_speedup_{timed}"
        rows = summary[summary[column].notna()]
        others = [_model_name(other) for other in measured if other != timed]
        sentences.append(f"Measured {_model_name(timed)} speedups, timed in the runs: "
                         f"{'from ' if len(rows) > 1 else ''}{_extremes(rows, column, keys, speed(column))}"
                         + (f" ({', '.join(others)} timed too: see the table)" if others else "") + ".")
    if "agreement" in summary and summary["agreement"].notna().any():
        rows = summary[summary["agreement"].notna()]
        sentences.append("The classifier's top-1 class on APT tokens is the one on uniform tokens for "
                         f"{_extremes(rows, 'agreement', keys, _agreement_words)}.")

    total = runs + len(not_finished)
    states = pd.Series([str(problem.get("state")) for problem in not_finished]).value_counts()
    finished = (f"All {runs} runs finished" if runs > 1 else "The run finished") if not not_finished else (
        f"{runs} of {total} runs finished; " + ", ".join(f"{count} {state}" for state, count in states.items())
        + " (listed under Runs that did not finish)")
    if skipped is not None and not skipped.empty:
        count, in_runs = skipped["item"].nunique(), skipped["run_id"].nunique()
        sentences.append(f"{finished}; {_count(count, 'image')} could not be read and "
                         f"{'were' if count > 1 else 'was'} left out of {_count(in_runs, 'run')} "
                         "(listed under Skipped images).")
    else:
        sentences.append(f"{finished}; no image was skipped.")
    return sentences


def _markdown_text(text: str) -> str:
    """``text`` with the markdown characters that would make a link, code or emphasis of a value escaped."""
    return "".join(f"\\{c}" if c in "\\`*[]" else c for c in text)


def _results_markdown(sweep_dir: Path, records: pd.DataFrame, summary: pd.DataFrame, made: list[str],
                      not_finished=()) -> list[str]:
    skipped = skipped_images(sweep_dir, records["run_id"].unique())
    lines = ["## Summary", ""]
    lines += [f"- {_markdown_text(sentence)}" for sentence in report_summary_text(summary, records, not_finished,
                                                                                  skipped)]
    lines += ["", "## Figures", ""]
    lines += [f"![{name}](figures/{name}.png) ([PDF](figures/{name}.pdf))" for name in made]
    fixed = ", ".join(f"{k}={_value_text(v)}" for k, v in fixed_parameters(records).items())
    lines += ["", "## Tables", "", f"{len(records)} records from {records['run_id'].nunique()} finished run(s), "
              f"{records['image'].nunique()} distinct images. Fixed parameters: {_markdown_text(fixed)}.", "",
              "Column key:", "", *column_key(summary), ""]
    for title, value in (("Retention by setting (mean over images)", "retention_mean"),
                         ("SSIM by setting (mean over images)", "ssim_mean")):
        lines += [f"## {title}", "", _shown(setting_pivot(summary, value)), ""]
    for title, table in report_tables(summary).items():
        lines += [f"## {title}", "", _shown(table), ""]
    first_run = sweep_dir / "runs" / str(records["run_id"].iloc[0]) / "provenance.json"
    if first_run.exists():
        info = json.loads(first_run.read_text())
        lines += ["## Provenance", "", f"git commit `{info.get('git_commit')}`, Python {info.get('python')}, "
                  f"device {info.get('device')}, {info.get('platform')}", "",
                  "packages: " + ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items()), ""]
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
        lines += _results_markdown(sweep_dir, records, summary, made, problems)
    _remove_stale(sweep_dir, made)
    if problems:
        lines += ["## Runs that did not finish", ""]
        lines += [f"- `{p['run_id']}`: {p['state']}: {str(p['error'] or '').splitlines()[0] if p['error'] else ''}"
                  for p in problems]
        lines.append("")
    markdown = "\n".join(lines)
    write_html_report(sweep_dir, markdown)
    return Report(sweep_dir / "report.md", records, summary, markdown)
