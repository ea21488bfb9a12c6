"""One run directory, one writer.

* :func:`lock_run_dir` takes an exclusive ``fcntl.flock`` on ``<run>/.lock`` for the whole run; a
  second training on the same directory is refused at once with one line.  The kernel releases the
  lock when the process ends in any way (kill -9 included), so a stale lock never blocks a resume.
* :func:`remove_stale_temporaries` deletes the ``.<name>.<random>.tmp`` files that
  :func:`train.run.checkpoints.atomic_write` leaves when the process is killed mid-write; only the lock
  holder calls it, so no live writer owns them.
* :func:`build_lock` serialises building one cached artefact (a built-in teacher or evaluator):
  a second process that needs it waits for the first to finish and then reads its file, instead of
  training a copy of its own.
* :func:`die_with_parent` makes a child process (``--side-by-side --jobs 2``) end when its parent
  does: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, and a thread that polls the parent's pid
  everywhere (the same check covers a parent that died before the child started).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from train.errors import UserError

LOCK_FILE = ".lock"
PARENT_ENV = "REPA_PARENT_PID"  # set for side-by-side children: the pid they must not outlive

_held: dict[str, object] = {}  # resolved run directory -> the open lock file of this process


class RunLock:
    """An exclusive lock on a run directory; :meth:`release` (or process exit) frees it."""

    def __init__(self, out: Path, handle) -> None:
        self.out, self._handle = out, handle

    def release(self) -> None:
        if self._handle is not None:
            _held.pop(str(self.out.resolve()), None)
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(out: str | os.PathLike, what: str = "training") -> RunLock:
    """Create ``out`` and lock it for this process, or raise a one-line :class:`UserError`.

    Within one process a second call for the same directory replaces the first lock (the earlier
    call has ended, e.g. by an exception whose traceback still holds it); across processes the
    second caller is refused.
    """
    import fcntl

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        key = str(out.resolve())
        if key in _held:
            _held.pop(key).close()
        handle = open(out / LOCK_FILE, "a+")
    except OSError as e:
        raise UserError(f"cannot use {out} as a run directory ({e.strerror or e}): pass a writable --out directory") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(f"{out} is in use by another {what} (pid {holder}): wait for it to end or stop it, "
                        "or pass another --out directory") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[key] = handle
    return RunLock(out, handle)


def lock_holder(out: str | os.PathLike) -> int | None:
    """The pid that holds the lock on ``out``, or None when nobody does (tests, diagnostics)."""
    import fcntl

    path = Path(out) / LOCK_FILE
    if not path.exists():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return None


def remove_stale_temporaries(*dirs: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes (``.<name>.*.tmp``) in ``dirs``
    (not recursive).  Call it only while holding the directory's lock."""
    removed = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for p in d.glob(".*.tmp"):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def die_with_parent(parent: int | None = None) -> None:
    """End this process (SIGKILL) as soon as ``parent`` (default: ``$REPA_PARENT_PID``) is gone."""
    if parent is None:
        value = os.environ.pop(PARENT_ENV, "")  # not inherited by this process's own children
        if not value.isdigit():
            return
        parent = int(value)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if _parent_gone(parent):  # it died before the prctl above
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while not _parent_gone(parent):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


@contextmanager
def build_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive, blocking ``flock`` on ``<path>.lock`` while building the file ``path``.

    Callers check ``path.exists()`` again once inside: the process that waited finds the finished
    file.  The kernel drops the lock when its holder dies (kill -9 included), so a waiter then
    builds the file itself; the build writes atomically, so no reader ever sees a partial file.
    """
    import fcntl

    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # blocks while another process builds it
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
