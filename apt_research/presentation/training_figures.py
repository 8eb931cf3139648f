"""The fine-tuning figure: validation top-1 against optimizer steps (``apt-research finetune``'s evaluation.csv)."""

from __future__ import annotations

import pandas as pd

from . import style


NAMES = {"apt": "APT", "uniform": "uniform"}


def _check_evaluations(evaluations: pd.DataFrame, argument: str) -> None:
    missing = sorted({"step", "tokenization", "top1"} - set(evaluations))
    if missing:
        raise ValueError(f"{argument} must be a finetune evaluation.csv, missing columns {missing}")
    if not (evaluations["step"] == 0).any():
        raise ValueError(f"{argument} must hold step 0 (the model before fine-tuning), got steps "
                         f"{sorted(evaluations['step'].unique())[:5]}")


def top1_vs_steps(evaluations: pd.DataFrame, columns: int = 1, trained_on: str = "apt",
                  control: pd.DataFrame | None = None):
    """Top-1 as fine-tuning goes on, on the tokens the run trained on and on the other tokens, against APT
    zero-shot and uniform before fine-tuning (and, given ``control``, the same recipe on uniform tokens).

    Parameters
    ----------
    evaluations : pandas.DataFrame
        ``evaluation.csv`` of a fine-tuning run: ``step``, ``tokenization`` (``uniform``/``apt``: the tokens
        evaluated), ``top1``, ``retention``; the rows of step 0 are the model before fine-tuning (zero-shot).
    columns : int
        1 (3.35 in) or 2 (6.9 in) paper columns wide.
    trained_on : str
        The tokens the run fine-tuned on (its spec's ``tokenization``): ``"apt"`` or ``"uniform"``. The
        lines are labelled by it (``APT fine-tuned``, ``uniform tokens, same model``).
    control : pandas.DataFrame, optional
        ``evaluation.csv`` of the same spec fine-tuned on uniform tokens (``tokenization: uniform``): its
        uniform rows are drawn as ``uniform fine-tuned (control)``, the fair comparison for APT fine-tuned
        (the same steps, data and recipe).

    Returns
    -------
    matplotlib.figure.Figure
        The run's two lines, the control's, and two reference lines from step 0: uniform before
        fine-tuning and APT zero-shot; the key below the axes (save it with ``save_figure(...,
        legends="keep")``).
    """
    if trained_on not in NAMES:
        raise ValueError(f"trained_on must be one of {sorted(NAMES)} (the run's tokenization), got {trained_on!r}")
    _check_evaluations(evaluations, "evaluations")
    if control is not None:
        _check_evaluations(control, "control")
    with style.paper_context():
        figure, axis = style.subplots(columns, height=2.6 if control is None else 2.8)
        colours = style.DATASET_COLOURS
        colour = {"uniform": colours[0], "apt": colours[1]}
        by = {name: rows.sort_values("step") for name, rows in evaluations.groupby("tokenization")}
        start = evaluations[evaluations["step"] == 0].set_index("tokenization")["top1"]
        if "uniform" in start:
            axis.axhline(100 * start["uniform"], color=colour["uniform"], linestyle=":", linewidth=1,
                         label="uniform, before fine-tuning")
        if "apt" in start:
            axis.axhline(100 * start["apt"], color=colour["apt"], linestyle="--", linewidth=1, label="APT zero-shot")
        for name in sorted(by, key=lambda name: name == trained_on):  # the trained tokens' line drawn last
            rows = by[name]
            retention = rows["retention"].mean() if name == "apt" and "retention" in rows else None
            share = f" ({100 * retention:.0f}% tokens)" if retention == retention and retention else ""
            label = (f"{NAMES[name]} fine-tuned{share}" if name == trained_on
                     else f"{NAMES[name]} tokens, same model{share}")
            axis.plot(rows["step"], 100 * rows["top1"], color=colour.get(name, colours[2]),
                      marker="o" if name == "apt" else "s", markersize=3, label=label,
                      linestyle="-" if name == trained_on else (0, (4, 1.5)))
        if control is not None:
            rows = control[control["tokenization"] == "uniform"].sort_values("step")
            axis.plot(rows["step"], 100 * rows["top1"], color=colours[2], marker="^", markersize=3,
                      label="uniform fine-tuned (control)")
        axis.set_xlabel("fine-tuning steps")
        axis.set_ylabel("validation top-1 (%)")
        figure.legend(*axis.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return figure
