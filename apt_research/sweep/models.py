"""Accuracy against tokens: a classifier run on each image's uniform and APT tokens, in the sweep records.

A configuration with ``model`` set loads the classifier once (``apt_research.models.load_model``: a timm
model, or ``synthetic``: the small ViT trained in-process on the labelled synthetic data set, cached in
the sweep's cache folder), predicts every image from its uniform base-patch tokens once, and from its APT
tokens once per threshold setting, with the importance maps the records already use (so the tokens the
model sees are those the records count). Each record then gets the columns of
``apt_research.models.prediction_records``: both top-1 classes (``uniform_pred``, ``apt_pred``), their
``agreement``, ``uniform_top1_correct`` and ``top1_correct`` where the image's label is one of the model's
classes, ``kl`` (the KL divergence of the APT softmax from the uniform one, nats) and the time of each
forward pass per image (``uniform_seconds``, ``apt_seconds``; APT's includes packing, not scoring).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .._io import atomic_path
from ..datasets import SYNTHETIC_KINDS
from .maps import scorer_options

SYNTHETIC_MODEL = "synthetic"
"""The ``model`` name of the small ViT trained in-process on the synthetic kinds (``train_synthetic_vit``)."""

SQUARE_RESIZE = ("center_crop", "resize")
"""Resize policies that give every image the model's square input."""

FIXED_OPTIONS = ("pretrained", "img_size", "image_size", "patch_size", "progress")
"""``model_options`` that the sweep sets itself (from ``pretrained``, ``image_size`` and ``patch_size``)."""


def _timm():
    """timm, or an error that says how to install the ``[models]`` extra."""
    from ..models.timm_vit import _import_timm

    return _import_timm()


def check_model(name: str, pretrained: bool, options: dict) -> None:
    """Refuse a ``model`` that cannot run: timm missing, an unknown name or bad ``model_options``.

    Raises
    ------
    ValueError
        Naming the key, the value and what was expected (the install command when timm is missing).
    """
    try:
        timm = _timm()
    except ImportError as error:
        raise ValueError(f"key 'model' is {name!r}, but {error}") from None
    fixed = sorted(set(options) & set(FIXED_OPTIONS))
    if fixed:
        raise ValueError(f"key 'model_options' sets {fixed}; expected them from the keys 'pretrained', "
                         f"'image_size' and 'patch_size'")
    if name == SYNTHETIC_MODEL:
        from ..models.synthetic import train_synthetic_vit

        known = [p for p in inspect.signature(train_synthetic_vit).parameters if p not in FIXED_OPTIONS]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"key 'model_options' has unknown option(s) {unknown} for model {name!r} (known: {known})")
        if not pretrained:
            raise ValueError(f"key 'pretrained' is false, but model {name!r} is trained in the run: expected true")
        return
    if not timm.is_model(name):
        from .parameters import closest

        raise ValueError(f"key 'model' expects a timm model name or {SYNTHETIC_MODEL!r}, got {name!r}"
                         f"{closest(name, timm.list_models())}")


def _architecture(model) -> dict:
    """The constructor arguments that rebuild the synthetic ViT (a plain timm ``VisionTransformer``)."""
    block = model.blocks[0]
    return {"img_size": list(model.patch_embed.img_size), "patch_size": model.patch_embed.proj.kernel_size[0],
            "embed_dim": model.embed_dim, "depth": len(model.blocks), "num_heads": block.attn.num_heads,
            "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim, "num_classes": model.num_classes}


def _synthetic_model(params: dict, cache_dir):
    """The synthetic ViT of this configuration: trained once, then loaded from ``cache_dir/models``."""
    from ..models import load_model as build

    options = {"image_size": params["image_size"], "patch_size": params["patch_size"], **params["model_options"]}
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "models" / f"{SYNTHETIC_MODEL}-{key}.pt" if cache_dir else None
    if path is not None and path.exists():
        entry = torch.load(path, map_location="cpu", weights_only=True)
        model = _timm().models.VisionTransformer(**entry["architecture"])
        model.load_state_dict(entry["state_dict"])
        return model.eval()
    model = build(SYNTHETIC_MODEL, **options, progress=False)
    if path is not None:
        with atomic_path(path) as temporary:
            torch.save({"architecture": _architecture(model), "state_dict": model.state_dict()}, temporary)
    return model


def load_model(params: dict, cache_dir=None):
    """The configuration's classifier in eval mode (``apt_research.models.load_model``), the synthetic ViT cached.

    Parameters
    ----------
    params : dict
        A validated configuration with ``model`` set.
    cache_dir : path, optional
        Where the trained synthetic ViT is kept for the other runs of the sweep.

    Returns
    -------
    (timm.models.VisionTransformer, list of str or None)
        The model, and its class names where labels can be matched to them (the synthetic kinds).
    """
    from ..models import load_model as build

    if params["model"] == SYNTHETIC_MODEL:
        return _synthetic_model(params, cache_dir), list(SYNTHETIC_KINDS)
    return build(params["model"], params["pretrained"], img_size=params["image_size"], **params["model_options"]), None


class ModelEvaluator:
    """A configuration's classifier on uniform and APT tokens: one record per image per threshold setting.

    Parameters
    ----------
    params : dict
        A validated configuration with ``model`` set.
    pixels, maps, metas : list
        The configuration's images (``[0, 255]``), importance maps and metadata, as ``maps_for`` gives them.
    cache_dir : path, optional
        Where the trained synthetic ViT is cached.
    """

    def __init__(self, params: dict, pixels, maps, metas, cache_dir=None):
        from ..models import from_timm
        from ..models.synthetic import normalise

        model, classes = load_model(params, cache_dir)
        if model.num_classes == 0:
            raise ValueError(f"model {params['model']!r} has no classifier head (num_classes=0); expected logits")
        self.device = torch.device(params["device"])
        model = model.to(self.device)
        # Placeholder thresholds: ``records`` sets each setting's (calibrated ones are known only later).
        self.apt = from_timm(model, params["num_scales"], [0.0] * (params["num_scales"] - 1), params["method"],
                             **scorer_options(params))
        if self.apt.patch_size != params["patch_size"]:
            raise ValueError(f"model {params['model']!r} has patch size {self.apt.patch_size}, but the key "
                             f"'patch_size' is {params['patch_size']}; expected them equal")
        self.batch_size = params["batch_size"]
        self.images = [normalise(p.to(self.device), model) for p in pixels]
        self.maps = maps
        self.labels = [classes.index(m["label"]) if classes and m.get("label") in classes else None for m in metas]
        with torch.inference_mode():
            self.uniform, self.uniform_time = self._predict(lambda images, _: model(images))

    def _predict(self, forward) -> tuple[torch.Tensor, list[float]]:
        """Logits of every image, batch by batch, and each image's share of its batch's forward time."""
        logits, times = [], []
        for start in range(0, len(self.images), self.batch_size):
            images = torch.stack(self.images[start : start + self.batch_size])
            maps = {size: torch.stack([m[size] for m in self.maps[start : start + self.batch_size]]).to(self.device)
                    for size in self.maps[start]}
            begin = time.perf_counter()
            logits.append(forward(images, maps).float().cpu())
            times += [(time.perf_counter() - begin) / len(images)] * len(images)
        return torch.cat(logits), times

    def records(self, thresholds: list[float]) -> list[dict]:
        """Each image's predictions with APT tokens at ``thresholds``, against its uniform-token prediction."""
        self.apt.set_thresholds(thresholds)
        with torch.inference_mode():
            logits, times = self._predict(lambda images, maps: self.apt(self.apt.tokenize(images, maps)))
        kl = F.kl_div(logits.log_softmax(-1), self.uniform.log_softmax(-1), log_target=True,
                      reduction="none").sum(-1)
        uniform_pred, apt_pred = self.uniform.argmax(-1).tolist(), logits.argmax(-1).tolist()
        rows = []
        for i, label in enumerate(self.labels):
            rows.append({
                "uniform_pred": uniform_pred[i], "apt_pred": apt_pred[i],
                "agreement": uniform_pred[i] == apt_pred[i],
                "uniform_top1_correct": None if label is None else uniform_pred[i] == label,
                "top1_correct": None if label is None else apt_pred[i] == label,
                "kl": float(kl[i]),
                "uniform_seconds": self.uniform_time[i], "apt_seconds": times[i],
            })
        return rows
