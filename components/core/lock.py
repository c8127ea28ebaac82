"""An exclusive lock file in a local folder, safe against races and stale holders.

FOLDER/NAME holds the holder's JSON (pid, process start time, host, what it does, start, a token).
`seq2seq run` locks its artifacts folder with it (pipeline/lock.py), the pusher its serving folder.

* Create: the JSON goes to a unique temp file in the same folder, then `os.link(tmp, NAME)`; the link
  is atomic and fails if NAME exists, so a lock is never seen half-written and only one creator wins.
* Held: a lock whose process is alive (same host, same pid and process start time), any lock from
  another host, and an empty or unparsable lock younger than UNREADABLE_GRACE_S.
* Stale: same host and the pid is gone or now belongs to another process (start time differs), or an
  unreadable lock older than the grace period. It is taken over with a warning: under an exclusive
  flock on NAME.takeover the taker re-reads NAME, removes it only if it is still the very file (inode
  and bytes) judged stale, and then competes with a plain link again. Creation never replaces a file
  and holders only remove their own lock, so nothing can swap NAME between that check and the
  removal: two processes that both saw the stale lock cannot both win. A flock dies with its
  process, so the guard itself never goes stale.
* Release removes the lock only if it still carries our token.

Needs a local (POSIX) file system with hard links: remote folders (gs://...) are refused.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from typing import Any, NamedTuple, Optional

from components.core.errors import UserError

logger = logging.getLogger(__name__)
UNREADABLE_GRACE_S = 300.0  # an empty/garbage lock counts as held until it is this old
TAKEOVER_SUFFIX = ".takeover"
_ATTEMPTS = 5


class LockedError(UserError):
    exit_code = 4


class LockUnsupportedError(LockedError):
    """The folder cannot carry the lock (a remote folder, no hard links): a usage error."""

    exit_code = 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def process_start(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return int(stat[stat.rindex(")") + 2:].split()[19])  # fields after "comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


class _Seen(NamedTuple):
    raw: bytes
    inode: int
    mtime: float


def _read(path: str) -> Optional[_Seen]:
    """The lock's bytes, inode and mtime, all from one open file; None if there is no lock."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return _Seen(f.read(), st.st_ino, st.st_mtime)
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> Optional[dict[str, Any]]:
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or isinstance(holder["pid"], bool):
        return None
    return holder


class FileLock:
    """FOLDER/NAME, held by this process once `acquire()` returns; it raises LockedError naming the
    holder. Subclasses say what holds the lock (`holder_kind`, `describe`) and what it protects."""

    holder_kind = "process"  # "another <kind> holds ..."
    subject = "folder"  # "cannot lock the remote <subject> ..."

    def __init__(self, folder: str, name: str, details: dict[str, Any],
                 unreadable_grace_s: Optional[float] = None):
        self.folder = folder
        self.path = os.path.join(folder, name)
        self.guard_path = self.path + TAKEOVER_SUFFIX
        self.unreadable_grace_s = unreadable_grace_s
        self.info = {"pid": os.getpid(), "pid_start": process_start(os.getpid()),
                     "host": socket.gethostname(), **details,
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "token": secrets.token_hex(16)}

    def describe(self, holder: dict[str, Any]) -> str:
        """What the holder is doing, for the refusal message (after its pid, host and start)."""
        return ""

    @property
    def _grace(self) -> float:
        return UNREADABLE_GRACE_S if self.unreadable_grace_s is None else self.unreadable_grace_s

    def acquire(self) -> "FileLock":
        if "://" in self.folder:
            raise LockUnsupportedError(
                f"cannot lock the remote {self.subject} {self.folder}: remote roots are not supported "
                f"by the {self.holder_kind} lock; use a local (or POSIX-mounted) {self.subject}")
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = f"{self.path}.{self.info['token']}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.info, f)
        try:
            for _ in range(_ATTEMPTS):
                try:
                    os.link(tmp, self.path)
                    return self
                except FileExistsError:
                    pass
                except OSError as e:
                    raise LockUnsupportedError(
                        f"cannot create the lock {self.path} ({e.strerror}): the {self.subject} must be on "
                        "a local or POSIX file system with hard links") from e
                seen = _read(self.path)
                if seen is None:
                    continue  # released meanwhile: link again
                reason = self._stale_reason(seen)
                self._take_over(seen, reason)
            raise LockedError(f"could not take the lock {self.path}: others kept taking and releasing it; "
                              "try again")
        finally:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass

    def _stale_reason(self, seen: _Seen) -> str:
        """Why the lock seen is stale; raises LockedError if it is held."""
        holder = _parse(seen.raw)
        kind = self.holder_kind
        if holder is None:
            age = time.time() - seen.mtime
            if age < self._grace:
                raise LockedError(
                    f"another {kind} holds {self.path}: the lock file is empty or unreadable (written {age:.0f}s "
                    f"ago), which counts as held for {self._grace:.0f}s; wait, or delete the lock file if no "
                    f"{kind} uses this folder")
            return f"the lock file is empty or unreadable and {age:.0f}s old"
        pid, host = holder["pid"], holder.get("host")
        what = self.describe(holder)
        who = f"pid {pid} on {host}, started {holder.get('started_at')}{f' ({what})' if what else ''}"
        if host != socket.gethostname():
            raise LockedError(f"another {kind} holds {self.path}: {who}, on another host, so it cannot be "
                              "checked from here; wait for it to finish, or delete the lock file if that "
                              "process is gone")
        if not _alive(pid):
            return f"{who}, is not running"
        recorded, current = holder.get("pid_start"), process_start(pid)
        if isinstance(recorded, int) and current is not None and current != recorded:
            return f"{who}, is gone; pid {pid} now belongs to another process"
        raise LockedError(
            f"another {kind} holds {self.path}: {who}; "
            "wait for it to finish, or delete the lock file if that process is gone")

    def _take_over(self, seen: _Seen, reason: str) -> bool:
        """Remove the stale lock if it is still the one seen; False if it changed (judge it again)."""
        import fcntl

        fd = os.open(self.guard_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                raise LockedError(f"the lock {self.path} looks stale ({reason}) but cannot be taken over safely "
                                  f"here ({e.strerror}); delete it if no {self.holder_kind} uses this folder") from e
            now = _read(self.path)
            if now is None or now.inode != seen.inode or now.raw != seen.raw:
                return False  # someone else took it over (or it was released) since we looked
            logger.warning("taking over the stale lock %s (%s)", self.path, reason)
            os.remove(self.path)
            return True
        finally:
            os.close(fd)  # releases the flock

    def release(self) -> None:
        seen = _read(self.path)
        holder = _parse(seen.raw) if seen else None
        if holder and holder.get("token") == self.info["token"]:
            os.remove(self.path)
        else:
            logger.warning("not removing the lock %s: it is no longer ours", self.path)

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
