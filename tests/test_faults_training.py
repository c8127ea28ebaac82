"""Training faults: a diverging run, NaN weights in a checkpoint, a cut checkpoint, an unwritable
checkpoint folder. Real Beam preprocessing, real training of a tiny model, real files."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import tensorflow as tf

from components.core.artifacts import PreprocessArtifact
from components.core.errors import ArtifactError, UserError
from components.trainer import run_training
from components.trainer.data import make_dataset
from pipeline.cli import main
from tests.trainer_helpers import EMBEDDED, config, preprocess, synthetic_corpus

TOY = ("preprocess.eval_fraction=0.2", "preprocess.max_source_length=8", "preprocess.max_target_length=10")
SMALL = ("trainer.batch_size=8", "model.units=16", "model.embedding_dim=8", "trainer.log_every_steps=1")
POISON_TOKEN = "w3"


@pytest.fixture(scope="module")
def toy_examples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    return preprocess(synthetic_corpus(root / "toy.tsv", 60), root / "prep", config(*TOY))


@pytest.fixture(scope="module")
def trained(toy_examples, tmp_path_factory) -> Path:
    """A cleanly trained 2-epoch run (checkpoints/ckpt-N, ckpt-2N and best/); copy it before changing it."""
    out = tmp_path_factory.mktemp("trained") / "train"
    run_training(str(toy_examples), str(out), config(*TOY, *SMALL, "trainer.epochs=2"))
    return out


def cfg(*extra: str):
    return config(*TOY, *SMALL, *extra)


def steps_per_epoch(examples: Path) -> int:
    return -(-json.loads((examples / "stats.json").read_text())["records_written"]["train"] // 8)


def tensor(prefix: str, name: str) -> np.ndarray:
    return tf.train.load_checkpoint(prefix).get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def train_cli(examples: Path, out: Path, *overrides: str) -> int:
    argv = ["train", "--examples", str(examples), "--out", str(out), "--config", EMBEDDED]
    for override in (*TOY, *SMALL, *overrides):
        argv += ["--set", override]
    return main(argv)


# ---------------------------------------------------------------- 1. non-finite loss / gradients


@pytest.mark.slow
def test_faults_a_diverging_run_stops_with_the_step(toy_examples, trained, tmp_path, caplog):
    """Every weight of the source embedding is NaN in the checkpoint the run resumes from, so the
    first step's loss is NaN whatever the CPU's float path (a huge learning rate overflowed on some
    CPUs only). Before the check: the run went on to the end with loss nan (exit 0)."""
    out = tmp_path / "train"
    shutil.copytree(trained, out)
    variable, _, step = poison_latest_checkpoint(toy_examples, out, token=None)
    caplog.clear()
    assert train_cli(toy_examples, out, "trainer.epochs=3") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert re.search(rf"training diverged at step {step + 1}: non-finite loss (nan|inf)", errors[0]), errors[0]
    assert "trainer.on_nonfinite=skip_batch" in errors[0]
    assert f"learning_rate ({cfg().trainer.learning_rate:g})" in errors[0]
    assert f"the weights already hold NaN/inf ({variable})" in errors[0]
    # Nothing was saved after the last good step: the newest checkpoint is the one it resumed from.
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith(f"ckpt-{step}")


def poison_latest_checkpoint(examples: Path, train_dir: Path, token: Optional[str] = POISON_TOKEN
                             ) -> tuple[str, Optional[int], int]:
    """Write NaN into the source embedding row of TOKEN (None: every row) in the newest checkpoint
    (as a run from before this check, or a broken warm start, would have left it): (variable, token
    id, step)."""
    from components.trainer.training import Trainer

    trainer = Trainer(str(examples), str(train_dir), cfg("trainer.epochs=2"))
    trainer._build_state()
    assert trainer._resume()
    embedding = trainer.model.source_embedding
    if token is None:
        token_id = None
        embedding.assign(tf.fill(embedding.shape, float("nan")))
    else:
        token_id = trainer.artifact.vocabulary("source").ids([token])[0]
        embedding[token_id].assign(tf.fill([embedding.shape[1]], float("nan")))
    step = int(trainer.step.numpy())
    trainer.manager.save(checkpoint_number=trainer.step)  # overwrites checkpoints/ckpt-<step>
    return embedding.name.split(":")[0], token_id, step


def poisoned_steps(examples: Path, token_id: int, first_epoch: int, epochs: int) -> list[int]:
    """The global steps whose batch contains TOKEN_ID: the trainer's own batches (same seeds)."""
    t = cfg().trainer
    artifact = PreprocessArtifact.load(str(examples))
    files, per_epoch, steps = artifact.split_files("train"), steps_per_epoch(examples), []
    tf.random.set_seed(t.seed)  # run_training sets it; the shuffle seeds pair with it
    for epoch in range(first_epoch, epochs):
        dataset = make_dataset(files, artifact, t.batch_size, training=True, seed=t.seed + epoch,
                               shuffle_buffer=t.shuffle_buffer, bucket_by_length=t.bucket_by_length, prefetch=False)
        for index, batch in enumerate(dataset):
            if np.any(batch["source_ids"].numpy() == token_id):
                steps.append(epoch * per_epoch + index + 1)
    return steps


@pytest.mark.slow
def test_faults_nan_weights_fail_by_default_and_skip_batch_skips_exactly_those_batches(
        toy_examples, trained, tmp_path, caplog):
    poisoned = tmp_path / "poisoned"
    shutil.copytree(trained, poisoned)
    variable, token_id, step = poison_latest_checkpoint(toy_examples, poisoned)
    per_epoch = steps_per_epoch(toy_examples)
    assert step == 2 * per_epoch
    expected = poisoned_steps(toy_examples, token_id, 2, 4)
    assert 0 < len(expected) < 2 * per_epoch  # some batches, not all

    # on_nonfinite: fail (the default): stops at the first batch with the token, naming the step
    # and the broken weights; the checkpoint on disk is still the one it resumed from.
    failing = tmp_path / "fail"
    shutil.copytree(poisoned, failing)
    with pytest.raises(UserError, match=rf"training diverged at step {expected[0]}: non-finite loss") as error:
        run_training(str(toy_examples), str(failing), cfg("trainer.epochs=4"))
    assert error.value.exit_code == 1
    assert f"the weights already hold NaN/inf ({variable})" in str(error.value)
    assert tf.train.latest_checkpoint(str(failing / "checkpoints")).endswith(f"ckpt-{step}")

    # skip_batch: exactly those batches are skipped (warned, counted), their updates not applied.
    skipping = tmp_path / "skip"
    shutil.copytree(poisoned, skipping)
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="components.trainer.training")
    metrics = run_training(str(toy_examples), str(skipping), cfg("trainer.epochs=4",
                                                                 "trainer.on_nonfinite=skip_batch"))
    warned = [int(m.group(1)) for m in re.finditer(r"step (\d+): non-finite loss \S+, gradient norm \S+; batch "
                                                   r"skipped", caplog.text)]
    assert warned == expected
    assert metrics["steps"] == 4 * per_epoch and metrics["skipped_batches"] == len(expected)
    assert [h["skipped_batches"] for h in metrics["history"]] == \
        [0, 0] + [sum(1 for s in expected if e * per_epoch < s <= (e + 1) * per_epoch) for e in (2, 3)]
    saved = json.loads((skipping / "metrics.json").read_text())
    assert saved["skipped_batches"] == len(expected)
    latest = tf.train.latest_checkpoint(str(skipping / "checkpoints"))
    # Adam counts the updates it applied: every step but the skipped ones.
    assert int(tensor(latest, "optimizer/iterations")) == 4 * per_epoch - len(expected)
    embedding = tensor(latest, "model/source_embedding")
    assert np.isnan(embedding[token_id]).all() and np.isfinite(np.delete(embedding, token_id, axis=0)).all()
    assert not np.array_equal(tensor(latest, "model/output_bias"), tensor(f"{poisoned}/checkpoints/ckpt-{step}",
                                                                          "model/output_bias"))  # it trained


# ---------------------------------------------------------------- 2. a cut checkpoint


@pytest.mark.slow
def test_faults_a_cut_latest_checkpoint_is_skipped_for_the_newest_readable_one(toy_examples, trained, tmp_path,
                                                                               caplog):
    """Before: every rerun failed with "IndexError: Read less bytes than requested", naming no file."""
    per_epoch = steps_per_epoch(toy_examples)
    out = tmp_path / "train"
    shutil.copytree(trained, out)
    cut = [out / "checkpoints" / f"ckpt-{2 * per_epoch}", *(out / "best").glob(f"ckpt-{2 * per_epoch}.index")]
    for prefix in cut:
        cut_in_half(Path(str(prefix).removesuffix(".index") + ".data-00000-of-00001"))
    caplog.set_level(logging.INFO)
    metrics = run_training(str(toy_examples), str(out), cfg("trainer.epochs=3"))
    assert f"skipping the unreadable checkpoint {out}/checkpoints/ckpt-{2 * per_epoch} (IndexError: Read less " \
           "bytes than requested)" in caplog.text
    assert f"resuming from {out}/checkpoints/ckpt-{per_epoch}: step {per_epoch}, epoch 1" in caplog.text
    assert metrics["steps"] == 3 * per_epoch and [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert int(tensor(tf.train.latest_checkpoint(str(out / "checkpoints")), "step")) == 3 * per_epoch


@pytest.mark.slow
def test_faults_no_readable_checkpoint_restarts_training_from_scratch(toy_examples, trained, tmp_path, caplog):
    per_epoch = steps_per_epoch(toy_examples)
    out = tmp_path / "train"
    shutil.copytree(trained, out)
    for data in [*out.glob("checkpoints/*.data-*"), *out.glob("best/*.data-*")]:
        cut_in_half(data)
    caplog.set_level(logging.INFO)
    metrics = run_training(str(toy_examples), str(out), cfg("trainer.epochs=1"))
    assert f"no readable checkpoint in {out} (" in caplog.text and "training starts from scratch" in caplog.text
    assert "resuming from" not in caplog.text
    assert metrics["steps"] == per_epoch and [h["epoch"] for h in metrics["history"]] == [1]


@pytest.mark.slow
def test_faults_export_restores_the_newest_readable_checkpoint(toy_examples, trained, tmp_path, caplog):
    """best/ is cut: export falls back to checkpoints/, newest first, and the card names the one used."""
    from components.exporter import run_export

    per_epoch = steps_per_epoch(toy_examples)
    out = tmp_path / "train"
    shutil.copytree(trained, out)
    [best] = out.glob("best/*.index")
    cut_in_half(Path(str(best).removesuffix(".index") + ".data-00000-of-00001"))
    cut_in_half(out / "checkpoints" / f"ckpt-{2 * per_epoch}.index")
    caplog.set_level(logging.INFO)
    export = run_export(str(out), str(tmp_path / "export"))
    assert f"skipping the unreadable checkpoint {str(best).removesuffix('.index')}" in caplog.text
    assert f"skipping the unreadable checkpoint {out}/checkpoints/ckpt-{2 * per_epoch}" in caplog.text
    card = json.loads((Path(export) / "assets" / "model_card.json").read_text())
    assert card["checkpoint"] == f"{out}/checkpoints/ckpt-{per_epoch}"
    restored = tf.train.load_checkpoint(f"{export}/variables/variables")
    key = next(k for k in restored.get_variable_to_shape_map() if k.endswith("output_bias/.ATTRIBUTES/VARIABLE_VALUE"))
    np.testing.assert_array_equal(restored.get_tensor(key), tensor(card["checkpoint"], "model/output_bias"))

    # With nothing readable, the error names every checkpoint it tried.
    for data in out.glob("checkpoints/*.data-*"):
        cut_in_half(data)
    with pytest.raises(ArtifactError, match=rf"no readable checkpoint in {out}/best or {out}/checkpoints: "
                                            rf".*ckpt-{per_epoch}: IndexError"):
        run_export(str(out), str(tmp_path / "export2"))


# ---------------------------------------------------------------- 4. a checkpoint that cannot be written


@pytest.mark.slow
def test_faults_an_unwritable_checkpoint_folder_is_named_as_such(toy_examples, tmp_path, caplog):
    """A regular file where checkpoints/ should be (works as root, unlike chmod). Before: reported as
    "cannot read the TFRecords in ...: .../checkpoints is not a directory"."""
    out = tmp_path / "train"
    out.mkdir()
    (out / "checkpoints").write_text("not a folder")
    assert train_cli(toy_examples, out, "trainer.epochs=1", "trainer.checkpoint_every_steps=2") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"cannot write a checkpoint to {out}/checkpoints: ")
    assert "not a directory" in errors[0] and "TFRecords" not in errors[0]


def test_faults_the_write_error_names_a_full_disk():
    from components.trainer.training import write_error

    full = write_error("/x/checkpoints", tf.errors.ResourceExhaustedError(None, None, "write failed"))
    assert str(full) == ("cannot write a checkpoint to /x/checkpoints: write failed (the disk is full: free space, "
                         "then run the same command again to resume)")
    assert "the disk is full" in str(write_error("/x", OSError(28, "No space left on device")))
    assert isinstance(full, ArtifactError) and full.exit_code == 1
