"""Run only under ``TRITON_INTERPRET=1`` (``tests/backends/test_triton_kernels.py`` starts this directory so).

The Triton kernels then run on CPU tensors through Triton's interpreter. With ``APT_TRITON_RECORD`` set,
every launch's argument types and compile-time constants are written to that JSON file, so that the
outer test compiles exactly these specialisations for a GPU.
"""

import json
import os
from pathlib import Path

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run through tests/backends/test_triton_kernels.py (needs TRITON_INTERPRET=1)", allow_module_level=True)

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

LAUNCHES = []
_run = InterpretedFunction.run


def _type(value):
    if isinstance(value, torch.Tensor):
        return "*" + {torch.float32: "fp32", torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64",
                      torch.bool: "i1", torch.float16: "fp16", torch.bfloat16: "bf16"}[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {value!r}")


def _recording_run(self, *args, grid, warmup, **kwargs):
    names = self.arg_names
    values = dict(zip(names, args))
    options = {key: kwargs.pop(key) for key in ("num_warps", "enable_fp_fusion", "num_stages") if key in kwargs}
    values.update(kwargs)
    constexprs = {name: value for name, value in values.items() if name in kwargs}
    signature = {name: "constexpr" if name in constexprs else _type(value) for name, value in values.items()}
    LAUNCHES.append({"kernel": self.fn.__name__, "module": self.fn.__module__, "signature": signature,
                     "constexprs": constexprs, "options": options})
    return _run(self, *args, grid=grid, warmup=warmup, **kwargs, **options)


InterpretedFunction.run = _recording_run


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("APT_TRITON_RECORD")
    if path:
        unique = {json.dumps(launch, sort_keys=True) for launch in LAUNCHES}
        Path(path).write_text(json.dumps([json.loads(item) for item in sorted(unique)], indent=1))
