"""The numba kernel cache (``apt_research/backends/numba_backend/kernel_cache.py``): no state on disk can crash a process.

Every step runs in a fresh process (``tests/kernel_steps.py``), as a user's commands, notebooks, sweeps and
data-loader workers do, on the suite's own kernel cache (``conftest.kernel_cache``: new for every run of the
suite, first built by three processes started at once). With numba's own ``cache=True`` (0.68.1) the same
steps crashed: the issue 16 sequence below died with SIGSEGV on its second forward.
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import apt_research
from apt_research.backends.numba_backend import kernel_cache as _numba
from kernel_steps import FIRST_STEPS, run_kernel_steps

PACKAGE = Path(apt_research.__file__).resolve().parent
ROUNDS = int(os.environ.get("APT_KERNEL_CACHE_ROUNDS", "8"))  # each step first once, and one more


def check(result, *steps) -> list[str]:
    """The modes a step process printed, after checking it exited normally (a signal is named)."""
    if result.returncode < 0:
        pytest.fail(f"steps {steps} killed by {signal.Signals(-result.returncode).name}\n{result.stderr[-3000:]}")
    assert result.returncode == 0, f"steps {steps} failed:\n{result.stderr[-3000:]}"
    return result.stdout.split()


def snapshot(folder: Path) -> dict:
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir()}


def builds(cache: Path) -> list[Path]:
    return [path for path in cache.iterdir() if path.is_dir() and "." not in path.name]


def test_processes_started_at_once_on_an_empty_cache_build_it_once(kernel_cache):
    """The suite's own cache (``conftest.kernel_cache``): three processes started at once on the empty folder,
    each with its own thread count and entry points; one builds, the others wait for it and load."""
    cache, results = kernel_cache
    modes = [check(result, *steps) for result, (steps, _) in zip(results, FIRST_STEPS)]
    assert sorted(mode[-1] for mode in modes).count("built") == 1, modes
    assert len(builds(cache)) == 1


def test_issue_16_sequence_in_fresh_processes(kernel_cache):
    """Maps then forward, forward, forward, each in a fresh process after the concurrent start: on numba's own
    ``cache=True`` (0.68.1) this sequence died with SIGSEGV at the second forward."""
    cache, _ = kernel_cache
    modes = [check(run_kernel_steps(cache, step), step) for step in ("loader", "forward", "forward", "groups")]
    assert [mode[-1] for mode in modes] == ["load"] * 4


def test_rounds_of_fresh_processes_load_one_build_and_never_write_it(kernel_cache):
    cache, _ = kernel_cache
    (build,) = builds(cache)
    before = snapshot(build)
    steps = ["loader", "forward", "groups", "serial", "uint8", "histograms", "laplacian"]
    for round_ in range(ROUNDS):
        jobs = [(steps[round_ % len(steps)], steps[(round_ + 3) % len(steps)]), (steps[(round_ + 1) % len(steps)],)]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda job: run_kernel_steps(cache, *job[0], threads=job[1]),
                                    [(jobs[0], 1 + round_ % 2), (jobs[1], 2 - round_ % 2)]))
        for result, job in zip(results, jobs):
            assert set(check(result, *job)) == {"load"}
    assert snapshot(build) == before
    assert builds(cache) == [build]


def test_two_checkouts_share_one_build(kernel_cache, tmp_path):
    """Two copies of the package (other paths, other file times) load the same build: the key is the content."""
    for name in ("a", "b"):
        shutil.copytree(PACKAGE, tmp_path / name / "apt_research", ignore=shutil.ignore_patterns("__pycache__"))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda name: run_kernel_steps(kernel_cache[0], "forward", pythonpath=tmp_path / name),
                                "ab"))
    for result in results:
        assert check(result, "forward") == ["load"]
    assert len(builds(kernel_cache[0])) == 1


def test_key_follows_the_sources(tmp_path):
    """A changed kernel or constant makes another key (so another build); a copy elsewhere keeps the key."""
    def key(root: Path) -> str:
        code = "from apt_research.backends.numba_backend.kernel_cache import cache_key; print(cache_key())"
        return subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(root)},
                              capture_output=True, text=True, check=True, cwd=root).stdout.strip()

    shutil.copytree(PACKAGE, tmp_path / "copy" / "apt_research", ignore=shutil.ignore_patterns("__pycache__"))
    assert key(tmp_path / "copy") == _numba.cache_key()
    contract = tmp_path / "copy" / "apt_research" / "contract.py"
    contract.write_text(contract.read_text() + "\n# edited\n")
    assert key(tmp_path / "copy") != _numba.cache_key()


def test_every_module_the_kernels_import_is_hashed():
    """The kernel modules' imports from the package (their constants and helpers are frozen into the compiled
    code) are all in the cache key's sources."""
    for name in _numba.KERNEL_MODULES:
        path = Path(*name.split(".")[1:]).with_suffix(".py")
        tree = ast.parse((PACKAGE / path).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                folder = path.parent
                for _ in range(node.level - 1):
                    folder = folder.parent
                imported.add((folder / Path(*node.module.split("."))).with_suffix(".py").as_posix())
        assert imported <= set(_numba.SOURCES), imported - set(_numba.SOURCES)
        assert path.as_posix() in _numba.SOURCES


def test_unwritable_location_compiles_in_memory_with_a_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_kernel_steps(blocker / "kernels", "histograms")
    assert check(result, "histograms") == ["memory"]
    assert "cannot be used" in result.stderr and "APT_RESEARCH_KERNEL_CACHE" in result.stderr


def test_a_folder_that_is_not_ours_is_not_used(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_kernel_steps(tmp_path, "histograms")
    assert check(result, "histograms") == ["memory"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_a_damaged_build_is_set_aside_and_rebuilt(tmp_path, monkeypatch):
    """A build whose files do not match its manifest (half copied, edited) is never loaded."""
    key = _numba.cache_key()
    (tmp_path / "elsewhere").mkdir()
    for damage in ("truncated", "no manifest", "symlink"):
        root = tmp_path / damage.replace(" ", "-")
        root.mkdir()
        (root / _numba.MARKER).write_text("")
        folder = root / key
        if damage == "symlink":
            folder.symlink_to(tmp_path / "elsewhere")
        else:
            folder.mkdir()
            (folder / "entropy_flat.nbc").write_bytes(b"x" * 100)
            if damage == "truncated":
                (folder / _numba.MANIFEST).write_text(
                    '{"key": "%s", "files": {"entropy_flat.nbc": "%s"}}' % (key, "0" * 64))
        built = []
        monkeypatch.setenv("APT_RESEARCH_KERNEL_CACHE", str(root))
        monkeypatch.setattr(_numba, "_STATE", _numba._State())
        monkeypatch.setattr(_numba, "_build", lambda root, folder, key: built.append(folder))
        _numba._open()
        assert built == [folder]
        assert [path.name for path in root.iterdir() if path.name.startswith(f"{key}.bad-")], damage
        assert (tmp_path / "elsewhere").is_dir() and not list((tmp_path / "elsewhere").iterdir())


def test_undeclared_argument_types_are_refused_not_compiled():
    """A process that loads a build never compiles beside it: other argument types are an error."""
    from apt_research.backends.numba_backend.entropy_kernels import histograms_kernel

    if _numba.ensure_kernels() == "memory":
        pytest.skip("kernel cache off (APT_RESEARCH_KERNEL_CACHE=off)")
    out = np.zeros((1, 1, 1, 8), dtype=np.int32)
    with pytest.raises(_numba.KernelCacheError, match="no compiled version"):
        histograms_kernel(np.zeros((1, 3, 16, 16), dtype=np.float64), 8, 16, 1, 1, out)


def test_the_cache_location_follows_the_settings(monkeypatch, tmp_path):
    monkeypatch.delenv("APT_RESEARCH_KERNEL_CACHE", raising=False)
    monkeypatch.setattr(_numba.config, "CACHE_DIR", "")
    assert _numba.cache_root() == PACKAGE / "__pycache__" / "kernels"
    monkeypatch.setattr(_numba.config, "CACHE_DIR", str(tmp_path))
    assert _numba.cache_root() == tmp_path / "apt_research"
    monkeypatch.setenv("APT_RESEARCH_KERNEL_CACHE", str(tmp_path / "mine"))
    assert _numba.cache_root() == tmp_path / "mine"
    monkeypatch.setenv("APT_RESEARCH_KERNEL_CACHE", "off")
    assert _numba.cache_root() is None
