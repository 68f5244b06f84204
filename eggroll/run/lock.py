"""One run per folder: a lock file in ``--out`` naming the process that holds it.

A second run into a folder that a live run holds is refused with one line
(which command, which process, on which host, since when). A lock left by a
process that no longer exists on this host is stale: it is taken over, with a
note. On another host the holder cannot be checked, so the message says which
file to delete if that machine is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".eggroll-run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


class RunLock:
    """Hold ``<folder>/.eggroll-run.lock`` until :meth:`release`.

    Raises:
        ValueError: a live process (or one on another host) holds the folder.
    """

    def __init__(self, folder: str | os.PathLike, command: str):
        self.path = Path(folder) / LOCK_NAME
        self.stale_note = ""
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
        self.created = not self.path.parent.exists()  # removed again if the run leaves nothing in it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.record = record
            return
        raise ValueError(f"could not take the lock {self.path}; another run is starting in that folder")

    def _refuse_or_clear(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, ""
        if not holder or (host == socket.gethostname() and not _alive(pid)):
            self.stale_note = f"took over a stale lock of a process that no longer runs ({self.path})"
            self.path.unlink(missing_ok=True)
            return
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
        raise ValueError(
            f"{self.path.parent} is in use by another run (`eggroll {holder.get('command', '?')}`, pid {pid} on "
            f"{host}, since {since}); wait for it to finish or choose another --out. If that process is gone "
            f"(its machine was lost), delete {self.path}"
        )

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file if this process still holds it (and the folder, if the run left it empty)."""
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
            if self.created and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
