"""Top-1 and top-5 of a classifier on uniform and APT tokens of the same labelled images, in one pass.

Each batch of ``classes.labelled_loader`` holds the normalised images and their APT tokens (maps
made in the loader's workers, packing in collate); the timm model runs on the images (uniform
tokens) and the APT wrapper on the tokens, and both are scored against the same labels.
``images_per_second`` times the model's forward only (the loader's work runs beside it in its
workers, as in the paper's pipeline).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from ..selection import retention

TOKENIZATIONS = ("uniform", "apt")
COLUMNS = ("tokenization", "thresholds", "top1", "top5", "images", "skipped", "tokens_per_image", "retention",
           "images_per_second")
"""The columns of ``evaluation.csv``, in order (``evaluate`` and ``finetune`` add their own before them)."""


def thresholds_text(thresholds) -> str:
    """``6,5`` for ``[6.0, 5.0]``: the ``thresholds`` column's form."""
    return ",".join(f"{value:g}" for value in thresholds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, precision: str):
    """The ``torch.autocast`` of a precision name (``32``: none; ``bf16-mixed``; ``16-mixed``)."""
    if precision in ("32", "32-true"):
        return nullcontext()
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate_tokenizations(apt, loader, device="cpu", precision: str = "32", tokenizations=TOKENIZATIONS,
                           progress: bool = True, description: str = "evaluating") -> list[dict]:
    """Top-1/top-5 of ``apt.model`` on uniform tokens and of ``apt`` on APT tokens over ``loader``.

    Parameters
    ----------
    apt : AptViT
        The wrapped model (``from_timm``); put in eval mode here and left so.
    loader : DataLoader
        Yields ``classes.LabelledBatch`` (``classes.labelled_loader``).
    device : str or torch.device
        Where the models run.
    precision : str
        ``32``, ``bf16-mixed`` or ``16-mixed`` (autocast).
    tokenizations : sequence of str
        Among ``("uniform", "apt")``.

    Returns
    -------
    list of dict
        One row per tokenization, ``COLUMNS`` (``thresholds`` empty for uniform tokens; ``top5`` is
        top-k with k = min(5, classes)).
    """
    device = torch.device(device)
    apt.eval()
    totals = {name: {"top1": 0, "top5": 0, "images": 0, "seconds": 0.0, "tokens": 0, "retention": 0.0}
              for name in tokenizations}
    skipped = 0
    base_tokens = apt.model.patch_embed.num_patches
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        skipped += batch.skipped
        if not batch.labels.numel():
            continue
        batch = batch.to(device)
        labels = batch.labels
        for name in tokenizations:
            began = time.perf_counter()
            with autocast_for(device, precision):
                logits = apt.model(batch.tokens["images"]) if name == "uniform" else apt(batch.tokens)
            _synchronize(device)
            total = totals[name]
            total["seconds"] += time.perf_counter() - began
            top = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
            total["top1"] += int((top[:, 0] == labels).sum())
            total["top5"] += int((top == labels[:, None]).any(-1).sum())
            total["images"] += len(labels)
            if name == "uniform":
                total["tokens"] += len(labels) * (base_tokens + apt.model.num_prefix_tokens)
                total["retention"] += len(labels)
            else:
                total["tokens"] += int(sum(batch.tokens["seqlens"]))
                total["retention"] += float(retention(batch.tokens["masks"]).sum())
    rows = []
    for name, total in totals.items():
        images = total["images"]
        rows.append({
            "tokenization": name,
            "thresholds": "" if name == "uniform" else thresholds_text(apt.tokenizer.thresholds),
            "top1": total["top1"] / images if images else float("nan"),
            "top5": total["top5"] / images if images else float("nan"),
            "images": images, "skipped": skipped,
            "tokens_per_image": total["tokens"] / images if images else float("nan"),
            "retention": total["retention"] / images if images else float("nan"),
            "images_per_second": images / total["seconds"] if total["seconds"] else float("nan"),
        })
    return rows


def markdown_table(frame) -> str:
    """``evaluation.csv`` as a markdown table (rates in percent, missing values as "—")."""
    shown = frame.copy()
    for column in ("top1", "top5", "retention"):
        if column in shown:
            shown[column] = (100 * shown[column]).map(lambda value: f"{value:.1f}%" if value == value else "—")
    for column in ("tokens_per_image", "images_per_second"):
        if column in shown:
            shown[column] = shown[column].map(lambda value: f"{value:.1f}" if value == value else "—")
    return shown.to_markdown(index=False) + "\n"


DEFAULT_THRESHOLDS = {1: [], 2: [5.5], 3: [5.75, 4.0]}
"""Thresholds used when none are given: the reference's settings for 2 and 3 scales (entropy, 512 bins)."""

CALIBRATION_IMAGES = 64
"""Images ``--target-retention`` calibrates its thresholds on (the first ones of the data)."""


def default_thresholds(num_scales: int, argument: str = "--thresholds") -> list[float]:
    """``DEFAULT_THRESHOLDS[num_scales]``; a ``UsageError`` naming ``argument`` where there is no default."""
    from ..errors import UsageError

    if num_scales not in DEFAULT_THRESHOLDS:
        raise UsageError(f"{argument} (or a target retention) is needed for num_scales={num_scales}: defaults exist "
                         f"for {sorted(DEFAULT_THRESHOLDS)} scales only")
    return list(DEFAULT_THRESHOLDS[num_scales])


def model_options_for(name: str, image_size: int | None, options: dict | None = None) -> dict:
    """``options`` plus the image size in the form the model's constructor takes it (``img_size`` for timm)."""
    options = dict(options or {})
    if image_size is not None:
        options["image_size" if name == "synthetic" else "img_size"] = image_size
    return options


def calibrated_thresholds(dataset, num_scales: int, target_retention: float, count: int = CALIBRATION_IMAGES):
    """Thresholds whose mean retention over the first ``count`` images of ``dataset`` is ``target_retention``."""
    from ..calibration import calibrate_thresholds

    maps = [item[0]["importance_maps"] for item in (dataset[index] for index in range(min(count, len(dataset))))
            if item is not None]
    if not maps:
        from ..errors import UsageError

        raise UsageError(f"target retention: none of the first {min(count, len(dataset))} images can be decoded to "
                         "calibrate thresholds on; give thresholds instead")
    stacked = {size: torch.stack([one[size] for one in maps]) for size in maps[0]}
    return calibrate_thresholds(stacked, target_retention).thresholds[: num_scales - 1]


def run_evaluation(model: str, data: str, out, *, checkpoint=None, pretrained: bool = True, num_scales: int = 3,
                   thresholds=None, target_retention: float | None = None, image_size: int | None = None,
                   batch_size: int = 64, workers: int = 0, device: str = "cpu", precision: str = "32",
                   limit: int | None = None, progress: bool = True):
    """``apt-research evaluate``: uniform and APT top-1/top-5 of one model on one labelled folder.

    Writes ``out/evaluation.csv`` (``COLUMNS`` after ``model``), ``out/evaluation.md`` and
    ``out/evaluation.json`` (the parameters and provenance) into ``out``, a folder it creates and
    marks (or one it made before). A fine-tuned checkpoint's own scales and thresholds are used unless
    others are given. Returns the rows as a ``pandas.DataFrame``.
    """
    import json

    import pandas as pd

    from .._io import claim, write_atomic
    from ..provenance import provenance
    from .checkpoints import build_model, load_weights, read_checkpoint, require_model
    from .classes import class_mapping, data_classes, labelled_data, labelled_loader
    from .timm_vit import from_timm

    from ..errors import UsageError

    content = read_checkpoint(checkpoint) if checkpoint is not None else None
    ours = content is not None and "class_names" in content
    if content is not None:
        require_model(content, model)
    if ours and thresholds is None and target_retention is None and num_scales in (None, content["num_scales"]):
        num_scales, thresholds = content["num_scales"], list(content["thresholds"])  # what it was fine-tuned at
    num_scales = 3 if num_scales is None else num_scales
    class_names = content["class_names"] if ours else None
    options = model_options_for(model, image_size, content.get("model_options") if ours else None)
    names = data_classes(data)
    network = build_model(model, pretrained and content is None, options,
                          num_classes=len(class_names) if class_names else None)
    mapping = class_mapping(names, network.num_classes, class_names)
    if thresholds is not None and target_retention is not None:
        raise UsageError("give --thresholds or --target-retention, not both")
    # with a target retention the thresholds are calibrated below; any valid ones do until then
    initial = thresholds if thresholds is not None else (
        [0.0] * (num_scales - 1) if target_retention is not None else default_thresholds(num_scales))
    apt = from_timm(network, num_scales, initial)
    if content is not None:
        load_weights(apt, content, model)
    apt = apt.to(device)
    size = network.patch_embed.img_size[0]
    dataset = labelled_data(data, mapping, network, apt.tokenizer, size, limit=limit)
    if target_retention is not None:
        apt.set_thresholds(calibrated_thresholds(dataset, num_scales, target_retention))
    out = claim(out, "evaluation")
    loader = labelled_loader(dataset, apt.tokenizer, batch_size, workers)
    rows = evaluate_tokenizations(apt, loader, device, precision, progress=progress)
    frame = pd.DataFrame([{"model": model, **row} for row in rows])
    parameters = {"model": model, "checkpoint": None if checkpoint is None else str(checkpoint),
                  "pretrained": pretrained and content is None, "data": str(data), "num_scales": num_scales,
                  "thresholds": list(apt.tokenizer.thresholds), "target_retention": target_retention,
                  "image_size": size, "batch_size": batch_size, "workers": workers, "limit": limit,
                  "precision": precision, "classes": len(names)}
    write_atomic(out / "evaluation.csv", frame.to_csv(index=False))
    write_atomic(out / "evaluation.md", markdown_table(frame))
    write_atomic(out / "evaluation.json", json.dumps({"parameters": parameters, "provenance": provenance(str(device))},
                                                     indent=2) + "\n")
    return frame
