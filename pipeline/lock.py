"""One pipeline run at a time per artifacts folder.

ARTIFACTS/.lock holds the holder's JSON (pid, process start time, host, run id, start, a token). The
lock itself (atomic creation, staleness, safe takeover, release) is components/core/lock.py's
FileLock, which the pusher also uses for the serving folder.

Needs a local (POSIX) file system with hard links: remote roots (gs://...) are refused.
"""
from __future__ import annotations

from typing import Any, Optional

from components.core.lock import UNREADABLE_GRACE_S, FileLock, LockedError, LockUnsupportedError, process_start

__all__ = ["GUARD_NAME", "LOCK_NAME", "UNREADABLE_GRACE_S", "LockUnsupportedError", "LockedError", "RunLock",
           "process_start"]

LOCK_NAME = ".lock"
GUARD_NAME = ".lock.takeover"


class RunLock(FileLock):
    """The run lock of one artifacts folder; `acquire()` raises LockedError naming the holder."""

    holder_kind = "run"
    subject = "artifacts root"

    def __init__(self, artifacts: str, run_id: str, unreadable_grace_s: Optional[float] = None):
        super().__init__(artifacts, LOCK_NAME, {"run_id": run_id}, unreadable_grace_s)
        self.artifacts = artifacts

    def describe(self, holder: dict[str, Any]) -> str:
        return f"run {holder.get('run_id')}"

    def acquire(self) -> "RunLock":
        super().acquire()
        return self

    def __enter__(self) -> "RunLock":
        return self.acquire()
