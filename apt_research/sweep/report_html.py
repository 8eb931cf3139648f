"""``report.html``: a sweep's ``report.md`` as one self-contained page, whole when mailed alone.

The page is rendered from the markdown the report already wrote (so both say
the same), with every figure embedded as a data URI, every linked file of the
sweep directory (the figures' PDFs) embedded as a download, the spec as the user
wrote it (``spec.source.yaml``) with the expanded run list (``spec.yaml``) folded
away, and a table of its runs and their parameters appended, and its styles
inline. It references nothing outside itself. Every table fits a 1400 px wide
window without a horizontal scrollbar (headers and text cells wrap); a table of
more than ``FOLD_ROWS`` rows is folded in a ``<details>`` that says how many.

``find_chromium`` and
``screenshot`` render a page with headless Chromium (the tests and the docs'
screenshot use them).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import mimetypes
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import jinja2
import mistune
import pandas as pd
from PIL import Image

from .._io import atomic_path, write_atomic
from .layout import SOURCE_FILE
from .parameters import PARAMETERS, varied_parameters

log = logging.getLogger(__name__)

MAX_EMBED_BYTES = 20 * 2**20
MISSING = "—"
"""How every table of the report writes a missing value (NaN or None): one way, in report.md and report.html."""
FOLD_ROWS = 12
"""report.html folds a table of more rows than this (``<details>``, its summary line giving the count)."""
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars")

PAGE = jinja2.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0 auto;
       max-width: 1180px; padding: 24px 32px 48px; }
h1 { font-size: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #eaeef2; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; font-variant-numeric: tabular-nums;
        max-width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; }
th { background: #f3f5f8; font-weight: 600; vertical-align: bottom; overflow-wrap: break-word; }
td { overflow-wrap: anywhere; }
td[style*="left"] { min-width: 6em; }
td[style*="right"] { white-space: nowrap; }
tr:nth-child(even) td { background: #f8fafc; }
details { margin: .4em 0 1.2em; }
details > summary { cursor: pointer; color: #0969da; font-size: 14px; }
details[open] > summary { margin-bottom: .3em; }
code, pre { font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f3f5f8;
            border-radius: 4px; }
code { padding: 1px 4px; overflow-wrap: anywhere; }
pre { padding: 10px 14px; white-space: pre-wrap; overflow-wrap: anywhere; }
pre code { padding: 0; background: none; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 16px; margin: 1em 0; }
figure.wide { grid-column: 1 / -1; }
figure { margin: 0; padding: 8px; border: 1px solid #eaeef2; border-radius: 6px; }
figure img { width: 100%; height: auto; }
figcaption { font-size: 13px; color: #57606a; }
figcaption a { margin-left: .5em; }
a { color: #0969da; }
.missing { color: #b00020; }
</style>
</head>
<body>
{{ body }}
</body>
</html>
""", autoescape=False)


def _data_uri(path: Path) -> str | None:
    """``data:`` URI of a file of at most ``MAX_EMBED_BYTES``; ``None`` when larger."""
    if path.stat().st_size > MAX_EMBED_BYTES:
        return None
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


_FIGURE = "\x00figure\x00"


def _aspect(path: Path) -> float:
    """Width over height of an image file (two-column figures are at least twice as wide as high)."""
    with Image.open(path) as image:
        return image.width / image.height

_DOWNLOAD = re.compile(r'<a href="data:[^"]*" download="[^"]*">.*?</a>')


class _EmbeddingRenderer(mistune.HTMLRenderer):
    """HTML renderer that embeds what the markdown links inside ``root`` and refuses anything else local."""

    def __init__(self, root: Path):
        super().__init__(escape=True)
        self.root = root.resolve()
        self._figures: list[tuple[str, str, bool]] = []

    def _local(self, url: str) -> Path | None:
        """The file a relative URL names inside ``root``; ``None`` for web links and anchors."""
        parsed = urlparse(url)
        if parsed.scheme or parsed.netloc or not parsed.path:
            return None
        return (self.root / unquote(parsed.path)).resolve()

    def _embedded(self, url: str) -> tuple[str | None, str]:
        """``(data URI or None, why not)`` for a local URL."""
        path = self._local(url)
        if not path.is_relative_to(self.root):
            return None, "outside the sweep directory"
        if not path.is_file():
            return None, "missing"
        uri = _data_uri(path)
        return (uri, "") if uri else (None, f"over {MAX_EMBED_BYTES // 2**20} MiB")

    def _not_embedded(self, text: str, url: str, why: str) -> str:
        log.warning("report.html: %s not embedded (%s)", url, why)
        return f'{text} <span class="missing">[{mistune.escape(url)}: {why}]</span>'

    def image(self, text: str, url: str, title: str | None = None) -> str:
        if self._local(url) is None:
            return self._not_embedded(mistune.escape(text), url, "external images are not embedded")
        uri, why = self._embedded(url)
        if uri is None:
            return self._not_embedded(mistune.escape(text), url, why)
        wide = _aspect(self._local(url)) >= 2
        self._figures.append((f'<img src="{uri}" alt="{mistune.escape(text)}">', mistune.escape(title or text), wide))
        return f"{_FIGURE}{len(self._figures) - 1}{_FIGURE}"

    def paragraph(self, text: str) -> str:
        """A paragraph; one holding figures becomes a grid of cards (image, name, its downloads)."""
        if _FIGURE not in text:
            return super().paragraph(text)
        pieces = re.split(f"{_FIGURE}(\\d+){_FIGURE}", text)
        cards = []
        for index, after in zip(pieces[1::2], pieces[2::2]):
            image, caption, wide = self._figures[int(index)]
            downloads = " ".join(_DOWNLOAD.findall(after))
            opening = '<figure class="wide">' if wide else "<figure>"
            cards.append(f"{opening}{image}<figcaption>{caption} {downloads}</figcaption></figure>")
        rest = _DOWNLOAD.sub("", "".join(pieces[0::2]))
        prose = super().paragraph(rest) if re.search(r"\w", re.sub(r"<[^>]+>", "", rest)) else ""
        return prose + f'<div class="figures">{"".join(cards)}</div>\n'

    def link(self, text: str, url: str, title: str | None = None) -> str:
        if self._local(url) is None:
            return super().link(text, url, title)
        uri, why = self._embedded(url)
        if uri is None:
            return self._not_embedded(text, url, why)
        return f'<a href="{uri}" download="{mistune.escape(Path(unquote(url)).name)}">{text}</a>'


def _read_json(path: Path, default):
    """``path``'s JSON, or ``default`` when it is absent, unreadable or of another type than ``default``."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default


def runs_table(sweep_dir) -> pd.DataFrame:
    """One row per run of the sweep's spec (``layout.spec_run_ids``): run id, state, duration, images skipped and
    each parameter that differs between runs."""
    from .layout import spec_run_ids

    rows = []
    for run_id in spec_run_ids(sweep_dir):
        run_dir = Path(sweep_dir, "runs", run_id)
        status = _read_json(run_dir / "status.json", {})
        params = _read_json(run_dir / "params.json", {})
        row = {"run_id": run_id, "state": status.get("state", "incomplete"),
               "duration_s": status.get("duration_s"), "skipped_images": len(_read_json(run_dir / "skipped.json", []))}
        row.update({f"param:{key}": json.dumps(value, default=str) if isinstance(value, (list, dict)) else value
                    for key, value in params.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    params = {column.removeprefix("param:"): table[column] for column in table if column.startswith("param:")}
    varying = [f"param:{key}" for key in varied_parameters(params)]
    return table[[c for c in table if not c.startswith("param:")] + varying].rename(columns=lambda c: c.removeprefix("param:"))


def _yaml_block(text: str, summary: str | None = None) -> str:
    """``text`` as an escaped ``<pre>`` block, inside a ``<details>`` with ``summary`` when one is given."""
    block = f'<pre><code class="language-yaml">{html.escape(text.rstrip())}\n</code></pre>'
    return f"<details><summary>{html.escape(summary)}</summary>{block}</details>" if summary else block


def _distinct(values: list) -> list:
    """``values`` without repeats, in order (lists and mappings compared by content)."""
    seen = {}
    for value in values:
        seen.setdefault(json.dumps(value, sort_keys=True, default=str), value)
    return list(seen.values())


def rebuilt_spec(expanded: dict) -> str:
    """A compact spec rebuilt from an expanded ``spec.yaml`` (for a sweep folder made before ``spec.source.yaml``
    was kept): ``fixed`` holds what no run changes (parameters at their default left out), ``grid`` and ``zip``
    what varies (parameters whose values pair one to one are zipped), or ``varied`` with each parameter's values
    where the runs are no grid of those."""
    import yaml

    runs = [{k: v for k, v in run.items() if k != "run_id"} for run in expanded.get("runs") or []
            if isinstance(run, dict)]
    keys = list(dict.fromkeys(key for run in runs for key in run))
    values = {key: [run.get(key) for run in runs] for key in keys}
    distinct = {key: _distinct(column) for key, column in values.items()}
    fixed = {key: found[0] for key, found in distinct.items()
             if len(found) == 1 and not (key in PARAMETERS and found[0] == PARAMETERS[key])}
    varying = [key for key in keys if len(distinct[key]) > 1]

    def pairs(*group):
        return len(_distinct([[run.get(key) for key in group] for run in runs]))

    groups = []
    for key in varying:
        partner = next((group for group in groups
                        if pairs(group[0], key) == len(distinct[key]) == len(distinct[group[0]])), None)
        if partner:
            partner.append(key)
        else:
            groups.append([key])
    spec = {"name": expanded.get("name"), "description": expanded.get("description"), "fixed": fixed}
    zipped = [group for group in groups if len(group) > 1]
    grid_size = 1
    for group in groups:
        grid_size *= len(distinct[group[0]])
    if len(zipped) <= 1 and grid_size == len(runs) == pairs(*varying):
        spec["grid"] = {group[0]: distinct[group[0]] for group in groups if len(group) == 1}
        spec["zip"] = {key: distinct[key] for key in (zipped[0] if zipped else [])}
    else:
        spec["varied"] = {key: distinct[key] for key in varying}
    spec = {key: value for key, value in spec.items() if value or key in ("name", "fixed")}
    header = ("# Rebuilt from spec.yaml (this sweep folder predates spec.source.yaml, the spec as written); "
              "parameters at their default are left out.\n")
    return header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=100)


def spec_html(sweep_dir) -> str:
    """The sweep's spec as the user wrote it (``spec.source.yaml``; rebuilt from ``spec.yaml`` when the folder has
    none), then the expanded run list (``spec.yaml``) folded away: an HTML section, empty without ``spec.yaml``."""
    import yaml

    sweep_dir = Path(sweep_dir)
    expanded_path, source_path = sweep_dir / "spec.yaml", sweep_dir / SOURCE_FILE
    if not expanded_path.is_file():
        return ""
    expanded_text = expanded_path.read_text()
    try:
        expanded = yaml.safe_load(expanded_text)
    except yaml.YAMLError:
        expanded = None
    expanded = expanded if isinstance(expanded, dict) else {}
    runs = expanded.get("runs") if isinstance(expanded.get("runs"), list) else []
    if source_path.is_file():
        title, source = f"Sweep spec, as written ({SOURCE_FILE})", source_path.read_text()
    else:
        title, source = "Sweep spec (rebuilt from spec.yaml)", rebuilt_spec(expanded)
    return (f"<h2>{html.escape(title)}</h2>\n{_yaml_block(source)}\n"
            + _yaml_block(expanded_text, f"Sweep parameters (spec.yaml): the expanded list of {len(runs)} "
                                         f"run{'' if len(runs) == 1 else 's'}, every parameter of each") + "\n")


_TABLE = re.compile(r"<table>.*?</table>\n?", re.S)


def fold_long_tables(body: str) -> str:
    """Each table of ``body`` with more than ``FOLD_ROWS`` rows inside a ``<details>`` whose summary line gives its
    row count (cells are escaped text, so no cell can end a table early)."""
    def fold(match):
        table = match.group(0)
        rows = table.split("<tbody>", 1)[-1].count("<tr")
        return (f"<details><summary>Show the table ({rows} rows)</summary>\n{table}</details>\n"
                if rows > FOLD_ROWS else table)

    return _TABLE.sub(fold, body)


def render_html(sweep_dir, markdown: str) -> str:
    """The self-contained page of a sweep directory whose report is ``markdown``.

    Parameters
    ----------
    sweep_dir : path
        The sweep directory; relative links and images of ``markdown`` resolve against it.
    markdown : str
        The text of ``report.md``.

    Returns
    -------
    str
        The HTML page.
    """
    sweep_dir = Path(sweep_dir)
    render = mistune.create_markdown(renderer=_EmbeddingRenderer(sweep_dir), plugins=["table"])
    body = render(markdown.rstrip() + "\n") + spec_html(sweep_dir)
    runs = runs_table(sweep_dir)
    if not runs.empty:
        body += render(f"## Runs and the parameters that vary between them\n\n{markdown_table(runs)}\n")
    title = next((line[2:].strip() for line in markdown.splitlines() if line.startswith("# ")), sweep_dir.name)
    return PAGE.render(title=mistune.escape(title), body=fold_long_tables(body))


def markdown_table(table, floatfmt="g") -> str:
    """``table`` as a markdown table whose cells stay cells: a ``|`` in a value (a file or folder name) is
    escaped and a line break becomes a space, so no value can end a table or add a row; every missing value
    (NaN, None) is written ``MISSING``. ``floatfmt``: one format, or one per column."""
    def cell(value):
        return value.replace("|", "\\|").replace("\r", " ").replace("\n", " ") if isinstance(value, str) else value

    table = table.map(cell).rename(columns=lambda name: cell(str(name)))
    table = table.astype(object).where(table.notna(), None)  # tabulate writes None as missingval, NaN as "nan"
    return table.to_markdown(index=False, floatfmt=floatfmt, missingval=MISSING)


def write_html_report(sweep_dir, markdown: str) -> Path:
    """Write ``report.md`` and ``report.html`` in ``sweep_dir`` together and return the page's path: both are
    written to temporary files first and renamed only when both are whole, so a full disk leaves the earlier
    pair as it was, never one new and one stale."""
    sweep_dir = Path(sweep_dir)
    page = render_html(sweep_dir, markdown)
    with atomic_path(sweep_dir / "report.md") as text, atomic_path(sweep_dir / "report.html") as html:
        text.write_text(markdown)
        html.write_text(page)
    return sweep_dir / "report.html"


def find_chromium() -> str | None:
    """Path of a Chromium or Chrome executable on ``PATH``; ``None`` if there is none."""
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 1600, timeout: float = 120.0) -> Path:
    """Render ``html`` in headless Chromium, offline, and write a ``width`` x ``height`` PNG of its top to ``png``.

    Raises
    ------
    FileNotFoundError
        When no Chromium is installed (Debian: ``apt-get install chromium``).
    RuntimeError
        When Chromium exits without writing the screenshot (its output is in the message).
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"screenshot needs Chromium on PATH (one of {CHROMIUM_NAMES}); none found")
    with tempfile.TemporaryDirectory(prefix="apt-chromium-") as scratch:
        shot = Path(scratch) / "screenshot.png"
        result = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={scratch}/profile",
                                 f"--window-size={width},{height}", f"--screenshot={shot}", Path(html).resolve().as_uri()],
                                capture_output=True, text=True, timeout=timeout)
        if not shot.is_file():
            raise RuntimeError(f"Chromium wrote no screenshot of {html} (exit {result.returncode}): "
                               f"{result.stderr[-2000:]}")
        write_atomic(png, shot.read_bytes())
    return Path(png)
