"""Small timm ViTs on real images, shared by the timm wrapper's tests (tests/models/)."""

import torch

NAMES = ("astronaut", "camera", "coffee", "chelsea")
THRESHOLDS = [6.5, 7.0]  # merges 16- and 32-px patches of these images at 64 x 64, patch 8


def normalised(pixels, model):
    """Pixels in [0, 255] normalised with the model's ``pretrained_cfg`` mean and std, as timm's transform does."""
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    mean, std = torch.tensor(config["mean"])[:, None, None], torch.tensor(config["std"])[:, None, None]
    return (pixels / 255 - mean) / std


def tiny(seed=0, **options):
    """A small ViT at 64 x 64, patch 8 (grid 8 x 8), so that three scales (8, 16, 32) merge on real images."""
    import timm

    torch.manual_seed(seed)
    options = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5,
               **options}
    return timm.models.VisionTransformer(**options).eval()
