"""The trainer on real preprocess outputs: acceptance on the seed corpus, layout, metrics,
TensorBoard, early stopping, the input pipeline and the optimizer."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.core.artifacts import PreprocessArtifact
from components.core.config import TrainerConfig
from components.core.vocabulary import EOS_ID
from components.model import greedy_decode
from components.model.checkpoints import restore_model
from components.trainer import run_training
from components.trainer.data import bucket_boundaries, make_dataset
from components.trainer.optimizer import Adam, clip_by_global_norm, learning_rate
from tests.trainer_helpers import SEED_TSV, config, encode, preprocess, seed_pairs, synthetic_corpus


@pytest.fixture(scope="module")
def seed_examples(tmp_path_factory):
    return preprocess(SEED_TSV, tmp_path_factory.mktemp("seed") / "prep", config())


@pytest.fixture(scope="module")
def toy_examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    cfg = config("preprocess.eval_fraction=0.2", "preprocess.max_source_length=8",
                 "preprocess.max_target_length=10")
    return preprocess(synthetic_corpus(root / "toy.tsv", 60), root / "prep", cfg)


def event_tags(directory: Path) -> set[str]:
    tags = set()
    for path in directory.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value)
    return tags


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["bahdanau", "luong", "none"])
def test_seed_acceptance_greedy_decoding_reproduces_every_target(seed_examples, tmp_path, attention):
    out = tmp_path / "train"
    metrics = run_training(str(seed_examples), str(out), config(f"model.attention={attention}"))

    model, cfg, artifact = restore_model(str(out))
    assert (cfg.model.attention, cfg.model.units, cfg.trainer.epochs) == (attention, 32, 100)
    sources, targets = zip(*seed_pairs())
    ids, lengths = encode(artifact.vocabulary("source"), sources)
    result = greedy_decode(model, tf.constant(ids, tf.int64), tf.constant(lengths, tf.int64),
                           cfg.preprocess.max_target_length)
    target_vocab = artifact.vocabulary("target")
    for row, target in enumerate(targets):
        n = int(result["length"][row])
        decoded = result["token_ids"][row, :n].numpy().tolist()
        assert decoded[-1] == EOS_ID
        assert " ".join(target_vocab.lookup(decoded[:-1])) == target

    assert metrics["steps"] == 100 and metrics["epochs"] == 100  # 4 pairs, batch 4: one step per epoch
    assert metrics["token_accuracy"] == 1.0 and metrics["best_eval_loss"] < 0.1
    assert metrics["train_tokens_per_second"] > 0
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("final_eval_loss", "best_eval_loss", "token_accuracy", "steps", "epochs", "wall_time_s",
                "train_tokens_per_second"):
        assert on_disk[key] == pytest.approx(metrics[key])
    history = on_disk["history"]
    assert [h["epoch"] for h in history] == list(range(1, 101))
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 10
    assert {"train_loss", "eval_loss", "token_accuracy"} <= set(history[0])
    assert json.loads((out / "inputs.json").read_text())["examples"] == str(seed_examples)
    assert "attention: " + attention in (out / "config.yaml").read_text()
    assert len(list((out / "checkpoints").glob("ckpt-*.index"))) == 3  # trainer.keep_checkpoints
    assert tf.train.latest_checkpoint(str(out / "best")) is not None
    tags = event_tags(out / "tensorboard")
    assert {"eval/loss", "eval/token_accuracy", "train/loss", "train/learning_rate"} <= tags


@pytest.mark.slow
def test_early_stopping_keeps_the_best_checkpoint(toy_examples, tmp_path):
    # A learning rate this large makes the eval loss climb after the first epoch.
    cfg = config("trainer.learning_rate=3.0", "trainer.clip_norm=0", "trainer.early_stopping_patience=2",
                 "trainer.epochs=30", "trainer.batch_size=16", "model.units=16", "model.embedding_dim=8")
    metrics = run_training(str(toy_examples), str(tmp_path / "t"), cfg)
    assert metrics["stopped_early"] is True
    assert metrics["epochs"] == metrics["best_epoch"] + 2 < 30
    best = tf.train.latest_checkpoint(str(tmp_path / "t" / "best"))
    reader = tf.train.load_checkpoint(best)
    assert reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == metrics["best_epoch"]
    # Running again does nothing: the run is finished.
    again = run_training(str(toy_examples), str(tmp_path / "t"), cfg)
    assert again["steps"] == metrics["steps"] and again["epochs"] == metrics["epochs"]


def test_a_budget_spent_by_an_epoch_end_evaluation_stops_at_that_epoch(toy_examples, tmp_path, monkeypatch):
    """The evaluation at an epoch's end can itself spend the time budget: training stops there,
    without a step of the next epoch and a second evaluation."""
    from components.trainer.training import Trainer

    end_epoch = Trainer._end_epoch

    def end_epoch_spending_the_budget(self, *args):
        entry = end_epoch(self, *args)
        self.previous_wall_time += 3600.0  # as if this evaluation had taken an hour
        return entry

    monkeypatch.setattr(Trainer, "_end_epoch", end_epoch_spending_the_budget)
    cfg = config("trainer.epochs=5", "trainer.batch_size=64", "trainer.max_minutes=30", "model.units=8",
                 "model.embedding_dim=4")
    metrics = run_training(str(toy_examples), str(tmp_path / "t"), cfg)
    assert metrics["time_budget_spent"] is True
    assert [h["epoch"] for h in metrics["history"]] == [1] and metrics["epochs"] == 1
    assert metrics["steps"] == 1  # one batch of 64 holds the whole train split


def test_batches_are_cut_to_their_longest_sequence_and_cover_the_split(toy_examples):
    artifact = PreprocessArtifact.load(str(toy_examples))
    files = artifact.split_files("train")
    total = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    for bucketed in (False, True):
        seen = 0
        for batch in make_dataset(files, artifact, 8, training=True, seed=1, bucket_by_length=bucketed):
            assert batch["source_ids"].shape[1] == int(tf.reduce_max(batch["source_length"]))
            assert batch["target_input"].shape[1] == int(tf.reduce_max(batch["target_length"]))
            assert batch["target_output"].shape == batch["target_input"].shape
            seen += batch["source_ids"].shape[0]
        assert seen == total
    first = [b["source_ids"].numpy().tolist() for b in make_dataset(files, artifact, 8, training=True, seed=4)]
    again = [b["source_ids"].numpy().tolist() for b in make_dataset(files, artifact, 8, training=True, seed=4)]
    other = [b["source_ids"].numpy().tolist() for b in make_dataset(files, artifact, 8, training=True, seed=5)]
    assert first == again and first != other
    assert bucket_boundaries(34) == [4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 28, 32]
    assert bucket_boundaries(70)[-4:] == [44, 48, 56, 64]


def test_adam_matches_the_reference_update():
    var = tf.Variable([1.0, -2.0])
    adam = Adam([var])
    m = v = np.zeros(2)
    expected = np.array([1.0, -2.0])
    for step, grad in enumerate([np.array([0.5, -1.0]), np.array([0.1, 0.3])], start=1):
        adam.apply([tf.constant(grad, tf.float32)], [var], tf.constant(0.01))
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad ** 2
        alpha = 0.01 * math.sqrt(1 - 0.999 ** step) / (1 - 0.9 ** step)
        expected = expected - alpha * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-5)
    assert int(adam.iterations.numpy()) == 2


def test_clip_by_global_norm_scales_only_when_the_norm_exceeds_it():
    grads = [tf.constant([3.0, 0.0]), tf.constant([[0.0], [4.0]])]  # global norm 5
    norm = tf.linalg.global_norm(grads)
    clipped = clip_by_global_norm(grads, norm, 1.0)
    np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped[1].numpy(), [[0.0], [0.8]], rtol=1e-6)
    for clip_norm in (5.0, 10.0, 0.0):  # at or under the norm, or off: the gradients as they were
        kept = clip_by_global_norm(grads, norm, clip_norm)
        assert [g.numpy().tolist() for g in kept] == [[3.0, 0.0], [[0.0], [4.0]]]


def test_learning_rate_schedules():
    def rate(step, **kw):
        return float(learning_rate(TrainerConfig(learning_rate=0.1, **kw), step, 100))

    assert rate(50) == pytest.approx(0.1)
    assert rate(0, warmup_steps=10) == pytest.approx(0.01) and rate(9, warmup_steps=10) == pytest.approx(0.1)
    assert rate(0, lr_schedule="cosine") == pytest.approx(0.1)
    assert rate(50, lr_schedule="cosine") == pytest.approx(0.05, abs=1e-6)
    assert rate(100, lr_schedule="cosine") == pytest.approx(0.0, abs=1e-7)
    assert rate(99, lr_schedule="inverse_sqrt", warmup_steps=25) == pytest.approx(0.1 * math.sqrt(25 / 100))
