"""Models in the loop: APT on timm Vision Transformers, a data-loader path and NaFlex interop.

timm is the optional extra ``[models]``; only ``from_timm`` and the synthetic
classifier need it.
"""

from .loader import MapsTransform, PackCollate, from_naflex, maps_loader, to_naflex
from .timm_vit import AptViT, from_timm

__all__ = ["AptViT", "MapsTransform", "PackCollate", "from_naflex", "from_timm", "maps_loader", "to_naflex"]
