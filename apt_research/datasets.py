"""Data sets behind one registry: bundled scikit-image images, seeded synthetic images, folders.

Each data set is a list of items, each with a name known before decoding
(``ImageSource.item_name``); its loader turns an item into an ``(H, W, 3)``
uint8 array plus metadata (name, source path, original size, label).
``iter_images`` decodes in parallel worker threads with a progress bar, skips
unreadable files with a warning (listed in ``ImageSource.skipped``) and applies
a resize policy; ``iter_batches`` stacks equally sized images.
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
RESIZE_POLICIES = ("center_crop", "resize", "short_side", "native")

# Images shipped inside scikit-image's wheel (no download needed).
SKIMAGE_NAMES = (
    "astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
    "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "stereo_motorcycle", "text",
)
SYNTHETIC_KINDS = ("flat", "gradient", "white_noise", "pink_noise", "shapes", "strokes")


@dataclass
class ImageSource:
    """A data set: a name, its items and how to load one; ``skipped`` lists what could not be read.

    ``item_name`` gives each item a name unique within the data set without decoding it (a folder
    image's path relative to the folder, with its suffix); ``iter_images`` puts it in ``meta["item"]``.
    """

    name: str
    items: list
    loader: Callable[[object], tuple[np.ndarray, dict]]
    skipped: list[dict] = field(default_factory=list)
    item_name: Callable[[object], str] = str

    def __len__(self) -> int:
        return len(self.items)


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Any image array to ``(H, W, 3)`` uint8: gray becomes 3 channels, alpha is dropped,
    bool/float [0, 1] scale to [0, 255], 16-bit scales down by 257."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize > 1 and array.max() > 255:
        array = (array.astype(np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.max() <= 1.0 else 1.0
        array = (array * scale).round().clip(0, 255).astype(np.uint8)
    else:
        array = array.clip(0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    elif array.shape[-1] == 4:
        array = array[..., :3]
    elif array.shape[-1] == 2:
        array = np.stack([array[..., 0]] * 3, axis=-1)
    elif array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)


def _skimage_loader(name: str):
    from skimage import data

    if name == "binary_blobs":  # generated at random: fix the seed so that runs agree
        try:
            array = data.binary_blobs(rng=0)
        except TypeError:  # scikit-image < 0.21
            array = data.binary_blobs(seed=0)
    else:
        array = getattr(data, name)()
    if isinstance(array, tuple):
        array = array[0]
    rgb = to_rgb_uint8(array)
    return rgb, {"name": name, "source": f"skimage.data.{name}", "label": None}


def skimage_dataset(names=None) -> ImageSource:
    """The images bundled with scikit-image (offline); ``names`` picks some."""
    names = list(SKIMAGE_NAMES if names is None else names)
    unknown = sorted(set(names) - set(SKIMAGE_NAMES))
    if unknown:
        raise ValueError(f"names must be bundled scikit-image images {list(SKIMAGE_NAMES)}, got unknown {unknown}")
    return ImageSource("skimage", names, _skimage_loader)


def synthetic_image(kind: str, size: int, seed: int) -> np.ndarray:
    """One seeded procedural ``(size, size, 3)`` uint8 image of known structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    if kind == "flat":
        gray = np.full((size, size), rng.integers(30, 225), dtype=np.float64)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        ramp = math.cos(angle) * xx + math.sin(angle) * yy
        gray = 40 + 170 * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    elif kind == "white_noise":
        gray = rng.integers(0, 256, (size, size)).astype(np.float64)
    elif kind == "pink_noise":
        fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
        amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
        field_ = np.real(np.fft.ifft2(amplitude * np.exp(2j * math.pi * rng.random((size, size)))))
        gray = 255 * (field_ - field_.min()) / max(np.ptp(field_), 1e-9)
    elif kind == "shapes":
        gray = np.full((size, size), rng.integers(0, 256), dtype=np.float64)
        for _ in range(6):
            cy, cx, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.3)
            if rng.random() < 0.5:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
            else:
                inside = (abs(yy - cy) < radius) & (abs(xx - cx) < radius * rng.uniform(0.5, 1.5))
            gray[inside] = rng.integers(0, 256)
    elif kind == "strokes":
        gray = np.full((size, size), 235.0)
        line_height = max(size // 12, 6)
        for top in range(line_height, size - line_height, 2 * line_height):
            x = int(rng.integers(2, 8))
            while x < size - 8:
                width = int(rng.integers(2, max(3, line_height // 2)))
                gray[top : top + line_height, x : x + max(1, width // 3)] = 20
                gray[top + int(rng.integers(0, line_height)), x : x + width] = 20
                x += width + int(rng.integers(1, 5))
    else:
        raise ValueError(f"kind must be one of {SYNTHETIC_KINDS}, got {kind!r}")
    if kind in ("shapes", "strokes"):
        # Anti-aliased edges, as a camera or a renderer makes them: edge patches hold many gray levels.
        from skimage.filters import gaussian

        gray = gaussian(gray, sigma=1.0, preserve_range=True)
    return to_rgb_uint8(np.stack([gray] * 3, axis=-1).round().clip(0, 255).astype(np.uint8))


def synthetic_dataset(count: int = 12, size: int = 256, seed: int = 0, kinds=SYNTHETIC_KINDS) -> ImageSource:
    """``count`` seeded images cycling through ``kinds`` (flat, gradient, noise, 1/f noise, shapes, strokes)."""
    for kind in kinds:
        if kind not in SYNTHETIC_KINDS:
            raise ValueError(f"kinds must be among {SYNTHETIC_KINDS}, got {kind!r}")
    items = [(kinds[i % len(kinds)], size, seed + i) for i in range(count)]

    def load(item):
        kind, side, item_seed = item
        return synthetic_image(kind, side, item_seed), {
            "name": f"{kind}_{item_seed}", "source": f"synthetic:{kind}:seed={item_seed}", "label": kind,
        }

    return ImageSource("synthetic", items, load, item_name=lambda item: f"{item[0]}_{item[2]}")


def decode_image(path, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Decode one image file to ``(H, W, 3)`` uint8, at most ``max_pixels`` pixels.

    Parameters
    ----------
    path : str or Path
        An image file Pillow reads (palette, 16-bit, gray and RGBA are converted to RGB).
    max_pixels : int, optional
        A larger image is shrunk while decoding by the smallest integer factor ``k`` (Pillow's
        ``Image.reduce``: each output pixel is the mean of a ``k x k`` block) that brings it to at most
        ``max_pixels`` pixels, with a warning, so that what follows holds ``max_pixels`` pixels at most.
        Decoding itself holds the full image once (4 bytes a pixel), which Pillow bounds: it refuses
        images above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 million pixels). ``None``: no limit.

    Returns
    -------
    array : np.ndarray
        ``(H, W, 3)`` uint8 pixels.
    info : dict
        ``original_height``, ``original_width`` (the file's size) and ``reduced_by`` (``k``, 1 when whole).
    """
    from PIL import Image

    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be an int >= 1 or None, got {max_pixels!r}")
    with warnings.catch_warnings():
        if max_pixels is not None:  # the limit below bounds memory; Pillow's bomb warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            width, height = image.size
            factor = 1 if max_pixels is None else _reduction_factor(height, width, max_pixels)
            image.load()
            if image.mode == "P" or image.mode == "PA":
                image = image.convert("RGBA")
            elif image.mode == "CMYK" or image.mode == "YCbCr":
                image = image.convert("RGB")
            if factor > 1:
                if image.mode == "1":
                    image = image.convert("L")
                elif image.mode.startswith("I;16"):
                    image = image.convert("I")
                image = image.reduce(factor)
                warnings.warn(
                    f"{path} is {height}x{width} ({height * width / 1e6:.1f} million pixels), above max_pixels="
                    f"{max_pixels}: decoded at 1/{factor} of its size ({image.height}x{image.width})",
                    UserWarning, stacklevel=2,
                )
            array = to_rgb_uint8(np.asarray(image))
    return array, {"original_height": height, "original_width": width, "reduced_by": factor}


def _reduction_factor(height: int, width: int, max_pixels: int) -> int:
    """The smallest integer ``k`` with ``ceil(height / k) * ceil(width / k) <= max_pixels``."""
    factor = max(1, math.isqrt(height * width // max_pixels))
    while -(-height // factor) * -(-width // factor) > max_pixels:
        factor += 1
    return factor


def read_image_file(path: Path) -> np.ndarray:
    """Decode one image file (palette, 16-bit, gray, RGBA all handled) to ``(H, W, 3)`` uint8, whole."""
    return decode_image(path)[0]


def folder_dataset(root, max_pixels: int | None = None) -> ImageSource:
    """Every image under ``root`` (recursive); the first folder below ``root`` is the label, ImageNet style.

    ``max_pixels`` bounds each decoded image (see ``decode_image``); ``None`` decodes every image whole.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be an existing directory, got {str(root)!r}")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    def load(path):
        relative = path.relative_to(root)
        array, info = decode_image(path, max_pixels)
        return array, {
            "name": str(relative.with_suffix("")),
            "source": str(path),
            "label": relative.parts[0] if len(relative.parts) > 1 else None,
            **info,
        }

    return ImageSource(f"folder:{root}", paths, load, item_name=lambda path: path.relative_to(root).as_posix())


DATASETS = {"skimage": skimage_dataset, "synthetic": synthetic_dataset, "folder": folder_dataset}


def load_dataset(name: str, **options) -> ImageSource:
    """A data set by registry name (``skimage``, ``synthetic``, ``folder``) or by a folder's path."""
    if name in DATASETS:
        return DATASETS[name](**options)
    if Path(name).is_dir():
        return folder_dataset(name)
    raise ValueError(f"dataset must be one of {sorted(DATASETS)} or an existing folder, got {name!r}")


def resize_image(image: torch.Tensor, policy: str, size=None, patch_size: int = 16) -> torch.Tensor:
    """Resize ``(C, H, W)`` pixels by a named policy.

    ``center_crop``: short side to ``size / 0.875``, then the central ``size x size`` (timm's eval transform);
    ``resize``: to exactly ``size`` (int or (H, W)); ``short_side``: short side to ``size``, long side floored to a
    multiple of 4 base patches; ``native``: unchanged. Bicubic with antialiasing, clamped to [0, 255].
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {policy!r}")
    if policy == "native":
        return image
    if size is None:
        raise ValueError(f"resize policy {policy!r} needs an image size, got None")
    height, width = image.shape[-2:]
    if policy == "resize":
        target = (size, size) if isinstance(size, int) else tuple(size)
    elif policy == "center_crop":
        short = int(math.floor(size / 0.875))
        scale = short / min(height, width)
        target = (max(size, round(height * scale)), max(size, round(width * scale)))
    else:
        step = 4 * patch_size
        scale = size / min(height, width)
        long_side = max(step, int(max(height, width) * scale) // step * step)
        target = (size, long_side) if height <= width else (long_side, size)
    out = _resample(image, target)
    if policy == "center_crop":
        top, left = (out.shape[-2] - size) // 2, (out.shape[-1] - size) // 2
        out = out[..., top : top + size, left : left + size]
    return out


def _resample(image: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(target):
        return image
    out = F.interpolate(image[None].float(), size=target, mode="bicubic", align_corners=False, antialias=True)
    return out[0].clamp(0, 255)


def iter_images(
    source: ImageSource,
    resize: str = "resize",
    image_size=224,
    patch_size: int = 16,
    limit: int | None = None,
    workers: int = 4,
    progress: bool = True,
) -> Iterator[tuple[torch.Tensor, dict]]:
    """Yield ``(pixels (3, H, W) float32 in [0, 255], metadata)``, decoding in ``workers`` threads.

    A file that cannot be decoded is skipped with a warning and recorded in ``source.skipped``.
    """
    items = source.items[:limit] if limit else source.items

    def decode(item):
        try:
            return source.loader(item)
        except Exception as error:  # any decoder failure: the run goes on without this file
            return error

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(decode, items)
        for item, result in tqdm(zip(items, results), total=len(items), desc=f"images ({source.name})",
                                 disable=not progress, leave=False):
            if isinstance(result, Exception):
                source.skipped.append({"item": str(item), "error": f"{type(result).__name__}: {result}"})
                warnings.warn(f"skipped unreadable image {item}: {type(result).__name__}: {result}", stacklevel=2)
                continue
            array, meta = result
            pixels = torch.from_numpy(array).permute(2, 0, 1).float()
            meta = {"original_height": array.shape[0], "original_width": array.shape[1], **meta,
                    "dataset": source.name, "item": source.item_name(item)}
            yield resize_image(pixels, resize, image_size, patch_size), meta


def iter_batches(images: Iterator[tuple[torch.Tensor, dict]], batch_size: int = 16):
    """Group consecutive images of equal size into ``(pixels (B, 3, H, W), [metadata])`` batches."""
    pending, metas = [], []
    for pixels, meta in images:
        if pending and (pixels.shape != pending[0].shape or len(pending) == batch_size):
            yield torch.stack(pending), metas
            pending, metas = [], []
        pending.append(pixels)
        metas.append(meta)
    if pending:
        yield torch.stack(pending), metas
