"""report.html: one self-contained page per sweep, checked by parsing it and by rendering it alone in headless Chromium."""

import base64
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from apt_research.presentation import figures
from apt_research.cli import main
from apt_research.models.vit import VIT_CONFIGS
from apt_research.sweep.report_html import (CHROMIUM_FLAGS, FOLD_ROWS, find_chromium, render_html, screenshot,
                                            write_html_report)
from apt_research.sweep.report import build_report
from figure_checks import legends_clear_of_data
from test_sweep_runner import smoke_dir  # noqa: F401  (the smoke sweep, run once for this module)

NO_CHROMIUM = "Chromium is not installed (Debian: apt-get install chromium; CI installs it)"


class Resources(HTMLParser):
    """Every tag, and every attribute that makes a browser fetch or link something."""

    def __init__(self):
        super().__init__()
        self.tags, self.references, self.styles = [], [], []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action", "background") and value is not None:
                self.references.append((tag, name, value))

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


class Cells(HTMLParser):
    """The text of every table cell, row by row."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def table_rows(text: str) -> list[list[str]]:
    parser = Cells()
    parser.feed(text)
    return parser.rows


def parse(text: str) -> Resources:
    parser = Resources()
    parser.feed(text)
    return parser


def test_sweep_writes_a_self_contained_report_html(smoke_dir):
    page = (smoke_dir / "report.html").read_text()
    parsed = parse(page)
    assert parsed.references and all(value.startswith("data:") for _, _, value in parsed.references), [
        value[:80] for _, _, value in parsed.references if not value.startswith("data:")]
    assert "link" not in parsed.tags and "script" not in parsed.tags and "iframe" not in parsed.tags
    assert parsed.styles and not any("url(" in style or "@import" in style for style in parsed.styles)
    embedded = [value for tag, name, value in parsed.references if tag == "img"]
    pngs = sorted((smoke_dir / "figures").glob("*.png"))
    assert len(embedded) == len(pngs) >= 5
    assert {base64.b64decode(value.split(",", 1)[1]) for value in embedded} == {p.read_bytes() for p in pngs}
    downloads = [value for tag, name, value in parsed.references if tag == "a"]
    assert len(downloads) == len(pngs) and all(value.startswith("data:application/pdf;base64,") for value in downloads)
    assert parsed.tags.count("table") >= 5
    runs = sorted(path.name for path in (smoke_dir / "runs").iterdir())
    assert "Sweep parameters (spec.yaml)" in page and "dataset_options" in page
    assert all(run in page for run in runs) and re.search(r"<th[^>]*>bins</th>", page) and "Provenance" in page


def test_report_command_writes_report_html(smoke_dir):
    (smoke_dir / "report.html").unlink()
    assert main(["report", str(smoke_dir)]) == 0
    assert (smoke_dir / "report.html").stat().st_size > 100_000


def test_report_figures_keep_legends_off_the_data(smoke_dir, monkeypatch):
    checked = []
    save = figures.save_figure

    def save_and_check(figure, path, *args, **kwargs):
        written = save(figure, path, *args, **kwargs)
        checked.append((Path(path).name, legends_clear_of_data(figure)))
        return written

    monkeypatch.setattr(figures, "save_figure", save_and_check)
    build_report(smoke_dir)
    assert "retention_vs_threshold" in dict(checked) and all(clear for _, clear in checked), checked


def test_failed_runs_missing_and_outside_files_are_named_not_embedded(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "runs" / "run-a").mkdir(parents=True)
    (sweep / "runs" / "run-b").mkdir()
    (sweep / "runs" / "run-a" / "status.json").write_text(json.dumps({"state": "finished", "duration_s": 1.5}))
    (sweep / "runs" / "run-b" / "status.json").write_text(json.dumps({"state": "failed", "error": "boom"}))
    for run, bins in (("run-a", 256), ("run-b", 512)):
        (sweep / "runs" / run / "params.json").write_text(json.dumps({"bins": bins, "image_size": 64}))
    (sweep / "runs" / "run-a" / "skipped.json").write_text(json.dumps([{"item": "a.png", "error": "bad"}] * 2))
    (tmp_path / "secret.txt").write_text("do not mail me")
    (sweep / "spec.yaml").write_text("name: sweep\ndescription: 'a ```fence``` and <b>tag</b>'\n"
                                     "runs: [{run_id: run-a}, {run_id: run-b}]\n")
    markdown = ("# Sweep report: sweep\n\n- `run-b`: failed: boom\n\n![gone](figures/gone.png) "
                "[secret](../secret.txt) [web](https://arxiv.org/abs/2510.18091)\n")
    path = write_html_report(sweep, markdown)
    page = path.read_text()
    assert "do not mail me" not in page and base64.b64encode(b"do not mail me").decode() not in page
    assert "figures/gone.png: missing" in page and "../secret.txt: outside the sweep directory" in page
    assert '<a href="https://arxiv.org/abs/2510.18091">web</a>' in page
    assert "run-b" in page and "failed" in page and re.search(r"<th[^>]*>bins</th>", page)
    assert not re.search(r"<th[^>]*>image_size</th>", page)  # the same in every run: not a column
    header, *rows = [row for row in table_rows(page) if row and row[0] in ("run_id", "run-a", "run-b")]
    runs = {row[0]: dict(zip(header, row)) for row in rows}
    assert runs["run-a"]["skipped_images"] == "2" and runs["run-b"]["skipped_images"] == "0"
    assert runs["run-b"]["state"] == "failed" and runs["run-a"]["duration_s"] == "1.5"
    spec = re.search(r"<pre><code[^>]*>(.*?)</code></pre>", page, re.S).group(1)
    assert "```fence```" in spec and "&lt;b&gt;tag&lt;/b&gt;" in spec and "name: sweep" in spec
    assert page == render_html(sweep, markdown)


def test_report_html_renders_alone_in_headless_chromium(smoke_dir, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip(NO_CHROMIUM)
    alone = tmp_path / "mailed"
    alone.mkdir()
    shutil.copy(smoke_dir / "report.html", alone / "report.html")
    shot = screenshot(alone / "report.html", tmp_path / "report.png", width=1280, height=2400)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    coloured = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 60
    assert coloured.sum() > 20_000, coloured.sum()  # the embedded figures drew (tables and text are grey)
    dom = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          (alone / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    parsed = parse(dom)
    assert parsed.tags.count("table") >= 5 and parsed.tags.count("img") >= 5
    assert "Sweep report" in dom


MEASURE = """<script>
document.querySelectorAll('details').forEach(d => d.open = true);  // folded tables measured too
const wide = [...document.querySelectorAll('table, pre, img, figure, p, li')].filter(
  e => e.getBoundingClientRect().width > e.parentElement.clientWidth + 0.5 || e.scrollWidth > e.clientWidth + 0.5
).map(e => [e.tagName, Math.round(e.getBoundingClientRect().width), e.parentElement.clientWidth,
            (e.textContent || '').slice(0, 60)]);
const out = document.createElement('pre');
out.id = 'measured';
out.textContent = JSON.stringify({scrollWidth: document.documentElement.scrollWidth,
                                  tables: document.querySelectorAll('table').length, wide: wide});
document.body.appendChild(out);
</script></body>"""


def layout_at(page: Path, scratch: Path, width: int = 1400) -> dict:
    """The page's width and every table (folded ones opened), code block, figure or paragraph wider than its
    container, measured by a script in a copy of the page run in headless Chromium ``width`` px wide."""
    scratch.mkdir(parents=True, exist_ok=True)
    measured = scratch / "measured.html"
    measured.write_text(page.read_text().replace("</body>", MEASURE))
    dom = subprocess.run([find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={scratch / 'profile'}",
                          f"--window-size={width},2000", "--dump-dom", measured.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def wide_sweep(folder: Path) -> Path:
    """A sweep folder whose report has every wide thing at once, from hand-made records: two data sets (one a long
    folder name), two long ``dataset_options``, 2 and 5 patch sizes, two bins, every ViT predicted and measured, a
    classifier; 16 runs, 48 configurations."""
    from apt_research.sweep.report import _results_markdown, summarise

    rng = np.random.default_rng(0)
    options = [json.dumps({"names": [f"an-image-with-a-rather-long-name-{i}" for i in range(8)]}),
               json.dumps({"count": 3, "seed": 7, "size": 96})]
    rows, runs = [], []
    for dataset in ("skimage", "/data/photographs/of/a/rather/long/folder/name/for/the/report"):
        for option in options:
            for num_scales in (2, 5):
                for bins in (256, 512):
                    run = f"run{len(runs):02d}"
                    settings = [[6.0 + 0.25 * s - 0.5 * i for i in range(num_scales - 1)] for s in range(3)]
                    runs.append({"run_id": run, "dataset": dataset, "dataset_options": json.loads(option),
                                 "num_scales": num_scales, "bins": bins, "thresholds": settings,
                                 "measure_speed": list(VIT_CONFIGS)})
                    for setting in settings:
                        for image in ("i1", "i2"):
                            tokens = {16 * 2 ** s: int(rng.integers(1, 20)) for s in range(num_scales)}
                            total = sum(tokens.values())
                            row = {"run_id": run, "dataset": dataset, "dataset_options": option, "image": image,
                                   "num_scales": num_scales, "bins": bins, "measure_speed": "[]",
                                   "thresholds": ",".join(f"{t:g}" for t in setting), "tokens_total": total,
                                   "tokens_base_grid": 196, "retention": total / 196, "savings": 1 - total / 196,
                                   "psnr": float(rng.uniform(25, 40)), "ssim": float(rng.uniform(0.8, 1.0)),
                                   "agreement": bool(rng.integers(0, 2)), "top1_correct": True,
                                   "uniform_top1_correct": True, "kl": float(rng.uniform(0, 1))}
                            for size, count in tokens.items():
                                row[f"tokens_{size}"] = count
                                row.update({f"score_{size}_{stat}": float(rng.uniform(3, 7))
                                            for stat in ("mean", "std", "p50")})
                            for model in VIT_CONFIGS:
                                row[f"gflops_apt_{model}"] = total * 0.1
                                row[f"gflops_uniform_{model}"] = 196 * 0.1
                                row[f"measured_speedup_{model}"] = float(rng.uniform(1, 3))
                            rows.append(row)
    sweep = folder / "wide"
    for run in runs:
        (sweep / "runs" / run["run_id"]).mkdir(parents=True)
        (sweep / "runs" / run["run_id"] / "status.json").write_text(json.dumps({"state": "finished",
                                                                               "duration_s": 12.5}))
        (sweep / "runs" / run["run_id"] / "params.json").write_text(json.dumps(
            {key: value for key, value in run.items() if key != "run_id"}))
    (sweep / "spec.yaml").write_text(yaml.safe_dump({"name": "wide", "description": "", "runs": runs},
                                                    sort_keys=False))
    (sweep / "spec.source.yaml").write_text("name: wide\ngrid:\n  dataset: [skimage, " + runs[-1]["dataset"] + "]\n")
    records = pd.DataFrame(rows)
    summary = summarise(records)
    write_html_report(sweep, "\n".join(["# Sweep report: wide", "", *_results_markdown(sweep, records, summary, [])]))
    return sweep


@pytest.mark.parametrize("which", ["smoke", "wide"])
def test_report_html_fits_1400_px_without_horizontal_scroll(smoke_dir, tmp_path, which):
    if find_chromium() is None:
        pytest.skip(NO_CHROMIUM)
    sweep = smoke_dir if which == "smoke" else wide_sweep(tmp_path)
    page = (sweep / "report.html").read_text()
    measured = layout_at(sweep / "report.html", tmp_path / "chromium")
    assert measured["scrollWidth"] <= 1400, measured
    assert measured["wide"] == [], measured["wide"]  # no table (folded ones opened), code block or figure overflows
    assert measured["tables"] == page.count("<table>") >= 7
    folds = re.findall(r"<details><summary>Show the table \((\d+) rows\)</summary>\n<table>(.*?)</table>", page, re.S)
    assert all(int(rows) == body.split("<tbody>")[1].count("<tr") > FOLD_ROWS for rows, body in folds)
    shown = [table for table in re.split(r"<details><summary>Show the table.*?</details>", page, flags=re.S)]
    assert all(table.split("<tbody>")[1].count("<tr") <= FOLD_ROWS
               for part in shown for table in re.findall(r"<table>(.*?)</table>", part, re.S))
    if which == "wide":  # 48 configurations: fidelity, speed, measured speed, classifier, scale mix, entropy, runs
        assert sorted(int(rows) for rows, _ in folds) == [16, 48, 48, 48, 48, 48, 56], [rows for rows, _ in folds]


def test_report_html_opens_with_the_summary_then_the_figures_then_the_tables(smoke_dir):
    page = (smoke_dir / "report.html").read_text()
    order = [page.index(mark) for mark in ("<h2>Summary</h2>", "Near 50% retention", "<h2>Figures</h2>", "<img",
                                           "<h2>Tables</h2>", "<h2>Retention by setting", "<h2>Provenance</h2>",
                                           "<h2>Sweep spec")]
    assert order == sorted(order), order
    markdown = (smoke_dir / "report.md").read_text()
    assert markdown.index("## Summary") < markdown.index("## Figures") < markdown.index("## Tables")


def test_the_compact_spec_is_shown_and_the_expanded_list_folded(smoke_dir):
    from apt_research.sweep.runner import SOURCE_FILE
    from test_sweep_runner import SMOKE

    assert (smoke_dir / SOURCE_FILE).read_text() == SMOKE.read_text()  # the spec as the user wrote it, kept
    page = (smoke_dir / "report.html").read_text()
    section = page.split("<h2>Sweep spec, as written (spec.source.yaml)</h2>", 1)[1]
    compact, rest = section.split("</pre>", 1)
    assert html.unescape(re.sub(r"<[^>]+>", "", compact)).strip() == SMOKE.read_text().strip()
    folded = re.match(r"\s*<details><summary>Sweep parameters \(spec\.yaml\): the expanded list of 2 runs[^<]*"
                      r"</summary>(.*?)</details>", rest, re.S)
    assert folded, rest[:300]
    expanded = yaml.safe_load(html.unescape(re.sub(r"<[^>]+>", "", folded.group(1))))
    assert {run["run_id"] for run in expanded["runs"]} == {path.name for path in (smoke_dir / "runs").iterdir()}
    assert page.count("run_id: ") == 2  # the run list is only in the fold
