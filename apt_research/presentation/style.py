"""The one style of every figure: paper sizes, fonts, colours, written once.

The rc settings live in ``apt-paper.mplstyle`` beside this module (a matplotlib style file, so
``plt.style.use(style.STYLE_FILE)`` works without this package too); this module names the sizes and
palettes that a style file cannot hold, and applies the file:

- sizes: a figure is ``ONE_COLUMN_IN`` (3.35 in) or ``TWO_COLUMN_IN`` (6.9 in) wide, made at that size with
  constrained layout and saved at that size (``figures.save_figure`` never crops), so a font of 8 pt in the
  style is 8 pt on the page: text 7-9 pt, nothing below ``MIN_FONT_PT``;
- fonts: DejaVu Sans (shipped with matplotlib: the same glyphs on every machine), embedded in PDFs as
  TrueType (Type 42);
- colours: Okabe & Ito's colour-blind-safe set for categories (``DATASET_COLOURS``: data sets), a
  sequential ramp from matplotlib's ``plasma`` for patch sizes (``SCALE_COLOURS``), chosen apart from the
  data-set colours so that a patch outline never reads as a data set;
- thin lines (0.6 pt axes, 1 pt data), no top or right spines, a light grid behind the data, legends
  without frames.

Use it in a notebook with ``style.paper()`` (for the session) or ``with style.paper_context(): ...``,
then ``fig, ax = style.subplots(columns=1, height=2.2)`` and ``figures.save_figure(fig, "name")``.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib

ONE_COLUMN_IN = 3.35
"""Width of a figure one column of a two-column paper wide (inches)."""
TWO_COLUMN_IN = 6.9
"""Width of a figure spanning both columns (the text width) of a two-column paper (inches)."""
WIDTHS_IN = (ONE_COLUMN_IN, TWO_COLUMN_IN)
MIN_FONT_PT = 6.0
"""No text of a figure is smaller than this at print size."""
MAX_FONT_PT = 9.0
"""No text of a figure is larger than this (a figure title)."""
STYLE_FILE = Path(__file__).with_name("apt-paper.mplstyle")
"""The matplotlib style file: ``plt.style.use(STYLE_FILE)``."""

OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7"}
"""Okabe & Ito's colour-blind-safe set (Color Universal Design, 2008)."""


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    return tuple(float(v) for v in matplotlib.colors.to_rgb(hex_colour))


DATASET_COLOURS = [_rgb(c) for c in (
    OKABE_ITO["blue"], OKABE_ITO["vermillion"], OKABE_ITO["bluish green"], OKABE_ITO["sky blue"], OKABE_ITO["black"],
    "#7F7F7F", "#8C510A", OKABE_ITO["orange"], OKABE_ITO["reddish purple"], "#999933")]
"""Ten data-set colours: Okabe-Ito first (blue, vermillion, bluish green, sky blue, black), then grey,
brown, orange, reddish purple, olive. The first seven are far from every patch-size colour."""

SCALE_COLOURS = [_rgb(c) for c in ("#FBD724", "#CC4778", "#41049D", "#F58B47", "#8F0DA4", "#E8E8E8")]
"""Patch-size colours, finest first: yellow, pink, indigo (``plasma`` at 0.92, 0.5, 0.1: ordered from light
to dark, so they read in greyscale too), then orange, purple and light grey for a fourth to sixth scale."""

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
"""Markers for configurations, one per configuration in the order of the legend."""
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 2)))


def scale_colours(sizes) -> dict[int, tuple[float, float, float]]:
    """``{patch_size: RGB}``: the finest size of ``sizes`` gets ``SCALE_COLOURS[0]``, the next the second, ...

    Pass every patch size of a report so that a size has one colour in all its figures.
    """
    sizes = sorted({int(size) for size in sizes})
    return {size: SCALE_COLOURS[index % len(SCALE_COLOURS)] for index, size in enumerate(sizes)}


def width_in(columns: int) -> float:
    """3.35 for one column, 6.9 for two."""
    if columns not in (1, 2):
        raise ValueError(f"columns must be 1 or 2 (paper columns), got {columns!r}")
    return ONE_COLUMN_IN if columns == 1 else TWO_COLUMN_IN


def _quiet_seaborn() -> None:
    # seaborn 0.13 passes ``vert=`` to ``Axes.boxplot`` on every box plot, which matplotlib >= 3.11 deprecates;
    # matplotlib attributes the warning to seaborn's module, so a user's own ``vert=`` still warns.
    warnings.filterwarnings("ignore", message="vert: bool was deprecated",
                            category=matplotlib.MatplotlibDeprecationWarning, module=r"seaborn\.")


def paper() -> None:
    """Apply the style for the rest of the session: matplotlib's defaults, then ``STYLE_FILE``.

    Also hides the one deprecation seaborn 0.13 triggers in matplotlib >= 3.11 on every box plot;
    any other warning still reaches the user.
    """
    import matplotlib.pyplot as plt

    plt.style.use(["default", STYLE_FILE])  # from matplotlib's defaults: nothing of an earlier theme stays
    _quiet_seaborn()


@contextmanager
def paper_context():
    """The style (as ``paper()``) inside a ``with`` block only; the rc settings before it come back after it."""
    import matplotlib.pyplot as plt

    _quiet_seaborn()
    with plt.style.context(["default", STYLE_FILE]):
        yield


def subplots(columns: int = 1, height: float = 2.2, nrows: int = 1, ncols: int = 1, **kwargs):
    """``plt.subplots`` of a figure ``columns`` paper columns wide and ``height`` inches tall, constrained layout.

    Extra keyword arguments go to ``plt.subplots`` (``sharex``, ``squeeze``, ``gridspec_kw`` ...).
    """
    import matplotlib.pyplot as plt

    if not height > 0:
        raise ValueError(f"height must be positive (inches), got {height!r}")
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width_in(columns), height), **kwargs)
