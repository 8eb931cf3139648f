"""Serial twins of parallel numba kernels, for processes that must not start OpenMP threads."""

from __future__ import annotations

import types

from numba import njit


def serial_twin(kernel, name: str):
    """``kernel`` (a ``parallel=True`` numba function) compiled again without ``parallel``, named ``name``.

    Its ``prange`` then runs as ``range`` on the calling thread, without OpenMP: for one-thread
    processes such as data-loader workers, which may be forked after the parallel kernel ran (GNU
    OpenMP does not survive a fork). The new name gives it its own on-disk cache entry.
    """
    source = kernel.py_func
    twin = types.FunctionType(source.__code__, source.__globals__, name, source.__defaults__, source.__closure__)
    twin.__qualname__ = name
    twin.__doc__ = f"``{source.__name__}`` on the calling thread (see ``serial_twin``)."
    return njit(cache=True)(twin)
