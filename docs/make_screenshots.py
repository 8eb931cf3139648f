"""The README's screenshots: the smoke sweep's report.html and the explore widget, in headless Chromium.

    .venv/bin/python docs/make_screenshots.py --widget-js DIR          # runs the smoke sweep in a temporary directory
    .venv/bin/python docs/make_screenshots.py --widget-js DIR --sweep results/smoke

Writes ``docs/images/report.png`` (the top of report.html, rendered alone,
offline) and ``docs/images/explore-widget.png``: ``notebooks/explore.ipynb``
executed by papermill for ``skimage:astronaut`` (its widget state saved), turned
into HTML by nbconvert without input cells, and rendered offline, controls
included, by the widgets' own HTML manager. Chromium here reaches no CDN, so the
two scripts that page loads come from npm:
``npm install --prefix DIR @jupyter-widgets/html-manager@1 requirejs``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from apt_research.cli import main as cli
from apt_research.sweep.report_html import screenshot

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def report_png(sweep: Path | None) -> Path:
    """Screenshot of report.html copied alone into an empty directory (as if mailed)."""
    with tempfile.TemporaryDirectory(prefix="apt-shots-") as scratch:
        if sweep is None:
            sweep = Path(scratch) / "smoke"
            if cli(["sweep", str(ROOT / "ablations" / "smoke.yaml"), "--out", str(sweep), "--jobs", "2"]) != 0:
                raise RuntimeError("the smoke sweep failed; see its report")
        alone = Path(scratch) / "mailed"
        alone.mkdir()
        shutil.copy(sweep / "report.html", alone / "report.html")
        return screenshot(alone / "report.html", IMAGES / "report.png", width=1280, height=1500)


def widget_png(widget_js: Path) -> Path:
    """Screenshot of the executed explore notebook's widget, rendered from its saved state, offline."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    modules = Path(widget_js) / "node_modules"
    with tempfile.TemporaryDirectory(prefix="apt-shots-") as scratch:
        scratch = Path(scratch)
        papermill.execute_notebook(str(ROOT / "notebooks" / "explore.ipynb"), str(scratch / "explore.ipynb"),
                                   parameters={"image": "skimage:astronaut"}, progress_bar=False)
        # nbconvert's own settings point the page at the local copies (and at no MathJax): nothing is fetched.
        exporter = HTMLExporter(exclude_input=True, require_js_url="require.js",
                                widget_renderer_url="html-manager/embed-amd.js", mathjax_url="")
        html, _ = exporter.from_notebook_node(nbformat.read(scratch / "explore.ipynb", 4))
        shutil.copy(modules / "requirejs" / "require.js", scratch / "require.js")
        shutil.copytree(modules / "@jupyter-widgets" / "html-manager" / "dist", scratch / "html-manager")
        page = scratch / "explore.html"
        page.write_text(html)
        return screenshot(page, IMAGES / "explore-widget.png", width=1200, height=1400)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, help="an existing sweep directory with report.html (default: run smoke)")
    parser.add_argument("--widget-js", type=Path, required=True,
                        help="npm prefix holding @jupyter-widgets/html-manager@1 and requirejs")
    args = parser.parse_args(argv)
    for path in (report_png(args.sweep), widget_png(args.widget_js)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
