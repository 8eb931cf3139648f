"""Checkpoints of ``apt-research finetune`` and loading a model for evaluation or fine-tuning.

A checkpoint is one ``torch.save`` file of plain data (tensors, numbers, strings, lists and dicts),
read back with ``torch.load(weights_only=True)``: loading one never runs code. It names what it
holds (``kind``, ``format``), the model it was made from (``model``, ``model_options``), the
classes it was trained on (``class_names``) and the APT wrapper's ``state_dict`` (the timm model's
parameters under ``model.``, the merge layers under ``merge_``). A plain timm ``state_dict`` file is
accepted too. Written atomically (``_io.atomic_path``): a full disk or a kill half way leaves the
previous checkpoint whole.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .._io import atomic_path
from ..errors import UsageError
from .synthetic import load_model

KIND = "apt-research-finetune"
FORMAT = 1


def save_checkpoint(path, content: dict) -> None:
    """Write ``content`` (plain data, see the module notes) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        torch.save({"kind": KIND, "format": FORMAT, **content}, temporary)


def read_checkpoint(path, argument: str = "--checkpoint") -> dict:
    """A checkpoint file's content: ours (``kind`` is ``KIND``) or a plain ``state_dict`` (as ``{"state": ...}``).

    Raises ``UsageError`` naming ``argument`` for a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{argument} expects a checkpoint file, got {str(path)!r} (no such file)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling or format failure is the file's problem
        reason = ("it holds objects other than tensors and plain data, and loading those could run code"
                  if "weights_only" in str(error) or "Unsupported global" in str(error)
                  else f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        raise UsageError(f"{argument} {str(path)!r} is not a checkpoint torch can read as plain data: "
                         f"{reason}") from error
    if not isinstance(content, dict):
        raise UsageError(f"{argument} {str(path)!r} holds a {type(content).__name__}, expected a state_dict or a "
                         "checkpoint of apt-research finetune")
    if content.get("kind") == KIND:
        if content.get("format") != FORMAT:
            raise UsageError(f"{argument} {str(path)!r} has checkpoint format {content.get('format')!r}, expected "
                             f"{FORMAT} (written by another version of apt-research)")
        return content
    if all(isinstance(value, torch.Tensor) for value in content.values()):
        return {"state": content}
    raise UsageError(f"{argument} {str(path)!r} is neither a state_dict nor a checkpoint of apt-research finetune")


def build_model(name: str, pretrained: bool, model_options: dict | None = None, num_classes: int | None = None):
    """A classifier by name (``"synthetic"`` or a timm model), its head replaced where ``num_classes``
    differs from it (the reference's ``match_head_shape``). Raises ``UsageError`` for an unknown name."""
    options = dict(model_options or {})
    if name != "synthetic":
        import timm

        if not timm.is_model(name):
            from .._validation import closest

            raise UsageError(f"--model {name!r} is not a timm model{closest(name, timm.list_models())}")
    model = load_model(name, pretrained=pretrained, **options)
    if num_classes is not None and model.num_classes != num_classes:
        model.reset_classifier(num_classes)
    return model


def require_model(content: dict, model_name: str, argument: str = "--checkpoint", model_argument: str = "--model"):
    """Refuse a checkpoint of ``apt-research finetune`` that fine-tuned another model than ``model_name``."""
    if content.get("kind") == KIND and content.get("model") != model_name:
        raise UsageError(f"{argument} holds a fine-tuned {content.get('model')!r}, not {model_argument} "
                         f"{model_name!r}")


def load_weights(apt, content: dict, model_name: str, argument: str = "--checkpoint") -> None:
    """Load a checkpoint's weights into ``apt`` (an ``AptViT``), naming what does not fit.

    Ours carry the wrapper's state (model and merge); a plain ``state_dict`` is the timm model's.
    """
    require_model(content, model_name, argument)
    state = content.get("state")
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UsageError(f"{argument} holds no weights (its 'state' is not a dict of tensors)")
    target = apt if any(key.startswith("model.") for key in state) else apt.model
    if target is apt and apt.merge_proj is None:  # a one-scale wrapper has no merge to load
        state = {key: value for key, value in state.items() if not key.startswith("merge_")}
    own = target.state_dict()
    mismatched = [f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}" for key, value in state.items()
                  if key in own and tuple(value.shape) != tuple(own[key].shape)]
    missing = [key for key in own if key not in state and not key.startswith("merge_")]
    unexpected = [key for key in state if key not in own]
    if mismatched or missing or unexpected:
        details = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
                            (("shapes differ", mismatched), ("missing", missing), ("unexpected", unexpected)) if keys)
        raise UsageError(f"{argument} is of another architecture than --model {model_name!r} "
                         f"({type(apt.model).__name__}, {apt.model.embed_dim} wide, {len(apt.model.blocks)} blocks): "
                         f"{details}")
    target.load_state_dict(state, strict=False)
