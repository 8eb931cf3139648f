"""The documentation: the site builds with ``mkdocs build --strict``, the README is a short front door into it,
every relative link of the README and of the pages points to a file, and the pages render in headless Chromium."""

import html
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from apt_research.sweep.report_html import CHROMIUM_FLAGS, find_chromium

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
NO_CHROMIUM = "Chromium is not installed (Debian: apt-get install chromium; CI installs it)"
NO_MKDOCS = "the docs extra is not installed (pip install -e '.[docs]': mkdocs, mkdocstrings[python])"

# The site's pages (docs/<page>.md -> <site>/<page>.html): the front page, the guides and the API reference.
PAGES = ["index", "getting-started", "library", "contract", "sweeps", "cluster", "models", "explore", "benchmarks",
         "kernels", "design", "testing", "api/index", "api/core", "api/models", "api/sweep", "api/datasets",
         "api/calibration"]
COMMANDS = [
    "python3 run.py main    # main job: the default ablation sweep on the bundled images -> results/default/report.md",
    "python3 run.py test    # the test suite (what CI runs: .ci/run)",
]
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def markdown_files() -> list[Path]:
    return [README, *sorted(path for path in DOCS.rglob("*.md") if "_templates" not in path.parts)]


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a markdown file, code blocks and inline code left out."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason=NO_MKDOCS)
    pytest.importorskip("mkdocstrings", reason=NO_MKDOCS)
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_site_builds_strict_with_every_page(site):
    missing = [page for page in PAGES if not (site / f"{page}.html").is_file()]
    assert not missing, f"pages missing from the built site: {missing}"
    for page in (path.relative_to(DOCS).with_suffix("").as_posix() for path in markdown_files()[1:]):
        assert (site / f"{page}.html").is_file(), f"docs/{page}.md was not built (is it in mkdocs.yml's nav?)"
    assert (site / "images" / "report.png").is_file()
    api = (site / "api" / "core.html").read_text()
    for name in ("PatchTokenizer", "patch_groups", "compute_patch_entropy_batched", "register_scorer",
                 "select_patches_by_threshold"):
        assert f'id="apt_research.{name}"' in api, f"the API reference lost {name}"


def test_every_page_source_exists():
    for page in PAGES:
        assert (DOCS / f"{page}.md").is_file(), f"docs/{page}.md is missing"


def test_readme_is_the_front_door():
    text = README.read_text()
    assert len(text.splitlines()) < 250, "the README is the front door: keep the long sections in docs/"
    for command in COMMANDS:
        assert command in text, f"the README lost the command {command.split('#')[0].strip()!r}"
    links = relative_links(README)
    assert "docs/contract.md" in links, "the link pattern no longer finds the README's links"
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links}
    pages = [*DOCS.glob("*.md"), DOCS / "api" / "index.md"]
    unlinked = sorted(path.relative_to(ROOT).as_posix() for path in pages if path.resolve() not in linked)
    assert not unlinked, f"the README links to no {unlinked}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files(path):
    broken = []
    for target in relative_links(path):
        file = target.split("#")[0].split("?")[0]
        if file and not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {broken}"


VOID = ("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr")


class _VisibleText(HTMLParser):
    """The text a reader sees inside the page's main content (``role="main"``): no scripts, no styles."""

    def __init__(self):
        super().__init__()
        self.depth, self.skip, self.parts = 0, 0, []

    def handle_starttag(self, tag, attrs):
        if self.depth:
            self.depth += tag not in VOID
        elif dict(attrs).get("role") == "main":
            self.depth = 1
        self.skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        if self.depth and tag not in VOID:
            self.depth -= 1
        self.skip -= tag in ("script", "style") and self.skip > 0

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.parts.append(data)


def visible_text(dom: str) -> str:
    parser = _VisibleText()
    parser.feed(dom)
    return html.unescape(re.sub(r"\s+", " ", " ".join(parser.parts)))


def test_pages_render_in_headless_chromium(site, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip(NO_CHROMIUM)

    def dump(page: str) -> str:
        result = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                                 "--window-size=1400,900", "--dump-dom", (site / page).as_uri()],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
        return result.stdout

    front, api = visible_text(dump("index.html")), visible_text(dump("api/core.html"))
    assert "Adaptive Patch Tokenization" in front and "python3 run.py main" in front
    assert "PatchTokenizer" in api and "compute_patch_entropy_batched" in api and "Parameters" in api
    for text in (front, api):
        assert "Traceback" not in text and not re.search(r"\bError\b", text), text[:2000]
    # mkdocstrings reports an object it could not collect in the page itself, never silently
    assert "could not be found" not in api.lower()
