"""The README's screenshots: the smoke sweep's report.html in headless Chromium, and the explore widget's display.

    .venv/bin/python docs/make_screenshots.py            # runs the smoke sweep in a temporary directory
    .venv/bin/python docs/make_screenshots.py --sweep results/smoke

Writes ``docs/images/report.png`` (the top of report.html, rendered alone,
offline) and ``docs/images/explore-widget.png`` (what the explore widget draws
under its controls for ``skimage:astronaut`` at 336 x 336: the heatmaps, the
token counts with PSNR/SSIM, and the patch grid beside the reconstruction).
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

from apt_research import figures
from apt_research.cli import main as cli
from apt_research.explore import Explorer
from apt_research.report_html import screenshot
from apt_research.visualize import VisualizeConfig

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


def widget_png() -> Path:
    """The explore widget's display for one image, as one PNG."""
    explorer = Explorer("skimage:astronaut", VisualizeConfig(image_size=336, resize="center_crop"))
    heatmaps = Image.open(io.BytesIO(explorer.heatmap_png()))
    grid = Image.open(io.BytesIO(explorer.selection_png()))
    width = max(heatmaps.width, grid.width) / 100
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(width, (heatmaps.height + grid.height) / 100 + 0.4),
                                         gridspec_kw={"height_ratios": [heatmaps.height, grid.height]})
    for ax, picture in ((top, heatmaps), (bottom, grid)):
        ax.imshow(picture)
        ax.set_axis_off()
    bottom.set_title(explorer.caption(), fontsize=8, loc="left")
    path = figures.save_figure(figure, IMAGES / "explore-widget.png")[0]
    plt.close(figure)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, help="an existing sweep directory with report.html (default: run smoke)")
    args = parser.parse_args(argv)
    for path in (report_png(args.sweep), widget_png()):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
