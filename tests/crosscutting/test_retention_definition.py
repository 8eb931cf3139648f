"""One definition of the retention of a set of images, used by calibration, records and summary alike.

The retention of one image is ``selection.retention`` (kept tokens over its base grid ``h_0 * w_0``); the
retention of a set is the mean over its images (``selection.mean_retention``), every image weighing the same
whatever its size. Calibration targets it and reports it, each record holds its image's retention, and the
sweep summary's ``retention_mean`` averages the records: with images of different sizes, these must agree
(they did not when calibration pooled tokens over images: the issue "Trust by design", "silently wrong numbers").
"""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from apt_research.calibration import calibrate_thresholds
from apt_research.contract import DEFAULT_PAD_VALUE
from apt_research.selection import mean_retention, retention, select_patches_by_threshold, token_counts
from apt_research.sweep.configuration import configuration_records
from apt_research.sweep.maps import compute_maps
from apt_research.sweep.parameters import validate_params
from apt_research.sweep.report import build_report, summarise
from apt_research.sweep.runner import run_sweep
from apt_research.sweep.spec import load_spec
from sweep_helpers import InProcessExecutor

TOLERANCE = 0.005  # calibrate_thresholds' default


# --- sets of importance maps of different sizes ----------------------------------------------------------------

def _image_maps(draw, num_scales, palette):
    """One image's maps ``{16 * 2**s: (1, h_s, w_s)}`` float32, with a coarse patch that reaches past the base
    grid scored ``DEFAULT_PAD_VALUE``, as the scorers pad the border."""
    rows, cols = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    maps = {}
    for scale in range(num_scales):
        factor = 2**scale
        h, w = -(-rows // factor), -(-cols // factor)
        scores = np.array(draw(st.lists(st.sampled_from(palette) | st.floats(0, 8, width=32),
                                        min_size=h * w, max_size=h * w)), dtype=np.float32).reshape(h, w)
        if scale:
            scores[[(i + 1) * factor > rows for i in range(h)], :] = DEFAULT_PAD_VALUE
            scores[:, [(j + 1) * factor > cols for j in range(w)]] = DEFAULT_PAD_VALUE
        maps[16 * factor] = torch.from_numpy(scores)[None]
    return maps


@st.composite
def map_sets(draw):
    """2 to 5 images of (mostly) different sizes and scores, as a list of per-image batched dicts."""
    num_scales = draw(st.integers(2, 3))
    palette = [0.0, 1.0, 2.5, 3.0, 4.0, 7.5]  # repeated scores: ties within and across images
    images = [_image_maps(draw, num_scales, palette) for _ in range(draw(st.integers(2, 5)))]
    assume(len({tuple(m[16].shape) for m in images}) > 1)
    return images


def _per_image(map_list, thresholds):
    """Each image's retention, from the selection's masks alone (tokens over its own base grid)."""
    out = []
    for maps in map_list:
        masks = select_patches_by_threshold(maps, thresholds)
        out.append(float(token_counts(masks)[0]) / (masks[16].shape[1] * masks[16].shape[2]))
    return out


def _shared_cuts(map_list):
    """Every distinct shared-threshold selection: below every score, and just above each score in float32."""
    scores = np.unique(np.concatenate([m[s].flatten().numpy() for m in map_list for s in sorted(m)[1:]]))
    scores = scores[scores < DEFAULT_PAD_VALUE].astype(np.float32)
    return [float(scores[0]) - 1.0 if scores.size else 0.0,
            *map(float, np.nextafter(scores, np.float32(np.inf)))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(map_list=map_sets(), target=st.floats(0.05, 1.0), strategy=st.sampled_from(["shared", "per_scale_quantile"]))
def test_calibration_reports_the_mean_over_images_of_each_images_retention(map_list, target, strategy):
    result = calibrate_thresholds(map_list, target, strategy=strategy)
    per_image = _per_image(map_list, result.thresholds)
    assert result.achieved_retention == pytest.approx(float(np.mean(per_image)), rel=1e-12, abs=1e-15)
    assert result.achieved_retention == mean_retention(map_list, result.thresholds)
    assert result.within_tolerance == (abs(result.achieved_retention - target) <= TOLERANCE)
    if strategy == "shared":
        # exactness: no shared threshold at all gets closer to the target (each image weighing the same)
        best = min(abs(float(np.mean(_per_image(map_list, [cut] * (len(map_list[0]) - 1)))) - target)
                   for cut in _shared_cuts(map_list))
        assert abs(result.achieved_retention - target) == pytest.approx(best, rel=1e-12, abs=1e-15)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(map_list=map_sets(), threshold=st.floats(-1.0, 9.0))
def test_mean_retention_weighs_each_image_the_same_and_ignores_batching(map_list, threshold):
    thresholds = [threshold] * (len(map_list[0]) - 1)
    per_image = _per_image(map_list, thresholds)
    value = mean_retention(map_list, thresholds)
    assert value == pytest.approx(sum(per_image) / len(per_image), rel=1e-12, abs=1e-15)
    assert value == mean_retention(list(reversed(map_list)), thresholds)
    same_size = [m for m in map_list if m[16].shape == map_list[0][16].shape]
    batch = {size: torch.cat([m[size] for m in same_size]) for size in map_list[0]}
    assert mean_retention(batch, thresholds) == mean_retention(same_size, thresholds)
    assert retention(select_patches_by_threshold(batch, thresholds)).tolist() == _per_image(same_size, thresholds)


def test_mean_retention_is_not_the_pooled_ratio():
    small = {16: torch.zeros((1, 2, 2)), 32: torch.zeros((1, 1, 1))}  # 1 token of 4 kept
    large = {16: torch.ones((1, 4, 4)), 32: torch.ones((1, 2, 2))}  # 16 of 16 kept
    assert mean_retention([small, large], [0.5]) == (0.25 + 1.0) / 2  # not the pooled 17 / 20 = 0.85
    with pytest.raises(ValueError, match="at least one image"):
        mean_retention([], [0.5])


# --- records and summary of sweeps on images of mixed sizes ----------------------------------------------------

def _picture(kind, height, width, seed):
    rng = np.random.default_rng(seed)
    if kind == "flat":
        return np.full((height, width, 3), int(rng.integers(0, 256)), np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "gradient":
        ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.2, 1, height)[:, None, None]
        return np.repeat(ramp, 3, axis=2).astype(np.uint8)
    half = np.full((height, width, 3), 90, np.uint8)  # "half": flat top, noisy bottom
    half[height // 2:] = rng.integers(0, 256, (height - height // 2, width, 3), dtype=np.uint8)
    return half


def _folder(root, pictures):
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("*.png"):
        old.unlink()
    for index, (kind, height, width) in enumerate(pictures):
        Image.fromarray(_picture(kind, height, width, index)).save(root / f"{index:02d}_{kind}.png")
    return root


def _reported(message):
    """The retention a record's calibration message states (4 decimals)."""
    found = re.search(r"closest achievable (\d\.\d{4})", message) or re.match(r"retention (\d\.\d{4}) for target",
                                                                              message)
    assert found, message
    return float(found.group(1))


def _maps_by_image(params):
    """Each image's maps ``{p_s: (h_s, w_s)}`` by its name, computed as the sweep does."""
    _, maps, metas, _ = compute_maps(validate_params(params, "test"))
    return {meta["name"]: image_maps for meta, image_maps in zip(metas, maps)}


def _check_records_against_summary(records, by_name, targets):
    """Each record's retention is its image's ``selection.retention``; the summary's ``retention_mean`` (the
    report's own aggregation) is the mean over images, and is the retention that calibration reported and judged
    against the target."""
    summary = summarise(records)
    assert sorted(summary["target_retention"]) == sorted(targets)
    maps = list(by_name.values())
    assert sorted(records["image"].unique()) == sorted(by_name)
    for target, part in records.groupby("target_retention"):
        thresholds = [float(part[f"threshold_{s}"].iloc[0]) for s in range(1, len(maps[0]))]
        for _, row in part.iterrows():
            masks = select_patches_by_threshold({k: v[None] for k, v in by_name[row["image"]].items()}, thresholds)
            assert row["retention"] == float(retention(masks)[0])
            assert row["tokens_base_grid"] == masks[16].shape[1] * masks[16].shape[2]
        (summary_row,) = summary[summary["target_retention"] == target].to_dict("records")
        assert summary_row["images"] == len(maps)
        expected = mean_retention([{k: v[None] for k, v in m.items()} for m in maps], thresholds)
        assert summary_row["retention_mean"] == pytest.approx(expected, rel=1e-12)
        # what calibration reported in every record is what the summary computes
        for message in part["calibration_message"]:
            assert abs(_reported(message) - summary_row["retention_mean"]) <= 5e-5 + 1e-12
        within = abs(summary_row["retention_mean"] - target) <= TOLERANCE
        assert (part["calibration_within_tolerance"] == within).all()
    return summary


KINDS = st.sampled_from(["flat", "noise", "gradient", "half"])
SIDES = st.sampled_from([16, 32, 48, 64, 80, 96])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(pictures=st.lists(st.tuples(KINDS, SIDES, SIDES), min_size=2, max_size=4),
       targets=st.lists(st.sampled_from([0.3, 0.5, 0.6, 0.8]), min_size=1, max_size=2, unique=True),
       strategy=st.sampled_from(["shared", "per_scale_quantile"]))
def test_sweep_records_and_summary_agree_on_images_of_mixed_sizes(tmp_path, pictures, targets, strategy):
    assume(len({(h, w) for _, h, w in pictures}) > 1)
    folder = _folder(tmp_path / "photos", pictures)
    params = {"dataset": str(folder), "resize": "native", "num_scales": 3, "target_retention": targets,
              "calibration": strategy}
    records, skipped = configuration_records(params)
    assert not skipped and len(records) == len(pictures) * len(targets)
    sizes = sorted((h, w) for _, h, w in pictures)
    for _, part in records.groupby("target_retention"):
        assert sorted(zip(part["height"], part["width"])) == sizes  # native: every image keeps its size
    by_name = _maps_by_image(params)
    _check_records_against_summary(records, by_name, targets)
    for target in targets:  # and calibration, asked again on the same maps, says the same
        batched = [{k: v[None] for k, v in m.items()} for m in by_name.values()]
        result = calibrate_thresholds(batched, target, strategy=strategy)
        row = summarise(records).set_index("target_retention").loc[target]
        assert result.achieved_retention == pytest.approx(row["retention_mean"], rel=1e-12)


def test_the_issues_case_a_flat_64_and_a_noisy_256_image(tmp_path):
    # The issue: every record said "retention 0.6029 for target 0.6000" (pooled: all kept tokens over all 16 + 256
    # base tokens) while the summary's retention_mean was 0.3496 (mean of 1/16 and 0.6367). Now calibration, records
    # and summary all use the mean over images of each image's retention.
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "flat.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
        folder / "noisy.png")
    sweep = load_spec({"name": "mixed", "fixed": {"dataset": str(folder), "resize": "native",
                                                    "target_retention": [0.6, 0.3]}})
    out = tmp_path / "sweep"
    run_sweep(sweep, out, executor=InProcessExecutor(), progress=False)
    report = build_report(out)
    records, summary = report.records, report.summary.set_index("target_retention")
    assert sorted(zip(records["image"], records["height"])) == [("flat", 64)] * 2 + [("noisy", 256)] * 2

    # 0.6: the flat image merges to one token (1/16) as soon as any patch merges, while the noisy one is still
    # whole: the mean jumps from 1 to (1/16 + 1) / 2 = 0.53125; 0.6 lies in that gap and is not reachable.
    # Calibration says so, and reports the retention the summary computes.
    at_06 = records[records["target_retention"] == 0.6].set_index("image")
    assert at_06.loc["flat", "retention"] == 1 / 16 and at_06.loc["noisy", "retention"] == 1.0
    assert summary.loc[0.6, "retention_mean"] == 0.53125
    assert not at_06["calibration_within_tolerance"].any()
    for message in at_06["calibration_message"]:
        assert "not reachable" in message and "closest achievable 0.5312" in message, message
        assert "0.5312 and 1.0000" in message, message  # the settings on either side of the target

    # 0.3: reachable; the records say so and the summary agrees to within the tolerance.
    at_03 = records[records["target_retention"] == 0.3]
    assert at_03["calibration_within_tolerance"].all()
    assert abs(summary.loc[0.3, "retention_mean"] - 0.3) <= TOLERANCE
    assert summary.loc[0.3, "retention_mean"] == pytest.approx(at_03["retention"].mean(), rel=1e-12)
    for message in at_03["calibration_message"]:
        assert abs(_reported(message) - summary.loc[0.3, "retention_mean"]) <= 5e-5 + 1e-12
    # the pooled ratio, which calibration used to target, is another number here
    pooled = at_03["tokens_total"].sum() / at_03["tokens_base_grid"].sum()
    assert abs(pooled - summary.loc[0.3, "retention_mean"]) > 0.1
    by_name = _maps_by_image({"dataset": str(folder), "resize": "native", "target_retention": 0.3})
    _check_records_against_summary(records, by_name, [0.6, 0.3])
    assert math.isfinite(summary.loc[0.3, "psnr_mean"])
