"""One run per checkpoint directory (``claim``): a trainer writing into P first creates ``D/.P.claim`` with
``O_CREAT | O_EXCL`` holding "<pid> <host>", and removes it when it ends; a second run into P finds the
file and is refused before its first step (``DirectoryClaimed``). A claim whose process is gone (same
host, no such pid: a SIGKILL) is stale and taken over; the check and the take-over run under the
exclusive flock of ``storage.locked``, so two runs never both take one stale claim.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Optional

from .storage import locked

__all__ = ["DirectoryClaimed", "claim", "held_claims"]


class DirectoryClaimed(ValueError):
    """Another live run holds the claim on a checkpoint directory (see ``claim``)."""


_CLAIMS: dict[Path, int] = {}  # claims held by this process: real path -> nesting depth


def _claim_path(target: Path) -> Path:
    return target.parent / f".{target.name}.claim"


def _claim_owner(file: Path) -> Optional[tuple[int, str]]:
    """(pid, host) written in a claim file, or None for a missing or unreadable one."""
    try:
        pid, host = file.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _take_claim(target: Path) -> None:
    """Create the claim file of ``target`` (the exclusive flock held), taking over a stale one."""
    file = _claim_path(target)
    me = (os.getpid(), socket.gethostname())
    for _ in range(2):
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            owner = _claim_owner(file)
            if owner is not None and owner[1] != me[1]:
                raise DirectoryClaimed(
                    f"{target} is claimed by process {owner[0]} on host {owner[1]} ({file}); if that run has ended, "
                    "delete the file") from None
            if owner is not None and owner[0] != me[0] and _alive(owner[0]):
                raise DirectoryClaimed(
                    f"{target} is in use by another run (process {owner[0]}, claim file {file}); wait for it to end "
                    "or write to another directory") from None
            os.unlink(file)  # stale: its process is gone (or an earlier process with this pid left it)
            continue
        try:
            os.write(fd, f"{me[0]} {me[1]}\n".encode())
        finally:
            os.close(fd)
        return
    raise DirectoryClaimed(f"could not claim {target} ({file} keeps coming back)")


@contextlib.contextmanager
def claim(path):
    """Hold ``path`` (a checkpoint directory) for this process for the duration of the block: one run per
    directory (this module's docstring). Re-entrant within a process; the claim is released (its file removed)
    when the outermost block exits, however it exits. Raises ``DirectoryClaimed`` (a ValueError) if a live
    process holds it. Creates the parent directory if needed, as a save would."""
    target = Path(os.path.realpath(path))
    if target in _CLAIMS:
        _CLAIMS[target] += 1
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked(target, exclusive=True):
            _take_claim(target)
        _CLAIMS[target] = 1
    try:
        yield target
    finally:
        _CLAIMS[target] -= 1
        if not _CLAIMS[target]:
            del _CLAIMS[target]
            file = _claim_path(target)
            with locked(target, exclusive=True):
                if _claim_owner(file) == (os.getpid(), socket.gethostname()):
                    os.unlink(file)


def held_claims() -> list:
    """The checkpoint directories (real paths) this process holds a claim on now."""
    return sorted(_CLAIMS)
