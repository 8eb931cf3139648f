"""The fine-tuning figure: validation top-1 against optimizer steps (``apt-research finetune``'s evaluation.csv)."""

from __future__ import annotations

import pandas as pd

from . import style


def top1_vs_steps(evaluations: pd.DataFrame, columns: int = 1):
    """Top-1 of the APT tokens as fine-tuning goes on, against the uniform tokens and APT zero-shot.

    Parameters
    ----------
    evaluations : pandas.DataFrame
        ``evaluation.csv`` of a fine-tuning run: ``step``, ``tokenization`` (``uniform``/``apt``), ``top1``,
        ``retention``; the rows of step 0 are the model before fine-tuning (zero-shot).
    columns : int
        1 (3.35 in) or 2 (6.9 in) paper columns wide.

    Returns
    -------
    matplotlib.figure.Figure
        APT fine-tuned (line and points), the same model on uniform tokens (line), and two reference
        lines from step 0: uniform before fine-tuning and APT zero-shot; the key below the axes (save it
        with ``save_figure(..., legends="keep")``).
    """
    missing = sorted({"step", "tokenization", "top1"} - set(evaluations))
    if missing:
        raise ValueError(f"evaluations must be a finetune evaluation.csv, missing columns {missing}")
    if not (evaluations["step"] == 0).any():
        raise ValueError("evaluations must hold step 0 (the model before fine-tuning), got steps "
                         f"{sorted(evaluations['step'].unique())[:5]}")
    with style.paper_context():
        figure, axis = style.subplots(columns, height=2.6)
        colours = style.DATASET_COLOURS
        by = {name: rows.sort_values("step") for name, rows in evaluations.groupby("tokenization")}
        start = evaluations[evaluations["step"] == 0].set_index("tokenization")["top1"]
        if "uniform" in start:
            axis.axhline(100 * start["uniform"], color=colours[0], linestyle=":", linewidth=1,
                         label="uniform, before fine-tuning")
        if "apt" in start:
            axis.axhline(100 * start["apt"], color=colours[1], linestyle="--", linewidth=1, label="APT zero-shot")
        if "uniform" in by:
            axis.plot(by["uniform"]["step"], 100 * by["uniform"]["top1"], color=colours[0], marker="s",
                      markersize=3, label="uniform tokens, same model")
        if "apt" in by:
            retention = by["apt"]["retention"].mean() if "retention" in by["apt"] else None
            label = "APT fine-tuned" + (f" ({100 * retention:.0f}% tokens)" if retention == retention and retention
                                        else "")
            axis.plot(by["apt"]["step"], 100 * by["apt"]["top1"], color=colours[1], marker="o", markersize=3,
                      label=label)
        axis.set_xlabel("fine-tuning steps")
        axis.set_ylabel("validation top-1 (%)")
        figure.legend(*axis.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return figure
