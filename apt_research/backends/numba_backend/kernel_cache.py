"""How the numba kernels are compiled and cached, so that no state on disk can crash a process.

numba's own on-disk cache (``cache=True``) lets every process add entries to one shared index. A function
that calls a ``parallel=True`` function embeds the callee's object code, and the names of the generated
parallel regions come from per-process object ids and counters: entries written by two processes can use
one symbol name for two different functions, and the process that loads both jumps into the wrong one
(a segmentation fault; numba issues 4807, 8578 and 10128). So here:

* **One writer, one complete build.** The first process that needs a kernel, holding an inter-process file
  lock, compiles every kernel of ``KERNEL_MODULES`` for every signature it declares, in one fixed order,
  into a fresh temporary folder; it writes a manifest (every file's SHA-256) and renames the folder into
  place. All code in a published folder therefore comes from one process.
* **A published folder is never written again.** Every other process only loads from it, per signature on
  first use. A signature that is not in the folder is refused with an error, never compiled beside code
  loaded from disk; ``kernel`` declares the signatures and ``tests/backends/test_kernel_cache.py`` calls every path.
* **The folder's name is its key**: the SHA-256 of the kernel modules' sources and of the modules whose
  constants they freeze, numba's, llvmlite's, numpy's and Python's versions, the CPU (name and features) and
  the code-generation settings. A cache of another version, CPU or source is simply another folder.
* **A damaged folder is ignored**: one whose manifest does not match its files (a half-copied or edited
  cache) is moved aside and rebuilt. A half-written build never has the published name.
* **Where nothing can be written** (a read-only location), every kernel is compiled in memory, in this
  process only, with a warning.

The thread count is not part of the key: compiled parallel code reads it at run time (numba 0.56 fixed
issue 7518), and ``tests/backends/test_kernel_cache.py`` loads one build under several ``NUMBA_NUM_THREADS``.

Location: ``$APT_RESEARCH_KERNEL_CACHE`` if set (``off`` compiles in memory), else
``$NUMBA_CACHE_DIR/apt_research`` if numba's cache folder is set, else ``apt_research/__pycache__/kernels``
beside this file, else the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)``/apt-research/kernels``.
Nothing there ever needs deleting; any of it may be deleted while no process uses it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import platform
import shutil
import sys
import threading
import types
import uuid
import warnings
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm
import numba
import numpy as np
from numba import njit
from filelock import FileLock, Timeout
from numba.core import caching, compiler, config, sigutils
from ...errors import KernelCacheError

KERNEL_MODULES = ("apt_research.backends.numba_backend.entropy_kernels", "apt_research.backends.numba_backend.grouping_kernels")
# Sources whose text decides the compiled code: the kernel modules, this file, and the modules whose
# constants the kernels freeze (every ``from .x import`` of a kernel module; tests/backends/test_kernel_cache.py checks).
SOURCES = ("backends/numba_backend/kernel_cache.py", "backends/numba_backend/entropy_kernels.py",
           "backends/numba_backend/grouping_kernels.py", "backends/numba_backend/arguments.py", "contract.py")
"""Paths under the package folder (``PACKAGE``)."""
PACKAGE = Path(__file__).resolve().parents[2]
MANIFEST = "manifest.json"
MARKER = ".apt-research-kernel-cache"
FORMAT = 1
LOCK_TIMEOUT_S = 900.0
_RUN_TIME_SETTINGS = ("NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR", "NUMBA_THREADING_LAYER")
_log = logging.getLogger(__name__)


def kernel(*signatures, **options):
    """``numba.njit(**options)`` for a kernel called from Python, compiled and cached by this module.

    ``signatures``: every tuple of argument types (numba types) it is called with from Python; the build
    compiles each, and a process loading the build refuses any other. Functions only called from other
    kernels stay plain ``njit``: their code is compiled into their callers'.
    """
    def decorate(function):
        return _register(njit(**options)(function), signatures)

    return decorate


def serial_twin(kernel_function, name: str, **serial_callees):
    """``kernel_function`` (a ``kernel``) compiled again without ``parallel``, named ``name``, for the same
    signatures.

    Its ``prange`` then runs as ``range`` on the calling thread, without OpenMP: for one-thread
    processes such as data-loader workers, which may be forked after the parallel kernel ran (GNU
    OpenMP does not survive a fork).

    ``serial_callees``: global names the twin sees bound to other functions, e.g. a driver's parallel
    kernel to that kernel's twin. A compiled function that so much as refers to a parallel kernel starts
    numba's thread pool when it is loaded, which also resets OpenMP's thread count (``torch.get_num_threads``
    follows it): the twin of a driver must not refer to one.
    """
    source = kernel_function.py_func
    scope = dict(source.__globals__, **serial_callees) if serial_callees else source.__globals__
    twin = types.FunctionType(source.__code__, scope, name, source.__defaults__, source.__closure__)
    twin.__qualname__ = name
    twin.__doc__ = f"``{source.__name__}`` on the calling thread (see ``serial_twin``)."
    signatures = getattr(kernel_function._cache, "signatures", None)  # None: a function only kernels call
    return njit(twin) if signatures is None else _register(njit(twin), signatures)


def ensure_kernels() -> str:
    """Make the kernels callable in this process (once; cheap afterwards) and return the mode: ``"load"`` (from
    a published build), ``"built"`` (this process compiled and published the build) or ``"memory"``."""
    if _STATE.mode is None:
        with _STATE.lock:
            if _STATE.mode is None:
                for name in KERNEL_MODULES:
                    importlib.import_module(name)
                _open()
    return _STATE.mode


def cache_key() -> str:
    """The published folder's name for this process: a hash of everything that decides the compiled code."""
    return hashlib.sha256(json.dumps(_key_parts(), sort_keys=True).encode()).hexdigest()[:32]


def cache_root() -> Path | None:
    """The folder holding the builds (see the module's docstring), or ``None`` where caching is off."""
    chosen = os.environ.get("APT_RESEARCH_KERNEL_CACHE", "")
    if chosen.strip().lower() in ("off", "0", "none", "false"):
        return None
    if chosen:
        return Path(chosen).expanduser()
    if config.CACHE_DIR:
        return Path(config.CACHE_DIR).expanduser() / "apt_research"
    return PACKAGE / "__pycache__" / "kernels"


class _State:
    def __init__(self):
        self.lock = threading.RLock()
        self.mode: str | None = None  # None (not opened), "build", "load", "built" or "memory"
        self.folder: Path | None = None
        self.stamp = ""
        self.kernels: list = []  # every registered dispatcher, in definition order


_STATE = _State()


def _register(dispatcher, signatures):
    dispatcher._cache = _KernelCache(dispatcher.py_func, tuple(signatures))
    _STATE.kernels.append(dispatcher)
    return dispatcher


class _KernelCache(caching._Cache):
    """numba's per-dispatcher cache hook (``Dispatcher.compile`` asks ``load_overload`` before compiling and
    gives the result to ``save_overload`` after), reading and writing only where ``_STATE.mode`` allows."""

    def __init__(self, py_func, signatures):
        self._py_func = py_func
        self.signatures = signatures
        self._files = None

    @property
    def cache_path(self):
        return str(_STATE.folder)

    def _index(self):
        if self._files is None or self._files._cache_path != str(_STATE.folder):
            base = f"{self._py_func.__module__.rsplit('.', 1)[-1]}.{self._py_func.__qualname__}"
            self._files = caching.IndexDataCacheFile(str(_STATE.folder), base, _STATE.stamp)
        return self._files

    def load_overload(self, sig, target_context):
        mode = _STATE.mode
        if mode is None:
            raise KernelCacheError(f"{self._py_func.__qualname__} was called before ensure_kernels()")
        if mode in ("build", "memory"):
            return None  # compile (in "build": into the folder being built)
        target_context.refresh()
        data = self._index().load(_index_key(sig, target_context.codegen()))
        if data is None:
            raise KernelCacheError(
                f"{self._py_func.__qualname__} has no compiled version for argument types {sig}; its declared "
                f"signatures are {[tuple(map(str, s)) for s in self.signatures]} (build {_STATE.folder})")
        return compiler.CompileResult._rebuild(target_context, *data)

    def save_overload(self, sig, data):
        if _STATE.mode != "build":
            return
        if any(not lifted.can_cache for lifted in data.lifted) or data.library.has_dynamic_globals:
            raise KernelCacheError(f"{self._py_func.__qualname__} cannot be cached (lifted code or dynamic globals)")
        self._index().save(_index_key(sig, data.codegen), data._reduce())

    def enable(self):
        pass

    def disable(self):
        pass

    def flush(self):
        pass


def _index_key(sig, codegen):
    """The index's key: the argument types (a declared signature's or a call's, alike) and the target machine."""
    arguments, _ = sigutils.normalize_signature(sig)
    return tuple(arguments), codegen.magic_tuple()


def _key_parts() -> dict:
    sources = hashlib.sha256()
    for name in SOURCES:
        sources.update(name.encode() + b"\0" + (PACKAGE / name).read_bytes() + b"\0")
    return {
        "format": FORMAT,
        "sources": sources.hexdigest(),
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "numpy": np.__version__,
        "python": sys.version,
        "machine": platform.machine(),
        "triple": llvm.get_process_triple(),
        "cpu": config.CPU_NAME or llvm.get_host_cpu_name(),
        "features": config.CPU_FEATURES or llvm.get_host_cpu_features().flatten(),
        # numba's settings from the environment (optimisation level, bounds checks, debug info ...), bar the
        # ones read at run time only.
        "settings": {name: value for name, value in sorted(os.environ.items())
                     if name.startswith("NUMBA_") and name not in _RUN_TIME_SETTINGS},
    }


def _file_digests(folder: Path) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir()) if path.name != MANIFEST}


def _verified(folder: Path, key: str) -> bool:
    """Whether ``folder`` is a complete build for ``key``: its manifest names the key and every file's hash."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return (isinstance(manifest, dict) and manifest.get("key") == key
                and manifest.get("files") == _file_digests(folder))
    except (OSError, ValueError):
        return False


def _open() -> None:
    """Choose this process's mode: load a published build, build and publish one, or compile in memory."""
    root = cache_root()
    if root is None:
        _use_memory(None)
        return
    key = cache_key()
    folder = root / key
    _STATE.stamp = key
    if folder.is_dir() and not folder.is_symlink() and _verified(folder, key):
        _STATE.folder, _STATE.mode = folder, "load"
        return
    try:
        _make_root(root)
        lock = FileLock(str(root / f"{key}.lock"))
        try:
            lock.acquire(timeout=1.0)
        except Timeout:
            _log.warning("waiting for another process to compile the numba kernels into %s", root)
            lock.acquire(timeout=LOCK_TIMEOUT_S)
    except (OSError, Timeout) as error:
        _use_memory(f"{root} cannot be used ({error})")
        return
    try:
        if folder.is_dir() and not folder.is_symlink() and _verified(folder, key):
            _STATE.folder, _STATE.mode = folder, "load"
            return
        _set_aside(root, folder, key)
        _build(root, folder, key)
    finally:
        lock.release()


def _make_root(root: Path) -> None:
    """Create the cache root, marked as ours, or check that an existing one is ours (marked) or empty."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    if not marker.is_file():
        if any(root.iterdir()):
            raise OSError(f"{root} holds files apt-research did not make (no {MARKER} file)")
        marker.write_text("apt-research kernel cache: any folder here may be deleted while no process runs\n")


def _set_aside(root: Path, folder: Path, key: str) -> None:
    """Move away a damaged build of ``key`` and remove the leftovers of its builds that were interrupted or set
    aside before (the caller holds the key's lock, so no build of this key is under way)."""
    for path in root.iterdir():
        if path.name.startswith(f"{key}.tmp-") or path.name.startswith(f"{key}.bad-"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
    if folder.is_symlink() or folder.exists():
        folder.rename(root / f"{key}.bad-{uuid.uuid4().hex[:8]}")


def _build(root: Path, folder: Path, key: str) -> None:
    """Compile every kernel for every declared signature into a new folder, then publish it by renaming."""
    building = root / f"{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    building.mkdir()
    _STATE.folder, _STATE.stamp, _STATE.mode = building, key, "build"
    _log.warning("compiling the numba kernels into %s (once for this version and CPU, about a minute)", folder)
    try:
        _compile_all()
        manifest = {"key": key, "parts": _key_parts(), "pid": os.getpid(), "files": _file_digests(building)}
        (building / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.rename(building, folder)
    except BaseException:
        _STATE.mode = "memory"  # what compiled so far stays usable in this process
        shutil.rmtree(building, ignore_errors=True)
        raise
    _STATE.folder, _STATE.mode = folder, "built"


def _compile_all() -> None:
    for dispatcher in _STATE.kernels:
        for signature in dispatcher._cache.signatures:
            dispatcher.compile(signature)


def _use_memory(reason: str | None) -> None:
    if reason is not None:
        warnings.warn(f"apt-research: {reason}; the numba kernels are compiled in memory in every process "
                      "(set APT_RESEARCH_KERNEL_CACHE to a writable folder to keep them)", RuntimeWarning,
                      stacklevel=3)
    _STATE.folder, _STATE.mode = None, "memory"
