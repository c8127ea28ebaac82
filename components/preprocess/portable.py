"""A local portable Beam cluster: Beam's job service and an external SDK worker pool, each its own process.

Flink, Spark and Dataflow all run the job through Beam's portability (Fn API) layer: the launcher
submits a pipeline proto to a job service, and the transforms run in separate SDK worker processes
that unpickle every DoFn and import the project themselves. `local_portable_cluster()` starts that
same path on one host, so that tests and `bench/preprocess.py --runner portable` can drive it:

    with local_portable_cluster() as beam_args:
        run_preprocess(data, out, config, beam_args=beam_args)

Nothing here imports Beam or TensorFlow: the two services are plain subprocesses.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator, Optional, Sequence

from components.core.net import LOOPBACK, free_ports

logger = logging.getLogger(__name__)

JOB_SERVICE_MODULE = "apache_beam.runners.portability.local_job_service_main"
WORKER_POOL_MODULE = "apache_beam.runners.worker.worker_pool_main"
# Both services answer in 2-4 s on an idle machine; a loaded 2-core machine can take several times that.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class ClusterError(RuntimeError):
    """A service did not start: it exited, or its port did not open in time. Its log is in the message."""


def service_environment(python: str) -> dict[str, str]:
    """This environment with PYTHON's folder first on PATH.

    The worker pool starts each SDK worker as a bare `python` from PATH, so without this the
    workers would run whatever interpreter comes first on PATH, without the project installed.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1.0):
        return True
    return False


def _log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class _Service:
    """One service process in its own process group (so that stopping it also stops its workers)."""

    def __init__(self, name: str, command: Sequence[str], port: int, env: dict[str, str], log_dir: Path):
        self.name, self.port = name, port
        self.log = log_dir / f"{name}.log"
        self._log_file: IO[bytes] = open(self.log, "wb")
        # cwd outside any source tree: the workers must import the installed project, not the cwd's.
        self.process = subprocess.Popen(list(command), stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, cwd=log_dir, start_new_session=True)

    def wait_until_listening(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(f"{self.name} exited with code {self.process.returncode} before listening "
                                   f"on port {self.port}:\n{_log_tail(self.log)}")
            if _port_open(self.port):
                return
            time.sleep(0.1)
        raise ClusterError(f"{self.name} did not listen on port {self.port} in time:\n{_log_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM to the whole process group, then SIGKILL to whatever of it is left, then reap."""
        if self.process.returncode is None:  # not reaped yet, so its group id is still ours alone
            self._signal_group(signal.SIGTERM)
            if not self._exited_within(STOP_TIMEOUT_S):
                logger.warning("%s (pid %d) did not stop on SIGTERM: killing it", self.name, self.process.pid)
            # The leader has exited but is not reaped: its group id cannot have been reused, and the
            # workers it started (same group) must not outlive it.
            self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self._log_file.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def _exited_within(self, seconds: float) -> bool:
        """Whether the leader exits within `seconds`, left unreaped (WNOWAIT) so its group id stays ours."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
            time.sleep(0.05)
        return False


@contextlib.contextmanager
def local_portable_cluster(python: Optional[str] = None, log_dir: Optional[str] = None,
                           start_timeout: float = START_TIMEOUT_S) -> Iterator[list[str]]:
    """Start a job service and an external worker pool on free loopback ports; yield the Beam args
    that send a job to them (PortableRunner, EXTERNAL environment).

    The job service runs the job on Beam's FnApiRunner, which asks the pool for one SDK worker
    process: `run_via_runner_api`, the job service's entry, ignores --direct_num_workers (Beam 2.77).
    `python` is the interpreter of both services and of the worker (default: this one). Their logs
    go to LOG_DIR/job_service.log and LOG_DIR/worker_pool.log (default: a temporary folder, removed
    afterwards). Both services and every worker are stopped on exit, also when the body raises.
    """
    python = python or sys.executable
    env = service_environment(python)
    with contextlib.ExitStack() as stack:
        folder = Path(log_dir) if log_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        job_port, pool_port = free_ports(2)
        services = []
        try:
            services.append(_Service("job_service", [python, "-m", JOB_SERVICE_MODULE, "--port", str(job_port)],
                                     job_port, env, folder))
            services.append(_Service("worker_pool", [python, "-m", WORKER_POOL_MODULE,
                                                     "--service_port", str(pool_port)], pool_port, env, folder))
            deadline = time.monotonic() + start_timeout
            for service in services:
                service.wait_until_listening(deadline)
            logger.info("local portable cluster: job service on port %d, worker pool on port %d", job_port, pool_port)
            yield [
                "--runner=PortableRunner",
                f"--job_endpoint={LOOPBACK}:{job_port}",
                "--environment_type=EXTERNAL",
                f"--environment_config={LOOPBACK}:{pool_port}",
            ]
        finally:
            for service in reversed(services):
                service.stop()
