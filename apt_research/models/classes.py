"""Labelled images for evaluation and fine-tuning: class folders, their mapping to a model's outputs, loaders.

Two folder layouts are read, ImageNet style (``FOLDER/CLASS/*.JPEG``, a class being a sub-folder):

* **ImageNet synsets** (``n01440764``, ...): mapped to a 1000-way model's class indices through the
  ImageNet class information timm ships (``timm.data.ImageNetInfo``, offline); a synset the model
  lacks is refused by name.
* **Any other names**: the folder's sorted class names, index 0, 1, ...; a model fine-tuned here
  carries the names it was trained on, and a folder class it lacks is refused by name.

Images are decoded by ``apt_research.datasets.decode_image`` (format, size limit, orientation), then
go through timm's own transforms (``create_transform``: the resize and crop of evaluation, or the
training augmentation), then ``MapsTransform`` computes the importance maps in the loader's worker.
An image that cannot be decoded is skipped and counted (``LabelledBatch.skipped``), never fatal.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._io import MARKER
from ..datasets import IMAGE_EXTENSIONS, SYNTHETIC_KINDS, decode_image, synthetic_image
from ..errors import UsageError
from ..tokenizer import PatchTokenizer
from .loader import MapsTransform, PackCollate, start_method
from .timm_vit import _import_timm

SYNSET = re.compile(r"n\d{8}")
"""An ImageNet WordNet id, the name of an ImageNet class folder."""

SYNTHETIC = "synthetic"
"""The data name of the labelled synthetic images (``SYNTHETIC_KINDS`` are the classes)."""


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synsets in the order of a 1000-way timm model's outputs (timm's own table)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def class_folders(root, argument: str = "--data") -> list[str]:
    """The class sub-folders of ``root`` that hold at least one image, sorted.

    Folders apt-research wrote (marked) and hidden folders are not classes. Raises ``UsageError``
    naming ``argument`` for a missing folder or one without class sub-folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{argument} expects a folder of class sub-folders, got {str(root)!r} (no such folder)")
    names = []
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if not entry.is_dir() or entry.name.startswith(".") or os.path.isfile(os.path.join(entry.path, MARKER)):
            continue
        if any(image_files(entry.path)):
            names.append(entry.name)
    if not names:
        loose = [path.name for path in root.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS][:3]
        raise UsageError(
            f"{argument} expects a folder of class sub-folders (FOLDER/CLASS/image.jpg, ImageNet style), got "
            f"{str(root)!r} with no sub-folder holding images" + (f" (images directly inside: {loose})" if loose
                                                                  else ""))
    return names


def image_files(folder):
    """Image files below ``folder`` (recursive, sorted, marked folders skipped)."""
    for current, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders
                               if not os.path.isfile(os.path.join(current, name, MARKER)))
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(current, name)):
                yield Path(current, name)


def class_mapping(names: list[str], num_outputs: int, model_classes: list[str] | None = None,
                  argument: str = "--data") -> dict[str, int]:
    """Each folder class's index among the model's outputs.

    Parameters
    ----------
    names : list of str
        The folder's classes (``class_folders``).
    num_outputs : int
        The model head's outputs.
    model_classes : list of str, optional
        The class names a model fine-tuned here was trained on (stored in its checkpoint).
    argument : str
        Named in errors.

    Raises
    ------
    UsageError
        A class the model lacks (named), a non-synset folder for a model without class names
        whose head has another size, or a synset folder for a model that is not 1000-way.
    """
    if model_classes is not None:
        lacking = [name for name in names if name not in model_classes]
        if lacking:
            raise UsageError(f"{argument}: the model was trained on {len(model_classes)} classes "
                             f"({_shown(model_classes)}) and lacks {len(lacking)} of the folder's: {_shown(lacking)}")
        return {name: model_classes.index(name) for name in names}
    if all(SYNSET.fullmatch(name) for name in names):
        synsets = imagenet_synsets()
        if num_outputs != len(synsets):
            raise UsageError(f"{argument}: class folders are ImageNet synsets, which need a {len(synsets)}-way "
                             f"model, got a model with {num_outputs} outputs")
        lacking = [name for name in names if name not in synsets]
        if lacking:
            raise UsageError(f"{argument}: the model's ImageNet-1k classes lack {len(lacking)} of the folder's "
                             f"synsets: {_shown(lacking)}")
        return {name: synsets.index(name) for name in names}
    if len(names) != num_outputs:
        raise UsageError(
            f"{argument}: class folders {_shown(names)} are not ImageNet synsets and the model has no class names "
            f"of its own; expected a model fine-tuned on them (a checkpoint of apt-research finetune) or "
            f"{len(names)} outputs, got {num_outputs} outputs")
    return {name: index for index, name in enumerate(names)}


def _shown(names: list[str], count: int = 6) -> str:
    return ", ".join(names[:count]) + (f", ... ({len(names)} in all)" if len(names) > count else "")


def timm_transform(model, image_size: int, training: bool, augmentation: str | None = None,
                   random_erasing: float = 0.0):
    """timm's evaluation transform (resize, central crop at 0.875, normalise with the model's mean and
    std) or its training transform (random resized crop, flip, ``augmentation`` such as
    ``"rand-m9-mstd0.5-inc1"``, random erasing), for PIL images."""
    from timm.data import create_transform

    from .timm_vit import _data_config

    config = _data_config(model)
    options = {"input_size": (3, image_size, image_size), "interpolation": "bicubic", "mean": config["mean"],
               "std": config["std"], "crop_pct": 0.875}
    if training:
        options.update(is_training=True, auto_augment=augmentation, re_prob=random_erasing, re_mode="const",
                       color_jitter=0.0)
    return create_transform(**options)


class ImageFolderClasses(Dataset):
    """``(MapsTransform dict, class index)`` per image of a class folder; ``None`` for an undecodable image.

    Parameters
    ----------
    root : str or Path
        ``root/CLASS/...`` images.
    mapping : dict
        Class folder name to the model's class index (``class_mapping``).
    transform : callable
        PIL image to a normalised ``(3, H, W)`` tensor (``timm_transform``).
    tokenizer : PatchTokenizer
        Computes the maps (``MapsTransform``).
    limit : int, optional
        The first ``limit`` images in sorted order only.
    seed : int
        Seeds each item's augmentation by (seed, epoch, index): the same image gets the same
        augmentation whatever the number of processes or workers (``set_epoch``).
    replace_unreadable : bool
        Training: an undecodable image is replaced by the next readable one (and counted), so every
        batch, on every process, keeps its size. Evaluation leaves it out (and counts it).
    """

    def __init__(self, root, mapping: dict[str, int], transform, tokenizer: PatchTokenizer,
                 limit: int | None = None, seed: int = 0, max_pixels: int | None = 25_000_000,
                 replace_unreadable: bool = False):
        root = Path(root)
        self.samples = [(path, mapping[name]) for name in mapping for path in image_files(root / name)]
        self.samples.sort(key=lambda sample: str(sample[0]))
        if limit is not None:
            self.samples = self.samples[:limit]
        self.transform, self.maps = transform, MapsTransform(tokenizer)
        self.seed, self.epoch, self.max_pixels = seed, 0, max_pixels
        self.replace_unreadable = replace_unreadable

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        """``(maps dict, class)``, or ``None`` for an undecodable image; with ``replace_unreadable``, the next
        readable image's ``(maps dict, class, 1)`` instead (``(..., 0)`` for a readable one)."""
        from PIL import Image

        for offset in range(len(self.samples) if self.replace_unreadable else 1):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                array, _ = decode_image(path, self.max_pixels)
            except Exception:  # any decoder failure: this image is skipped (or replaced) and counted
                continue
            _seed_item(self.seed, self.epoch, index)
            item = self.maps(self.transform(Image.fromarray(array)))
            return (item, label, int(offset > 0)) if self.replace_unreadable else (item, label)
        if self.replace_unreadable:
            raise UsageError(f"no image of the {len(self.samples)} in the data can be decoded")
        return None


class SyntheticClasses(Dataset):
    """The labelled synthetic images (classes ``SYNTHETIC_KINDS``), seeds ``first_seed ..``: ``(dict, class)``.

    Images are made at ``image_size`` and normalised with the model's mean and std; training flips
    them horizontally at random (seeded per item, as ``ImageFolderClasses``).
    """

    def __init__(self, count: int, image_size: int, model, tokenizer: PatchTokenizer, first_seed: int = 0,
                 training: bool = False, seed: int = 0):
        from .timm_vit import _data_config

        config = _data_config(model)
        self.mean = torch.tensor(config["mean"])[:, None, None]
        self.std = torch.tensor(config["std"])[:, None, None]
        self.count, self.image_size, self.first_seed = count, image_size, first_seed
        self.training, self.seed, self.epoch = training, seed, 0
        self.maps = MapsTransform(tokenizer)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        label = index % len(SYNTHETIC_KINDS)
        pixels = synthetic_image(SYNTHETIC_KINDS[label], self.image_size, self.first_seed + index)
        image = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - self.mean) / self.std
        if self.training:
            generator = _seed_item(self.seed, self.epoch, index)
            if torch.rand((), generator=generator) < 0.5:
                image = image.flip(-1)
        return self.maps(image.contiguous()), label


def _seed_item(seed: int, epoch: int, index: int) -> torch.Generator:
    """Seed python's, numpy's and torch's generators for one item (timm's augmentations draw from them)."""
    value = (seed * 1_000_003 + epoch * 10_007 + index) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


@dataclass
class LabelledBatch:
    """A packed batch: the tokenizer's dict (with ``images``), the class indices and the images skipped."""

    tokens: dict
    labels: torch.Tensor
    skipped: int

    def to(self, device) -> "LabelledBatch":
        tokens = {key: value.to(device) if isinstance(value, torch.Tensor) else
                  {size: mask.to(device) for size, mask in value.items()} if key == "masks" else value
                  for key, value in self.tokens.items()}
        return LabelledBatch(tokens, self.labels.to(device), self.skipped)


class LabelledCollate:
    """Drops the undecodable items (``None``), counts them, packs the rest with ``PackCollate``."""

    def __init__(self, tokenizer: PatchTokenizer):
        self.pack = PackCollate(tokenizer)

    def __call__(self, batch: list) -> LabelledBatch | None:
        items = [item for item in batch if item is not None]
        if not items:
            return LabelledBatch({}, torch.zeros(0, dtype=torch.int64), len(batch))
        tokens, labels, *replaced = self.pack(items)
        skipped = len(batch) - len(items) + (int(replaced[0].sum()) if replaced else 0)
        return LabelledBatch(tokens, labels, skipped)


def labelled_loader(dataset: Dataset, tokenizer: PatchTokenizer, batch_size: int, workers: int,
                    sampler=None, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
    """A ``DataLoader`` of ``LabelledBatch``: maps in ``workers`` processes, packing in collate."""
    options = {"multiprocessing_context": start_method(), "persistent_workers": False} if workers else {}
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, sampler=sampler,
                      shuffle=shuffle if sampler is None else False, drop_last=drop_last,
                      collate_fn=LabelledCollate(tokenizer), **options)


def data_classes(data: str, argument: str = "--data") -> list[str]:
    """The class names of ``data``: ``SYNTHETIC_KINDS`` for ``synthetic``, else its class folders."""
    return list(SYNTHETIC_KINDS) if data == SYNTHETIC else class_folders(data, argument)


def labelled_data(data: str, mapping: dict[str, int], model, tokenizer: PatchTokenizer, image_size: int, *,
                  training: bool = False, limit: int | None = None, seed: int = 0, augmentation: str | None = None,
                  random_erasing: float = 0.0, argument: str = "--data") -> Dataset:
    """A labelled data set for ``model``: ``synthetic`` or a class folder, labels by ``mapping``
    (``class_mapping`` of ``data_classes(data)``).

    ``synthetic`` holds ``limit`` images (default 600 for training, 200 otherwise) of seeds 0, 1, ...
    for training and 10000, 10001, ... otherwise, so training and validation never share an image.
    """
    if data == SYNTHETIC:
        if [mapping[name] for name in SYNTHETIC_KINDS] != list(range(len(SYNTHETIC_KINDS))):
            raise UsageError(f"{argument}: synthetic images need the model's classes in the order {SYNTHETIC_KINDS}")
        count = limit or (600 if training else 200)
        return SyntheticClasses(count, image_size, model, tokenizer, 0 if training else 10_000, training, seed)
    transform = timm_transform(model, image_size, training, augmentation, random_erasing)
    dataset = ImageFolderClasses(data, mapping, transform, tokenizer, limit, seed, replace_unreadable=training)
    if not len(dataset):
        raise UsageError(f"{argument} {data!r} holds no image")
    return dataset
