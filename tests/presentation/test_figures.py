"""Paper figures: dark-red heatmaps in bits, fixed data-set colours, column sizes, legends off the data, examples."""

import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import seaborn as sns
import torch

from apt_research import compute_patch_entropy_batched, select_patches_by_threshold
from apt_research.presentation import figures
from apt_research.datasets import synthetic_image
from figure_checks import legends_clear_of_data


def test_heatmap_high_entropy_is_dark_red_with_a_colour_bar_in_bits():
    scores = torch.tensor([[0.0, 2.0], [6.0, 1e6]])
    figure = figures.plot_heatmap(scores, 32)
    image = figure.axes[0].images[0]
    low, high = (np.array(image.to_rgba(value)[:3]) for value in (0.0, 6.0))
    assert high[0] > 2 * high[1] and high[0] > 2 * high[2], high  # red
    assert high.sum() < low.sum() and low.min() > 0.9  # dark for high entropy, near white for low
    assert figure.axes[1].get_ylabel() == "entropy (bits)"
    assert np.ma.is_masked(image.get_array()[1, 1])  # padded border patch: grey, not a score
    plt.close(figure)


def test_dataset_colours_are_fixed_across_figures_and_sweeps():
    one = figures.dataset_palette(["skimage"])
    many = figures.dataset_palette(["synthetic", "/data/birds", "skimage", "/data/cars", "/data/x"])
    assert one["skimage"] == many["skimage"] == figures.BUILTIN_DATASET_COLOURS["skimage"]
    assert many["synthetic"] == figures.BUILTIN_DATASET_COLOURS["synthetic"]
    assert figures.dataset_palette(iter(["/data/birds", "skimage"]))["/data/birds"] == many["/data/birds"]
    assert len(set(many.values())) == len(many)
    eleven = figures.dataset_palette([f"set{i}" for i in range(11)])
    assert len(eleven) == 11 and len(set(eleven.values())) == 10


def test_one_and_two_column_sizes():
    assert figures.figure_size(1) == (figures.COLUMN_WIDTH_IN, figures.COLUMN_WIDTH_IN * 0.72)
    assert figures.figure_size(2, aspect=0.5) == (figures.TWO_COLUMN_WIDTH_IN, figures.TWO_COLUMN_WIDTH_IN / 2)
    with pytest.raises(ValueError, match="columns must be 1 or 2.*got 3"):
        figures.figure_size(3)
    with pytest.raises(ValueError, match="aspect.*got 0"):
        figures.figure_size(1, aspect=0)


def _sweep_table():
    rng = np.random.default_rng(0)
    rows = [{"dataset": dataset, "threshold": t, "retention": 1 - t / 8 + rng.normal(0, 0.02), "scales": s}
            for dataset in ("skimage", "synthetic") for t in np.linspace(3, 7, 9) for s in (2, 3) for _ in range(4)]
    return pd.DataFrame(rows)


def test_save_figure_moves_every_legend_off_the_data(tmp_path):
    figures.paper_style()
    table = _sweep_table()
    figure, ax = plt.subplots(figsize=figures.figure_size(1))
    sns.lineplot(data=table, x="threshold", y="retention", hue="dataset", style="scales", errorbar=("pi", 50), ax=ax,
                 palette=figures.dataset_palette(table["dataset"].unique()))
    ax.legend(loc="center")
    assert not legends_clear_of_data(figure)
    written = figures.save_figure(figure, tmp_path / "retention")
    assert legends_clear_of_data(figure) and all(path.stat().st_size > 0 for path in written)

    figure, axes = plt.subplots(1, 2, figsize=figures.figure_size(2))
    for ax in axes:
        sns.pointplot(data=table, x="scales", y="retention", hue="dataset", ax=ax)
    figures.save_figure(figure, tmp_path / "panels.png")
    assert legends_clear_of_data(figure)
    assert axes[0].get_legend() is None and axes[1].get_legend() is not None  # the repeated legend shown once
    figure_kept, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="line")
    ax.legend(loc="center")
    figures.save_figure(figure_kept, tmp_path / "kept.png", legends="keep")
    assert not legends_clear_of_data(figure_kept)
    with pytest.raises(ValueError, match="legends must be 'outside' or 'keep', got 'left'"):
        figures.save_figure(figure_kept, tmp_path / "bad.png", legends="left")
    plt.close("all")


def test_seaborn_boxplot_deprecation_is_silenced_and_real_warnings_still_show():
    long = pd.DataFrame({"scale": ["16 px", "32 px"] * 20, "score": np.arange(40.0), "dataset": ["skimage"] * 40})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sns.boxplot(data=long, x="scale", y="score", hue="dataset")
    if not any("vert" in str(w.message) for w in caught):
        pytest.skip(f"seaborn {sns.__version__} with matplotlib {matplotlib.__version__} raises no vert= deprecation")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.paper_style()
        sns.boxplot(data=long, x="scale", y="score", hue="dataset")
        warnings.warn("a real one", matplotlib.MatplotlibDeprecationWarning)
    messages = [str(w.message) for w in caught]
    assert not any("vert" in m for m in messages) and "a real one" in messages
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.paper_style()
        plt.subplots()[1].boxplot([1.0, 2.0, 3.0], vert=True)  # the user's own call still warns
    assert any("vert" in str(w.message) for w in caught)
    plt.close("all")


def test_dataset_examples_show_each_set_with_its_patch_grid():
    examples = {}
    for dataset, kinds in (("synthetic", ("shapes", "strokes")), ("skimage", ("pink_noise",))):
        items = []
        for kind in kinds:
            pixels = torch.from_numpy(synthetic_image(kind, 64, 0)).permute(2, 0, 1).float()
            masks = select_patches_by_threshold(compute_patch_entropy_batched(pixels[None], 16, 2, 64), [4.0])
            items.append((kind, pixels, {size: mask[0] for size, mask in masks.items()}))
        examples[dataset] = items
    figure = figures.plot_dataset_examples(examples, columns=2)
    assert figure.get_size_inches()[0] == pytest.approx(figures.TWO_COLUMN_WIDTH_IN)
    rows = figure.axes[0], figure.axes[2]
    assert [ax.get_ylabel() for ax in rows] == ["synthetic", "skimage"]
    assert rows[1].yaxis.label.get_color() == figures.BUILTIN_DATASET_COLOURS["skimage"]
    titles = [ax.get_title() for ax in figure.axes if ax.axison]
    assert len(titles) == 3 and all(title.endswith(" tokens") for title in titles)
    assert len(figure.axes[0].collections) == 2  # one outline collection per scale
    with pytest.raises(ValueError, match="examples must map each data set"):
        figures.plot_dataset_examples({"skimage": []})
    plt.close("all")


def test_dataset_examples_take_the_report_s_palette():
    """A folder keeps the report's colour in the examples figure, which may show only some data sets."""
    pixels = torch.from_numpy(synthetic_image("shapes", 64, 0)).permute(2, 0, 1).float()
    masks = {size: mask[0] for size, mask in select_patches_by_threshold(
        compute_patch_entropy_batched(pixels[None], 16, 2, 64), [4.0]).items()}
    report = figures.dataset_palette(["/data/set0", "/data/set2"])
    assert report["/data/set2"] != figures.dataset_palette(["/data/set2"])["/data/set2"]  # the collision moved it
    figure = figures.plot_dataset_examples({"/data/set2": [("shapes", pixels, masks)]}, palette=report)
    assert figure.axes[0].yaxis.label.get_color() == report["/data/set2"]
    with pytest.raises(ValueError, match=r"palette must give a colour to every data set of examples; it lacks \['/x'\]"):
        figures.plot_dataset_examples({"/x": [("shapes", pixels, masks)]}, palette=report)
    plt.close("all")
