"""Data loader: a ``DataLoader`` over JPEG files, images/s without and with the entropy maps in its workers."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from apt_research import compute_patch_entropy_batched
from apt_research.datasets import iter_images, skimage_dataset

from ..common import decode_and_resize
from ..report import Column, Result, Table

NAME, TITLE = "loader", "Data loader"


class JpegFiles(torch.utils.data.Dataset):
    """JPEG files decoded and resized to ``size x size`` uint8 pixels; with ``maps``, also their entropy maps."""

    def __init__(self, paths: list, size: int, base: int, maps: bool):
        self.paths, self.size, self.base, self.maps = paths, size, base, maps

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        pixels = decode_and_resize(Path(self.paths[index]).read_bytes(), self.size)
        if not self.maps:
            return pixels
        maps = compute_patch_entropy_batched(pixels[None], self.base, 3, 512)
        return pixels, {size: value[0] for size, value in maps.items()}


def run(count=512, size=224, base=14, batch_size=32, workers=2, epochs=3) -> Result:
    """A ``DataLoader`` (``workers`` processes) over JPEG files in a temporary folder: images/s without and
    with the entropy maps computed per image in the workers. Best of ``epochs`` after one warm-up epoch."""
    from PIL import Image

    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        images = [pixels for pixels, _ in iter_images(skimage_dataset(), "center_crop", 512, progress=False)]
        paths = []
        for index in range(count):
            path = Path(folder) / f"{index:05d}.jpg"
            array = images[index % len(images)].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(array).save(path, format="JPEG", quality=90)
            paths.append(str(path))
        for maps in (False, True):
            loader = torch.utils.data.DataLoader(JpegFiles(paths, size, base, maps), batch_size=batch_size,
                                                 num_workers=workers, persistent_workers=True)
            best = float("inf")
            for epoch in range(epochs + 1):
                start = time.perf_counter()
                for _ in loader:
                    pass
                if epoch:
                    best = min(best, time.perf_counter() - start)
            rates[maps] = count / best
            del loader
    figures = dict(count=count, size=size, base=base, batch_size=batch_size, workers=workers,
                   plain_img_s=rates[False], maps_img_s=rates[True], ratio=rates[True] / rates[False])
    rows = [{"what": "decode + resize", "rate": f"{rates[False]:,.0f}"},
            {"what": f"decode + resize + entropy maps (base {base}, 3 scales, 512 bins) per image in the workers",
             "rate": f"{rates[True]:,.0f} ({rates[True] / rates[False]:.2f} of the plain loader)"}]
    return Result(NAME, TITLE, figures, [Table(rows, [
        Column(f"`DataLoader`, {workers} workers, {count} JPEG files (512x512), resized to {size}, "
               f"batch {batch_size}", "what"),
        Column("images/s", "rate"),
    ])])
