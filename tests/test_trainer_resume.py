"""Resume after a kill, save on SIGTERM, mirrored distribution, and clear errors for bad input."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tensorflow as tf

from components.core.checkpoint_files import checkpoint_number, checkpoint_prefixes, first_readable
from components.core.errors import ArtifactError
from components.model.checkpoints import restore_model
from components.trainer import run_training
from tests.trainer_helpers import REPO, SEED_TSV, config, preprocess, synthetic_corpus

TOY = ("preprocess.eval_fraction=0.2", "preprocess.max_source_length=8", "preprocess.max_target_length=10")
SMALL = ("trainer.batch_size=8", "model.units=16", "model.embedding_dim=8", "trainer.log_every_steps=1")


@pytest.fixture(scope="module")
def toy_examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return preprocess(synthetic_corpus(root / "toy.tsv", 60), root / "prep", config(*TOY))


@pytest.fixture(scope="module")
def seed_examples(tmp_path_factory):
    return preprocess(SEED_TSV, tmp_path_factory.mktemp("seed") / "prep", config())


def checkpoint_value(path: str, name: str) -> int:
    return int(tf.train.load_checkpoint(path).get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))


def latest_step(out: Path) -> int:
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    return checkpoint_value(latest, "step") if latest else -1


def start_training(examples: Path, out: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline.cli", "train", "--examples", str(examples), "--out", str(out),
               "--config", str(REPO / "pipeline" / "embedded.yaml"), "--set", "trainer.epochs=5000"]
    for override in SMALL:
        command += ["--set", override]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "training exited early"
        assert time.monotonic() < deadline, "timed out waiting for the training subprocess"
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_run_resumes_and_sigterm_saves_before_exit(toy_examples, tmp_path, caplog):
    out = tmp_path / "train"
    train_pairs = json.loads((toy_examples / "stats.json").read_text())["records_written"]["train"]
    STEPS_PER_EPOCH = -(-train_pairs // 8)  # noqa: N806 (batch size 8)
    # 1. A hard kill: the run can only resume from its last (end-of-epoch) checkpoint.
    first = start_training(toy_examples, out, tmp_path / "first.log")
    wait_for(lambda: latest_step(out) >= 2 * STEPS_PER_EPOCH, first)
    first.kill()
    first.wait()
    # What a restart resumes from: the newest readable checkpoint of checkpoints/ and best/. The kill
    # may land after a checkpoint's files are written but before the manager's state file names it
    # (or between best/ and checkpoints/), so `latest_step` can lag behind it.
    resume_path, _ = first_readable(sorted(checkpoint_prefixes(str(out / "checkpoints"))
                                           + checkpoint_prefixes(str(out / "best")),
                                           key=checkpoint_number, reverse=True))
    killed_at = checkpoint_value(resume_path, "step")
    assert killed_at > 0 and killed_at % STEPS_PER_EPOCH == 0

    # 2. Restart: it resumes from that checkpoint; SIGTERM mid-epoch saves one more and exits.
    second = start_training(toy_examples, out, tmp_path / "second.log")
    wait_for(lambda: latest_step(out) > killed_at, second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 128 + signal.SIGTERM
    log = (tmp_path / "second.log").read_text()
    assert f"resuming from {resume_path}: step {killed_at}" in log
    assert "stopped by SIGTERM at step" in log and "Traceback" not in log
    stopped_at = int(log.split("stopped by SIGTERM at step ")[1].split(";")[0])
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert checkpoint_value(latest, "step") == stopped_at > killed_at
    assert checkpoint_value(latest, "optimizer/iterations") == stopped_at  # optimizer state travels along

    # 3. Resume in-process to a nearby end: only the remaining steps are trained.
    epochs = stopped_at // STEPS_PER_EPOCH + 2
    caplog.set_level(logging.INFO, logger="components.trainer.training")
    metrics = run_training(str(toy_examples), str(out), config(*TOY, *SMALL, f"trainer.epochs={epochs}"))
    assert f"ckpt-{stopped_at}: step {stopped_at}, epoch " in caplog.text
    assert metrics["steps"] == epochs * STEPS_PER_EPOCH and metrics["epochs"] == epochs
    assert metrics["history"][-1]["epoch"] == epochs
    # Step progress lines only: when SIGTERM landed on an epoch's last batch, the resumed run first
    # evaluates that epoch, and its end-of-epoch line (with eval_loss) names step `stopped_at`.
    trained_now = [r for r in caplog.records if r.getMessage().startswith("epoch ") and " (" in r.getMessage()
                   and "eval_loss" not in r.getMessage()]
    assert int(trained_now[0].getMessage().split(" step ")[1].split()[0]) == stopped_at + 1


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from components.trainer import run_training
    from tests.trainer_helpers import config
    examples, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    result = {}
    for name, distribution in (("none", "none"), ("again", "none"), ("mirrored", "mirrored")):
        m = run_training(examples, f"{out}/{name}", config(*overrides, f"trainer.distribution={distribution}"))
        result[name] = {"replicas": m["replicas"], "history": m["history"]}
    print("RESULT " + json.dumps(result))
""")


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_single_device(toy_examples, tmp_path):
    overrides = [*TOY, *SMALL, "trainer.epochs=3", "trainer.log_every_steps=100"]
    run = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(toy_examples), str(tmp_path), *overrides],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["none"]["replicas"] == 1 and result["mirrored"]["replicas"] == 2
    for key in ("train_loss", "eval_loss", "token_accuracy"):
        single = [h[key] for h in result["none"]["history"]]
        assert [h[key] for h in result["again"]["history"]] == pytest.approx(single, rel=1e-6)  # seeded
        assert [h[key] for h in result["mirrored"]["history"]] == pytest.approx(single, rel=2e-3, abs=1e-4)
    assert result["none"]["history"][-1]["train_loss"] < result["none"]["history"][0]["train_loss"]


# ---------------------------------------------------------------- bad input


def copy_examples(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_tfrecords_is_a_clear_error(seed_examples, tmp_path):
    examples = copy_examples(seed_examples, tmp_path / "prep")
    for shard in examples.glob("train-*.tfrecord.gz"):
        shard.unlink()
    with pytest.raises(ArtifactError, match=r"no train TFRecords in .*train-\*-of-\*\.tfrecord\.gz"):
        run_training(str(examples), str(tmp_path / "t"), config("trainer.epochs=1"))


def test_corrupt_tfrecord_names_the_shard(seed_examples, tmp_path):
    examples = copy_examples(seed_examples, tmp_path / "prep")
    shard = sorted(examples.glob("train-*.tfrecord.gz"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated gzip
    with pytest.raises(ArtifactError, match=f"unreadable TFRecord shard {shard}"):
        run_training(str(examples), str(tmp_path / "t"), config("trainer.epochs=1"))


def test_vocabulary_with_wrong_special_ids_is_a_clear_error(seed_examples, tmp_path):
    examples = copy_examples(seed_examples, tmp_path / "prep")
    vocab = examples / "target.vocab"
    lines = vocab.read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # <eos> where <bos> belongs
    vocab.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"target\.vocab.*must start with <pad>, <bos>, <eos>, <unk>"):
        run_training(str(examples), str(tmp_path / "t"), config("trainer.epochs=1"))


def test_config_that_does_not_match_the_checkpoint_is_a_clear_error(seed_examples, tmp_path):
    out = tmp_path / "t"
    run_training(str(seed_examples), str(out), config("trainer.epochs=1", "model.units=8"))
    with pytest.raises(ArtifactError, match=r"model\.units 8 -> 16.*new --out"):
        run_training(str(seed_examples), str(out), config("trainer.epochs=2", "model.units=16"))
    # A checkpoint whose variables do not fit the recorded config (edited by hand) is caught on restore.
    text = (out / "config.yaml").read_text().replace("units: 8", "units: 12")
    (out / "config.yaml").write_text(text)
    with pytest.raises(ArtifactError, match="does not match the model built from the config"):
        restore_model(str(out))


def test_restore_model_without_checkpoints_or_folder(tmp_path, seed_examples):
    with pytest.raises(ArtifactError, match="not a training folder"):
        restore_model(str(tmp_path / "nothing"))
    out = tmp_path / "t"
    out.mkdir()
    (out / "config.yaml").write_text(config().to_yaml())
    (out / "inputs.json").write_text(json.dumps({"examples": str(seed_examples)}))
    with pytest.raises(ArtifactError, match="no checkpoint in"):
        restore_model(str(out))


def test_cli_reports_bad_input_in_one_line(tmp_path, caplog):
    from pipeline.cli import main

    code = main(["train", "--examples", str(tmp_path / "missing"), "--out", str(tmp_path / "t")])
    assert code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "does not exist" in errors[0].getMessage()
    assert errors[0].exc_info is None


def test_stop_between_an_epochs_last_step_and_its_evaluation_resumes_that_epoch(seed_examples, tmp_path,
                                                                                 monkeypatch):
    """The seed corpus is one step per epoch: a SIGTERM after step 2 lands before epoch 2's evaluation."""
    from components.trainer import TrainingInterrupted
    from components.trainer.training import Trainer

    original = Trainer._after_step

    def after_step(self, *args):
        if int(self.step.numpy()) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer: save, then stop
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_after_step", after_step)
    out = tmp_path / "t"
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 2") as stopped:
        run_training(str(seed_examples), str(out), config("trainer.epochs=3"))
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert [checkpoint_value(latest, k) for k in ("step", "epoch", "step_in_epoch")] == [2, 1, 1]

    monkeypatch.setattr(Trainer, "_after_step", original)
    metrics = run_training(str(seed_examples), str(out), config("trainer.epochs=3"))
    assert metrics["steps"] == 3 and metrics["epochs"] == 3
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]  # epoch 2 was evaluated after the restart
