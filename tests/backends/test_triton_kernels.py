"""The CUDA kernels checked on a machine without a GPU.

1. ``tests/backends/interpreted`` runs the Triton kernels through Triton's interpreter (``TRITON_INTERPRET=1``, CPU
   tensors) against the CPU path: exact equality of the fused forward, the reference entropies.
2. Every kernel specialisation those runs launched is then compiled for an H100 (sm_90) down to a cubin
   with the ``ptxas`` that ships with Triton, so that code the interpreter accepts but the compiler would
   reject cannot land unnoticed. ``tests/crosscutting/test_cuda.py`` runs the same paths on a real GPU where one exists.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

triton = pytest.importorskip("triton", reason="triton is installed with the test extra; needed for these checks")

HERE = Path(__file__).resolve().parent


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


# Triton's interpreter before 3.7 turns 1-element arrays into loop bounds with int(), an error from numpy 2.4 on.
if _version(triton.__version__) < (3, 7) and _version(np.__version__) >= (2, 4):
    pytest.skip(f"Triton {triton.__version__}'s interpreter does not run with numpy {np.__version__} "
                "(fixed in Triton 3.7)", allow_module_level=True)


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    record = tmp_path_factory.mktemp("triton") / "launches.json"
    # The interpreted tests import the suite's helpers (images.py) from tests/, the suite's root.
    helpers = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "APT_TRITON_RECORD": str(record), "PYTHONPATH": helpers}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "interpreted"],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
    return json.loads(record.read_text())


def test_kernels_under_the_interpreter_equal_the_cpu_path(launches):
    assert {launch["kernel"] for launch in launches} == {"_entropy_kernel", "_select_kernel", "_group_kernel"}


def test_every_launched_specialisation_compiles_for_h100(launches):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    compiled = set()
    for launch in launches:
        key = json.dumps([launch["kernel"], launch["signature"], launch["constexprs"], launch["options"]],
                         sort_keys=True)
        if key in compiled:
            continue
        compiled.add(key)
        kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
        source = ASTSource(kernel, launch["signature"], constexprs=launch["constexprs"])
        binary = triton.compile(source, target=target, options=launch["options"])
        assert binary.asm["cubin"], launch
    assert len(compiled) >= 10
