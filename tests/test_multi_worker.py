"""trainer.distribution=multi_worker with two real worker processes on loopback ports, as a cluster
runs it: TF_CONFIG per worker, one core each, a preprocess output with a single shard."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from components.trainer import run_training
from pipeline.cli import main
from pipeline.local_cluster import LocalCluster, train_command
from tests.trainer_helpers import EMBEDDED, REPO, config, preprocess, synthetic_corpus

TOY = ("preprocess.eval_fraction=0.2", "preprocess.max_source_length=8", "preprocess.max_target_length=10",
       "preprocess.num_shards=1")
SMALL = ("trainer.batch_size=32", "model.units=16", "model.embedding_dim=8", "trainer.log_every_steps=2",
         "trainer.shuffle_buffer=64")
# How long a survivor may take to notice a dead peer (TensorFlow's coordination service heartbeat
# timeout is 10 s) and exit.
LOST_PEER_SECONDS = 60


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multi_worker")
    out = preprocess(synthetic_corpus(root / "toy.tsv", 240), root / "prep", config(*TOY))
    assert len(list(out.glob("train-*.tfrecord.gz"))) == 1  # fewer shards than workers
    return out


@pytest.fixture
def cluster(examples, tmp_path):
    """make(epochs): two `seq2seq train` workers of one cluster on the toy examples, stopped at the end."""
    clusters: list[LocalCluster] = []

    def make(epochs: int) -> LocalCluster:
        args = ["--examples", str(examples), "--out", str(tmp_path / "train"), "--config", EMBEDDED,
                "--set", f"trainer.epochs={epochs}"]
        for override in SMALL:
            args += ["--set", override]
        clusters.append(LocalCluster(train_command(args), 2, tmp_path / "logs", cwd=REPO))
        return clusters[-1]

    yield make
    for c in clusters:
        c.stop()


def assert_quiet(log: str) -> None:
    """The pipeline's own lines: no traceback, no TensorFlow start-up or absl INFO noise."""
    assert "Traceback" not in log
    assert "InitializeLog" not in log and "cudart_stub" not in log and " INFO absl:" not in log, log[:2000]


def test_two_workers_train_like_one_process_and_only_the_chief_writes(examples, cluster, tmp_path):
    epochs = 3
    workers = cluster(epochs)
    workers.start()
    assert workers.wait(0, timeout=240) == 0, workers.log(0)[-3000:]
    assert workers.wait(1, timeout=60) == 0, workers.log(1)[-3000:]
    chief_log, worker_log = workers.log(0), workers.log(1)
    for log in (chief_log, worker_log):
        assert_quiet(log)
        assert "2 workers, 1 train shard(s): every worker reads them all" in log

    # The chief's folder holds one run's output, written by the chief alone.
    out = tmp_path / "train"
    assert sorted(p.name for p in out.iterdir()) == ["best", "checkpoints", "config.yaml", "inputs.json",
                                                      "metrics.json", "tensorboard"]  # no .worker-1 left
    events = list((out / "tensorboard").iterdir())
    assert len(events) == 1 and f".{workers.processes[0].pid}." in events[0].name
    assert f"checkpoint {out}/checkpoints/" in chief_log
    assert f"{out}/checkpoints/" not in worker_log and f"{out}/best/" not in worker_log
    assert f"checkpoint {out}/.worker-1/checkpoints/" in worker_log  # its scratch space, now removed

    # The same global batch, seed and steps as one process: the same training, within float error.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distribution"] == "multi_worker" and metrics["replicas"] == 2
    single = run_training(str(examples), str(tmp_path / "single"), config(*SMALL, f"trainer.epochs={epochs}"))
    assert metrics["steps"] == single["steps"] and metrics["epochs"] == single["epochs"] == epochs
    # The bar is 2%; the split of each batch makes it equal up to summation order (measured:
    # the same digits), so a much smaller tolerance also catches a batch read twice or not split.
    assert metrics["final_eval_loss"] == pytest.approx(single["final_eval_loss"], rel=1e-3)
    assert [h["train_loss"] for h in metrics["history"]] == pytest.approx(
        [h["train_loss"] for h in single["history"]], rel=1e-3)
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]

    # Then, from the chief's folder, what `seq2seq run` would do next (docs/training.md).
    model, evaluation, serving = tmp_path / "model", tmp_path / "evaluation", tmp_path / "serving"
    assert main(["export", "--model", str(out), "--out", str(model)]) == 0
    assert main(["evaluate", "--model", str(model), "--examples", str(examples), "--training", str(out),
                 "--serving", str(serving), "--out", str(evaluation), "--config", EMBEDDED,
                 "--set", "evaluator.min_bleu=0"]) == 0
    blessing = json.loads((evaluation / "blessing.json").read_text())
    assert blessing["blessed"] and blessing["baseline_model"] is None
    assert main(["push", "--model", str(model), "--evaluation", str(evaluation), "--serving", str(serving)]) == 0
    record = json.loads((serving / "1" / "assets.extra" / "push.json").read_text())
    assert record["version"] == 1 and record["metrics"]["bleu"] == blessing["candidate_bleu"]
    # An evaluation of another model does not push this one.
    assert main(["push", "--model", str(serving / "1"), "--evaluation", str(evaluation),
                 "--serving", str(serving)]) == 1
    assert sorted(p.name for p in serving.iterdir()) == ["1"]


def newest_checkpoint_named(log: str) -> str:
    return re.findall(r"the last checkpoint is (\S+)\.", log)[-1]


def wait_for_line(workers: LocalCluster, text: str, attempt: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in workers.log(0, attempt):
        assert workers.processes[0].poll() is None and time.monotonic() < deadline, workers.log(0, attempt)[-3000:]
        time.sleep(0.1)


def test_a_killed_worker_stops_the_other_they_resume_and_a_sigterm_stops_both(cluster, tmp_path):
    out = tmp_path / "train"
    workers = cluster(epochs=4)
    # 1. A worker killed mid-epoch: the other fails within a bounded time, with one line.
    workers.start()
    wait_for_line(workers, "epoch 2/4 step", attempt=0)  # mid-epoch 2, after epoch 1's checkpoint
    workers.kill(1)
    killed = time.monotonic()
    assert workers.wait(0, timeout=LOST_PEER_SECONDS) == 1
    assert time.monotonic() - killed < LOST_PEER_SECONDS
    errors = [line for line in workers.log(0).splitlines() if " ERROR seq2seq: " in line]
    assert len(errors) == 1, workers.log(0)[-3000:]
    assert f"lost contact with worker 1 ({workers.addresses[1]})" in errors[0]
    assert "Start every worker again with the same command" in errors[0]
    assert_quiet(workers.log(0))
    resume_from = newest_checkpoint_named(errors[0])
    assert resume_from.startswith(f"{out}/checkpoints/ckpt-")

    # 2. The same command on both resumes from that checkpoint and trains on. A SIGTERM to one
    # worker (a preempted pod) then stops both at the same step, each with a checkpoint, the
    # chief's in OUT, from which the next start resumes as this one did.
    workers.start(attempt=1)
    wait_for_line(workers, "epoch 2/4 step", attempt=1)
    for index in (0, 1):
        assert f"resuming from {resume_from}: step " in workers.log(index, 1)
    workers.processes[1].send_signal(signal.SIGTERM)
    assert workers.wait(1, timeout=60) == 128 + signal.SIGTERM
    assert workers.wait(0, timeout=60) == 128 + signal.SIGTERM
    stopped = re.search(r"training stopped by a stop signal to another worker at step (\d+); checkpoint (\S+) saved",
                        workers.log(0, 1))
    assert stopped, workers.log(0, 1)[-3000:]
    assert f"training stopped by SIGTERM at step {stopped[1]}; checkpoint {out}/.worker-1/" in workers.log(1, 1)
    assert stopped[2] == f"{out}/checkpoints/ckpt-{stopped[1]}"
    assert int(stopped[1]) > int(resume_from.rsplit("-", 1)[1])  # it trained on after resuming

    assert not (out / ".worker-1").exists()  # removed by each worker on its way out


# ---------------------------------------------------------------- start-up: a missing worker, TF_CONFIG


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


def test_a_chief_whose_peer_never_starts_names_it_and_gives_up_or_stops_on_a_signal(examples, tmp_path):
    """Only worker 0 of a two-worker TF_CONFIG starts. Before: no line at all, then a hang that
    SIGTERM could not end (TensorFlow's preemption notifier swallowed it), SIGKILL needed."""
    def chief(name: str, *overrides: str) -> LocalCluster:
        args = ["--examples", str(examples), "--out", str(tmp_path / name), "--config", EMBEDDED]
        for override in (*SMALL, *overrides):
            args += ["--set", override]
        workers = LocalCluster(train_command(args), 2, tmp_path / f"logs-{name}", cwd=REPO)
        workers.start(indices=[0])
        return workers

    # Three chiefs at once (each its own cluster), to pay the start-up of TensorFlow once in wall time.
    patient, terminated, interrupted = chief("timeout", "trainer.registration_timeout_s=5"), chief("term"), \
        chief("int")
    try:
        for workers, sig in ((terminated, signal.SIGTERM), (interrupted, signal.SIGINT)):
            wait_for_line(workers, "of TF_CONFIG's cluster: waiting up to 300 s", attempt=0)
            time.sleep(1)  # inside the wait
            workers.processes[0].send_signal(sig)
            sent = time.monotonic()
            assert workers.wait(0, timeout=30) == 128 + sig
            assert time.monotonic() - sent < 10
            [error] = error_lines(workers.log(0))
            assert f"stopped by {sig.name} while waiting for worker 1 ({workers.addresses[1]}) of TF_CONFIG's " \
                   "cluster to start; nothing was trained" in error
        assert patient.wait(0, timeout=120) == 1
    finally:
        for workers in (patient, terminated, interrupted):
            workers.stop()
    log = patient.log(0)
    assert_quiet(log)
    a, b = patient.addresses
    assert f"worker 0 ({a}) of TF_CONFIG's cluster: waiting up to 5 s (trainer.registration_timeout_s) for " \
           f"worker 1 ({b}) to start" in log
    [error] = error_lines(log)
    assert f"worker 1 ({b}) of TF_CONFIG's cluster did not start within 5 s (trainer.registration_timeout_s)" in error
    assert not (tmp_path / "timeout" / "checkpoints").exists()


BAD_TF_CONFIG = {
    "not JSON": ('{"cluster": {"worker": ["localhost:1"]', "TF_CONFIG is not valid JSON: "),
    "no cluster": (json.dumps({"task": {"type": "worker", "index": 0}}), 'TF_CONFIG has no "cluster"'),
    "index out of range": (json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                       "task": {"type": "worker", "index": 2}}),
                           'TF_CONFIG "task" index 2 is out of range: the cluster has 2 worker address(es)'),
    "unknown type": (json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "wroker", "index": 0}}),
                     "TF_CONFIG \"task\" type 'wroker' cannot train"),
}


def test_a_malformed_tf_config_is_one_line_and_exit_2_and_none_is_a_warning(examples, tmp_path):
    """Before: a traceback and exit 1 (JSON, index), or a single-worker run (no cluster)."""
    def train(name: str, tf_config: Optional[str]) -> tuple[subprocess.Popen, Path]:
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        if tf_config is not None:
            env["TF_CONFIG"] = tf_config
        log = tmp_path / f"{name}.log"
        command = [sys.executable, *train_command(["--examples", str(examples), "--out", str(tmp_path / name),
                                                   "--config", EMBEDDED])]
        with log.open("w") as out:
            return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True), log

    started = {name: train(name.replace(" ", "_"), value) for name, (value, _) in BAD_TF_CONFIG.items()}
    alone, alone_log = train("alone", None)
    try:
        for name, (process, log) in started.items():
            assert process.wait(timeout=120) == 2, (name, log.read_text()[-2000:])
            text = log.read_text()
            assert "Traceback" not in text, text[-3000:]
            [error] = error_lines(text)
            assert BAD_TF_CONFIG[name][1] in error, (name, error)
            assert not (tmp_path / name.replace(" ", "_")).exists()  # nothing was built
        deadline = time.monotonic() + 120
        while "TF_CONFIG is not set" not in alone_log.read_text():
            assert alone.poll() is None and time.monotonic() < deadline, alone_log.read_text()[-3000:]
            time.sleep(0.1)
        [warning] = [line for line in alone_log.read_text().splitlines() if "TF_CONFIG" in line]
        assert " WARNING " in warning and "training as a single worker" in warning
    finally:
        for process in [p for p, _ in started.values()] + [alone]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
