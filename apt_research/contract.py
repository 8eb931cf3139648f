"""The numbers of the APT contract (``docs/contract.md``), declared once.

Every path that computes scores imports them from here: the plain torch ops,
the numba kernel (as float32 globals) and the Triton kernels (as constexprs).
Changing one of them changes every backend together, and the tests that
compare the backends with the slow reference keep them honest.
"""

from __future__ import annotations

#: Grayscale weights of R, G and B: ``gray = R * 0.2989 + G * 0.5870 + B * 0.1140`` in float32, left to right.
GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.5870, 0.1140)

#: Upper end of the pixel range; a gray value ``v`` falls into bin ``min(floor(v * bins / MAX_PIXEL), bins - 1)``
#: computed in float32, which is what ``torch.histc(gray, bins, min=0, max=MAX_PIXEL)`` does.
MAX_PIXEL: float = 255.0

#: Added to every probability before ``log2``: entropy ``= -sum(p * log2(p + LOG_EPSILON))`` bits.
LOG_EPSILON: float = 1e-10

#: Score given to the last row (column) of a scale whose grid needed padding (the border rule).
#: Above every entropy (at most ``log2(MAX_BINS)`` = 12 bits) and every built-in score.
DEFAULT_PAD_VALUE: float = 1e6

#: Histogram bins of the paper and the reference implementation.
DEFAULT_BINS: int = 512

#: Most histogram bins accepted: each bin is then 1/16 of a gray level wide. The Triton kernel keeps a
#: patch's histogram on chip and the torch fallback counts ``patches x bins``, so the bound keeps both finite.
MAX_BINS: int = 4096

#: The coarsest patch ``patch_size * 2**(num_scales - 1)`` may be at most ``COARSEST_PATCH_RATIO`` times the
#: image's longer side, or ``SMALL_IMAGE_PATCH_LIMIT`` pixels, whichever is larger. Beyond that the extra
#: scales are single padded patches that the border rule never keeps, while the kernels' scratch buffers
#: grow with the square of the patch side.
COARSEST_PATCH_RATIO: int = 2
SMALL_IMAGE_PATCH_LIMIT: int = 256

#: Label of each image's class token in the packed sequence's ``output_mask`` (a token of scale s has ``s + 1``).
CLASS_TOKEN: int = -1


def grid_shape(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Rows and columns of the patch grid that covers ``height x width`` (padding at bottom/right)."""
    return -(-height // patch_size), -(-width // patch_size)


def scale_sizes(patch_size: int, num_scales: int) -> list[int]:
    """Patch size of every scale: ``p * 2**s`` for s = 0 .. num_scales - 1."""
    return [patch_size * 2**scale for scale in range(num_scales)]
