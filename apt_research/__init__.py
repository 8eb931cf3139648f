"""apt-research: Adaptive Patch Tokenization (APT) for Vision Transformers, exact and fast.

The core (entropy maps, selection, patch groups, packing) is importable from
here under the reference implementation's names.
"""

from .entropy import compute_patch_entropy_batched, grayscale, patch_histograms
from .scorers import SCORERS, compute_importance_maps, register_scorer
from .selection import (
    base_grid_tokens,
    retention,
    savings,
    select_patches_by_threshold,
    token_counts,
    tokens_per_scale,
)
from .tokenizer import PatchTokenizer, patch_groups

__version__ = "0.1.0"

__all__ = [
    "PatchTokenizer",
    "SCORERS",
    "base_grid_tokens",
    "compute_importance_maps",
    "compute_patch_entropy_batched",
    "grayscale",
    "patch_groups",
    "patch_histograms",
    "register_scorer",
    "retention",
    "savings",
    "select_patches_by_threshold",
    "token_counts",
    "tokens_per_scale",
]
