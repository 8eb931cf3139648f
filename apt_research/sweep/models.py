"""Accuracy against tokens: a classifier run on each image's uniform and APT tokens, in the sweep records.

A configuration with ``model`` set loads the classifier once (``apt_research.models.load_model``: a timm
model, or ``synthetic``: the small ViT trained in-process on the labelled synthetic data set, cached in
the sweep's cache folder), and at each threshold setting predicts every image from its uniform base-patch
tokens and from its APT tokens, made from the importance maps the records already use (so the tokens the
model sees are those the records count). Each record then gets the columns of
``apt_research.models.prediction_records``: both top-1 classes (``uniform_pred``, ``apt_pred``), their
``agreement``, ``uniform_top1_correct`` and ``top1_correct`` where every image's label is one of the
model's classes (the synthetic kinds for ``synthetic``), ``kl`` (the KL divergence of the APT softmax from the uniform one, nats) and the time of each
forward pass per image (``uniform_seconds``, ``apt_seconds``; APT's includes packing, not scoring).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import torch

from .._io import atomic_path
from ..datasets import SYNTHETIC_KINDS
from .._validation import closest
from ..scorers import options_with_bins

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
        raise ValueError(f"key 'model' expects a timm model name or {SYNTHETIC_MODEL!r}, got {name!r}"
                         f"{closest(name, timm.list_models())}")


FINETUNE_SET_BY_SWEEP = ("model", "pretrained", "model_options", "checkpoint", "image_size", "num_scales",
                         "thresholds", "target_retention", "tokenization", "steps", "epochs", "method",
                         "method_options", "device", "val_data", "val_images", "eval_every", "checkpoint_every")
"""Finetune spec keys a sweep sets itself (from the configuration) and ``finetune_options`` may not."""


def check_finetune_options(options: dict) -> None:
    """Refuse ``finetune_options`` keys that are not finetune spec keys, or that the sweep sets itself."""
    from ..training.spec import FinetuneSpec

    known = [name for name in FinetuneSpec.model_fields if name not in FINETUNE_SET_BY_SWEEP]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"key 'finetune_options' has unknown or sweep-set key(s) {unknown}; expected among {known}")


def finetuned_state(params: dict, state: dict, thresholds: list[float], cache_dir=None) -> dict:
    """The APT wrapper's ``state_dict`` after ``finetune_steps`` steps on APT tokens at ``thresholds``.

    The run's classifier is saved once as the fine-tuning's starting weights; each setting's fine-tuning
    runs in ``cache_dir/finetuned/KEY`` (KEY: a hash of its spec), so a sweep run again, or resumed,
    reuses or continues it (``apt-research finetune --resume``) instead of starting over.
    """
    import tempfile

    from ..models.checkpoints import read_checkpoint
    from ..training import finetune

    root = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="apt-finetune-"))
    synthetic = params["model"] == SYNTHETIC_MODEL
    options = ({"image_size": params["image_size"], "patch_size": params["patch_size"], **params["model_options"]}
               if synthetic else {"img_size": params["image_size"], **params["model_options"]})
    weights_key = hashlib.sha256(json.dumps([params["model"], options, params["pretrained"]], sort_keys=True)
                                 .encode()).hexdigest()[:16]
    weights = root / "models" / f"start-{weights_key}.pt"
    if not weights.exists():
        with atomic_path(weights) as temporary:
            torch.save(state, temporary)
    spec = {"train_data": SYNTHETIC_MODEL, "workers": 0, "batch_size": 32, "seed": 0,
            **params["finetune_options"],
            "model": params["model"], "pretrained": False, "model_options": options, "checkpoint": str(weights),
            "num_scales": params["num_scales"], "thresholds": [float(value) for value in thresholds],
            "method": params["method"],
            "method_options": options_with_bins(params["method"], params["method_options"], params["bins"]),
            "steps": params["finetune_steps"], "device": params["device"]}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    out = root / "finetuned" / key
    last = out / "checkpoints" / "last.pt"
    content = read_checkpoint(last) if last.is_file() else None
    if content is None or content["step"] != params["finetune_steps"]:
        finetune(spec, out, resume=content is not None, progress=False)
        content = read_checkpoint(last)
    return content["state"]


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
        from ..models import from_timm, uniform_logits
        from ..models.evaluate import label_indices
        from ..models.synthetic import normalise

        model, classes = load_model(params, cache_dir)
        if model.num_classes == 0:
            raise ValueError(f"model {params['model']!r} has no classifier head (num_classes=0); expected logits")
        device = torch.device(params["device"])
        model = model.to(device)
        # Placeholder thresholds: ``records`` sets each setting's (calibrated ones are known only later).
        self.apt = from_timm(model, params["num_scales"], [0.0] * (params["num_scales"] - 1), params["method"],
                             **options_with_bins(params["method"], params["method_options"], params["bins"]))
        if self.apt.patch_size != params["patch_size"]:
            raise ValueError(f"model {params['model']!r} has patch size {self.apt.patch_size}, but the key "
                             f"'patch_size' is {params['patch_size']}; expected them equal")
        self.batch_size = params["batch_size"]
        self.params, self.cache_dir = params, cache_dir
        if params["finetune_steps"]:  # each setting starts from the run's classifier, not the last setting's
            self.original = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        self.images = normalise(torch.stack(pixels).to(device), model)
        self.maps = {size: torch.stack([m[size] for m in maps]).to(device) for size in maps[0]}
        self.uniform = uniform_logits(self.apt.model, self.images, self.batch_size)  # once: no thresholds in it
        # Per image: an image whose label is not among the model's classes leaves only its own correctness empty.
        self.labels = label_indices([m.get("label") for m in metas], classes)

    def records(self, thresholds: list[float]) -> list[dict]:
        """Each image's ``prediction_records`` columns with APT tokens at ``thresholds`` (the run's maps)."""
        from ..models import prediction_records

        self.apt.set_thresholds(thresholds)
        if self.params["finetune_steps"]:
            self.apt.load_state_dict(finetuned_state(self.params, self.original, thresholds, self.cache_dir))
        table = prediction_records(self.apt, self.images, self.labels, self.batch_size, self.maps, self.uniform)
        return [{column: row.get(column) for column in PREDICTION_COLUMNS} for row in table.to_dict("records")]


PREDICTION_COLUMNS = ("uniform_pred", "apt_pred", "agreement", "uniform_top1_correct", "top1_correct", "kl",
                      "uniform_seconds", "apt_seconds")
"""The columns of ``prediction_records`` that join a sweep record (the others it has already); the two
``top1_correct`` columns are empty for each image whose label is not among the model's classes."""
