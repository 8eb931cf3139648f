"""One use of the numba kernels per process, for tests/backends/test_kernel_cache.py: ``python kernel_steps.py STEP``.

Each step is an entry point of the library that reaches a different kernel (or the same one with other
argument types); it prints the kernel cache's mode. The steps of the crash in issue 16 come first.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

import apt_research as apt
from apt_research.backends.numba_backend.kernel_cache import ensure_kernels

KERNEL_STEPS = Path(__file__).resolve()


def run_kernel_steps(cache: Path, *steps: str, threads: int | None = None, pythonpath: Path | None = None):
    """``kernel_steps.py STEPS`` in a fresh process on the kernel cache ``cache`` (and numba's own cache folder:
    before the kernel cache, numba's ``cache=True`` wrote there, and crashed)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NUMBA_")}
    env["APT_RESEARCH_KERNEL_CACHE"] = env["NUMBA_CACHE_DIR"] = str(cache)
    if threads is not None:
        env["NUMBA_NUM_THREADS"] = str(threads)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, str(KERNEL_STEPS), *steps], env=env, capture_output=True, text=True,
                          timeout=900, cwd=KERNEL_STEPS.parent)


# The first steps on the suite's empty kernel cache: three processes at once, as a sweep with --jobs 2 and a
# notebook start, each with its own thread count and entry points (tests/backends/test_kernel_cache.py checks them).
FIRST_STEPS = [(("loader",), 1), (("forward", "groups"), 2), (("serial", "uint8"), None)]


def tokenizer():
    return apt.PatchTokenizer(num_scales=3, base_patch_size=16, image_size=224, thresholds=[6.0, 5.0],
                              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def step(name: str) -> None:
    generator = torch.Generator().manual_seed(len(name))
    images = torch.rand(4, 3, 224, 224, generator=generator)
    if name == "loader":  # the data-loader path: maps first, then the forward with them
        model = tokenizer()
        model(images, importance_maps=model.compute_importance_maps(images))
    elif name == "forward":  # the fused kernel
        tokenizer()(images)
    elif name == "groups":  # masks, then the grouping kernel alone
        model = tokenizer()
        masks = model.construct_masks(model.compute_importance_maps(images))[0]
        apt.patch_groups(images, masks, 16)
    elif name == "serial":  # one thread: the serial twins
        torch.set_num_threads(1)
        model = tokenizer()
        model(images)
        model(images, importance_maps=model.compute_importance_maps(images))
    elif name == "uint8":  # decoded images: uint8, channels-last, one at a time
        pixels = (images[:1] * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        apt.compute_patch_entropy_batched(pixels, 16, 3, backend="numba")
    elif name == "histograms":  # the histogram kernel alone (the cheapest to compile)
        pixels = (images[:1] * 255).to(torch.uint8)
        apt.patch_histograms(pixels, 16, 256, backend="numba")
        apt.patch_histograms(images * 255, 32, 64, backend="numba")
    elif name == "laplacian":  # another scorer: maps by torch, grouping by numba
        model = apt.PatchTokenizer(num_scales=2, base_patch_size=16, image_size=224, thresholds=[0.04],
                                   method="laplacian")
        model(images)
    else:
        raise SystemExit(f"unknown step {name!r}")
    print(ensure_kernels())


if __name__ == "__main__":
    for name in sys.argv[1:]:
        step(name)
