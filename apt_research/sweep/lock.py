"""One sweep at a time per directory: an exclusive lock file naming its owner process.

The lock holds the owner's host name, pid and process start time. A lock whose owner is gone, or
whose pid now belongs to another process (a different start time: the pid was reused), is stale
and taken over; a lock from another host cannot be checked and is respected.

The owner also holds an exclusive ``flock`` on the file for the sweep's life, so two processes that
both find a stale lock cannot both take it over: the second finds the file locked. At the end the
file is removed only while it is still this owner's (same file, same token).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
from pathlib import Path

import psutil

from .._io import check_no_links, make_dirs, remove_file
from ..errors import SweepLocked


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
        self._handle: int | None = None
        self._token: dict | None = None

    def __enter__(self):
        make_dirs(self.path.parent)
        for _ in range(3):
            handle = os.open(check_no_links(self.path), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                self._refuse(self._owner() or {"pid": "unknown", "host": socket.gethostname()})
            if not self._is_current(handle):  # removed by its owner between our open and our flock: again
                os.close(handle)
                continue
            owner = self._owner()
            if owner is not None and _holds(owner):  # a lock from another host, or without its flock
                os.close(handle)
                self._refuse(owner)
            self._token = owner_token()
            os.ftruncate(handle, 0)
            os.pwrite(handle, json.dumps(self._token).encode(), 0)
            self._handle = handle
            return self
        raise SweepLocked(f"could not lock {self.path.parent}: its lock file keeps being replaced")

    def _refuse(self, owner: dict):
        raise SweepLocked(f"another sweep (pid {owner['pid']} on {owner['host']}) is writing to {self.path.parent}; "
                          f"wait for it or use --out")

    def _is_current(self, handle: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            return False

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and {"host", "pid", "started"} <= set(owner) else None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        if self._handle is None:
            return
        try:
            if self._is_current(self._handle) and self._owner() == self._token:
                remove_file(self.path)
        finally:
            os.close(self._handle)  # releases the flock
            self._handle = None
