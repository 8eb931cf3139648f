"""One sweep at a time per directory: an exclusive lock file naming its owner process.

The lock holds the owner's host name, pid and process start time. A lock whose owner is gone, or
whose pid now belongs to another process (a different start time: the pid was reused), is stale
and taken over; a lock from another host cannot be checked and is respected.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import psutil


class SweepLocked(RuntimeError):
    """Another sweep is writing to the same directory."""


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return float("nan")


def owner_token(pid: int | None = None) -> dict:
    """``host``, ``pid`` and ``started`` (process start time) of process ``pid`` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "started": _started(pid)}


def _holds(owner: dict) -> bool:
    """Whether the process a lock names still runs (on another host: assumed so)."""
    if owner.get("host") != socket.gethostname():
        return True
    started = _started(int(owner["pid"]))
    if started is None:
        return False
    if math.isnan(started):  # another user's process: its start time cannot be read, so the lock is respected
        return True
    return owner["started"] is not None and abs(started - float(owner["started"])) < 0.01


class DirectoryLock:
    """An exclusive lock file ``.sweep.lock`` in ``directory``; a stale lock is taken over."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".sweep.lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _holds(owner):
                    raise SweepLocked(
                        f"another sweep (pid {owner['pid']} on {owner['host']}) is writing to {self.path.parent}; "
                        f"wait for it or use --out"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as stream:
                json.dump(owner_token(), stream)
            return self
        raise SweepLocked(f"could not lock {self.path.parent}")

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and {"host", "pid", "started"} <= set(owner) else None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
