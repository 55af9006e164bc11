"""Writing a checkpoint directory as a whole, and finding the complete one to read.

Commit protocol (POSIX). For a checkpoint directory P in a parent directory D:
  0. Everything is serialised and validated in memory first (config.json with ``allow_nan=False``,
     the size limits that loading enforces, the tensors): a value that cannot be stored fails here,
     before the file system is touched.
  1. An exclusive advisory lock, ``fcntl.flock`` on ``D/.P.lock``, serialises writers of P.
  2. Recovery of a writer that died (step 5 below): if P is missing and ``D/.P.old-*`` exists,
     that directory (the previous checkpoint, complete) is renamed back to P; then every leftover
     ``D/.P.new-*`` and ``D/.P.old-*`` is deleted.
  3. The replacement rule is checked (``replaces``: anything, nothing, or the checkpoint with a
     given id, the sha256 of its manifest: a compare-and-swap that stops two trainers clobbering
     each other).
  4. The files are written into a fresh directory ``D/.P.new-<random>`` (umask honoured; P's own
     mode copied), each fsync'ed, the manifest last, then the directory fsync'ed. Regular files in
     P that are not part of a checkpoint (a samples.png, say) are hard-linked in (copied where links
     are not supported); P holding anything else (a sub-directory) is refused.
  5. ``rename(P, D/.P.old-<random>)``, fsync(D), ``rename(D/.P.new-..., P)``, fsync(D): the commit
     point is the second rename. The old directory is then deleted.
An exception (KeyboardInterrupt included) undoes what the writer did; a SIGKILL or power loss at any
point leaves P intact (before step 5), P missing with the complete ``.old`` beside it (between the
two renames: readers use it, the next writer renames it back), or the new P (after). Readers take
the lock shared when the lock file exists, so they never mix files of two checkpoints.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Optional

from .format import CHECKPOINT_FILES, CONFIG_NAME, MANIFEST_NAME

try:
    import fcntl
except ImportError:  # not POSIX: no advisory lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["ANY", "WRITE_CHUNK", "CheckpointConflict", "locked", "readable_dir", "checkpoint_id", "check_replaces",
           "commit"]

ANY = "any"  # save_checkpoint(replaces=ANY): replace whatever checkpoint is there
WRITE_CHUNK = 1 << 20  # bytes per os.write


class CheckpointConflict(ValueError):
    """A save would replace a checkpoint it was not allowed to (see ``save_checkpoint(replaces=...)``)."""


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def locked(target: Path, exclusive: bool):
    """flock on D/.P.lock: exclusive for a writer (creating the file), shared for a reader (only if it
    exists and can be opened; a read-only location is read without it)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(_lock_path(target), (os.O_RDWR | os.O_CREAT) if exclusive else os.O_RDONLY, 0o666)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _leftovers(target: Path, kind: str) -> list:
    prefix = f".{target.name}.{kind}-"
    try:
        return sorted(target.parent / n for n in os.listdir(target.parent) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:WRITE_CHUNK]):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fresh_dir(parent: Path, prefix: str, mode: int = 0o777) -> Path:
    while True:
        path = parent / f"{prefix}{secrets.token_hex(8)}"
        try:
            os.mkdir(path, mode)  # the umask applies, as for any directory the user creates
            return path
        except FileExistsError:
            continue


def _unused_name(parent: Path, prefix: str) -> Path:
    while True:
        path = parent / f"{prefix}{secrets.token_hex(8)}"
        if not os.path.lexists(path):
            return path


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _recover(target: Path) -> None:
    """Undo a writer that died (called with the exclusive lock held): put the previous checkpoint back
    if it died between its two renames, then delete every temporary directory it left."""
    olds = _leftovers(target, "old")
    if not os.path.lexists(target) and olds:
        keep = next((d for d in olds if (d / CONFIG_NAME).is_file()), None)
        if keep is not None:
            os.rename(keep, target)
            _fsync_dir(target.parent)
            olds.remove(keep)
    for d in olds + _leftovers(target, "new"):
        _remove_tree(d)


def _current_id(where: Path) -> Optional[str]:
    for name in (MANIFEST_NAME, CONFIG_NAME):  # version 2, else version 1
        try:
            return hashlib.sha256((where / name).read_bytes()).hexdigest()
        except (FileNotFoundError, NotADirectoryError):
            continue
    return None


def readable_dir(target: Path) -> Path:
    """``target``, or while a writer that died between its two renames has not been recovered, the
    complete previous checkpoint it left beside it."""
    if not target.is_dir():
        for d in _leftovers(target, "old"):
            if (d / CONFIG_NAME).is_file():
                return d
    return target


def checkpoint_id(path) -> Optional[str]:
    """The id of the checkpoint in ``path`` (the sha256 of its manifest.json, or of config.json for a
    version-1 checkpoint), or None if there is none. ``save_checkpoint(replaces=id)`` replaces only it."""
    target = Path(os.path.realpath(path))
    with locked(target, exclusive=False):
        return _current_id(readable_dir(target))


def _foreign_entries(target: Path) -> tuple[list, list]:
    """(regular files, other entries) in ``target`` that are not part of a checkpoint."""
    files: list = []
    others: list = []
    if not target.is_dir():
        return files, others
    for entry in os.scandir(target):
        if entry.name in CHECKPOINT_FILES:
            continue
        (files if entry.is_file(follow_symlinks=False) else others).append(entry.name)
    return files, others


def _check_target(target: Path, replaces) -> list:
    """Refusals that come before any write; returns the foreign files to carry over."""
    if os.path.lexists(target) and not target.is_dir():
        raise ValueError(f"checkpoint path {target} exists and is not a directory")
    cwd = os.path.realpath(os.getcwd())
    if cwd == str(target) or cwd.startswith(str(target) + os.sep):
        raise ValueError(f"cannot write a checkpoint into {target}: a checkpoint directory is replaced as a whole, "
                         "and it is (or contains) the current working directory; choose a sub-directory")
    files, others = _foreign_entries(target)
    if others:
        raise ValueError(f"{target} holds {', '.join(sorted(others)[:5])}, which are not part of a checkpoint; a "
                         "checkpoint directory is replaced as a whole, so sdekit writes only into a new or empty "
                         "directory or one holding a checkpoint (and plain files). Choose another directory")
    if replaces != ANY:
        check_replaces(target, replaces, _current_id(target))
    return files


def check_replaces(target, replaces, current: Optional[str]) -> None:
    """Refuse (``CheckpointConflict``) to replace the checkpoint ``current`` (its id, None: none there) in
    ``target`` unless ``replaces`` names it: None means "only if there is none"."""
    if current is not None and replaces is None:
        raise CheckpointConflict(
            f"{target} already holds a checkpoint; refusing to overwrite it: resume it (resume=True, --resume) or "
            "replace it explicitly (overwrite=True, --force)")
    if current is not None and current != replaces:
        raise CheckpointConflict(
            f"the checkpoint in {target} was replaced by another writer since this process last read or "
            "wrote it (two trainers on one directory?); refusing to overwrite it")


def _carry(target: Path, names: list, tmp: Path) -> None:
    for name in names:
        try:
            os.link(target / name, tmp / name)
        except OSError:
            shutil.copy2(target / name, tmp / name)


def commit(target: Path, payload: dict, replaces) -> None:
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with locked(target, exclusive=True):
        _recover(target)
        carry = _check_target(target, replaces)
        tmp = _fresh_dir(parent, f".{target.name}.new-")
        old = None
        try:
            if target.is_dir():
                os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
            for name, data in payload.items():
                _write_file(tmp / name, data)
            _carry(target, carry, tmp)
            _fsync_dir(tmp)
            if os.path.lexists(target):
                old = _unused_name(parent, f".{target.name}.old-")
                os.rename(target, old)
                _fsync_dir(parent)
            os.rename(tmp, target)  # the commit point
            tmp = None  # type: ignore[assignment]  # nothing left to clean up
            _fsync_dir(parent)
        except BaseException:
            # undo what this process did (a SIGKILL skips this: the next save or load recovers instead)
            if old is not None and not os.path.lexists(target):
                os.rename(old, target)
                old = None
            if tmp is not None:
                _remove_tree(tmp)
            raise
        if old is not None:
            _remove_tree(old)
