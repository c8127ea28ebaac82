"""One pipeline run at a time per artifacts folder."""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any, Optional

from pipeline.errors import UserError

logger = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class LockedError(UserError):
    exit_code = 4


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An O_EXCL lock file holding the holder's pid, host and start time.

    A lock whose process is gone (same host) is taken over with a warning. The artifacts folder
    must be on a local or POSIX file system for this to be safe.
    """

    def __init__(self, artifacts: str, run_id: str):
        self.path = os.path.join(artifacts, LOCK_NAME)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id,
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _holder(self) -> Optional[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.info, f)
        return True

    def acquire(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        for _ in range(3):
            if self._try_create():
                return self
            holder = self._holder()
            if holder is None:
                continue
            pid = holder.get("pid")
            same_host = holder.get("host") == socket.gethostname()
            if isinstance(pid, int) and (_alive(pid) or not same_host):
                raise LockedError(
                    f"another run holds {self.path}: pid {pid} on {holder.get('host')}, "
                    f"started {holder.get('started_at')} (run {holder.get('run_id')}); "
                    "wait for it to finish, or delete the lock file if that process is gone")
            logger.warning("taking over the stale lock %s (pid %s, started %s, is not running)",
                           self.path, pid, holder.get("started_at"))
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        raise LockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        holder = self._holder()
        if holder and holder.get("pid") == self.info["pid"]:
            os.remove(self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
