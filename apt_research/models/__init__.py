"""Models in the loop: APT on timm Vision Transformers, a data-loader path and NaFlex interop.

timm is the optional extra ``[models]``; only ``from_timm``, ``load_model`` and the
synthetic classifier need it.
"""

from .eva import AptEva
from .evaluate import (
    UNKNOWN_LABEL,
    accuracy_by_setting,
    labelled_images,
    plot_accuracy_vs_retention,
    prediction_records,
    threshold_records,
    uniform_logits,
)
from .loader import MapsTransform, PackCollate, from_naflex, maps_loader, to_naflex
from .synthetic import load_model, synthetic_classification_data, train_synthetic_vit
from .timm_vit import AptViT, from_timm

__all__ = [
    "AptEva",
    "AptViT",
    "MapsTransform",
    "PackCollate",
    "UNKNOWN_LABEL",
    "accuracy_by_setting",
    "from_naflex",
    "from_timm",
    "labelled_images",
    "load_model",
    "maps_loader",
    "plot_accuracy_vs_retention",
    "prediction_records",
    "uniform_logits",
    "synthetic_classification_data",
    "threshold_records",
    "to_naflex",
    "train_synthetic_vit",
]
