"""One run per directory: ``<run_dir>/run.lock`` holds the live run's PID, host and start time.

Two runs writing one directory interleave ``metrics.jsonl`` rows and race orbax on the same step
dirs, so the lock is taken before anything is written there (by ``report.make_run_dir`` and again,
re-entrantly, by each training loop) and a second run stops at once with one line naming the
holder.

Mechanism: an ``fcntl.flock`` on the lock file. The kernel drops it when its process dies, even
by SIGKILL, so "is the holder alive" never depends on a PID check racing PID reuse: a lock file
whose flock can be taken was left by a dead run (stale) and is taken over with a warning. The
JSON content only names the holder. A file written by a run on ANOTHER host is never taken over
(its flock may not be visible across a network filesystem): the user removes it. On exit the
file is unlinked while still locked; a waiter that then locks the unlinked inode notices that
the path no longer names its file and retries, so two runs can never both hold it.

URL run dirs (``gs://…``) have no flock; there the lock is skipped with a warning.
Multi-host: only process 0 locks (the other hosts write into the same directory as its peers).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path

from align_jax.errors import RunDirBusy
from align_jax.paths import is_url

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
_held: dict[str, "RunLock"] = {}  # resolved run dir -> this process's lock on it


class RunLock:
    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            self.path.unlink()  # while still locked: see the module docstring
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1
        _held.pop(str(self.path.parent), None)


def _describe(info: dict) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since "
            f"{info.get('start', '?')}" + (f" ({info['cmd']})" if info.get("cmd") else ""))


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    try:
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        info = {"garbled": raw[:80].decode("utf-8", "replace")}
    return info if isinstance(info, dict) else {}


def acquire(run_dir) -> RunLock | None:
    """Take ``<run_dir>/run.lock`` for this process (re-entrant; released at exit). Raises
    :class:`~align_jax.errors.RunDirBusy` when a live run holds it."""
    import jax

    if is_url(run_dir):
        log.warning("%s: no run lock on object stores; make sure one run uses it at a time",
                    run_dir)
        return None
    if jax.process_index() != 0:
        return None
    run_dir = Path(run_dir).resolve()
    if str(run_dir) in _held:
        return _held[str(run_dir)]
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read(fd)
            os.close(fd)
            raise RunDirBusy(f"run directory {run_dir} is in use by another run: "
                             f"{_describe(info)}; wait for it or pick another out_dir") from None
        except OSError as e:  # a filesystem without locks (some network mounts): run unlocked
            os.close(fd)
            log.warning("%s: cannot lock (%s); make sure one run uses it at a time", path, e)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder unlinked the file after we opened it: lock the new one
    prev = _read(fd)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "start": datetime.datetime.now().isoformat(timespec="seconds"),
          "cmd": " ".join(sys.argv)[:300]}
    if prev:
        if prev.get("host") not in (None, me["host"]):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunDirBusy(f"run directory {run_dir} has a lock from another host: "
                             f"{_describe(prev)}; if that run is gone, delete {path}")
        print(f"[align_jax] warning: taking over the stale lock of {run_dir} ({_describe(prev)} "
              "is no longer running)", file=sys.stderr)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(me).encode("utf-8"))
    os.fsync(fd)
    lock = RunLock(path, fd)
    _held[str(run_dir)] = lock
    return lock


@contextlib.contextmanager
def hold(run_dir):
    """The lock for the duration of a block; released at its end only if this call took it (a
    training loop inside an experiment that locked ``run_dir`` first leaves the lock alone)."""
    taken = not is_url(run_dir) and str(Path(run_dir).resolve()) not in _held
    lock = acquire(run_dir)
    try:
        yield lock
    finally:
        if taken and lock is not None:
            lock.release()


def release(run_dir) -> None:
    """Release this process's lock on ``run_dir`` (no-op if it holds none)."""
    if is_url(run_dir):
        return
    lock = _held.get(str(Path(run_dir).resolve()))
    if lock is not None:
        lock.release()


@atexit.register
def _release_all() -> None:
    for lock in list(_held.values()):
        lock.release()
