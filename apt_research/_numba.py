"""Serial twins of parallel numba kernels, for processes that must not start OpenMP threads."""

from __future__ import annotations

import types

from numba import njit


def serial_twin(kernel, name: str, **serial_callees):
    """``kernel`` (a numba function) compiled again without ``parallel``, named ``name``.

    Its ``prange`` then runs as ``range`` on the calling thread, without OpenMP: for one-thread
    processes such as data-loader workers, which may be forked after the parallel kernel ran (GNU
    OpenMP does not survive a fork). The new name gives it its own on-disk cache entry.

    ``serial_callees``: global names the twin sees bound to other functions, e.g. a driver's parallel
    kernel to that kernel's twin. A compiled function that so much as refers to a parallel kernel starts
    numba's thread pool when it is loaded, which also resets OpenMP's thread count (``torch.get_num_threads``
    follows it): the twin of a driver must not refer to one.
    """
    source = kernel.py_func
    scope = dict(source.__globals__, **serial_callees) if serial_callees else source.__globals__
    twin = types.FunctionType(source.__code__, scope, name, source.__defaults__, source.__closure__)
    twin.__qualname__ = name
    twin.__doc__ = f"``{source.__name__}`` on the calling thread (see ``serial_twin``)."
    return njit(cache=True)(twin)
