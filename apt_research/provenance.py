"""What a run ran on: package versions, git commit, Python, machine and device."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("apt-research", "torch", "numpy", "numba", "einops", "pandas", "scikit-image", "papermill", "seaborn",
            "matplotlib", "timm")


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def provenance(device: str = "cpu") -> dict:
    """Package versions, git commit, Python, machine and device of this process.

    Parameters
    ----------
    device : str
        The torch device the run uses; a CUDA device is also named by its model.

    Returns
    -------
    dict
        JSON-ready provenance (``packages``, ``git_commit``, ``python``, ``platform``, ``device``, ...).
    """
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    info = {
        "packages": packages,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info
