"""report.html: one self-contained page per sweep, checked by parsing it and by rendering it alone in headless Chromium."""

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apt_research.presentation import figures
from apt_research.cli import main
from apt_research.sweep.report_html import CHROMIUM_FLAGS, find_chromium, render_html, screenshot, write_html_report
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
