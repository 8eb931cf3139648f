#!/usr/bin/env python3
"""Set-up and the project's commands, on a machine with only Python 3 and pip.

    python3 run.py main     # the default ablation sweep on the bundled images: report and figures
    python3 run.py test     # the test suite (what CI runs)
    python3 run.py bench    # the benchmark suite (benchmarks/)
    python3 run.py lab      # JupyterLab on notebooks/ with the project's environment

Each creates (or reuses) the virtual environment ``.venv`` and installs what it
needs: torch 2.14.1 and the torchvision built for it, pinned, then the package in
editable mode with its test, models and docs extras. Installation is skipped while
``pyproject.toml`` is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = ROOT / ".stamp-install"
# One pin for the whole project. timm (the models extra) imports torchvision, and a torchvision wheel
# loads only with the torch it was built against: the registry's torch 2.14.1 with its torchvision
# 0.29.1 (CUDA builds, which run on a CPU-only machine too). A CPU-only torch build (2.13.0+cpu) cannot
# load the registry's torchvision. torchvision is here only because timm needs it.
TORCH = ("torch==2.14.1", "torchvision==0.29.1")


def ensure_environment() -> None:
    if not PYTHON.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + " ".join(TORCH).encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("installing dependencies into .venv (first run only)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + [*TORCH], check=True)
    subprocess.run(pip + [*TORCH, "-e", f"{ROOT}[test,models,docs]"], check=True)
    subprocess.run([str(PYTHON), "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"], check=True,
                   stdout=subprocess.DEVNULL)
    STAMP.write_text(wanted)


def run(*args: str) -> int:
    return subprocess.call([str(PYTHON), *args], cwd=ROOT)


def main(argv: list[str]) -> int:
    commands = ("main", "test", "bench", "lab")
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    ensure_environment()
    command, rest = argv[0], argv[1:]
    if command == "test":  # two xdist workers that take work from each other (docs/testing.md); a later -n overrides
        return run("-m", "pytest", "-n", "2", "--dist", "worksteal", *rest)
    if command == "bench":
        return run("-m", "benchmarks.run", *rest)
    if command == "lab":
        return run("-m", "jupyterlab", "notebooks", *rest)
    return run("-m", "apt_research.cli", "sweep", "ablations/default.yaml", "--resume", "--jobs", "2", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
