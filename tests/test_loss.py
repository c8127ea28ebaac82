"""The training loss over parallel sub-batches and the CPU thread layout (the cross-entropy kernels
themselves are tested in tests/test_model.py)."""
import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.core.config import TrainerConfig
from components.core.threads import MIN_ROWS_PER_SUB_BATCH, cpu_cores, resolve_sub_batches
from components.model import Seq2Seq
from components.trainer.loss import split_batch, token_loss

REPO = Path(__file__).resolve().parents[1]

# Five rows: target lengths 3, 5, 2, 4, 1 (source lengths 2, 4, 1, 3, 1), padded to 5.
BATCH = {
    "source_ids": tf.constant([[4, 5, 0, 0], [6, 7, 8, 9], [10, 0, 0, 0], [4, 4, 5, 0], [7, 0, 0, 0]], tf.int64),
    "source_length": tf.constant([2, 4, 1, 3, 1], tf.int64),
    "target_input": tf.constant([[1, 4, 5, 0, 0], [1, 6, 7, 8, 9], [1, 10, 0, 0, 0], [1, 4, 4, 5, 0],
                                 [1, 0, 0, 0, 0]], tf.int64),
    "target_output": tf.constant([[4, 5, 2, 0, 0], [6, 7, 8, 9, 2], [10, 2, 0, 0, 0], [4, 4, 5, 2, 0],
                                  [2, 0, 0, 0, 0]], tf.int64),
    "target_length": tf.constant([3, 5, 2, 4, 1], tf.int64),
}


def test_split_batch_deals_rows_by_length_and_cuts_each_part():
    first, second = split_batch(BATCH, 2)
    # Longest first: rows 1 (5), 3 (4), 0 (3), 2 (2), 4 (1); dealt alternately.
    assert first["target_length"].numpy().tolist() == [5, 3, 1]
    assert second["target_length"].numpy().tolist() == [4, 2]
    assert first["source_ids"].numpy().tolist() == [[6, 7, 8, 9], [4, 5, 0, 0], [7, 0, 0, 0]]
    assert second["source_ids"].numpy().tolist() == [[4, 4, 5], [10, 0, 0]]  # cut to its longest source
    assert second["target_output"].numpy().tolist() == [[4, 4, 5, 2], [10, 2, 0, 0]]
    assert split_batch(BATCH, 1)[0] is BATCH


def test_split_batch_of_one_row_leaves_an_empty_part():
    one = {name: value[:1] for name, value in BATCH.items()}
    first, second = split_batch(one, 2)
    assert first["target_length"].numpy().tolist() == [3]
    assert second["source_ids"].shape[0] == 0


@pytest.mark.parametrize("attention", ["bahdanau", "none"])
def test_sub_batches_give_the_whole_batch_loss_and_gradients(attention):
    model = Seq2Seq(12, 12, embedding_dim=6, units=8, attention=attention, seed=1)

    @tf.function
    def loss_and_grads(batch, parts):
        with tf.GradientTape() as tape:
            loss, tokens, correct = token_loss(model, batch, parts)
        return loss, tokens, correct, tape.gradient(loss, model.trainable_variables)

    whole = loss_and_grads(BATCH, 1)
    split = loss_and_grads(BATCH, 2)
    assert whole[1].numpy() == split[1].numpy() == 15.0  # real target tokens: 3 + 5 + 2 + 4 + 1
    np.testing.assert_allclose(split[0].numpy(), whole[0].numpy(), rtol=1e-5)
    assert split[2].numpy() == whole[2].numpy()
    for a, b in zip(whole[3], split[3]):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(), atol=1e-5)
    direct = model.compute_loss(BATCH)
    np.testing.assert_allclose(whole[0].numpy(), direct.loss.numpy(), rtol=1e-6)
    one_row = {name: value[1:2] for name, value in BATCH.items()}
    loss, tokens, _, _ = loss_and_grads(one_row, 2)  # one part is empty
    assert tokens.numpy() == 5.0 and np.isfinite(loss.numpy())


def test_sub_batches_resolve_to_one_per_core_on_the_cpu():
    auto = TrainerConfig()
    assert resolve_sub_batches(auto) == max(1, min(cpu_cores(), 64 // MIN_ROWS_PER_SUB_BATCH))
    assert resolve_sub_batches(dataclasses.replace(auto, batch_size=4)) == 1  # too few rows to split
    assert resolve_sub_batches(dataclasses.replace(auto, distribution="mirrored")) == 1  # replicas split
    assert resolve_sub_batches(dataclasses.replace(auto, sub_batches=3)) == 3


def test_configure_cpu_threads_gives_each_sub_batch_a_core_in_a_fresh_process():
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from components.core.config import TrainerConfig
        from components.core.threads import configure_cpu_threads
        import tensorflow as tf
        parts = configure_cpu_threads(TrainerConfig(sub_batches=2))
        print(parts, tf.config.threading.get_intra_op_parallelism_threads(),
              tf.config.threading.get_inter_op_parallelism_threads())
        tf.constant(1.0) + 1.0  # TensorFlow is running now: the pools are fixed
        print(configure_cpu_threads(TrainerConfig(sub_batches=4)))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["2", "1", "2", "4"]
