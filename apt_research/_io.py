"""Atomic writes: every file goes to a temporary name beside its target, then is renamed onto it.

A process killed half way thus never leaves a truncated file under the real name.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
"""The mode of a file written here: what ``open`` would give it (``mkstemp`` alone makes it private, 0600)."""


@contextmanager
def atomic_path(target, *, keep_partial: bool = False):
    """Yield a temporary path beside ``target`` (same suffix); rename it onto ``target`` when the block ends.

    If the block raises, the temporary file is removed, or with ``keep_partial`` renamed onto ``target``
    all the same (for records worth keeping half written, such as an executed notebook).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-", suffix=target.suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
    except BaseException:
        if keep_partial and temporary.exists():
            os.chmod(temporary, FILE_MODE)
            os.replace(temporary, target)
        raise
    else:
        if temporary.exists():
            os.chmod(temporary, FILE_MODE)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
