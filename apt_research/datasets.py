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
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._io import MARKER

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
RESIZE_POLICIES = ("center_crop", "resize", "short_side", "native")

# Images shipped inside scikit-image's wheel (no download needed).
SKIMAGE_NAMES = (
    "astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
    "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "stereo_motorcycle", "text",
)
SYNTHETIC_KINDS = ("flat", "gradient", "white_noise", "pink_noise", "shapes", "strokes")

# decode_image refuses a file declaring more pixels, before decoding them: Pillow's own default
# PIL.Image.MAX_IMAGE_PIXELS ("around a quarter gigabyte for a 24-bit image", about 9459 x 9459), so that
# Pillow's decompression bomb warning (default settings) never fires for an image decode_image accepts.
MAX_SYNTHETIC_COUNT = 1_000_000
MAX_SYNTHETIC_SIZE = 8192
"""Bounds of the synthetic data set: a million images, 8192 pixels a side (the listing and one image fit easily)."""
DECODER_VERSION = 2
"""The version of ``decode_image``'s rules (bit depth, EXIF orientation): part of the map cache's key, so maps
decoded by other rules are never reused."""
MAX_DECODE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# How decode_image scales Pillow's modes (see its Notes): 8-bit modes through Pillow's RGB conversion,
# 16-bit modes divided by 257; mode "I" is 16-bit when it comes from a format whose samples have 16 bits
# at most (some Pillow versions open a 16-bit gray PNG as "I"; Pillow opens a PGM with maxval above 255 as "I").
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
SIXTEEN_BIT_FORMATS = ("PNG", "PPM")
EXIF_ORIENTATION = 0x0112


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
    """An in-memory image array to ``(H, W, 3)`` uint8, scaled by its dtype, never by its values.

    For arrays made in memory (scikit-image's bundled images, synthetic images); image files go
    through ``decode_image``, which scales by the file's format.

    Parameters
    ----------
    array : np.ndarray
        ``(H, W)`` gray or ``(H, W, C)`` with ``C`` channels: 1 (gray), 2 (gray, alpha), 3 (RGB) or
        4 (RGBA); alpha is dropped. By dtype: bool becomes 0 or 255; uint8 is kept; uint16 is divided
        by 257 and rounded (65535 becomes 255); floating point must hold values in [0, 1]
        (scikit-image's convention for float images), multiplied by 255 and rounded.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8, C-contiguous.

    Raises
    ------
    ValueError
        For another dtype, a float array with a value outside [0, 1] (or NaN), or another shape.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4)):
        raise ValueError(f"array must be (H, W) or (H, W, C) with C in (1, 2, 3, 4), got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = _uint16_to_uint8(array)
    elif np.issubdtype(array.dtype, np.floating):
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not (low >= 0.0 and high <= 1.0):
            raise ValueError(
                f"array of dtype {array.dtype} must hold values in [0, 1] (the convention for float images), "
                f"got values in [{low}, {high}]"
            )
        array = (array * 255.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"array dtype must be bool, uint8, uint16 or floating point, got {array.dtype}")
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    elif array.shape[-1] == 4:
        array = array[..., :3]
    elif array.shape[-1] in (1, 2):
        array = np.repeat(array[..., :1], 3, axis=-1)
    return np.ascontiguousarray(array)


def _uint16_to_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit samples (integers in [0, 65535]) to 8 bits: ``round(v / 257)``, so that 65535 becomes 255.

    ``(v + 128) // 257`` is that rounding exactly: ``v / 257`` is never halfway between integers (257 is odd).
    """
    return ((array.astype(np.int32) + 128) // 257).astype(np.uint8)


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
    """``count`` seeded images cycling through ``kinds`` (flat, gradient, noise, 1/f noise, shapes, strokes).

    ``count`` is 1 to ``MAX_SYNTHETIC_COUNT`` and ``size`` 1 to ``MAX_SYNTHETIC_SIZE`` pixels, checked before
    anything is made (the listing holds one entry per image)."""
    for name, value, bound in (("count", count, MAX_SYNTHETIC_COUNT), ("size", size, MAX_SYNTHETIC_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
            raise ValueError(f"{name} must be a whole number from 1 to {bound:,}, got {value!r}")
    if isinstance(kinds, str) or not kinds:
        raise ValueError(f"kinds must be a non-empty list of {SYNTHETIC_KINDS}, got {kinds!r}")
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
    """Decode one image file to ``(H, W, 3)`` uint8, upright, at most ``max_pixels`` pixels.

    Parameters
    ----------
    path : str or Path
        An image file Pillow reads.
    max_pixels : int, optional
        A larger image is shrunk while decoding by the smallest integer factor ``k`` (Pillow's
        ``Image.reduce``: each output pixel is the mean of a ``k x k`` block) that brings it to at most
        ``max_pixels`` pixels, with a warning, so that what follows holds ``max_pixels`` pixels at most.
        ``None``: no limit beyond ``MAX_DECODE_PIXELS``.

    Returns
    -------
    array : np.ndarray
        ``(H, W, 3)`` uint8 pixels, as displayed (EXIF orientation applied).
    info : dict
        ``original_height``, ``original_width`` (the file's size as displayed, after its EXIF
        orientation), ``reduced_by`` (``k``, 1 when whole) and ``orientation`` (the EXIF orientation
        applied, 1 to 8; 1 when the file has none).

    Raises
    ------
    ValueError
        For a bad ``max_pixels``, a file declaring more than ``MAX_DECODE_PIXELS`` pixels, or samples
        without a defined scale (see Notes).
    PIL.UnidentifiedImageError
        For a file Pillow does not identify as an image (not an image, damaged, or declaring a width or
        height of 0).

    Notes
    -----
    The steps, in order:

    1. Only the header is read first: a file whose declared ``width * height`` exceeds
       ``MAX_DECODE_PIXELS`` is refused before its pixels are decoded (a file of a few bytes can declare
       billions of pixels). Pillow's own decompression bomb error (above twice
       ``PIL.Image.MAX_IMAGE_PIXELS``) becomes the same ``ValueError``; between once and twice that
       bound Pillow also warns (``DecompressionBombWarning``) before the refusal. Pillow refuses a file
       declaring a width or height of 0 as unidentified (``PIL.UnidentifiedImageError``).
    2. The EXIF orientation (``PIL.ImageOps.exif_transpose``) turns the pixels upright.
    3. Samples are scaled by the file's format (Pillow's mode), never by their values:

       - 8-bit modes (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGB``, ``RGBA``, ``RGBa``, ``RGBX``, ``CMYK``,
         ``YCbCr``, ``HSV``): Pillow's conversion to RGB (alpha is dropped, a palette is looked up).
       - 16-bit gray (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and mode ``I`` from a PNG or a PNM
         (Pillow's ``PPM``) file, whose samples have 16 bits at most): ``round(v / 257)``, so that 65535
         becomes 255.
       - 16 bits per channel color PNG (RGB, RGBA, gray with alpha): Pillow itself decodes it to 8-bit
         ``RGB``/``RGBA`` by keeping each sample's high byte (``v >> 8``, at most 1 below
         ``round(v / 257)``); it is then an 8-bit mode.
       - 32-bit or signed integer (mode ``I`` from another format, e.g. TIFF) and floating point (mode
         ``F``): refused, as they have no defined white point (a float TIFF may hold [0, 1], [0, 255] or
         anything else); convert such a file to 8 or 16 bits.
       - Any other mode (``LAB``, signed 16-bit ``I;16S``, ...): refused.

    4. The ``max_pixels`` reduction, on the upright image (16-bit samples are averaged before scaling).
    """
    from PIL import Image, ImageOps

    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be an int >= 1 or None, got {max_pixels!r}")
    try:
        image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # the warning when raised as error
        raise ValueError(
            f"image file {str(path)!r} declares more pixels than Pillow decodes ({error}); it should have at most "
            f"MAX_DECODE_PIXELS ({MAX_DECODE_PIXELS:,}) pixels"
        ) from error
    except Image.UnidentifiedImageError as error:
        raise Image.UnidentifiedImageError(
            f"{error}: it should be an image in a format Pillow reads, undamaged, declaring a width and a height "
            f"of at least 1 pixel"
        ) from error
    with image:
        if image.width * image.height > MAX_DECODE_PIXELS:
            raise ValueError(
                f"image file {str(path)!r} declares {image.height}x{image.width} (height x width), "
                f"{image.width * image.height:,} pixels, which should be at most MAX_DECODE_PIXELS "
                f"({MAX_DECODE_PIXELS:,}) to be decoded"
            )
        file_format = image.format
        image.load()
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        if orientation in range(2, 9):
            image = ImageOps.exif_transpose(image)
        else:
            orientation = 1
        sixteen_bit = _is_sixteen_bit(image.mode, file_format, path)
        if sixteen_bit:
            if image.mode != "I":
                image = image.convert("I")  # Pillow reduces 32-bit "I", not "I;16"
        elif image.mode in ("P", "PA"):
            image = image.convert("RGBA")  # the same colors as "RGB", without Pillow's warning on a transparent palette
        elif image.mode != "RGB":
            image = image.convert("RGB")
        height, width = image.height, image.width
        factor = 1 if max_pixels is None else _reduction_factor(height, width, max_pixels)
        if factor > 1:
            image = image.reduce(factor)
            warnings.warn(
                f"{path} is {height}x{width} ({height * width / 1e6:.1f} million pixels), above max_pixels="
                f"{max_pixels}: decoded at 1/{factor} of its size ({image.height}x{image.width})",
                UserWarning, stacklevel=2,
            )
        array = np.asarray(image)
    if sixteen_bit:
        array = np.repeat(_uint16_to_uint8(array)[..., None], 3, axis=-1)
    else:
        array = np.array(array[..., :3], order="C")  # writable: Pillow's array is read-only
    info = {"original_height": height, "original_width": width, "reduced_by": factor, "orientation": orientation}
    return array, info


def _is_sixteen_bit(mode: str, file_format: str | None, path) -> bool:
    """Whether ``decode_image`` scales a Pillow mode as 16-bit (True) or as 8-bit (False); refuses the rest."""
    if mode in EIGHT_BIT_MODES:
        return False
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and file_format in SIXTEEN_BIT_FORMATS):
        return True
    if mode == "F":
        reason = "32-bit floating point samples (Pillow mode 'F'), which have no defined white point"
    elif mode == "I":
        reason = (f"integer samples wider than 16 bits or signed (Pillow mode 'I' from a {file_format} file), "
                  f"which have no defined white point")
    else:
        reason = f"samples of Pillow mode {mode!r}, which decode_image does not scale"
    raise ValueError(
        f"image file {str(path)!r} holds {reason}; expected 8-bit modes {EIGHT_BIT_MODES}, 16-bit modes "
        f"{SIXTEEN_BIT_MODES} or mode 'I' from a {' or '.join(SIXTEEN_BIT_FORMATS)} file (convert it to 8 or 16 bits)"
    )


def _reduction_factor(height: int, width: int, max_pixels: int) -> int:
    """The smallest integer ``k`` with ``ceil(height / k) * ceil(width / k) <= max_pixels``."""
    factor = max(1, math.isqrt(height * width // max_pixels))
    while -(-height // factor) * -(-width // factor) > max_pixels:
        factor += 1
    return factor


def read_image_file(path: Path) -> np.ndarray:
    """Decode one image file to ``(H, W, 3)`` uint8, whole and upright (``decode_image``'s rules)."""
    return decode_image(path)[0]


def folder_dataset(root, max_pixels: int | None = None) -> ImageSource:
    """Every image under ``root`` (recursive); the first folder below ``root`` is the label, ImageNet style.

    ``max_pixels`` bounds each decoded image (see ``decode_image``); ``None`` decodes every image whole.
    Folders apt-research wrote (a sweep's or ``visualize``'s output, marked ``_io.MARKER``) are not read: a
    sweep whose output lies inside its data folder never analyses its own figures.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be an existing directory, got {str(root)!r}")
    paths = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not os.path.isfile(os.path.join(folder, name, MARKER)))
        paths += [Path(folder, name) for name in files if Path(name).suffix.lower() in IMAGE_EXTENSIONS
                  and os.path.isfile(os.path.join(folder, name))]
    paths.sort()
    if not paths:
        raise ValueError(f"root {str(root)!r} holds no image ({', '.join(IMAGE_EXTENSIONS)}), outside folders "
                         "apt-research wrote")

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
