"""The work_dir lock: one run at a time writes into a work_dir.

A run creates `work_dir/run.lock` naming itself (run id, host, pid, start
time). On a local or mounted disk the file appears complete or not at all
(written under a temporary name, then hard-linked to its place, which fails
if a lock is already there), so a second run either gets the lock or reads
who holds it. Object stores offer no create-if-absent through pyarrow: there
a run writes its lock only where none is, reads it back a moment later, and
goes on only if it still names this run (of two runs starting in the same
instant the last writer wins, the other stops). A lock whose
holder is gone (same host, that process no longer running) is taken over;
a lock held from another host is never taken over, since its process cannot
be checked from here. The lock is removed when the run ends, also on error.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from raveval.results.workdir import WorkDir

LOCK_FILE = "run.lock"
SETTLE_S = 1.0  # object stores: how long a new lock must stand before it counts as ours


class WorkDirLocked(RuntimeError):
    """Another run holds the work_dir (or its lock file cannot be read)."""

    def __init__(self, work_dir: WorkDir, holder: dict | None, detail: str = ""):
        self.work_dir, self.holder = work_dir, holder
        lock = f"{work_dir}/{LOCK_FILE}"
        if holder is None:
            msg = (f"work_dir {work_dir} is locked and its lock file {lock} cannot be read ({detail}); "
                   f"delete that file if no run uses this work_dir")
        else:
            msg = f"work_dir {work_dir} is in use by {describe(holder)}; wait for it to end or use another work_dir"
            if holder.get("host") != socket.gethostname():
                msg += f" (if that run is gone, delete {lock})"
        super().__init__(msg)


def describe(holder: dict) -> str:
    return (f"run {holder.get('run_id', '?')} (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"started {holder.get('started', '?')})")


class WorkDirLock:
    """`with WorkDirLock(work_dir, run_id, log):` holds the work_dir for the block;
    raises `WorkDirLocked` at once if another live run holds it."""

    def __init__(self, work_dir: str | Path | WorkDir, run_id: str, log=print):
        self.work_dir = work_dir if isinstance(work_dir, WorkDir) else WorkDir(work_dir)
        self.run_id = run_id
        self.log = log
        self.held = False

    def __enter__(self) -> WorkDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.work_dir.makedirs()
        me = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "proc_start": _proc_stat(os.getpid())[1]}
        for _ in range(5):  # the lock may change hands while we look: look again
            if self._create(me):
                return
            holder = self._read()
            if holder is None:
                continue  # its holder just released it
            if not _is_stale(holder):
                raise WorkDirLocked(self.work_dir, holder)
            if self._take_over(holder, me):
                self.log(f"raveval: took over the work_dir lock of {describe(holder)}: "
                         f"that process is no longer running")
                return
        raise WorkDirLocked(self.work_dir, self._read() or {"run_id": "(changing hands)"})

    def _take_over(self, holder: dict, me: dict) -> bool:
        """Replace a dead holder's lock by ours, only while the file still names the
        dead holder we saw. On a local disk one process at a time does this (a flock
        on the folder; only this host takes over its own dead runs' locks)."""
        folder = self.work_dir.local_path()
        fd = os.open(folder, os.O_RDONLY) if folder else None
        try:
            if fd is not None and not _flock(fd):
                return False
            if self._read_or_none() != holder:
                return False  # someone else took it over first: look again
            self.work_dir.delete(LOCK_FILE)
            return self._create(me)
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock

    def release(self) -> None:
        """Remove the lock if it is still ours (idempotent)."""
        if not self.held:
            return
        self.held = False
        holder = self._read_or_none()
        if holder and holder.get("run_id") == self.run_id and holder.get("pid") == os.getpid():
            self.work_dir.delete(LOCK_FILE)

    def _create(self, me: dict) -> bool:
        data = (json.dumps(me) + "\n").encode()
        folder = self.work_dir.local_path()
        if folder:
            tmp = os.path.join(folder, f".{LOCK_FILE}.{me['run_id']}.{me['pid']}.tmp")
            Path(tmp).write_bytes(data)
            try:
                os.link(tmp, os.path.join(folder, LOCK_FILE))  # atomic, and fails if a lock is there (also on NFS)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        else:
            if self.work_dir.exists(LOCK_FILE):
                return False
            self.work_dir.write_bytes(data, LOCK_FILE)
            time.sleep(SETTLE_S)  # a run that wrote at the same instant has overwritten ours by now
            if self._read_or_none() != me:
                return False
        self.held = True
        return True

    def _read(self) -> dict | None:
        """The holder named in the lock file; None if there is no lock file (any more)."""
        data = self.work_dir.read_bytes(LOCK_FILE)
        if data is None:
            return None
        try:
            holder = json.loads(data)
        except ValueError as e:
            raise WorkDirLocked(self.work_dir, None, f"{type(e).__name__}: {e}") from None
        if not isinstance(holder, dict):
            raise WorkDirLocked(self.work_dir, None, "not a JSON object")
        return holder

    def _read_or_none(self) -> dict | None:
        try:
            return self._read()
        except WorkDirLocked:
            return None


def _flock(fd: int) -> bool:
    """Take an exclusive flock, waiting up to 5 s (another process holds it only
    for a read, a delete and a create)."""
    for _ in range(100):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.05)
    return False


def _is_stale(holder: dict) -> bool:
    """The holder ran on this host and its process is gone (or the pid now
    belongs to a later process, or to a zombie)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    state, start = _proc_stat(pid)
    if state == "Z":
        return True
    want = holder.get("proc_start")
    return want is not None and start is not None and start != want


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """(state, start time in clock ticks since boot) from /proc on Linux; (None, None) elsewhere."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[19])
