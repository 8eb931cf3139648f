"""A small ViT trained in-process on the labelled synthetic data set: a real classifier, offline.

No weights can be downloaded in tests or CI, so the synthetic images' kinds
(flat, gradient, white noise, 1/f noise, shapes, strokes) are the classes, and
a seeded timm ``VisionTransformer`` learns them in about a minute on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..datasets import SYNTHETIC_KINDS, synthetic_image
from .timm_vit import _data_config, _import_timm


def synthetic_classification_data(count: int, image_size: int = 128, seed: int = 0,
                                  kinds=SYNTHETIC_KINDS) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` seeded synthetic images and their classes, cycling through ``kinds``.

    Returns
    -------
    pixels : Tensor
        ``(count, 3, image_size, image_size)`` float32 in [0, 255].
    labels : Tensor
        ``(count,)`` int64, the index of each image's kind in ``kinds``.
    """
    unknown = sorted(set(kinds) - set(SYNTHETIC_KINDS))
    if unknown:
        raise ValueError(f"kinds must be among {SYNTHETIC_KINDS}, got unknown {unknown}")
    labels = torch.arange(count) % len(kinds)
    pixels = torch.stack([
        torch.from_numpy(synthetic_image(kinds[label], image_size, seed + index)).permute(2, 0, 1).float()
        for index, label in enumerate(labels.tolist())
    ])
    return pixels, labels


def normalise(pixels: torch.Tensor, model) -> torch.Tensor:
    """Pixels in [0, 255] to the model's input: scaled to [0, 1], then its ``pretrained_cfg`` mean and std."""
    config = _data_config(model)
    mean = torch.tensor(config["mean"], device=pixels.device)[:, None, None]
    std = torch.tensor(config["std"], device=pixels.device)[:, None, None]
    return (pixels / 255 - mean) / std


def synthetic_vit(image_size: int = 128, patch_size: int = 16, embed_dim: int = 48, depth: int = 3, **options):
    """The synthetic classifier's architecture, untrained: a timm ``VisionTransformer`` with one output
    per synthetic kind (``options``: more of timm's ``VisionTransformer`` arguments, e.g. ``drop_path_rate``)."""
    timm = _import_timm()
    return timm.models.VisionTransformer(
        img_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
        num_heads=max(1, embed_dim // 16), mlp_ratio=2.0, num_classes=len(SYNTHETIC_KINDS), **options,
    )


def train_synthetic_vit(image_size: int = 128, patch_size: int = 16, count: int = 600, epochs: int = 8,
                        batch_size: int = 50, seed: int = 0, embed_dim: int = 48, depth: int = 3,
                        progress: bool = True):
    """Train a small timm ViT to tell the synthetic kinds apart, on uniform patches (seeded, CPU).

    Parameters
    ----------
    image_size, patch_size : int
        Square input size and base patch of the model.
    count, epochs, batch_size : int
        Training images (seeds ``seed .. seed + count - 1``), passes and batch size.
    seed : int
        Seeds the images, the initial weights and the batch order.
    embed_dim, depth : int
        Width and number of blocks (heads: ``embed_dim // 16``).
    progress : bool
        Show a progress bar.

    Returns
    -------
    timm.models.VisionTransformer
        In eval mode, ``num_classes = len(SYNTHETIC_KINDS)``; evaluate it on
        images of other seeds (``synthetic_classification_data(n, seed=10_000)``).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = synthetic_vit(image_size, patch_size, embed_dim, depth)
    pixels, labels = synthetic_classification_data(count, image_size, seed)
    images = normalise(pixels, model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * -(-count // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps)
    model.train()
    with tqdm(total=steps, desc="training synthetic ViT", disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            for batch in torch.randperm(count, generator=generator).split(batch_size):
                loss = F.cross_entropy(model(images[batch]), labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def load_model(name: str, pretrained: bool = True, **model_options):
    """A classifier by name: ``"synthetic"`` trains ``train_synthetic_vit(**model_options)`` in-process
    (``pretrained=False``: the untrained ``synthetic_vit``);
    any other name is a timm model, ``timm.create_model(name, pretrained=pretrained, **model_options)``
    (pretrained weights come from the Hugging Face hub: they need the internet once)."""
    if name == "synthetic":
        if pretrained:
            return train_synthetic_vit(**model_options)
        training = {"count", "epochs", "batch_size", "seed", "progress"}
        return synthetic_vit(**{key: value for key, value in model_options.items() if key not in training}).eval()
    return _import_timm().create_model(name, pretrained=pretrained, **model_options).eval()
