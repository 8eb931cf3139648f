"""Helpers of the exploration notebook: load one image by name, sweep one threshold on its maps."""

from __future__ import annotations

import pandas as pd
import torch

from .datasets import SYNTHETIC_KINDS, read_image_file, skimage_dataset, synthetic_image
from .selection import select_patches_by_threshold, token_counts, base_grid_tokens


def load_one(image: str, synthetic_size: int = 256) -> tuple[torch.Tensor, dict]:
    """``(pixels (3, H, W) float32, metadata)`` of a file path, ``skimage:NAME`` or ``synthetic:KIND``."""
    if image.startswith("skimage:"):
        source = skimage_dataset([image.split(":", 1)[1]])
        array, meta = source.loader(source.items[0])
    elif image.startswith("synthetic:"):
        kind = image.split(":", 1)[1]
        if kind not in SYNTHETIC_KINDS:
            raise ValueError(f"image 'synthetic:KIND' needs KIND in {SYNTHETIC_KINDS}, got {kind!r}")
        array, meta = synthetic_image(kind, synthetic_size, 0), {"name": kind, "source": f"synthetic:{kind}"}
    else:
        array, meta = read_image_file(image), {"name": image, "source": image}
    return torch.from_numpy(array).permute(2, 0, 1).float(), meta


def threshold_curve(maps: dict[int, torch.Tensor], values) -> pd.DataFrame:
    """Tokens and retention per image when every scale above 0 uses the same threshold, for each value."""
    rows = []
    scales = len(maps)
    for value in values:
        masks = select_patches_by_threshold(maps, [float(value)] * (scales - 1))
        counts = token_counts(masks)
        for index, count in enumerate(counts.tolist()):
            rows.append({"image": index, "threshold": float(value), "tokens": count,
                         "retention": count / base_grid_tokens(masks)})
    return pd.DataFrame(rows)
