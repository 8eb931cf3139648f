"""Start-up: a fresh process's import and first tokenizer call, on an empty kernel cache and on a built one."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..report import Column, Result, Strong, Table

NAME, TITLE = "startup", "Start-up: import and first call, cold and warm kernel cache"

SCRIPT = """
import time
start = time.perf_counter()
import torch
import apt_research as apt
imported = time.perf_counter()
tokenizer = apt.PatchTokenizer(3, 16, 224, [5.75, 4.0], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
tokenizer(torch.rand(1, 3, 224, 224) * 2 - 1)
called = time.perf_counter()
from apt_research.backends.numba_backend.kernel_cache import ensure_kernels
print(imported - start, called - imported, called - start, ensure_kernels())
"""


def fresh_process(cache: Path) -> list[str]:
    """``SCRIPT`` in a fresh process on the kernel cache ``cache``: its four printed fields."""
    env = {**os.environ, "APT_RESEARCH_KERNEL_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()


def run(warm_repeats=5) -> Result:
    """A fresh process's ``import apt_research`` and first tokenizer call: on an empty kernel cache (the one
    build of every kernel, ``backends.numba_backend.kernel_cache``), then with the build on disk (the median
    of ``warm_repeats``)."""
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "kernels"
        cold = fresh_process(cache)
        warm = [fresh_process(cache) for _ in range(warm_repeats)]
    if cold[3] != "built" or any(run[3] != "load" for run in warm):
        raise RuntimeError(f"unexpected kernel cache modes: cold {cold[3]}, warm {[run[3] for run in warm]}")
    median = sorted(warm, key=lambda run: float(run[2]))[warm_repeats // 2]
    figures = {"cold_import_s": float(cold[0]), "cold_first_call_s": float(cold[1]), "cold_total_s": float(cold[2]),
               "warm_import_s": float(median[0]), "warm_first_call_s": float(median[1]),
               "warm_total_s": float(median[2]), "warm_totals_s": [float(run[2]) for run in warm]}
    rows = [
        {"what": "empty kernel cache (compiles every kernel once)", "import": f"{figures['cold_import_s']:.2f}",
         "call": f"{figures['cold_first_call_s']:.1f}", "total": f"{figures['cold_total_s']:.1f}"},
        {"what": f"kernel cache on disk (median of {warm_repeats})", "import": f"{figures['warm_import_s']:.2f}",
         "call": f"{figures['warm_first_call_s']:.2f}", "total": Strong(f"{figures['warm_total_s']:.2f}")},
    ]
    return Result(NAME, TITLE, figures, [Table(rows, [
        Column("fresh process, one 224 image, 3 scales", "what"),
        Column("import torch + apt_research (s)", "import"),
        Column("first tokenizer call (s)", "call"),
        Column("total (s)", "total"),
    ])])
