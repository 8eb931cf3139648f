import os

import pytest
import torch

from images import skimage_batch  # noqa: F401  (tests import it from here)

BACKENDS = ["numba", "torch"]

# tests/interpreted runs only under TRITON_INTERPRET=1, started by tests/test_triton_kernels.py.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["interpreted"]


@pytest.fixture(scope="session")
def real_images():
    return skimage_batch


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
