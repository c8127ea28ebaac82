"""The run lock under races, with real processes: one winner, stale and unreadable locks, release."""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from pipeline.lock import LOCK_NAME, LockedError, LockUnsupportedError, RunLock, process_start

RACERS = 8
HOLD_S = 1.0


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def _racer(folder: str, name: str, barrier, results) -> None:
    barrier.wait()
    try:
        lock = RunLock(folder, name).acquire()
    except LockedError as e:
        results.put((name, "locked", str(e)))
        return
    except BaseException as e:  # noqa: BLE001 - report anything else as a failure of the round
        results.put((name, "error", repr(e)))
        return
    results.put((name, "won", ""))
    time.sleep(HOLD_S)
    lock.release()


def _race(folder: str, racers: int = RACERS) -> list[tuple[str, str, str]]:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(racers), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(folder, f"r{i}", barrier, results)) for i in range(racers)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return outcomes


@pytest.mark.parametrize("round_", range(5))
def test_racing_processes_exactly_one_wins(tmp_path, round_):
    outcomes = _race(str(tmp_path))
    kinds = sorted(kind for _, kind, _ in outcomes)
    assert kinds == ["locked"] * (RACERS - 1) + ["won"], outcomes
    assert not (tmp_path / LOCK_NAME).exists()


def test_racing_over_a_stale_lock_exactly_one_wins(tmp_path, caplog):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                  "run_id": "dead", "started_at": "2020-01-01T00:00:00Z"}))
    outcomes = _race(str(tmp_path))
    kinds = sorted(kind for _, kind, _ in outcomes)
    assert kinds == ["locked"] * (RACERS - 1) + ["won"], outcomes
    assert not (tmp_path / LOCK_NAME).exists()
    assert not list(tmp_path.glob("*.tmp"))  # no temp files left behind


@pytest.mark.parametrize("content", [b"", b"{\"pid\": 12", b"\x00\xffgarbage"])
def test_an_unreadable_lock_is_held_while_fresh_and_taken_over_when_old(tmp_path, content, caplog):
    lock = tmp_path / LOCK_NAME
    lock.write_bytes(content)
    with pytest.raises(LockedError, match="empty or unreadable"):
        RunLock(str(tmp_path), "mine", unreadable_grace_s=60).acquire()
    assert lock.read_bytes() == content
    old = time.time() - 120
    os.utime(lock, (old, old))
    with RunLock(str(tmp_path), "mine", unreadable_grace_s=60):
        assert json.loads(lock.read_text())["run_id"] == "mine"
    assert "taking over the stale lock" in caplog.text and not lock.exists()


def test_a_live_pid_is_held_only_while_its_start_time_matches(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start(sleeper.pid)
        assert start is not None
        lock = tmp_path / LOCK_NAME

        def write(pid_start: int) -> None:
            lock.write_text(json.dumps({"pid": sleeper.pid, "pid_start": pid_start, "host": socket.gethostname(),
                                        "run_id": "other", "started_at": "2020-01-01T00:00:00Z"}))

        write(start)
        with pytest.raises(LockedError) as info:
            RunLock(str(tmp_path), "mine").acquire()
        assert f"pid {sleeper.pid} on {socket.gethostname()}" in str(info.value) and "run other" in str(info.value)
        write(start - 1)  # the recorded process is gone and its pid was reused
        with RunLock(str(tmp_path), "mine"):
            assert json.loads(lock.read_text())["run_id"] == "mine"
        assert "now belongs to another process" in caplog.text
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_from_another_host_is_held(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere.invalid",
                                                  "run_id": "far", "started_at": "2020-01-01T00:00:00Z"}))
    with pytest.raises(LockedError, match="on another host"):
        RunLock(str(tmp_path), "mine").acquire()


def test_a_remote_root_is_refused():
    with pytest.raises(LockUnsupportedError) as info:
        RunLock("gs://bucket/artifacts", "mine").acquire()
    assert info.value.exit_code == 2 and isinstance(info.value, LockedError)
    assert "remote roots are not supported" in str(info.value) and "gs://bucket/artifacts" in str(info.value)


def test_release_leaves_another_holders_lock_in_place(tmp_path):
    mine = RunLock(str(tmp_path), "mine").acquire()
    lock = tmp_path / LOCK_NAME
    lock.unlink()  # e.g. deleted by hand, then another run took the folder
    theirs = RunLock(str(tmp_path), "theirs").acquire()
    mine.release()
    assert json.loads(lock.read_text())["token"] == theirs.info["token"]
    theirs.release()
    assert not lock.exists()


def test_the_holder_fails_a_second_acquire_and_its_lock_records_its_start_time(tmp_path):
    with RunLock(str(tmp_path), "first") as held:
        recorded = json.loads((tmp_path / LOCK_NAME).read_text())
        assert recorded["pid"] == os.getpid() and recorded["pid_start"] == process_start(os.getpid())
        with pytest.raises(LockedError) as info:
            RunLock(str(tmp_path), "second").acquire()
        assert info.value.exit_code == 4 and held.info["started_at"] in str(info.value)
