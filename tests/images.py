"""Real test images: bundled scikit-image pictures, resized."""

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data


def skimage_batch(height: int, width: int, names=("astronaut", "camera", "coffee", "chelsea")) -> torch.Tensor:
    """Real images from skimage.data resized to height x width, pixels in [0, 255] float32, (B, 3, H, W)."""
    images = []
    for name in names:
        array = getattr(data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        tensor = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float()[None]
        images.append(F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False))
    return torch.cat(images).clamp(0, 255)
