"""A fine-tuning spec: its parameters declared once, with types, defaults and one-line docs.

The defaults are the APT reference's fine-tuning recipe (AdamW, betas 0.9/0.999, weight decay 0.05,
learning rate 5e-4 at a global batch of 256 with a cosine schedule to 1e-6 after a linear warmup from
1e-6, label smoothing 0.1, drop path 0.1, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25,
16-bit mixed precision on a GPU). A spec is YAML of plain data only (``apt_research.plain``); an unknown
key, a wrong type or a bad value is refused naming the key. ``parameter_table`` writes the table of
docs/training.md from the same declaration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import SpecError
from ..plain import load_yaml

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")


def _field(default, doc: str, execution: bool = False, **constraints):
    return Field(default, description=doc, json_schema_extra={"execution": execution}, **constraints)


class FinetuneSpec(BaseModel):
    """One fine-tuning run, validated."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, protected_namespaces=())

    model: str = _field(..., "a timm model name, or `synthetic` (the small ViT of the synthetic kinds)")
    pretrained: bool = _field(True, "start from the model's pretrained weights (timm's hub; `synthetic`: trained "
                                    "in-process on uniform tokens)")
    model_options: dict[str, Any] = _field({}, "keyword options of the model's constructor (timm's)")
    checkpoint: Optional[str] = _field(None, "start from these weights (a finetune checkpoint or a state_dict)")
    train_data: str = _field(..., "a folder of class sub-folders, or `synthetic`")
    val_data: Optional[str] = _field(None, "the same for evaluation (none: no evaluation)")
    train_images: Optional[int] = _field(None, "use the first N training images (synthetic: N images; default 600)",
                                         ge=1)
    val_images: Optional[int] = _field(None, "use the first N validation images (synthetic default 200)", ge=1)
    image_size: Optional[int] = _field(None, "input side in pixels (default: the model's own)", ge=1)
    num_scales: int = _field(3, "patch sizes p, 2p, 4p, ...", ge=1, le=6)
    thresholds: Optional[list[float]] = _field(None, "`num_scales - 1` entropy thresholds (default 5.75, 4.0 for "
                                                     "3 scales, 5.5 for 2)")
    target_retention: Optional[float] = _field(None, "instead of thresholds: calibrate them to this retention on "
                                                     "the first 64 training images", gt=0, le=1)
    method: str = _field("entropy", "importance scorer of the APT tokens (a registered scorer)")
    method_options: dict[str, Any] = _field({}, "keyword options of the scorer (e.g. `bins: 512`)")
    tokenization: Literal["apt", "uniform"] = _field("apt", "train on APT tokens, or on uniform tokens (control)")
    steps: Optional[int] = _field(None, "optimizer steps (or `epochs`)", ge=1)
    epochs: Optional[int] = _field(None, "passes over the training data (or `steps`; default 1)", ge=1)
    batch_size: int = _field(256, "global batch: summed over processes", ge=1)
    lr: float = _field(5e-4, "peak learning rate (AdamW)", gt=0, allow_inf_nan=False)
    min_lr: float = _field(1e-6, "learning rate at the start of warmup and the end of the cosine", ge=0,
                           allow_inf_nan=False)
    weight_decay: float = _field(0.05, "AdamW weight decay (none on biases, norms and embeddings, as timm)", ge=0,
                                 allow_inf_nan=False)
    warmup_steps: Optional[int] = _field(None, "linear warmup steps (default a tenth of the steps)", ge=0)
    label_smoothing: float = _field(0.1, "label smoothing of the cross-entropy", ge=0, lt=1, allow_inf_nan=False)
    drop_path: float = _field(0.1, "stochastic depth rate of the last block (timm's linear rule)", ge=0, lt=1,
                              allow_inf_nan=False)
    augmentation: Optional[str] = _field("rand-m9-mstd0.5-inc1", "timm auto-augment policy for folders (null: "
                                         "random resized crop and flip only)")
    random_erasing: float = _field(0.25, "random erasing probability for folders (constant fill)", ge=0, le=1,
                                   allow_inf_nan=False)
    seed: int = _field(42, "seeds the data order, augmentation and initial weights", ge=0, lt=2**63)
    precision: Literal[PRECISIONS] = _field("auto", "`32`, `bf16-mixed`, `16-mixed`; auto: 16-mixed on CUDA, 32 on "
                                                    "CPU")
    workers: int = _field(4, "loader worker processes per process (maps are computed there)", execution=True, ge=0)
    device: str = _field("auto", "`cpu`, `cuda`; auto: each process's CUDA device under torchrun, else CPU",
                         execution=True)
    eval_every: Optional[int] = _field(None, "evaluate every N steps (default: each epoch, and at the end)", ge=1)
    checkpoint_every: Optional[int] = _field(None, "checkpoint every N steps (default: each epoch, and at the end)",
                                             ge=1)

    @model_validator(mode="after")
    def _one_length(self):
        import re

        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"give steps or epochs, not both (got steps={self.steps}, epochs={self.epochs})")
        if self.thresholds is not None and self.target_retention is not None:
            raise ValueError("give thresholds or target_retention, not both")
        if self.thresholds is not None and len(self.thresholds) != self.num_scales - 1:
            raise ValueError(f"thresholds must have num_scales - 1 = {self.num_scales - 1} entries, got "
                             f"{self.thresholds}")
        return self

    def differences(self, other: "FinetuneSpec") -> list[str]:
        """``key: this -> other`` for every parameter but the execution ones that differ."""
        execution = {name for name, field in type(self).model_fields.items()
                     if (field.json_schema_extra or {}).get("execution")}
        return [f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}" for name in type(self).model_fields
                if name not in execution and getattr(self, name) != getattr(other, name)]


def load_finetune_spec(source, base: Path | None = None) -> FinetuneSpec:
    """A ``FinetuneSpec`` from a YAML file (relative data folders resolve against its folder) or a dict."""
    if isinstance(source, dict):
        data, where = dict(source), "spec"
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"SPEC expects a YAML file, got {str(path)!r} (no such file)")
        data, where, base = load_yaml(path.read_text(), str(path)), str(path), base or path.parent
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping of parameters, got {type(data).__name__}")
    for key in ("train_data", "val_data", "checkpoint"):
        value = data.get(key)
        if isinstance(value, str) and value != "synthetic" and base is not None and not Path(value).is_absolute():
            data[key] = str((base / value).resolve())
    try:
        return FinetuneSpec(**data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc'])) or 'spec'}: {item['msg']}" +
                             ("" if item["type"] == "value_error" else f" (got {item.get('input')!r})")
                             for item in error.errors())
        raise SpecError(f"{where}: {problems}") from None


def parameter_table() -> str:
    """The markdown table of the spec's parameters (docs/training.md)."""
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for name, field in FinetuneSpec.model_fields.items():
        default = "required" if field.is_required() else f"`{field.default!r}`" if field.default not in ({},) else "`{}`"
        rows.append(f"| `{name}` | {default} | {field.description} |")
    return "\n".join(rows) + "\n"
