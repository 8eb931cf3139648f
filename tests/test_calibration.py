"""Calibration to a token budget on real images, and the per-image budget mode."""

import math

import pytest
import torch

from apt_research import compute_importance_maps, select_patches_by_threshold, token_counts
from apt_research.calibration import budget_masks, calibrate_thresholds
from apt_research.datasets import iter_images, skimage_dataset

from conftest import skimage_batch


@pytest.fixture(scope="module")
def bundled_maps():
    images = [p for p, _ in iter_images(skimage_dataset(), "center_crop", 224, progress=False)]
    batch = torch.stack(images)
    return {method: compute_importance_maps(batch, method, 16, 3, **options)
            for method, options in [("entropy", {"bins": 512}), ("laplacian", {"aggregate": "mean"})]}


def _retention(maps, thresholds):
    masks = select_patches_by_threshold(maps, thresholds)
    return float(token_counts(masks).double().mean()) / (masks[16].shape[1] * masks[16].shape[2])


@pytest.mark.parametrize("method", ["entropy", "laplacian"])
@pytest.mark.parametrize("strategy", ["shared", "per_scale_quantile"])
@pytest.mark.parametrize("target", [0.5, 0.7])
def test_calibration_hits_its_target_on_real_images(bundled_maps, method, strategy, target):
    maps = bundled_maps[method]
    result = calibrate_thresholds(maps, target, strategy=strategy)
    assert result.within_tolerance, result.message
    assert abs(result.achieved_retention - target) <= 0.005
    assert result.achieved_retention == pytest.approx(_retention(maps, result.thresholds))
    assert len(result.thresholds) == 2


def test_calibration_works_on_a_list_of_images_of_different_sizes():
    maps = [compute_importance_maps(skimage_batch(h, w, names=(n,)), "entropy", 16, 2)
            for (h, w), n in [((224, 224), "astronaut"), ((160, 240), "coffee"), ((200, 130), "camera")]]
    result = calibrate_thresholds(maps, 0.6)
    assert abs(result.achieved_retention - 0.6) <= 0.01
    # the retention of a set of images is the mean of each image's retention, not pooled tokens over images
    per_image = [_retention(m, result.thresholds) for m in maps]
    assert result.achieved_retention == pytest.approx(sum(per_image) / len(per_image), rel=1e-12)


def test_unreachable_target_gives_the_closest_and_says_so():
    maps = compute_importance_maps(skimage_batch(224, 224), "entropy", 16, 2)
    result = calibrate_thresholds(maps, 0.01)
    assert not result.within_tolerance
    assert "not reachable" in result.message and "closest achievable" in result.message
    assert result.achieved_retention == pytest.approx(_retention(maps, result.thresholds))
    assert result.achieved_retention >= 0.25  # every 2x2 block merged at best


def test_bad_calibration_arguments():
    maps = compute_importance_maps(skimage_batch(64, 64), "entropy", 16, 2)
    with pytest.raises(ValueError, match="target_retention must be a number in \\(0, 1\\], got 1.5"):
        calibrate_thresholds(maps, 1.5)
    with pytest.raises(ValueError, match="strategy must be one of .*'median'"):
        calibrate_thresholds(maps, 0.5, strategy="median")


@pytest.mark.parametrize("budget", [120, 150, 180, 196])
def test_budget_mode_keeps_each_image_under_its_budget(budget):
    maps = compute_importance_maps(skimage_batch(224, 224), "entropy", 16, 3)
    masks, thresholds = budget_masks(maps, budget)
    counts = token_counts(masks)
    smallest = token_counts(select_patches_by_threshold(maps, [1e5, 1e5]))  # every possible merge made
    assert torch.all((counts <= budget) | (counts == smallest))
    for index, threshold in enumerate(thresholds):
        single = {size: m[index : index + 1] for size, m in maps.items()}
        # the least merging that fits: a slightly lower threshold no longer fits the budget
        lower = token_counts(select_patches_by_threshold(single, [threshold - 1e-4] * 2))[0]
        assert counts[index] == smallest[index] or lower > budget or lower == counts[index]


def test_a_target_retention_run_records_thresholds_retention_fidelity_and_speed(tmp_path):
    from apt_research.sweep.configuration import run_configuration

    params = {"dataset": "skimage", "dataset_options": {"names": ["astronaut", "coffee", "camera"]},
              "image_size": 128, "num_scales": 3, "target_retention": [0.5], "measure_speed": ["vit_s"]}
    records = run_configuration(params, tmp_path, tmp_path / "cache")
    assert set(records["target_retention"]) == {0.5}
    assert abs(records["retention"].mean() - 0.5) <= 0.03  # 3 images of 64 base tokens: steps of 1/192
    thresholds = [float(t) for t in records["thresholds"].iloc[0].split(",")]
    assert len(thresholds) == 2 and records["calibration_within_tolerance"].dtype == bool
    assert records["measured_speedup_vit_s"].iloc[0] > 0
    assert (records["gflops_apt_vit_b"] < records["gflops_uniform_vit_b"]).all()
    assert records["psnr"].notna().all() and records["ssim"].between(0, 1).all()


@pytest.mark.parametrize("spec,message", [
    ({"fixed": {"num_scales": 3, "target_retention": 0.5, "thresholds": [5.0, 4.0]}}, "exclude each other"),
    ({"fixed": {"num_scales": 3, "target_retention": 1.5}}, "key 'target_retention' expects numbers in (0, 1]"),
    ({"fixed": {"num_scales": 1, "target_retention": 0.5}}, "needs num_scales >= 2"),
    ({"fixed": {"calibration": "median", "target_retention": 0.5}}, "key 'calibration' expects one of"),
    ({"fixed": {"measure_speed": ["vit_x"]}}, "key 'measure_speed' expects models among"),
])
def test_calibration_spec_errors(spec, message):
    from apt_research.sweep.spec import SpecError, load_spec

    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        load_spec({"name": "calibration", **spec})


@pytest.mark.parametrize("strategy", ["shared", "per_scale_quantile"])
def test_a_threshold_just_above_a_float32_score_keeps_it(strategy):
    # One large patch scoring 3.0 over four base patches: keeping it (retention 0.25) needs a threshold above
    # 3.0 in float32, where the selection compares; float64's next number above 3.0 rounds back to 3.0.
    maps = {16: torch.full((1, 2, 2), 5.0), 32: torch.full((1, 1, 1), 3.0)}
    result = calibrate_thresholds(maps, 0.25, strategy)
    assert result.achieved_retention == 0.25 and result.within_tolerance, result
    assert _retention(maps, result.thresholds) == 0.25


def test_per_scale_quantile_with_a_scale_all_padding():
    # 100 px at base 16 and 4 scales: the 128-px scale has one patch, padded (score pad_value): none can be
    # kept, and the thresholds must still be a usable, finite setting.
    images = skimage_batch(100, 100, ["astronaut", "camera"])
    maps = compute_importance_maps(images, "entropy", 16, 4)
    result = calibrate_thresholds(maps, 0.5, strategy="per_scale_quantile")
    assert all(map(math.isfinite, result.thresholds)) and len(result.thresholds) == 3
    assert abs(_retention(maps, result.thresholds) - result.achieved_retention) < 1e-9
