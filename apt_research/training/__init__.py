"""Fine-tuning a timm ViT on APT tokens (or uniform tokens, the control): ``apt-research finetune``.

``spec``: the spec's parameters, declared once (pydantic, as the sweeps' ``Parameters``);
``distributed``: one process or many under ``torchrun`` (DistributedDataParallel, gloo or NCCL);
``run``: the loop, its checkpoints, metrics and evaluations. ``python -m apt_research.finetune`` and
``apt-research finetune`` both call ``run.main``.
"""

from .run import finetune
from .spec import FinetuneSpec, load_finetune_spec

__all__ = ["FinetuneSpec", "finetune", "load_finetune_spec"]
