"""The explore notebook's logic: cached maps (counted, not timed), selections equal to the library, widget, papermill."""

import json
from pathlib import Path

import papermill
import pytest
import torch

from apt_research import compute_patch_entropy_batched, select_patches_by_threshold, token_counts
from apt_research.analysis import fidelity, reconstruct
from apt_research.datasets import resize_image
from apt_research.presentation.explore import Explorer, explore_widget, load_one
from apt_research.presentation.visualize import VisualizeConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def explorer():
    return Explorer("synthetic:shapes", VisualizeConfig(image_size=128, resize="center_crop", num_scales=3,
                                                        thresholds=[5.5, 4.0]))


def test_maps_are_recomputed_only_when_image_scorer_scales_or_bins_change(explorer):
    assert explorer.map_computations == 0
    tokens = set()
    for thresholds in ([5.5, 4.0], [6.0, 3.0], [4.0, 2.0], [7.0, 6.0]):
        explorer.update(thresholds=thresholds)
        tokens.add(explorer.selection()["tokens_total"])
        explorer.selection_png()
    assert explorer.map_computations == 1 and len(tokens) > 1
    explorer.maps
    assert explorer.map_computations == 1
    explorer.update(bins=256).selection()
    assert explorer.map_computations == 2
    explorer.update(bins=256).selection()
    assert explorer.map_computations == 2
    explorer.update(method="laplacian", thresholds=[10.0, 5.0]).selection()
    assert explorer.map_computations == 3
    explorer.update(num_scales=2).selection()
    assert explorer.map_computations == 4 and explorer.config.thresholds == [10.0]
    explorer.update("synthetic:strokes").selection()
    assert explorer.map_computations == 5
    explorer.update("synthetic:strokes", thresholds=[3.0]).selection()
    assert explorer.map_computations == 5


@pytest.mark.parametrize("image, size, resize", [("skimage:coins", 200, "short_side"),
                                                 ("synthetic:pink_noise", 96, "center_crop")])
def test_selection_equals_the_library(image, size, resize):
    config = VisualizeConfig(image_size=size, resize=resize, num_scales=3, thresholds=[5.0, 3.5], bins=256)
    explorer = Explorer(image, config)
    pixels = resize_image(load_one(image)[0], resize, size, 16)[None]
    maps = compute_patch_entropy_batched(pixels, 16, 3, 256)
    masks = select_patches_by_threshold(maps, [5.0, 3.5])
    recon = reconstruct(pixels, masks, 16)
    chosen = explorer.selection()
    assert torch.equal(chosen["reconstruction"], recon)
    assert chosen["tokens_total"] == int(token_counts(masks)[0])
    assert chosen["ssim"] == fidelity(pixels[0], recon[0])["ssim"]
    picture = explorer.selection_image()
    height, width = pixels.shape[-2:]
    assert picture.shape == (height, 2 * width + 8, 3)
    assert (picture[:, width + 8:] == recon[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).all()
    assert f"{chosen['tokens_total']} tokens" in explorer.caption()


def test_bad_update_names_the_setting_and_changes_nothing(explorer):
    before = explorer.config
    with pytest.raises(ValueError, match="thresholds"):
        explorer.update(thresholds=[1.0])
    with pytest.raises(TypeError, match="threshold"):
        explorer.update(threshold=[1.0, 2.0])
    with pytest.raises(ValueError, match="synthetic:KIND"):
        explorer.update("synthetic:nope")
    assert explorer.config == before and explorer.image == "synthetic:shapes"


def test_widget_threshold_change_redraws_from_cached_maps(explorer):
    widget = explore_widget(explorer)
    controls, sliders = widget.children[0].children
    image, scorer, scales, bins = controls.children
    heatmaps, caption, grid = widget.children[2:]
    assert [s.description for s in sliders.children] == ["threshold 1", "threshold 2"]
    first_grid, first_heatmaps, first_caption = bytes(grid.value), bytes(heatmaps.value), caption.value
    slider = sliders.children[-1]
    slider.value = slider.min
    assert explorer.map_computations == 1 and explorer.config.thresholds[-1] == slider.value
    assert bytes(grid.value) != first_grid and caption.value != first_caption
    assert bytes(heatmaps.value) == first_heatmaps
    scales.value = 4
    assert explorer.map_computations == 2 and len(sliders.children) == 3
    assert bytes(heatmaps.value) != first_heatmaps
    bins.value = 128
    assert explorer.map_computations == 3 and explorer.config.bins == 128
    scorer.value = "laplacian"
    assert explorer.map_computations == 4 and bins.disabled
    image.value = "synthetic:nope"
    assert "synthetic:KIND" in widget.children[1].value and explorer.image == "synthetic:shapes"


def test_explore_notebook_runs_headless_with_widget_state(tmp_path):
    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "explore.ipynb"), str(out),
                               parameters={"image": "synthetic:shapes", "image_size": 128}, kernel_name="python3",
                               progress_bar=False, cwd=str(ROOT))
    executed = json.loads(out.read_text())
    state = executed["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = {model["model_name"] for model in state.values()}
    assert {"FloatSliderModel", "IntSliderModel", "DropdownModel", "ImageModel", "ComboboxModel"} <= models
    views = [o for c in executed["cells"] for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views and views[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] in state
