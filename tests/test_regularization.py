"""The quality recipe's model pieces on in-memory tensors: label smoothing, the bidirectional encoder,
dropout and word dropout (training only), and the learning-rate schedule fitted to a time budget."""
import math

import numpy as np
import pytest
import tensorflow as tf

from components.core.config import TrainerConfig
from components.core.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from components.model import FAST, REFERENCE, Seq2Seq, greedy_decode
from components.model.seq2seq import Noise
from components.trainer.optimizer import learning_rate

SOURCE = tf.constant([[5, 6, 7, 8], [4, 9, 0, 0], [7, 0, 0, 0]], tf.int64)
SOURCE_LENGTH = tf.constant([4, 2, 1], tf.int64)
BATCH = {
    "source_ids": SOURCE,
    "source_length": SOURCE_LENGTH,
    "target_input": tf.constant([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 9, 2, 0]], tf.int64),
    "target_output": tf.constant([[5, 6, 7, 2, 0], [8, 2, 0, 0, 0], [9, 9, 2, 0, 0]], tf.int64),
    "target_length": tf.constant([4, 2, 3], tf.int64),
}
SEED = tf.constant([42, 7], tf.int64)


def model(attention="bahdanau", seed=3, **options) -> Seq2Seq:
    return Seq2Seq(12, 14, embedding_dim=6, units=10, attention=attention, seed=seed, **options)


def loss_and_gradients(net: Seq2Seq, kernels, **loss_options):
    with tf.GradientTape() as tape:
        sums = net.compute_loss(BATCH, kernels, **loss_options)
    return sums, [tf.convert_to_tensor(g) for g in tape.gradient(sums.loss, net.trainable_variables)]


# ---------------------------------------------------------------- label smoothing


def test_label_smoothing_is_the_cross_entropy_against_the_smoothed_targets():
    kernel = tf.random.stateless_normal([11, 6], [3, 4])
    bias = tf.random.stateless_normal([11], [5, 6])
    states = tf.random.stateless_normal([7, 6], [1, 2])
    labels = tf.constant([0, 3, 10, 4, 4, 7, 1], tf.int64)
    log_probs = tf.nn.log_softmax(tf.matmul(states, kernel, transpose_b=True) + bias).numpy()
    targets = np.full([7, 11], 0.1 / 11)
    targets[np.arange(7), labels.numpy()] += 0.9
    expected = -(targets * log_probs).sum(axis=1)
    sources = [states, kernel, bias]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(sources)
        fused, _ = FAST.cross_entropy(states, labels, kernel, bias, tf.float32, 0.1)
        reference, _ = REFERENCE.cross_entropy(states, labels, kernel, bias, tf.float32, 0.1)
        fused_sum, reference_sum = tf.reduce_sum(fused), tf.reduce_sum(reference)
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(reference.numpy(), expected, rtol=1e-5)
    for ours, theirs in zip(tape.gradient(fused_sum, sources), tape.gradient(reference_sum, sources)):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_label_smoothing_changes_the_training_loss_only_when_asked():
    net = model()
    plain, smoothed = net.compute_loss(BATCH), net.compute_loss(BATCH, label_smoothing=0.2)
    assert smoothed.loss.numpy() != plain.loss.numpy()
    assert smoothed.tokens.numpy() == plain.tokens.numpy() == 9.0
    assert net.compute_loss(BATCH, label_smoothing=0.0).loss.numpy() == plain.loss.numpy()


# ---------------------------------------------------------------- bidirectional encoder


@pytest.mark.parametrize("attention", ["bahdanau", "luong", "none"])
def test_bidirectional_fast_kernels_give_the_reference_loss_and_gradients(attention):
    net = model(attention, seed=4, bidirectional=True)
    (fast, fast_grads), (ref, ref_grads) = loss_and_gradients(net, FAST), loss_and_gradients(net, REFERENCE)
    np.testing.assert_allclose(fast.loss.numpy(), ref.loss.numpy(), rtol=1e-6)
    names = [v.name.split("/")[-1] for v in net.trainable_variables]
    assert {"backward_encoder_kernel:0", "backward_encoder_recurrent_kernel:0", "bridge_kernel:0",
            "bridge_bias:0"} <= set(names)
    for name, got, want in zip(names, fast_grads, ref_grads):
        assert np.any(want.numpy() != 0.0), name  # the backward GRU and the bridge are trained too
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


def test_bidirectional_adds_only_the_backward_gru_and_the_bridge():
    one_way = {v.name.split("/")[-1] for v in model().trainable_variables}
    two_way = {v.name.split("/")[-1] for v in model(bidirectional=True).trainable_variables}
    assert two_way - one_way == {"backward_encoder_kernel:0", "backward_encoder_recurrent_kernel:0",
                                 "backward_encoder_bias:0", "backward_encoder_recurrent_bias:0",
                                 "bridge_kernel:0", "bridge_bias:0"}
    assert one_way <= two_way


def test_bidirectional_states_of_a_row_do_not_depend_on_its_padding_or_its_batch():
    """The backward GRU reads each row's real tokens from its last one: a padded row encodes as it
    does alone, and its first state already depends on its last token."""
    net = model(bidirectional=True)
    batch = net.encode(SOURCE, SOURCE_LENGTH)
    for row, length in enumerate(SOURCE_LENGTH.numpy()):
        alone = net.encode(SOURCE[row:row + 1, :length], SOURCE_LENGTH[row:row + 1])
        np.testing.assert_allclose(batch.states[row, :length].numpy(), alone.states[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(batch.final_state[row].numpy(), alone.final_state[0].numpy(), atol=1e-6)
        assert np.all(batch.states[row, length:].numpy() == 0.0)
    changed_last = tf.constant([[5, 6, 7, 9]], tf.int64)
    first = net.encode(SOURCE[:1], SOURCE_LENGTH[:1]).states[0, 0]
    assert np.abs((net.encode(changed_last, SOURCE_LENGTH[:1]).states[0, 0] - first).numpy()).max() > 1e-4
    one_way = model()
    first = one_way.encode(SOURCE[:1], SOURCE_LENGTH[:1]).states[0, 0]
    np.testing.assert_array_equal(one_way.encode(changed_last, SOURCE_LENGTH[:1]).states[0, 0], first)


# ---------------------------------------------------------------- dropout and word dropout


def test_word_dropout_replaces_only_real_tokens_with_unk():
    ids = tf.constant(np.tile([BOS_ID, 5, 6, 7, 8, 9, 10, 11, EOS_ID, PAD_ID, PAD_ID], [1000, 1]), tf.int64)
    dropped = Noise(0.0, 0.3).seeded(SEED, 0).word_dropout(ids).numpy()
    original = ids.numpy()
    changed = dropped != original
    assert np.all(dropped[changed] == UNK_ID)
    assert not np.any(changed[:, [0, 8, 9, 10]])  # <bos>, <eos>, <pad> stay
    assert 0.27 < changed[:, 1:8].mean() < 0.33
    np.testing.assert_array_equal(Noise(0.0, 0.3).seeded(SEED, 0).word_dropout(ids).numpy(), dropped)
    np.testing.assert_array_equal(Noise(0.0, 0.3).word_dropout(ids).numpy(), original)  # unseeded: none


def test_dropout_and_word_dropout_change_training_outputs_only():
    noisy, clean = model(dropout=0.3, word_dropout=0.2), model()
    for a, b in zip(noisy.trainable_variables, clean.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # the rates create no variable
    # Without a training seed: the same numbers as the model without noise, every time.
    for kernels in (FAST, REFERENCE):
        np.testing.assert_array_equal(noisy.compute_loss(BATCH, kernels).loss.numpy(),
                                      clean.compute_loss(BATCH, kernels).loss.numpy())
    np.testing.assert_array_equal(noisy(SOURCE, SOURCE_LENGTH, BATCH["target_input"])[0].numpy(),
                                  clean(SOURCE, SOURCE_LENGTH, BATCH["target_input"])[0].numpy())
    decoded = [greedy_decode(m, SOURCE, SOURCE_LENGTH, 6) for m in (noisy, noisy, clean)]
    for other in decoded[1:]:
        np.testing.assert_array_equal(decoded[0]["token_ids"].numpy(), other["token_ids"].numpy())
        np.testing.assert_array_equal(decoded[0]["score"].numpy(), other["score"].numpy())
    # With one: a different loss, drawn deterministically from the seed.
    seeded = noisy.compute_loss(BATCH, seed=SEED).loss.numpy()
    assert seeded != clean.compute_loss(BATCH).loss.numpy()
    assert noisy.compute_loss(BATCH, seed=SEED).loss.numpy() == seeded
    assert noisy.compute_loss(BATCH, seed=SEED + 1).loss.numpy() != seeded
    assert clean.compute_loss(BATCH, seed=SEED).loss.numpy() == clean.compute_loss(BATCH).loss.numpy()


@pytest.mark.parametrize("options", [{"dropout": 0.3}, {"word_dropout": 0.3}], ids=["dropout", "word_dropout"])
def test_seeded_noise_keeps_fast_and_reference_kernels_equal(options):
    net = model(seed=5, bidirectional=True, **options)
    (fast, fast_grads), (ref, ref_grads) = (loss_and_gradients(net, k, seed=SEED) for k in (FAST, REFERENCE))
    np.testing.assert_allclose(fast.loss.numpy(), ref.loss.numpy(), rtol=1e-6)
    for variable, got, want in zip(net.trainable_variables, fast_grads, ref_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5, err_msg=variable.name)


# ---------------------------------------------------------------- learning-rate schedule


def test_cosine_schedule_follows_the_time_budget_when_it_runs_out_first():
    config = TrainerConfig(learning_rate=0.002, lr_schedule="cosine", warmup_steps=10)
    rate = lambda step, used: float(learning_rate(config, tf.constant(step, tf.int64), 1010, used))  # noqa: E731
    assert rate(4, 0.0) == pytest.approx(0.002 * 5 / 10)  # warmup
    assert rate(510, 0.0) == pytest.approx(0.001)  # half the steps, no budget used
    assert rate(110, 0.5) == pytest.approx(0.001)  # half the budget, a tenth of the steps
    assert rate(110, 0.75) == pytest.approx(0.002 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    assert rate(760, 0.25) == pytest.approx(0.002 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    assert rate(110, 1.0) == pytest.approx(0.0, abs=1e-12)
    constant = TrainerConfig(learning_rate=0.002)
    assert float(learning_rate(constant, tf.constant(500, tf.int64), 1000, 0.9)) == pytest.approx(0.002)
