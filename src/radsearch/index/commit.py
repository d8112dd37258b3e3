"""Crash-safe commits of an index directory, one writer at a time, readers never in the way.

A write stages every file in ``DIR/.next``, renames the stage to ``DIR/.commit`` (the
point of no return) and moves the files into place, manifest last. ``recover`` rolls a
found ``.commit`` forward and discards a ``.next``. A commit that absorbs the
embedding checkpoints carries a marker, and rolling it forward also removes
``DIR/.work``, so a crash right after the commit leaves no stale checkpoints behind.

Writers hold an exclusive ``flock`` on ``DIR/.lock`` (its text: the writer's PID). The
kernel drops the lock when the process dies, so a crash never leaves it stuck; a
second writer is refused with "index is being written by PID N". Readers take no
lock: they recover only what no live writer owns, and retry a read that a commit
overlapped (``.commit`` present, or the manifest replaced while reading).
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from radsearch.errors import IndexFormatError

MANIFEST = "manifest.json"
LOCK = ".lock"
WORK = ".work"
ABSORBS_WORK = ".absorbs-work"
# A reader or a starting writer waits this long for a commit in flight.
WAIT_SECONDS = 30.0
_POLL = 0.02
_held: dict[str, list] = {}  # resolved path -> [file handle, depth] (this process)


def recover(path: Path) -> None:
    """Finish or discard an interrupted commit. Call only while holding the lock."""
    nxt, com = path / ".next", path / ".commit"
    if nxt.exists():
        shutil.rmtree(nxt)
    if com.exists():
        names = [p.name for p in com.iterdir() if p.name != ABSORBS_WORK]
        for name in sorted(names, key=lambda n: n == MANIFEST):  # manifest last
            os.replace(com / name, path / name)
        if (com / ABSORBS_WORK).exists():
            shutil.rmtree(path / WORK, ignore_errors=True)
            (com / ABSORBS_WORK).unlink()
        com.rmdir()


def _try_lock(path: Path):
    """An open, exclusively locked ``DIR/.lock``, or ``None`` when another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: one writer is the user's promise
        return open(path / LOCK, "a+")
    fh = open(path / LOCK, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


def _holder(path: Path) -> str:
    try:
        return (path / LOCK).read_text().strip() or "?"
    except OSError:
        return "?"


@contextmanager
def writing(path: str | Path, wait: float = 2.0):
    """Hold the index's write lock (re-entrant in this process) for the ``with`` body.

    Waits up to ``wait`` seconds (a reader recovering holds it for a moment), then
    refuses with the PID of the process that is writing.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    deadline = time.monotonic() + wait
    while (fh := _try_lock(path)) is None:
        if time.monotonic() > deadline:
            raise IndexFormatError(f"{path}: index is being written by PID {_holder(path)}")
        time.sleep(_POLL)
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _held[key] = [fh, 1]
    try:
        yield
    finally:
        del _held[key]
        fh.close()  # releases the flock


def _manifest_stamp(path: Path):
    try:
        st = os.stat(path / MANIFEST)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def settle(path: Path) -> tuple | None:
    """Make ``path`` readable: recover what no live writer owns, wait out a commit in
    flight; returns the manifest's stamp to compare after reading (see ``unchanged``)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        if not (path / ".commit").exists() and not (path / ".next").exists():
            return _manifest_stamp(path)
        if str(path.resolve()) in _held:  # this process is the writer
            recover(path)
            continue
        fh = _try_lock(path) if os.access(path, os.W_OK) else None
        if fh is not None:
            try:
                recover(path)
            finally:
                fh.close()
            continue
        if not (path / ".commit").exists():  # a live writer's stage: not ours to touch
            return _manifest_stamp(path)
        if time.monotonic() > deadline:
            raise IndexFormatError(
                f"{path}: a commit by PID {_holder(path)} has not finished; try again"
            )
        time.sleep(_POLL)


def unchanged(path: Path, stamp) -> bool:
    """Whether no commit touched ``path`` since ``settle`` returned ``stamp``."""
    return not (path / ".commit").exists() and _manifest_stamp(path) == stamp
