"""TF_CONFIG for trainer.distribution=multi_worker: read and checked before TensorFlow sees it, and
the wait for every worker of the cluster to start, done here rather than inside TensorFlow.

Why the wait is not left to MultiWorkerMirroredStrategy(): its construction starts the gRPC server
and then blocks in C++ (the coordination service's connect and WaitForAllTasks, whose timeout is an
hour) without releasing the GIL, so no Python code runs, not even a signal handler or another
thread; and it installs a C++ SIGTERM handler (the preemption notifier) that only sets a flag. A
worker whose peer never starts would hang, deaf to SIGTERM. So each worker first listens on its own
TF_CONFIG address and waits, in Python, until every other worker's address accepts a connection
(its listener, or its TensorFlow server once it is past this wait): signals work, the timeout is
trainer.registration_timeout_s, and the workers still missing are known by address. Only then is
the strategy built, and the TensorFlow registration that follows is quick.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Optional

from components.core.config import ConfigError
from components.core.errors import UserError

logger = logging.getLogger(__name__)

# The jobs of a TF_CONFIG cluster TensorFlow knows; chief and worker tasks train (and are waited for).
KNOWN_JOBS = ("chief", "worker", "evaluator", "ps")
TRAINING_JOBS = ("chief", "worker")
# How often the wait looks at the other workers' addresses, and how long one look may take.
POLL_SECONDS = 0.2
CONNECT_TIMEOUT_SECONDS = 0.5


class TFConfigError(ConfigError):
    """TF_CONFIG is not valid JSON, or does not describe a cluster this worker belongs to (exit 2)."""


class WorkersMissingError(UserError):
    """Some workers of TF_CONFIG's cluster did not start within trainer.registration_timeout_s."""


class RegistrationInterrupted(UserError):
    """SIGTERM/SIGINT while waiting for the other workers: nothing was trained (exit 128 + signal)."""

    exit_code = 143


@dataclasses.dataclass(frozen=True)
class Task:
    job: str
    index: int
    address: str  # host:port

    def __str__(self) -> str:
        return f"{self.job} {self.index} ({self.address})"

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.address.rsplit(":", 1)
        return host.strip("[]"), int(port)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The training tasks (chief, workers) of TF_CONFIG's cluster, and which one this process is."""

    tasks: tuple[Task, ...]
    own: Task

    @property
    def peers(self) -> list[Task]:
        return [task for task in self.tasks if task != self.own]


def read_tf_config(environ: Mapping[str, str] = os.environ) -> Optional[Cluster]:
    """The cluster TF_CONFIG describes, or None when it is not set; TFConfigError names the fault."""
    text = environ.get("TF_CONFIG")
    if text is None:
        return None
    if not text.strip():
        raise TFConfigError("TF_CONFIG is set but empty: unset it to train as one worker, or give it the "
                            'cluster and this worker\'s task, e.g. {"cluster": {"worker": ["host1:port", '
                            '"host2:port"]}, "task": {"type": "worker", "index": 0}}')
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise TFConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise TFConfigError(f"TF_CONFIG must be a JSON object with \"cluster\" and \"task\", got {text.strip()[:80]}")
    jobs = _jobs(value.get("cluster"))
    own = _own_task(value.get("task"), jobs)
    tasks = tuple(Task(job, i, address) for job in TRAINING_JOBS for i, address in enumerate(jobs.get(job, [])))
    return Cluster(tasks, own)


def _jobs(cluster: object) -> dict[str, list[str]]:
    if cluster is None:
        raise TFConfigError('TF_CONFIG has no "cluster": it must list the workers, e.g. "cluster": '
                            '{"worker": ["host1:port", "host2:port"]}')
    if not isinstance(cluster, dict):
        raise TFConfigError(f'TF_CONFIG "cluster" must be an object of job name -> addresses, got {cluster!r}')
    for job, addresses in cluster.items():
        if job not in KNOWN_JOBS:
            raise TFConfigError(f'TF_CONFIG "cluster" has an unknown job {job!r} (known: {", ".join(KNOWN_JOBS)})')
        if not isinstance(addresses, list) or not addresses:
            raise TFConfigError(f'TF_CONFIG "cluster": {job} must be a non-empty list of "host:port" addresses, '
                                f"got {addresses!r}")
        for address in addresses:
            _check_address(job, address)
    if not any(cluster.get(job) for job in TRAINING_JOBS):
        raise TFConfigError('TF_CONFIG "cluster" has no "worker" (or "chief") job')
    if len(cluster.get("chief", [])) > 1:
        raise TFConfigError(f'TF_CONFIG "cluster" has {len(cluster["chief"])} chief addresses: at most one')
    return cluster


def _check_address(job: str, address: object) -> None:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TFConfigError(f'TF_CONFIG "cluster": {job} address {address!r} is not "host:port"')


def _own_task(task: object, jobs: dict[str, list[str]]) -> Task:
    if task is None:
        raise TFConfigError('TF_CONFIG has no "task": give each worker its own, e.g. "task": '
                            '{"type": "worker", "index": 0}')
    if not isinstance(task, dict):
        raise TFConfigError(f'TF_CONFIG "task" must be an object with "type" and "index", got {task!r}')
    job, index = task.get("type"), task.get("index")
    if job not in TRAINING_JOBS:
        raise TFConfigError(f'TF_CONFIG "task" type {job!r} cannot train: it must be "worker" or "chief"')
    if job not in jobs:
        raise TFConfigError(f'TF_CONFIG "task" type {job!r} is not a job of "cluster" '
                            f'({", ".join(jobs) or "none"})')
    if isinstance(index, bool) or not isinstance(index, int):
        raise TFConfigError(f'TF_CONFIG "task" index must be an integer (this worker\'s position in the '
                            f'cluster\'s {job} list), got {index!r}')
    if not 0 <= index < len(jobs[job]):
        raise TFConfigError(f'TF_CONFIG "task" index {index} is out of range: the cluster has '
                            f"{len(jobs[job])} {job} address(es), so 0 to {len(jobs[job]) - 1}")
    return Task(job, index, jobs[job][index])


# ---------------------------------------------------------------- the wait for the other workers


def wait_for_workers(cluster: Cluster, timeout_s: float) -> None:
    """Return once every other training task's address accepts a connection; WorkersMissingError
    after TIMEOUT_S naming those that do not, RegistrationInterrupted on SIGTERM/SIGINT."""
    peers = cluster.peers
    if not peers:
        return
    logger.info("%s of TF_CONFIG's cluster: waiting up to %.0f s (trainer.registration_timeout_s) for %s to start",
                cluster.own, timeout_s, ", ".join(map(str, peers)))
    deadline = time.monotonic() + timeout_s
    with _listening(cluster.own) as listener, flag_on_signals() as stop:
        missing = peers
        while True:
            _answer(listener)
            missing = [task for task in missing if not _accepts(task)]
            if stop["signal"]:  # before the check for done: a signal during the last look still counts
                raise _interrupted(stop["signal"], missing or peers)
            if not missing:
                break
            if time.monotonic() >= deadline:
                raise WorkersMissingError(
                    f"{', '.join(map(str, missing))} of TF_CONFIG's cluster did not start within {timeout_s:g} s "
                    f"(trainer.registration_timeout_s): nothing listens at {'its' if len(missing) == 1 else 'their'} "
                    f"address. Start every worker with the same command (each with its TF_CONFIG), or raise "
                    f"trainer.registration_timeout_s")
            time.sleep(POLL_SECONDS)
    logger.info("all %d workers of the cluster are up: connecting", len(cluster.tasks))


def _interrupted(name: str, missing: list[Task]) -> RegistrationInterrupted:
    error = RegistrationInterrupted(f"stopped by {name} while waiting for {', '.join(map(str, missing))} of "
                                    f"TF_CONFIG's cluster to start; nothing was trained")
    error.exit_code = 128 + int(signal.Signals[name])
    return error


@contextmanager
def _listening(own: Task) -> Iterator[socket.socket]:
    """A listener on this worker's own port, so that the others see it started. Closed before
    TensorFlow's server binds the same port."""
    _, port = own.host_port
    dual = socket.has_dualstack_ipv6()
    try:
        listener = socket.create_server(("", port), family=socket.AF_INET6 if dual else socket.AF_INET,
                                        dualstack_ipv6=dual)
    except OSError as e:
        raise WorkersMissingError(f"cannot listen at {own.address}, this worker's address in TF_CONFIG: "
                                  f"{e.strerror or e} (is a worker of an earlier run still running?)") from None
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


def _answer(listener: socket.socket) -> None:
    """Accept and close the other workers' probes, so that the backlog never fills up."""
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        connection.close()


def _accepts(task: Task) -> bool:
    try:
        with socket.create_connection(task.host_port, timeout=CONNECT_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


@contextmanager
def flag_on_signals(on_signal: Optional[Callable[[dict[str, Optional[str]], int], None]] = None
                    ) -> Iterator[dict[str, Optional[str]]]:
    """SIGTERM/SIGINT set flag["signal"] to the signal's name, for a loop to check between steps (the
    registration wait here, the trainer's steps); `on_signal(flag, signum)` runs first and may raise.
    Outside the main thread no handler can be installed, and the flag stays unset."""
    flag: dict[str, Optional[str]] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if on_signal is not None:
            on_signal(flag, signum)
        flag["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def keeping_signal_handlers() -> Iterator[None]:
    """Put back the SIGTERM/SIGINT handlers after the block: MultiWorkerMirroredStrategy()
    replaces SIGTERM's with TensorFlow's preemption notifier, which only sets a flag nobody here
    reads (the trainer stops through its own handler, see training.stop_on_signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            if h is not None:
                signal.signal(s, h)
