import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from filelock import FileLock

from images import skimage_batch  # noqa: F401  (tests import it from here)
from kernel_steps import FIRST_STEPS, run_kernel_steps

BACKENDS = ["numba", "torch"]

# tests/backends/interpreted runs only under TRITON_INTERPRET=1, started by tests/backends/test_triton_kernels.py.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["backends/interpreted"]


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """The suite's own kernel cache, new for every run of the suite (as in CI): built by ``FIRST_STEPS``, all
    started at once on the empty folder; every later process of the suite (notebooks, workers) loads it.
    Returns the folder and the steps' results (``None`` in a suite that a test of this suite started: it uses
    the outer suite's cache).

    Under pytest-xdist (``-n 2``, as ``run.py test`` runs the suite) the workers share one cache: the first
    to take the lock runs the steps and writes their results beside the cache; the others wait, then read them.
    """
    if os.environ.get("APT_RESEARCH_SUITE_KERNEL_CACHE"):
        return os.environ["APT_RESEARCH_SUITE_KERNEL_CACHE"], None
    # an xdist worker (PYTEST_XDIST_WORKER set) shares its session folder's parent with the other workers
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    cache, record = root / "kernels" / "cache", root / "kernels" / "first-steps.json"
    os.environ["APT_RESEARCH_KERNEL_CACHE"] = os.environ["APT_RESEARCH_SUITE_KERNEL_CACHE"] = str(cache)
    (root / "kernels").mkdir(exist_ok=True)
    with FileLock(str(root / "kernels.lock")):
        if not record.exists():
            with ThreadPoolExecutor(len(FIRST_STEPS)) as pool:
                done = pool.map(lambda job: run_kernel_steps(cache, *job[0], threads=job[1]), FIRST_STEPS)
                record.write_text(json.dumps([[r.args, r.returncode, r.stdout, r.stderr] for r in done]))
    results = [subprocess.CompletedProcess(*fields) for fields in json.loads(record.read_text())]
    return cache, results


@pytest.fixture(scope="session")
def real_images():
    return skimage_batch


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
