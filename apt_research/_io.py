"""Every file operation on a folder apt-research writes: ownership, no symbolic links, atomic writes.

A user's files are not ours to touch. Three rules hold for every write, rename and delete here:

* **Folders we own.** An output folder is ours only if we created it or found it empty, and marked it with
  ``.apt-research.json`` (a format version and the kind of folder: ``claim``). A folder with files and no
  marker is refused; ``require_owned`` (``report``, ``--resume``) refuses any folder without the marker.
* **No symbolic link we did not make.** Below the nearest marked folder, no component of a path we write,
  rename or delete may be a symbolic link (a folder received from someone else may hold planted ones):
  ``check_no_links`` raises ``UnsafePathError`` instead. Where no marked folder is above the path, the file
  itself must not be a link. The marked folder itself may be a link the user made (``results -> /data``).
* **Atomic writes.** Every file goes to a temporary name beside its target (``.NAME.tmp-XXXX``), then is
  renamed onto it: a process killed half way never leaves a truncated file under the real name. Only
  such temporary names are ever swept up after a crash (``remove_partial_files``), and only in our folders.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from .errors import OwnershipError, UnsafePathError

_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
"""The mode of a file written here: what ``open`` would give it (``mkstemp`` alone makes it private, 0600)."""

MARKER = ".apt-research.json"
"""The file that marks a folder as made by apt-research."""
MARKER_FORMAT = 1
PARTIAL_PREFIX, PARTIAL_INFIX = ".", ".tmp-"
"""``atomic_path``'s temporary names: ``.NAME.tmp-XXXX``."""


def read_marker(folder) -> dict | None:
    """The marker of ``folder`` (``kind``, ``format``, ``created``), or ``None`` where it has none we can read."""
    path = Path(folder) / MARKER
    try:
        if path.is_symlink():
            return None
        marker = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def check_claimable(folder, kind: str, argument: str = "--out") -> bool:
    """Whether ``folder`` is already ours for ``kind`` (it carries our marker); ``False`` where it is new or
    empty (``claim`` would make it ours). Any other folder raises ``OwnershipError`` naming ``argument``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OwnershipError(f"{argument} expects a directory, got {str(folder)!r} (an existing file)")
    for parent in folder.parents:
        if parent.exists() and not parent.is_dir():
            raise OwnershipError(f"{argument} expects a directory, got {str(folder)!r} ({str(parent)!r} is a file)")
    marker = read_marker(folder) if folder.is_dir() else None
    if marker is not None:
        _check_marker(folder, marker, kind, argument)
        return True
    if folder.is_dir() and any(folder.iterdir()):
        shown = sorted(path.name for path in folder.iterdir())
        raise OwnershipError(
            f"{argument} expects a new or empty directory, or one apt-research made (with {MARKER}), got "
            f"{str(folder)!r} holding {shown[:3]}{' ...' if len(shown) > 3 else ''}: nothing there is ours to "
            "replace; choose another folder")
    return False


def write_marker(folder, kind: str) -> None:
    """Mark ``folder`` (new or empty, made by the caller) as made by apt-research for ``kind``."""
    marker = json.dumps({"format": MARKER_FORMAT, "kind": kind, "created": time.time()}) + "\n"
    handle = os.open(Path(folder) / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(handle, "w") as file:
        file.write(marker)


def claim(folder, kind: str, argument: str = "--out") -> Path:
    """Make ``folder`` ours for ``kind`` (e.g. ``"sweep"``): create and mark it, mark it if empty, or accept
    it if it carries our marker of that kind. Anything else raises ``OwnershipError`` naming ``argument``."""
    folder = Path(folder)
    if check_claimable(folder, kind, argument):
        return folder
    folder.mkdir(parents=True, exist_ok=True)  # the folder the user named: it may be a link they made
    write_marker(folder, kind)
    return folder


def require_owned(folder, kind: str, argument: str) -> Path:
    """``folder`` if it carries our marker of ``kind``; else ``OwnershipError`` naming ``argument``."""
    folder = Path(folder)
    marker = read_marker(folder) if folder.is_dir() else None
    if marker is None:
        raise OwnershipError(f"{argument} expects a {kind} directory made by apt-research (with {MARKER}), got "
                             f"{str(folder)!r}" + ("" if folder.is_dir() else " (no such directory)"))
    _check_marker(folder, marker, kind, argument)
    return folder


def _check_marker(folder: Path, marker: dict, kind: str, argument: str) -> None:
    if marker.get("kind") != kind:
        raise OwnershipError(f"{argument} expects a {kind} directory, got {str(folder)!r}, a "
                             f"{marker.get('kind')!r} directory of apt-research")
    if type(marker.get("format")) is not int or marker.get("format") != MARKER_FORMAT:
        raise OwnershipError(f"{argument}: {str(folder)!r} was written by another version of apt-research "
                             f"(format {marker.get('format')!r}, expected {MARKER_FORMAT}); use a new folder")


def owned_root(path) -> Path | None:
    """The outermost folder at or above ``path`` that carries our marker, or ``None``.

    The outermost, not the nearest: a link planted inside our folder may point at another marked folder (a
    user's other sweep), and every component below the outermost root is checked (``check_no_links``)."""
    path = Path(os.path.abspath(path))
    root = None
    for folder in (path, *path.parents):
        if (folder / MARKER).is_file() and not (folder / MARKER).is_symlink():
            root = folder
    return root


def check_no_links(path) -> Path:
    """``path`` (absolute) after checking that no component below its owned root is a symbolic link (the root
    itself may be one); without an owned root, that ``path`` itself is not one. Raises ``UnsafePathError``."""
    path = Path(os.path.abspath(path))
    root = owned_root(path)
    components = [path] if root is None else [path, *path.parents][: len(path.parts) - len(root.parts)]
    for component in components:
        try:
            mode = os.lstat(component).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise UnsafePathError(f"{component} is a symbolic link: apt-research writes, renames and deletes "
                                  f"nothing through a link it did not make (writing {path})")
    return path


def make_dirs(path) -> Path:
    """``mkdir -p`` that refuses to create or pass through a symbolic link below the owned root."""
    path = check_no_links(path)
    path.mkdir(parents=True, exist_ok=True)
    return check_no_links(path)


def remove_file(path) -> None:
    """Delete a file of ours (a link in the way raises ``UnsafePathError``); a missing file is fine."""
    path = check_no_links(path)
    path.unlink(missing_ok=True)


def remove_tree(path) -> None:
    """Delete a folder of ours (a link in the way, the folder itself included, raises ``UnsafePathError``)."""
    path = check_no_links(path)
    if path.exists():
        shutil.rmtree(path)


def is_partial(name: str) -> bool:
    """Whether ``name`` is one of ``atomic_path``'s temporary names."""
    return name.startswith(PARTIAL_PREFIX) and PARTIAL_INFIX in name


def remove_partial_files(folder, patterns) -> list[Path]:
    """Remove ``atomic_path``'s temporary files left by a killed process in ``folder`` (which must carry our
    marker) under the glob ``patterns`` (folders, e.g. ``"runs/*"``; ``"."`` for the top). Returns them."""
    folder = Path(folder)
    if read_marker(folder) is None:
        raise OwnershipError(f"{str(folder)!r} was not made by apt-research: its files are not ours to remove")
    removed = []
    for pattern in patterns:
        for directory in (folder.glob(pattern) if pattern != "." else [folder]):
            if directory.is_symlink() or not directory.is_dir():
                continue
            for path in directory.iterdir():
                if is_partial(path.name) and path.is_file() and not path.is_symlink():
                    remove_file(path)
                    removed.append(path)
    return removed


@contextmanager
def atomic_path(target, *, keep_partial: bool = False):
    """Yield a temporary path beside ``target`` (same suffix); rename it onto ``target`` when the block ends.

    If the block raises, the temporary file is removed, or with ``keep_partial`` renamed onto ``target``
    all the same (for records worth keeping half written, such as an executed notebook). ``target`` and the
    folders above it, up to the owned root, must not be symbolic links (``check_no_links``).
    """
    target = check_no_links(target)
    make_dirs(target.parent)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f"{PARTIAL_PREFIX}{target.name}{PARTIAL_INFIX}",
                                    suffix=target.suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
    except BaseException:
        if keep_partial and temporary.exists():
            os.chmod(temporary, FILE_MODE)
            os.replace(temporary, check_no_links(target))
        raise
    else:
        if temporary.exists():
            os.chmod(temporary, FILE_MODE)
        os.replace(temporary, check_no_links(target))
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
