"""The report's figures print as they are: read from the saved PDFs (width, embedded TrueType fonts, text sizes)
and compared with a golden image per figure type.

The figures are drawn by ``sweep.report.make_figures`` from a fixed synthetic sweep (two data sets, bins and
scales varied, five threshold settings each, a classifier, ViT-S speed measured): no sweep runs, so the module
takes seconds. A golden image that is missing, or all of them after an intended change of a figure, is written
by ``APT_UPDATE_BASELINES=1 .venv/bin/python -m pytest tests/presentation/test_figures_print.py`` (then look at
them before committing).
"""

import os
import re
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.testing.compare import compare_images

from apt_research import compute_patch_entropy_batched, select_patches_by_threshold
from apt_research.datasets import synthetic_image
from apt_research.models.costmodel import vit_flops
from apt_research.presentation import figures, report_figures, style
from apt_research.sweep import report
from figure_checks import legends_clear_of_data

BASELINE = Path(__file__).with_name("baseline")
GOLDEN_DPI = 72
"""Golden images are PNGs at 72 dpi: small files (a 6.9 in figure is 497 px wide), enough to show a regression."""
TOLERANCE = 3.0
"""``compare_images`` RMS tolerance (0-255 scale): antialiasing and a freetype build may differ, a moved or
recoloured element does not pass."""
UPDATE = os.environ.get("APT_UPDATE_BASELINES") == "1"
WIDTHS_PT = (style.ONE_COLUMN_IN * 72, style.TWO_COLUMN_IN * 72)  # 241.2 and 496.8
REPORT_FIGURES = ("retention_vs_threshold", "entropy_distributions", "scale_mix", "fidelity_vs_retention",
                  "speedup_vs_retention", "fidelity_vs_speedup", "model_vs_retention", "bins_ablation",
                  "num_scales_ablation")
FIGURES = (*REPORT_FIGURES, "dataset_examples")
SETTINGS = {2: ["4.5", "5.0", "5.5", "6.0", "6.5"], 3: ["4.5,3.5", "5.0,3.75", "5.75,4.0", "6.0,5.0", "6.5,5.5"]}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def sweep_records(measured: bool = True, classifier: bool = True) -> pd.DataFrame:
    """Records of a made-up sweep shaped like ``ablations/default.yaml`` (deterministic, no images scored).

    Two data sets, ``bins`` 256/512 crossed with ``num_scales`` 2/3 (five threshold settings each), 224 px images
    (a 196-token base grid); token counts follow each image's entropy; the cost model's GFLOPs are exact.
    """
    rng = np.random.default_rng(23)
    rows = []
    for dataset, count, spread in (("skimage", 7, 1.2), ("synthetic", 6, 2.2)):
        entropy = np.clip(5.2 + spread * rng.standard_normal(count), 0.5, 7.6)
        for bins in (256, 512):
            for num_scales in (2, 3):
                run_id = f"{dataset}-{bins}-{num_scales}"
                run_factor = 0.85 + 0.1 * rng.random()
                for setting in SETTINGS[num_scales]:
                    thresholds = [float(v) for v in setting.split(",")]
                    for index, image_entropy in enumerate(entropy):
                        score = image_entropy + (0.35 if bins == 512 else 0.0)
                        merge32 = _sigmoid(1.6 * (thresholds[0] - score))
                        merge64 = _sigmoid(1.6 * (thresholds[1] - score - 0.4)) if num_scales == 3 else 0.0
                        big = int(round(9 * merge64 * merge32))
                        medium = int(round((49 - 4 * big) * merge32))
                        small = 196 - 16 * big - 4 * medium
                        total = small + medium + big
                        retention = total / 196
                        row = {"run_id": run_id, "dataset": dataset, "image": f"{dataset}_{index}", "bins": bins,
                               "num_scales": num_scales, "thresholds": setting, "image_size": 224, "patch_size": 16,
                               "method": "entropy", "tokens_16": small, "tokens_32": medium,
                               "tokens_64": big if num_scales == 3 else np.nan, "tokens_total": total,
                               "tokens_base_grid": 196, "retention": retention, "savings": 1 - retention,
                               "psnr": 24 + 14 * retention + (6 if dataset == "synthetic" else 0) - 0.5 * score
                                       + rng.normal(0, 0.6),
                               "ssim": float(min(1.0, 1 - 0.25 * (1 - retention) * score / 7 + rng.normal(0, 0.004))),
                               "score_16_mean": score - 0.4, "score_32_mean": score,
                               "score_64_mean": score + 0.3 if num_scales == 3 else np.nan}
                        for model in ("vit_s", "vit_b", "vit_l", "vit_h"):
                            row[f"gflops_apt_{model}"] = float(vit_flops(total + 1, model)) / 1e9
                            row[f"gflops_uniform_{model}"] = float(vit_flops(197, model)) / 1e9
                        if measured:
                            row["measured_speedup_vit_s"] = 196 / total * run_factor
                        if classifier:
                            agree = bool(rng.random() < 0.55 + 0.45 * retention)
                            row.update(agreement=agree, top1_correct=bool(agree and rng.random() < 0.8),
                                       uniform_top1_correct=bool(rng.random() < 0.8), kl=0.5 * (1 - retention))
                        rows.append(row)
    return pd.DataFrame(rows)


def example_grid():
    """Five synthetic images of two data sets with their selection (for ``plot_dataset_examples``): each is a
    smooth image with a square of noise pasted in, so that its grid mixes 16, 32 and 64 px patches."""
    examples = {}
    for dataset, kinds in (("skimage", ("shapes", "strokes", "gradient")), ("synthetic", ("flat", "shapes"))):
        items = []
        for seed, kind in enumerate(kinds):
            image = synthetic_image(kind, 128, seed).copy()
            corner = 16 * (seed + 1)
            image[corner:corner + 40, corner:corner + 40] = synthetic_image("white_noise", 40, seed)
            pixels = torch.from_numpy(image).permute(2, 0, 1).float()
            masks = select_patches_by_threshold(compute_patch_entropy_batched(pixels[None], 16, 3, 256), [5.5, 4.0])
            items.append((kind, pixels, {size: mask[0] for size, mask in masks.items()}))
        examples[dataset] = items
    return examples


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """``{name: (pdf path, golden-dpi png path, legends clear of the data)}`` of every figure of the report."""
    out = tmp_path_factory.mktemp("print") / "figures"
    save = figures.save_figure
    made = {}

    def save_and_keep(figure, path, *args, **kwargs):
        written = save(figure, path, *args, **kwargs)
        golden = Path(path).with_name(f"{Path(path).name}.golden.png")
        figure.savefig(golden, dpi=GOLDEN_DPI)
        made[Path(path).name] = (Path(path).with_suffix(".pdf"), golden, legends_clear_of_data(figure))
        return written

    records = sweep_records()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "save_figure", save_and_keep)
        names = report.make_figures(records, report.summarise(records), out)
        with style.paper_context():
            figure = figures.plot_dataset_examples(example_grid(), columns=2)
            figures.save_figure(figure, out / "dataset_examples")
            plt.close(figure)
    assert set(names) == set(REPORT_FIGURES) and set(made) == set(FIGURES), (names, sorted(made))
    return made


def pdf_facts(path: Path) -> dict:
    """Page size (pt), embedded font programs and every text size (pt, as printed) of a matplotlib PDF."""
    data = path.read_bytes()
    box = [float(v) for v in re.search(rb"/MediaBox\s*\[\s*([-\d.\s]+)\]", data).group(1).split()]
    sizes, unscaled = [], []
    for stream in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        try:  # the end of line before "endstream" is left to the decompressor (unused data), never cut from a stream
            content = zlib.decompressobj().decompress(stream.group(1))
        except zlib.error:
            continue  # not deflated: not a content stream of matplotlib's
        unscaled += [float(size) for size in re.findall(rb"/\S+\s+([\d.]+)\s+Tf", content)]
        # matplotlib places each text with a matrix ``a b c d e f cm`` before ``BT /F1 7 Tf ... ET`` (a glyph of
        # another font subset switches font inside the block): each size times the scale of its matrix
        for matrix, block in re.findall(rb"((?:[-\d.]+\s+){6})cm\s+BT\n(.*?)\nET\n", content, re.S):
            a, b, c, d = (float(v) for v in matrix.split()[:4])
            sizes += [float(size) * abs(a * d - b * c) ** 0.5 for size in re.findall(rb"/\S+\s+([\d.]+)\s+Tf", block)]
    return {"width": box[2] - box[0], "height": box[3] - box[1], "sizes": sizes, "texts": len(unscaled),
            "truetype": data.count(b"/FontFile2"), "descriptors": len(re.findall(rb"/Type\s*/FontDescriptor", data)),
            "type3": b"/Type3" in data}


@pytest.mark.parametrize("name", FIGURES)
def test_figure_prints_as_it_is(drawn, name):
    """One or two paper columns wide exactly, fonts embedded as TrueType (Type 42), text 6-9 pt, keys off the data."""
    pdf, _, clear = drawn[name]
    facts = pdf_facts(pdf)
    assert clear, f"{name}: a legend covers data"
    assert any(facts["width"] == pytest.approx(width, abs=0.01) for width in WIDTHS_PT), (name, facts["width"])
    assert 72 <= facts["height"] <= 9 * 72, (name, facts["height"])
    assert not facts["type3"] and facts["truetype"] >= 1 and facts["truetype"] == facts["descriptors"], facts
    assert facts["sizes"] and len(facts["sizes"]) == facts["texts"], facts  # every text's size was read
    assert all(style.MIN_FONT_PT <= size <= style.MAX_FONT_PT for size in facts["sizes"]), \
        (name, sorted(set(facts["sizes"])))


@pytest.mark.parametrize("name", FIGURES)
def test_figure_matches_its_golden_image(drawn, name, tmp_path):
    actual = tmp_path / f"{name}.png"
    actual.write_bytes(drawn[name][1].read_bytes())
    expected = BASELINE / f"{name}.png"
    if UPDATE:
        BASELINE.mkdir(exist_ok=True)
        expected.write_bytes(actual.read_bytes())
    assert expected.exists(), f"no golden image {expected}: write it with APT_UPDATE_BASELINES=1 (and look at it)"
    assert expected.stat().st_size < 100_000
    difference = compare_images(str(expected), str(actual), tol=TOLERANCE)
    assert difference is None, difference


def test_speedup_figure_claims_no_measurement_when_nothing_was_measured():
    records = sweep_records(measured=False, classifier=False)
    summary = report.summarise(records).assign(configuration="all")
    with style.paper_context():
        figure = report_figures.plot_speedup_vs_retention(records, summary)
    texts = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["ViT-S", "ViT-B", "ViT-L", "ViT-H"], titles
    assert not any("measured" in text for text in texts + titles) and "predicted per setting" in texts
    with style.paper_context():
        figure = report_figures.plot_speedup_vs_retention(sweep_records(), report.summarise(sweep_records()))
    texts = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert "measured on this machine" in texts and figure.axes[0].get_title() == "ViT-S (measured too)"
    assert {"skimage", "synthetic"} <= set(texts)  # the data sets are told apart
    plt.close("all")


def test_scale_mix_labels_bars_by_their_setting_under_their_configuration():
    records = sweep_records(measured=False, classifier=False)
    summary = report.summarise(records)
    summary = summary.assign(configuration=report.configuration_label(summary))
    with style.paper_context():
        figure = report_figures.plot_scale_mix(summary)
    first = figure.axes[0]
    labels = [tick.get_text() for tick in first.get_yticklabels()]
    assert labels[0] == "num_scales=2, bins=256" and labels[1:6] == ["4.5", "5", "5.5", "6", "6.5"]
    assert "num_scales=3, bins=512" in labels and "6.5/5.5" in labels
    assert not any("skimage" in label or "|" in label for label in labels)
    assert [ax.get_title() for ax in figure.axes] == ["skimage", "synthetic"]
    assert first.get_ylabel() == "thresholds (bits) of 32/64 px"
    key = [text.get_text() for text in figure.legends[0].get_texts()]
    assert [k for k in key if k] == ["tokens of patch size:", "16 px", "32 px", "64 px"]
    plt.close("all")


def test_patch_size_colours_are_apart_from_the_data_set_colours():
    def distance(a, b):
        return float(np.linalg.norm(np.subtract(a, b)))

    scale = style.scale_colours([16, 32, 64]).values()
    assert min(distance(s, d) for s in scale for d in style.DATASET_COLOURS[:7]) > 0.25
    assert len(set(style.DATASET_COLOURS)) == 10 and style.scale_colours([32, 16]) == {
        16: style.SCALE_COLOURS[0], 32: style.SCALE_COLOURS[1]}


def test_style_file_is_the_style_of_paper_style():
    with style.paper_context():
        assert plt.rcParams["pdf.fonttype"] == 42 and plt.rcParams["figure.constrained_layout.use"]
        assert plt.rcParams["font.size"] == 8 and plt.rcParams["xtick.labelsize"] == 7
        assert not plt.rcParams["axes.spines.top"] and not plt.rcParams["axes.spines.right"]
        figure, ax = style.subplots(2, 2.0)
        assert tuple(figure.get_size_inches()) == (6.9, 2.0)
        plt.close(figure)
    with pytest.raises(ValueError, match="columns must be 1 or 2"):
        style.width_in(3)
    assert style.STYLE_FILE.exists() and style.STYLE_FILE.suffix == ".mplstyle"


def test_save_figure_keeps_the_figure_s_width(tmp_path):
    """A legend outside the axes does not widen the file (no tight crop): the PDF is as wide as the figure."""
    with style.paper_context():
        figure, ax = plt.subplots(figsize=(style.ONE_COLUMN_IN, 2.0))
        ax.plot([0, 1], [0, 1], label="a rather long legend label")
        ax.legend(loc="center")
        figures.save_figure(figure, tmp_path / "wide")
        plt.close(figure)
    facts = pdf_facts(tmp_path / "wide.pdf")
    assert facts["width"] == pytest.approx(241.2) and facts["height"] == pytest.approx(144.0)


def test_many_data_sets_wrap_into_small_multiples_each_column_labelled():
    one = sweep_records(measured=False, classifier=False).query("bins == 512 and num_scales == 3")
    records = pd.concat([one.assign(dataset=f"/data/set{i}") for i in range(5)] + [one], ignore_index=True)
    with style.paper_context():
        figure = report_figures.plot_retention_vs_threshold(records.assign(configuration="all"))
        mix = report_figures.plot_scale_mix(report.summarise(records).assign(configuration="all"))
    for drawn_figure, panels in ((figure, 4), (mix, 3)):
        assert tuple(drawn_figure.get_size_inches())[0] == style.TWO_COLUMN_IN
        shown = [ax for ax in drawn_figure.axes if ax.get_visible()]
        assert [ax.get_title() for ax in shown] == sorted(records["dataset"].unique())
        labelled = {round(ax.get_position().x0, 3) for ax in shown if ax.get_xlabel()}
        assert len(labelled) == panels, "every column has its x axis labelled, also above an empty panel"
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------------
# The figures of every ablation in ablations/*.yaml, each sweep's shape made up from ``sweep_records``: nothing
# drawn outside the page, no two texts on each other, nothing pooled or shared that the ablation cannot share.

def text_layout_problems(figure) -> list[str]:
    """Each text of ``figure`` (drawn tick labels only) that lies partly outside the page or on another text."""
    import math

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    page = figure.bbox
    every_tick, drawn_ticks = set(), set()
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            every_tick |= {id(t) for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                           for t in (tick.label1, tick.label2)}
            if ax.get_visible():
                drawn_ticks |= {id(t) for tick in axis._update_ticks() for t in (tick.label1, tick.label2)
                                if t.get_visible()}
    texts = [(t, t.get_window_extent(renderer)) for t in figure.findobj(plt.Text)
             if t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes.get_visible())
             and (id(t) not in every_tick or id(t) in drawn_ticks)]
    problems = [f"outside the page: {t.get_text()!r}" for t, box in texts
                if box.x0 < page.x0 - 1 or box.y0 < page.y0 - 1 or box.x1 > page.x1 + 1 or box.y1 > page.y1 + 1]
    for index, (t, box) in enumerate(texts):
        for u, other in texts[index + 1:]:
            if not (box.x0 < other.x1 - 0.5 and other.x0 < box.x1 - 0.5 and box.y0 < other.y1 - 0.5
                    and other.y0 < box.y1 - 0.5):
                continue
            if t.get_rotation() % 180 and t.get_rotation() == u.get_rotation():  # slanted labels: baselines apart?
                angle = math.radians(t.get_rotation())
                (x1, y1), (x2, y2) = (text.get_transform().transform(text.get_position()) for text in (t, u))
                if abs((y2 - y1) * math.cos(angle) - (x2 - x1) * math.sin(angle)) >= t.get_fontsize() * figure.dpi / 72:
                    continue
            problems.append(f"on each other: {t.get_text()!r} / {u.get_text()!r}")
    return problems


def ablation_records(kind: str) -> pd.DataFrame:
    """Made-up records shaped like ``ablations/<kind>.yaml`` (one data set unless said: skimage)."""
    base = sweep_records(measured=False, classifier=False)
    one = base.query("dataset == 'skimage' and bins == 512 and num_scales == 3").assign(method_options="{}")
    three = one[one["thresholds"].isin(["5.0,3.75", "5.75,4.0", "6.5,5.5"])]
    if kind == "datasets":  # two data sets, one configuration, three settings
        return base.query("bins == 512 and num_scales == 3")[lambda t: t["thresholds"].isin(three["thresholds"])]
    if kind == "bins":
        return pd.concat([three.assign(bins=bins, run_id=f"bins-{bins}", retention=three["retention"] * bins / 1024)
                          for bins in (64, 128, 256, 512, 1024)], ignore_index=True)
    if kind == "resolutions":  # one threshold setting
        setting = one[one["thresholds"] == "5.75,4.0"]
        return pd.concat([setting.assign(image_size=size, run_id=f"size-{size}") for size in (224, 336, 384, 448)],
                         ignore_index=True)
    if kind == "scales":  # num_scales zipped with thresholds; one scale has none
        single = one[one["thresholds"] == "5.75,4.0"].assign(
            num_scales=1, thresholds="", run_id="scales-1", tokens_16=196, tokens_32=np.nan, tokens_64=np.nan,
            tokens_total=196, retention=1.0, savings=0.0, score_32_mean=np.nan, score_64_mean=np.nan)
        two = base.query("dataset == 'skimage' and bins == 512 and num_scales == 2").assign(method_options="{}")
        return pd.concat([single, two, three], ignore_index=True)
    if kind == "scorers":  # method zipped with method_options and thresholds, each scorer on its own scale
        parts = []
        for method, options, scale in (("entropy", "{}", 1.0), ("laplacian", '{"aggregate": "max"}', 0.1),
                                       ("laplacian", '{"aggregate": "mean"}', 0.01), ("upsample_mse", "{}", 0.001)):
            scaled = three.assign(method=method, method_options=options, run_id=f"{method}-{options}")
            scaled["thresholds"] = scaled["thresholds"].map(
                lambda t: ",".join(f"{float(v) * scale:g}" for v in t.split(",")))
            for column in ("score_16_mean", "score_32_mean", "score_64_mean"):
                scaled[column] = scaled[column] * scale
            parts.append(scaled)
        return pd.concat(parts, ignore_index=True)
    raise ValueError(kind)


def draw_report_figures(records, tmp_path) -> dict:
    """``{name: figure}`` of ``report.make_figures`` (each also saved under ``tmp_path``)."""
    made, save = {}, figures.save_figure

    def keep(figure, path, *args, **kwargs):
        made[Path(path).name] = (figure, text_layout_problems(figure))
        return save(figure, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "save_figure", keep)
        names = report.make_figures(records, report.summarise(records), tmp_path)
    assert set(names) == set(made)
    return made


ABLATIONS = ("datasets", "bins", "resolutions", "scales", "scorers")


@pytest.fixture(scope="module")
def ablation_figures(tmp_path_factory):
    return {kind: draw_report_figures(ablation_records(kind), tmp_path_factory.mktemp(kind)) for kind in ABLATIONS}


@pytest.mark.parametrize("kind", ABLATIONS)
def test_no_text_of_an_ablation_s_figures_is_off_the_page_or_on_another(ablation_figures, kind):
    """Axis labels longer than their panel are broken into lines (``ViT-B speedup`` / ``(predicted)``), an axis label
    is never taller than its panels, long configuration names wrap, crowded tick labels slant."""
    problems = {name: found for name, (_, found) in ablation_figures[kind].items() if found}
    assert not problems, problems


def test_configurations_are_in_the_order_of_their_numbers(ablation_figures):
    figure = ablation_figures["bins"]["scale_mix"][0]
    headers = [tick.get_text() for tick in figure.axes[0].get_yticklabels() if tick.get_fontweight() == "bold"]
    assert headers == ["bins=64", "bins=128", "bins=256", "bins=512", "bins=1024"], headers


def test_parameters_that_change_together_make_one_ablation_of_their_combinations(ablation_figures):
    """Zipped ``method``/``method_options`` are one figure over the four scorers, not two that pool unlike ones."""
    drawn = ablation_figures["scorers"]
    assert "method_ablation" in drawn and "method_options_ablation" not in drawn, sorted(drawn)
    ax = drawn["method_ablation"][0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "entropy, {}", "laplacian, {aggregate: max}", "laplacian, {aggregate: mean}", "upsample_mse, {}"]
    assert ax.get_xlabel().split() == ["method,", "method_options"]


def test_scores_of_different_scorers_never_share_an_axis(ablation_figures):
    drawn = ablation_figures["scorers"]
    retention = [ax for ax in drawn["retention_vs_threshold"][0].axes if ax.get_visible()]
    assert len({ax.get_xlim() for ax in retention}) == 4  # each scorer's thresholds on their own scale
    entropy = drawn["entropy_distributions"][0]
    assert len(entropy.axes) == 4 * 3  # a row of panels per scorer
    assert len({ax.get_xlim() for ax in entropy.axes}) > 3
    assert entropy.axes[0].get_xlabel() == "" and entropy.axes[-1].get_xlabel() == "mean patch score"
    assert report_figures._scorers(ablation_records("bins")) == 1


def test_a_sweep_of_one_threshold_setting_has_no_threshold_axis(ablation_figures):
    assert "retention_vs_threshold" not in ablation_figures["resolutions"]
    assert "image_size_ablation" in ablation_figures["resolutions"]


def test_a_configuration_without_thresholds_says_so_in_its_panel(ablation_figures):
    figure = ablation_figures["scales"]["retention_vs_threshold"][0]
    texts = [text.get_text() for ax in figure.axes for text in ax.texts]
    assert texts == ["no thresholds:\nmean retention 100%"], texts


def test_the_key_names_no_dot_that_is_not_drawn():
    records = pd.concat([ablation_records("datasets").assign(image=lambda t, i=i: t["image"] + f"-{i}")
                         for i in range(11)], ignore_index=True)  # 77 and 66 images a data set: no dots
    with style.paper_context():
        many = report_figures.plot_entropy_distributions(records.assign(configuration="all"))
        few = report_figures.plot_entropy_distributions(ablation_records("datasets").assign(configuration="all"))
    assert "one image (its mean)" not in [t.get_text() for t in many.legends[0].get_texts()]
    assert "one image (its mean)" in [t.get_text() for t in few.legends[0].get_texts()]
    plt.close("all")


def test_examples_show_the_setting_nearest_half_retention_and_say_which():
    records = sweep_records(measured=False, classifier=False).assign(
        configuration=lambda t: report.configuration_label(t))
    named = report.example_settings(records)
    for dataset, rows in records.groupby("dataset"):
        means = rows.groupby(["run_id", "thresholds"], sort=False)["retention"].mean()
        (run, setting), mean = (means - 0.5).abs().idxmin(), means[(means - 0.5).abs().idxmin()]
        chosen = report._example_rows(rows)
        assert set(chosen["run_id"]) == {run} and set(chosen["thresholds"]) == {setting}
        thresholds = "/".join(f"{float(v):.3g}" for v in setting.split(","))
        assert named[dataset].endswith(f"thresholds {thresholds}; mean retention {100 * mean:.1f}%"), named[dataset]


def test_finetune_figure_prints_as_it_is(tmp_path):
    """notebooks/finetune.ipynb's top-1 against steps: one column, fonts embedded, text 6-9 pt, key off the data."""
    from apt_research.presentation.training_figures import top1_vs_steps

    steps = [0, 40, 80]
    evaluations = pd.DataFrame(
        [{"step": step, "tokenization": name, "top1": top1, "retention": 1.0 if name == "uniform" else 0.4}
         for step, uniform, apt in zip(steps, [0.88, 0.82, 0.63], [0.72, 0.84, 0.89])
         for name, top1 in (("uniform", uniform), ("apt", apt))])
    figure = top1_vs_steps(evaluations)
    assert legends_clear_of_data(figure)
    figures.save_figure(figure, tmp_path / "finetune_top1", legends="keep")
    facts = pdf_facts(tmp_path / "finetune_top1.pdf")
    assert facts["width"] == pytest.approx(style.ONE_COLUMN_IN * 72, abs=0.01)
    assert not facts["type3"] and facts["truetype"] >= 1
    assert facts["sizes"] and all(style.MIN_FONT_PT <= size <= style.MAX_FONT_PT for size in facts["sizes"])
    with pytest.raises(ValueError, match="must hold step 0"):
        top1_vs_steps(evaluations[evaluations["step"] > 0])


def test_finetune_figure_names_what_the_run_trained_on_and_its_control(tmp_path):
    """The lines are labelled by the run's own tokenization; a control run (the same spec on uniform tokens) is its
    own line; the figure still prints at one column with the key off the data."""
    from apt_research.presentation.training_figures import top1_vs_steps

    def run(uniform, apt):
        return pd.DataFrame([{"step": step, "tokenization": name, "top1": top1,
                              "retention": 1.0 if name == "uniform" else 0.4}
                             for step, u, a in zip([0, 40, 80], uniform, apt)
                             for name, top1 in (("uniform", u), ("apt", a))])

    def labels(figure):
        return [text.get_text() for text in figure.legends[0].get_texts()]

    evaluations, control = run([0.88, 0.82, 0.63], [0.72, 0.84, 0.89]), run([0.88, 0.89, 0.90], [0.72, 0.80, 0.83])
    assert "APT fine-tuned (40% tokens)" in labels(top1_vs_steps(evaluations))
    assert "uniform tokens, same model" in labels(top1_vs_steps(evaluations))
    on_uniform = labels(top1_vs_steps(control, trained_on="uniform"))
    assert "uniform fine-tuned" in on_uniform and "APT tokens, same model (40% tokens)" in on_uniform
    assert not any("APT fine-tuned" in label for label in on_uniform)
    figure = top1_vs_steps(evaluations, control=control)
    assert "uniform fine-tuned (control)" in labels(figure)
    line = next(line for line in figure.axes[0].get_lines() if line.get_label() == "uniform fine-tuned (control)")
    assert list(line.get_ydata()) == pytest.approx([88.0, 89.0, 90.0])
    assert legends_clear_of_data(figure)
    figures.save_figure(figure, tmp_path / "finetune_top1", legends="keep")
    assert pdf_facts(tmp_path / "finetune_top1.pdf")["width"] == pytest.approx(style.ONE_COLUMN_IN * 72, abs=0.01)
    with pytest.raises(ValueError, match="trained_on must be one of .*got 'APT'"):
        top1_vs_steps(evaluations, trained_on="APT")
    with pytest.raises(ValueError, match="control must be a finetune evaluation.csv"):
        top1_vs_steps(evaluations, control=control.drop(columns="top1"))
