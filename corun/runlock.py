"""Who owns a run folder: one training writes into a ``train.out_dir`` (and its label pool) at a time.

A training holds an exclusive advisory lock (``fcntl.flock``) on ``<folder>/.run.lock`` for its whole
life. The kernel drops the lock when the process ends, however it ends (SIGKILL included), so a killed run
never leaves a stale lock behind and ``--resume`` after a kill just works. A second writer is refused with
a message naming the holder (pid, host, start time, command), which the holder writes into the lock file.

Locks are re-entrant within one process (a notebook that runs ``train()`` twice, or a test that builds two
``Trainer`` objects on one folder, is one owner). On platforms without ``fcntl`` nothing is locked.

:func:`check_fresh_run` is the other half of ownership: a fresh (not ``--resume``) run into a folder that
holds another run's checkpoints is refused instead of deleting that run's log and, through ``keep_last``
pruning, its own new checkpoints (issue 17.2).
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".run.lock"

#: resolved folder -> [file object, depth] for the locks this process holds
_HELD: dict[Path, list] = {}


class RunFolderError(ConfigError):
    """A run folder cannot be written: another training owns it, or it holds another run."""


def _key(folder: str | os.PathLike) -> Path:
    return Path(folder).resolve()


def holder(folder: str | os.PathLike) -> str | None:
    """Who holds ``folder``'s lock now (the holder's own description), or None when nobody does.

    This process's own locks count as nobody.
    """
    path = Path(folder) / LOCK_NAME
    if fcntl is None or not path.is_file() or _key(folder) in _HELD:
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return f.read().strip() or "another process"
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def acquire(folder: str | os.PathLike, what: str = "run folder") -> None:
    """Take ``folder``'s lock (creating the folder) or raise :class:`RunFolderError` naming the holder."""
    key = _key(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    if fcntl is None:
        return
    key.mkdir(parents=True, exist_ok=True)
    f = open(key / LOCK_NAME, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        f.close()
        raise RunFolderError(f"{folder}: this {what} is in use by another training ({owner}); wait for it to "
                             "finish, stop it, or choose another train.out_dir") from None
    except OSError as exc:  # a file system without flock: carry on unlocked, but say so
        print(f"corun train: warning: cannot lock {key / LOCK_NAME} ({exc}); two trainings into {folder} "
              "would not be noticed", file=sys.stderr, flush=True)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{' '.join(sys.argv)[:300]}\n")
    f.flush()
    _HELD[key] = [f, 1]


def release(folder: str | os.PathLike) -> None:
    """Give back one :func:`acquire` of ``folder`` (the lock goes when the last one is given back)."""
    key = _key(folder)
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _HELD[key]
        with contextlib.suppress(OSError):
            entry[0].seek(0)
            entry[0].truncate()  # no stale description once free
        entry[0].close()  # closing drops the flock


@contextlib.contextmanager
def owned(*folders: str | os.PathLike | None, enabled: bool = True) -> Iterator[None]:
    """Hold the locks of ``folders`` (None entries and duplicates skipped) for the ``with`` block."""
    taken: list[Path] = []
    try:
        if enabled:
            for folder in dict.fromkeys(_key(f) for f in folders if f is not None):
                acquire(folder, "label pool" if taken else "run folder")
                taken.append(folder)
        yield
    finally:
        for folder in reversed(taken):
            release(folder)


def check_fresh_run(out_dir: str | os.PathLike, latest_step: int | None) -> None:
    """Refuse a fresh run into ``out_dir`` when it already holds a run's checkpoints (``latest_step``)."""
    if latest_step is None:
        return
    raise RunFolderError(
        f"{out_dir} already holds a run (checkpoints up to step {latest_step}): continue it with --resume, "
        "choose another train.out_dir, or move that folder away first (nothing was changed)")
