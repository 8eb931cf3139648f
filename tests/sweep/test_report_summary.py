"""The report's words: the opening summary computed from hand-made summaries (each expected sentence worked out by
hand from the table above it), missing values written one way, the compact spec rebuilt from an expanded one."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from apt_research.sweep.report import (column_label, report_summary_text, report_tables, setting_pivot, summarise,
                                       _shown)
from apt_research.sweep.report_html import MISSING, markdown_table, rebuilt_spec

ROOT = Path(__file__).resolve().parents[2]

COLUMNS = ["dataset", "bins", "thresholds", "images", "retention_mean", "ssim_mean", "psnr_mean", "speedup_pred_vit_b"]
TWO_DATA_SETS = pd.DataFrame([
    ("a", 256, "5,4", 2, 0.60, 0.95, 30.0, 1.6),
    ("a", 256, "6,5", 2, 0.40, 0.90, 25.0, 2.4),
    ("a", 512, "5,4", 2, 0.70, 0.97, 33.0, 1.4),
    ("a", 512, "6,5", 2, 0.52, 0.93, 28.0, 1.9),
    ("b", 256, "5,4", 3, 0.55, 0.98, 40.0, 1.8),
    ("b", 256, "6,5", 3, 0.49, 0.96, 38.0, 2.2),
    ("b", 512, "5,4", 3, 0.55, 0.98, 40.0, 1.8),
    ("b", 512, "6,5", 3, 0.49, 0.97, 39.0, 2.0),
], columns=COLUMNS)


def records_of(rows):
    """Records with the run, data set and image columns the summary sentences count."""
    return pd.DataFrame(rows, columns=["run_id", "dataset", "image"])


def test_summary_of_two_data_sets_and_two_bins():
    records = records_of([("r1", "a", "i1"), ("r1", "a", "i2"), ("r2", "a", "i1"), ("r2", "a", "i2"),
                          ("r3", "b", "x1"), ("r3", "b", "x2"), ("r3", "b", "x3"), ("r4", "b", "x1")])
    skipped = pd.DataFrame([{"run_id": "r1", "item": "bad.png", "error": "truncated"}])
    sentences = report_summary_text(TWO_DATA_SETS, records, [{"run_id": "r5", "state": "failed", "error": "boom"}],
                                    skipped)
    assert sentences == [
        "8 configurations from 4 finished runs on 2 data sets (a: 2 images, b: 3 images); varied: bins (256, 512) "
        "and 2 threshold settings.",
        # a: 0.52 is nearest 0.5 (512, 6,5); b: 0.49 twice (256 then 512 at 6,5): the first, and the tie said
        "Near 50% retention (each data set's configuration whose mean retention is nearest; not interpolated): "
        "a keeps 52.0% of its tokens with mean SSIM 0.930 and PSNR 28.0 dB (bins=512, thresholds=6,5); "
        "b keeps 49.0% of its tokens with mean SSIM 0.960 and PSNR 38.0 dB (bins=256, thresholds=6,5; "
        "first of 2 configurations at this retention).",
        "Mean retention spans 40.0% (bins=256, thresholds=6,5) to 70.0% (bins=512, thresholds=5,4) on a; "
        "49.0% (bins=256, thresholds=6,5) to 55.0% (bins=256, thresholds=5,4) on b.",
        # a: 0.70 - 0.60 = +10 pp at 5,4 and 0.52 - 0.40 = +12 pp at 6,5; b: 0 and 0
        "Against bins=256, with the same data set and threshold setting: bins=512 changes mean retention by "
        "+11.0 pp on a (mean of 2 pairs, +10.0 to +12.0 pp), +0.0 pp on b (2 pairs, each +0.0 pp).",
        "The cost model predicts ViT-B speedups over uniform patches from 1.40x at 70.0% retention (dataset=a, "
        "bins=512, thresholds=5,4) to 2.40x at 40.0% retention (dataset=a, bins=256, thresholds=6,5); predicted, "
        "nothing was timed.",
        "4 of 5 runs finished; 1 failed (listed under Runs that did not finish); 1 image could not be read and was "
        "left out of 1 run (listed under Skipped images).",
    ]


def test_summary_of_a_zipped_parameter_with_measured_speed_and_a_missing_psnr():
    summary = pd.DataFrame([("s", 2, "5", 1, 0.60, 0.97, 35.0, 1.6, 1.3),
                            ("s", 3, "5,4", 1, 0.50, 0.95, np.nan, 1.9, 1.5)],
                           columns=["dataset", "num_scales", "thresholds", "images", "retention_mean", "ssim_mean",
                                    "psnr_mean", "speedup_pred_vit_s", "measured_speedup_vit_s"])
    sentences = report_summary_text(summary, records_of([("r1", "s", "i1"), ("r2", "s", "i1")]))
    assert sentences == [
        "2 configurations from 2 finished runs on 1 data set (s: 1 image); varied: num_scales (2, 3) and "
        "2 threshold settings.",
        "Near 50% retention (each data set's configuration whose mean retention is nearest; not interpolated): "
        "s keeps 50.0% of its tokens with mean SSIM 0.950 (num_scales=3, thresholds=5,4).",  # no PSNR: none said
        "Mean retention spans 50.0% (num_scales=3, thresholds=5,4) to 60.0% (num_scales=2, thresholds=5) on s.",
        "No two configurations differ in num_scales alone (it changes together with thresholds), so its effect on "
        "retention is not separated; over all data sets, mean retention is 60.0% with num_scales=2; 50.0% with "
        "num_scales=3.",
        "The cost model predicts ViT-S speedups over uniform patches from 1.60x at 60.0% retention (dataset=s, "
        "num_scales=2, thresholds=5) to 1.90x at 50.0% retention (dataset=s, num_scales=3, thresholds=5,4).",
        "Measured ViT-S speedups, timed in the runs: from 1.30x at 60.0% retention (dataset=s, num_scales=2, "
        "thresholds=5) to 1.50x at 50.0% retention (dataset=s, num_scales=3, thresholds=5,4).",
        "All 2 runs finished; no image was skipped.",
    ]


def test_summary_of_one_configuration():
    summary = TWO_DATA_SETS.iloc[:1]
    sentences = report_summary_text(summary, records_of([("r1", "a", "i1")]))
    assert sentences[0] == ("1 configuration from 1 finished run on 1 data set (a: 1 image); varied: 1 threshold "
                            "setting.")
    assert sentences[2] == "Mean retention spans 60.0% (thresholds=5,4) on a."
    assert sentences[3] == ("The cost model predicts ViT-B speedups over uniform patches of 1.60x at 60.0% retention "
                            "(dataset=a, thresholds=5,4); predicted, nothing was timed.")
    assert sentences[-1] == "The run finished; no image was skipped."


def test_calibrated_configurations_are_compared_at_the_same_target_retention():
    summary = pd.DataFrame([("s", 256, 0.5, "5,4", 0.52), ("s", 512, 0.5, "6,5", 0.49)],
                           columns=["dataset", "bins", "target_retention", "thresholds", "retention_mean"])
    sentences = report_summary_text(summary, records_of([("r1", "s", "i1"), ("r2", "s", "i1")]))
    assert ("Against bins=256, with the same data set and target retention: bins=512 changes mean retention by "
            "-3.0 pp on s (1 pair).") in sentences  # thresholds calibrated per configuration: not matched on


def scale_records():
    """Records of two configurations: num_scales=2 (no 64 px scale: its tokens column absent, as in a run's records)
    and num_scales=3 whose 64 px scale is present and holds no token."""
    rows = []
    for num_scales, tokens in ((2, {16: 8, 32: 2}), (3, {16: 6, 32: 4, 64: 0})):
        for image in ("i1", "i2"):
            row = {"run_id": f"r{num_scales}", "dataset": "a", "image": image, "num_scales": num_scales,
                   "thresholds": "5" if num_scales == 2 else "5,4", "tokens_total": sum(tokens.values()),
                   "tokens_base_grid": 16, "psnr": math.inf if image == "i1" else 30.0, "ssim": 0.9}
            row["retention"] = row["tokens_total"] / 16
            row["savings"] = 1 - row["retention"]
            for size, count in tokens.items():
                row[f"tokens_{size}"] = count
                row.update({f"score_{size}_{stat}": 5.0 for stat in ("mean", "std", "p50")})
            rows.append(row)
    return pd.DataFrame(rows)


def cells(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()[2:]]


def test_an_absent_scale_is_missing_and_a_present_unused_one_is_zero():
    summary = summarise(scale_records())
    two, three = summary.set_index("num_scales").loc[2], summary.set_index("num_scales").loc[3]
    assert np.isnan(two["mix_64"]) and np.isnan(two["score_64_mean"]) and three["mix_64"] == 0
    mix = cells(_shown(report_tables(summary)["Scale mix (share of tokens per patch size)"]))
    assert [row[-1] for row in mix] == [MISSING, "0.000"]  # 64 px: missing for num_scales=2, 0 for num_scales=3
    entropy = report_tables(summary)["Entropy statistics (mean over images of each image's statistic at each patch "
                                     "size)"]
    assert list(entropy["scale"]) == ["16 px", "32 px", "16 px", "32 px", "64 px"]  # no row for a scale it lacks


def test_every_missing_value_is_written_one_way():
    summary = summarise(scale_records())
    pivot = setting_pivot(summary, "retention_mean")  # num_scales changes with thresholds: two empty cells
    texts = [_shown(table) for table in [pivot, *report_tables(summary).values()]]
    texts.append(markdown_table(pd.DataFrame({"text": ["x", None], "number": [1.5, np.nan],
                                              "whole": pd.array([1, None], dtype="Int64")})))
    found = [cell for text in texts for row in cells(text) for cell in row]
    assert found.count(MISSING) >= 5
    assert not {"nan", "NaN", "None", "<NA>", "inf", ""} & set(found), set(found)
    assert column_label("mix_64") == "64 px" and column_label("speedup_pred_vit_b") == "ViT-B"


def test_a_parameter_set_to_none_is_a_value_not_a_missing_one():
    summary = TWO_DATA_SETS.iloc[:2].assign(limit=[None, 2])
    table = _shown(summary[["dataset", "limit", "thresholds", "retention_mean"]])
    assert [row[1] for row in cells(table)] == ["none", "2"]


def test_the_pivot_puts_data_sets_and_the_fittest_parameter_across():
    pivot = setting_pivot(TWO_DATA_SETS, "retention_mean")
    assert list(pivot.columns) == ["thresholds", "a, bins=256", "a, bins=512", "b, bins=256", "b, bins=512"]
    assert pivot.to_numpy().tolist() == [["5,4", 0.60, 0.70, 0.55, 0.55], ["6,5", 0.40, 0.52, 0.49, 0.49]]


def test_the_compact_spec_is_rebuilt_from_an_expanded_one():
    from apt_research.sweep.spec import load_spec

    sweep = load_spec(ROOT / "ablations" / "default.yaml")
    expanded = {"name": sweep.name, "description": sweep.description,
                "runs": [{"run_id": run["run_id"], **run["params"]} for run in sweep.runs]}
    text = rebuilt_spec(expanded)
    assert text.startswith("# Rebuilt from spec.yaml")
    written = yaml.safe_load((ROOT / "ablations" / "default.yaml").read_text())
    rebuilt = yaml.safe_load(text)
    assert rebuilt["grid"] == written["grid"] and rebuilt["zip"] == written["zip"]
    assert rebuilt["fixed"] == {}  # resize, image_size, patch_size and method at their defaults: left out
    uneven = dict(expanded, runs=expanded["runs"][:3])  # no grid of anything: each parameter's values
    assert set(yaml.safe_load(rebuilt_spec(uneven))["varied"]) == {"num_scales", "bins", "thresholds"}
