"""What several sections share: their inputs (bundled images at a size), the checks that a row compares like
with like, and the timing helpers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from apt_research.datasets import iter_images, skimage_dataset
from apt_research.models.speed import timed

__all__ = [
    "MEAN", "ONE_HOT_LIMIT", "ROOT", "STD", "alternately", "cpu_name", "decode_and_resize", "jpeg_bytes", "machine",
    "max_diff", "normalised", "progress", "real_batch", "same_result", "timed", "torch_threads",
]

ROOT = Path(__file__).resolve().parents[1]
ONE_HOT_LIMIT = 4 * 2**30
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def real_batch(size: int, batch: int, device="cpu") -> torch.Tensor:
    """``batch`` bundled scikit-image images resized to ``size x size`` (cycled), pixels in [0, 255]."""
    images = [pixels for pixels, _ in iter_images(skimage_dataset(), "center_crop", size, progress=False)]
    stacked = torch.stack([images[i % len(images)] for i in range(batch)])
    return stacked.to(device)


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 255] normalised as a ViT takes them (ImageNet mean and std), on their device."""
    device = pixels.device
    return (pixels / 255 - torch.tensor(MEAN, device=device).view(1, 3, 1, 1)) / torch.tensor(
        STD, device=device).view(1, 3, 1, 1)


def max_diff(ours: dict, theirs: dict) -> float:
    """Largest absolute difference between two sets of maps (ours cut to the batch of theirs)."""
    return max(float((ours[k].cpu()[: theirs[k].shape[0]] - theirs[k].cpu()).abs().max()) for k in theirs)


def same_result(ours: dict, theirs: dict) -> bool:
    """Same packed sequences (lengths, labels) and the same patches (within float32 resizing) as the reference."""
    if ours["cu_seqlens"].tolist() != theirs["cu_seqlens"].tolist():
        return False
    if not torch.equal(ours["output_mask"], theirs["output_mask"].long()):
        return False
    return all(torch.allclose(ours[key], value, atol=1e-5, rtol=0) for key, value in theirs.items()
               if key.startswith(("resized_patches", "full_patches")))


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch threads, then restore the process's count."""
    default = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(default)


def alternately(calls: dict, repeats: int) -> dict:
    """Best wall time of each call over ``repeats`` rounds that run every call once, in turn, after one warm-up
    round: the calls share the machine's state (caches, load) instead of each repeating itself back to back."""
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def jpeg_bytes(size: int = 512) -> bytes:
    """A bundled image resized to ``size x size`` and encoded as JPEG (quality 90)."""
    from PIL import Image

    pixels = real_batch(size, 1)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decode_and_resize(data: bytes, size: int) -> torch.Tensor:
    """JPEG bytes to a ``(3, size, size)`` uint8 tensor: PIL decode, bilinear resize."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        resized = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(resized)).permute(2, 0, 1)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as lines:
            return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """One line on where the figures come from: CPU, cores, torch, threads, load, GPU."""
    text = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if hasattr(os, "getloadavg"):
        text += f", load average {os.getloadavg()[0]:.1f} at the start (a shared machine's timings spread with it)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def progress(section: str, record: dict) -> None:
    """One measured record, printed as it comes (a long section shows its rows before its table)."""
    print(f"{section}: {json.dumps(record, default=str)}", file=sys.stderr, flush=True)
