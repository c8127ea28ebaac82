"""Ctrl-C and SIGTERM stop `seq2seq run` as `interrupted` (exit 130, 143), and the next run continues.

Real `seq2seq run` subprocesses on the seed corpus share one artifacts folder: a SIGINT lands in
training (the trainer's handler saves a checkpoint, then stops), a SIGTERM lands in the export of
the next run, which resumed that training (the runner's own handler, outside training).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "data" / "raw" / "seed.tsv"
EMBEDDED = str(REPO / "pipeline" / "embedded.yaml")
# One step per epoch on the seed: enough epochs that the SIGINT lands mid-training, few enough
# that the resumed run finishes them in seconds. The same arguments twice, or it would not resume.
ARGS = ("--set", "trainer.epochs=40", "--set", "trainer.log_every_steps=1")

pytestmark = pytest.mark.slow


def _start(artifacts: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline.cli", "run", "--data", str(SEED), "--artifacts", str(artifacts),
               "--config", EMBEDDED, "--json", *ARGS]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True)


def _signal_when_logged(artifacts: Path, log: Path, line: str, signum: int) -> tuple[int, str]:
    """Start a run, send SIGNUM once its log shows LINE; its exit code and stdout."""
    proc = _start(artifacts, log)
    try:
        deadline = time.monotonic() + 300
        while line not in log.read_text(encoding="utf-8", errors="replace"):
            assert proc.poll() is None, f"the run ended before {line!r}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {line!r} in the log after 300 s"
            time.sleep(0.1)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


def _interrupted_manifest(artifacts: Path, log: Path, code: int, out: str, signum: int) -> dict:
    """The checks every stop by signal passes; the run's manifest."""
    name = signal.Signals(signum).name
    assert code == 128 + signum, f"{out}\n{log.read_text()[-3000:]}"
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "interrupted" and name in result["reason"], result
    assert f"run {result['run_id']}: interrupted" in out and f"reason: {result['reason'][:40]}" in out  # summary
    assert "Traceback" not in log.read_text()
    assert not (artifacts / ".lock").exists()  # released
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["status"] == "interrupted" and manifest["reason"] == result["reason"]
    return manifest


def test_sigint_in_training_and_sigterm_outside_it_end_as_interrupted_and_the_next_run_resumes(tmp_path):
    artifacts = tmp_path / "artifacts"
    # 1. Ctrl-C once a training step is logged: the trainer saves a checkpoint and stops.
    first_log = tmp_path / "first.log"
    code, out = _signal_when_logged(artifacts, first_log, "epoch 1/40 step 1 (1/1)", signal.SIGINT)
    first = _interrupted_manifest(artifacts, first_log, code, out, signal.SIGINT)
    train = first["components"]["train"]
    assert train["status"] == "interrupted" and first["components"]["preprocess"]["status"] == "succeeded"
    stopped = re.search(r"training stopped by SIGINT at step (\d+); checkpoint (\S+) saved", first["reason"])
    assert stopped and Path(f"{stopped[2]}.index").exists(), first["reason"]

    # 2. The same command resumes that training and finishes it; SIGTERM in the export stops it.
    second_log = tmp_path / "second.log"
    code, out = _signal_when_logged(artifacts, second_log, "export: tracing and saving", signal.SIGTERM)
    second = _interrupted_manifest(artifacts, second_log, code, out, signal.SIGTERM)
    assert second["reason"].startswith("interrupted by SIGTERM during export")
    components = second["components"]
    assert components["preprocess"]["status"] == "cached"
    assert components["train"]["resumed"] is True and components["train"]["output"] == train["output"]
    assert components["train"]["status"] == "succeeded" and components["export"]["status"] == "interrupted"
    assert re.search(rf"resuming from \S+/ckpt-{stopped[1]}: step {stopped[1]},", second_log.read_text())
    assert not (artifacts / "serving").exists()
