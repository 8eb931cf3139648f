"""One sweep at a time per directory: an exclusive lock file."""

from __future__ import annotations

import os
from pathlib import Path


class SweepLocked(RuntimeError):
    """Another sweep is writing to the same directory."""


class DirectoryLock:
    """An exclusive lock file holding the owner's pid; a lock left by a dead process is taken over."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".sweep.lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise SweepLocked(
                        f"another sweep (pid {owner}) is writing to {self.path.parent}; wait for it or use --out"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as stream:
                stream.write(str(os.getpid()))
            return self
        raise SweepLocked(f"could not lock {self.path.parent}")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
