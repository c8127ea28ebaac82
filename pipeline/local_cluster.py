"""A multi-worker training cluster on this machine: N `seq2seq train` processes on loopback ports,
each with its TF_CONFIG and pinned to one core, as the tests and bench/train.py --workers run it.
On real hosts each worker is started the same way, one per host (docs/training.md)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from components.core.net import LOOPBACK, free_ports


def tf_config(addresses: Sequence[str], index: int) -> str:
    """TF_CONFIG for worker INDEX of a cluster of workers at ADDRESSES (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


def train_command(args: Sequence[str]) -> list[str]:
    """`seq2seq train ARGS` as one worker of a multi-worker run (python's arguments)."""
    return ["-m", "pipeline.cli", "train", *args, "--set", "trainer.distribution=multi_worker"]


class LocalCluster:
    """`python ARGV` (e.g. `train_command(...)`) as the worker processes of one cluster. Each has
    its own session (so a kill takes its children too) and one core; LOGS/worker{i}-{attempt}.log
    collects its output."""

    def __init__(self, argv: Sequence[str], workers: int, logs: Path, cwd: Optional[Path] = None):
        self.argv, self.workers, self.logs, self.cwd = list(argv), workers, logs, cwd
        self.addresses = [f"{LOOPBACK}:{port}" for port in free_ports(workers)]
        self.processes: list[subprocess.Popen] = []

    def log_path(self, index: int, attempt: int = 0) -> Path:
        return self.logs / f"worker{index}-{attempt}.log"

    def log(self, index: int, attempt: int = 0) -> str:
        return self.log_path(index, attempt).read_text(encoding="utf-8", errors="replace")

    def start(self, attempt: int = 0, indices: Optional[Sequence[int]] = None) -> None:
        """Start every worker (again: same command, same ports), or only those of INDICES (the
        others of TF_CONFIG's cluster never start), and return at once."""
        self.logs.mkdir(parents=True, exist_ok=True)
        cores = sorted(os.sched_getaffinity(0))
        chosen = range(self.workers) if indices is None else indices
        self.processes = [self._start(index, cores[index % len(cores)], attempt) for index in chosen]

    def _start(self, index: int, core: int, attempt: int) -> subprocess.Popen:
        command = [sys.executable, *self.argv]
        env = {**os.environ, "TF_CONFIG": tf_config(self.addresses, index)}
        with self.log_path(index, attempt).open("w") as log:
            return subprocess.Popen(command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=lambda: os.sched_setaffinity(0, {core}), start_new_session=True)

    def wait(self, index: int, timeout: float) -> int:
        return self.processes[index].wait(timeout=timeout)

    def wait_all(self, timeout: float) -> list[int]:
        return [process.wait(timeout=timeout) for process in self.processes]

    def kill(self, index: int) -> None:
        os.killpg(self.processes[index].pid, signal.SIGKILL)

    def stop(self) -> None:
        """Kill whatever still runs (a failed test, an interrupted benchmark)."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
