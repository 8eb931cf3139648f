"""What APT does to a model's predictions: per image, uniform tokens against APT tokens."""

from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn.functional as F

from ..datasets import iter_images, load_dataset
from ..selection import retention
from .synthetic import normalise
from .timm_vit import AptViT, from_timm

UNKNOWN_LABEL = -1
"""The class index of an image whose label is not among the model's classes (its correctness is ``<NA>``)."""


def uniform_logits(model, images: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, float]:
    """The model on the uniform tokens of ``images``: ``(N, classes)`` logits and wall seconds per image.

    They do not depend on the thresholds, so a caller that scores several threshold settings
    computes them once and hands them to ``prediction_records``.
    """
    began = time.perf_counter()
    with torch.no_grad():
        logits = torch.cat([model(images[start : start + batch_size]) for start in range(0, len(images), batch_size)])
    return logits, (time.perf_counter() - began) / max(len(images), 1)


def prediction_records(apt: AptViT, images: torch.Tensor, labels: torch.Tensor | None = None,
                       batch_size: int = 32, importance_maps: dict | None = None,
                       uniform: tuple[torch.Tensor, float] | None = None) -> pd.DataFrame:
    """One row per image: the model on its uniform tokens and on APT's tokens.

    Parameters
    ----------
    apt : AptViT
        The wrapped model (``from_timm``); ``apt.model`` gives the uniform prediction.
    images : Tensor
        ``(N, 3, H, W)`` normalised as the model expects.
    labels : Tensor, optional
        ``(N,)`` class indices in the model's output, where the data set has them;
        ``UNKNOWN_LABEL`` (-1) marks an image whose label is not among them.
    batch_size : int
        Images per forward pass.
    importance_maps : dict, optional
        ``{p_s: (N, h_s, w_s)}`` maps of ``images`` computed beforehand (a cache):
        only selection and packing are left to do.
    uniform : (Tensor, float), optional
        ``uniform_logits(apt.model, images)`` computed beforehand; computed here when ``None``.

    Returns
    -------
    pandas.DataFrame
        ``image`` (index in ``images``), ``thresholds``, ``tokens`` (class token
        included), ``retention`` (patch tokens / base-grid tokens), ``uniform_pred``,
        ``apt_pred``, ``agreement`` (same top-1), ``kl`` (KL divergence of the APT
        softmax from the uniform one, nats), ``label``, ``uniform_top1_correct`` and
        ``top1_correct`` (APT; all three missing without labels, and ``<NA>`` in the rows
        of images labelled ``UNKNOWN_LABEL``; nullable ``Int64`` and ``boolean``
        columns, whose means skip the missing rows), ``uniform_seconds`` and
        ``apt_seconds`` (wall time per image, tokenization included for APT).
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels must have one entry per image ({len(images)}), got {len(labels)}")
    if labels is not None and len(labels) and int(labels.min()) < UNKNOWN_LABEL:
        raise ValueError(f"labels must be class indices >= 0 or UNKNOWN_LABEL ({UNKNOWN_LABEL}), "
                         f"got {int(labels.min())}")
    all_uniform, uniform_seconds = uniform if uniform is not None else uniform_logits(apt.model, images, batch_size)
    rows = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            uniform = all_uniform[start : start + batch_size]
            middle = time.perf_counter()
            maps = None if importance_maps is None else {
                size: values[start : start + batch_size] for size, values in importance_maps.items()}
            tokens = apt.tokenize(chunk, maps)
            logits = apt(tokens)
            ended = time.perf_counter()
            kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(uniform, -1), log_target=True,
                          reduction="none").sum(-1)
            kept = retention(tokens["masks"]).tolist()
            for offset in range(len(chunk)):
                index = start + offset
                row = {
                    "image": index, "thresholds": tuple(apt.tokenizer.thresholds),
                    "tokens": tokens["seqlens"][offset], "retention": kept[offset],
                    "uniform_pred": int(uniform[offset].argmax()), "apt_pred": int(logits[offset].argmax()),
                    "kl": float(kl[offset]),
                    "uniform_seconds": uniform_seconds, "apt_seconds": (ended - middle) / len(chunk),
                }
                row["agreement"] = row["uniform_pred"] == row["apt_pred"]
                if labels is not None:
                    label = int(labels[index])
                    known = label != UNKNOWN_LABEL
                    row["label"] = label if known else None
                    row["uniform_top1_correct"] = row["uniform_pred"] == label if known else None
                    row["top1_correct"] = row["apt_pred"] == label if known else None
                rows.append(row)
    records = pd.DataFrame(rows)
    if labels is not None:
        records = records.astype({"label": "Int64", "uniform_top1_correct": "boolean", "top1_correct": "boolean"})
    return records


def labelled_images(model, dataset: str = "synthetic", dataset_options: dict | None = None,
                    class_names=None, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A data set's images resized to the model's input and normalised for it, with class indices.

    ``class_names`` maps each image's label (its synthetic kind, or its folder)
    to the model's output index; an image whose label is not among them gets
    ``UNKNOWN_LABEL`` (-1), so ``prediction_records`` leaves its correctness
    missing while the other images keep theirs. Without ``class_names`` the
    labels are ``None``.
    """
    source = load_dataset(dataset, **(dataset_options or {}))
    height, width = model.patch_embed.img_size
    pixels, labels = [], []
    for image, meta in iter_images(source, resize="resize", image_size=(height, width), limit=limit,
                                   progress=False):
        pixels.append(image)
        labels.append(meta["label"])
    if not pixels:
        raise ValueError(f"dataset {dataset!r} with options {dataset_options} yielded no image")
    return normalise(torch.stack(pixels), model), label_indices(labels, class_names)


def label_indices(labels: list, class_names) -> torch.Tensor | None:
    """Each label's index among ``class_names`` (int64), ``UNKNOWN_LABEL`` where it is not among them (that
    image alone then has no correctness); ``None`` without ``class_names``."""
    if not class_names:
        return None
    names = list(class_names)
    return torch.tensor([names.index(label) if label in names else UNKNOWN_LABEL for label in labels],
                        dtype=torch.int64)


def threshold_records(model, images: torch.Tensor, labels, num_scales: int, settings, method: str = "entropy",
                      batch_size: int = 32, **scorer_options) -> pd.DataFrame:
    """``prediction_records`` for every threshold setting, the model zero-shot (merge at zero); maps and the
    uniform forward computed once."""
    apt = from_timm(model, num_scales, settings[0], method, **scorer_options)
    with torch.no_grad():
        maps = apt.tokenizer.compute_importance_maps(images)  # once: thresholds change selection only
    uniform = uniform_logits(apt.model, images, batch_size)  # once: the uniform tokens have no thresholds
    frames = []
    for thresholds in settings:
        apt.set_thresholds(thresholds)
        frames.append(prediction_records(apt, images, labels, batch_size, maps, uniform))
    return pd.concat(frames, ignore_index=True)


def accuracy_by_setting(records: pd.DataFrame) -> pd.DataFrame:
    """Mean retention, agreement, KL and (with labels) APT and uniform accuracy per threshold setting."""
    columns = [c for c in ("retention", "agreement", "kl", "top1_correct", "uniform_top1_correct") if c in records]
    return records.groupby("thresholds")[columns].mean().sort_values("retention", ascending=False).reset_index()


def plot_accuracy_vs_retention(records: pd.DataFrame):
    """Agreement (and accuracy, with labels) against mean retention, one point per threshold setting."""
    import matplotlib.pyplot as plt

    summary = accuracy_by_setting(records)
    figure, axis = plt.subplots(figsize=(4.5, 3.2))
    axis.plot(summary["retention"], summary["agreement"], "o-", label="agreement with uniform tokens")
    if "top1_correct" in summary:
        axis.plot(summary["retention"], summary["top1_correct"], "s-", label="top-1 accuracy, APT")
        axis.axhline(summary["uniform_top1_correct"].mean(), color="grey", linestyle="--",
                     label="top-1 accuracy, uniform")
    axis.set_xlabel("retention (tokens / base-grid tokens)")
    axis.set_ylabel("fraction of images")
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize="small")
    figure.tight_layout()
    return figure
