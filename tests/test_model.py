"""The pure-TF attention seq2seq, its attention mechanisms, training kernels and greedy decoder,
on in-memory tensors."""
import numpy as np
import pytest
import tensorflow as tf

from components.core.config import ModelConfig
from components.core.vocabulary import BOS_ID, EOS_ID, PAD_ID
from components.model import ATTENTIONS as REGISTRY
from components.model import FAST, REFERENCE, DecoderState, GreedySearch, Seq2Seq, greedy_decode
from components.model.attention import Attention
from components.model.kernels import FastKernels, ReferenceKernels

ATTENTIONS = ["bahdanau", "luong", "none"]
SOURCE = tf.constant([[5, 6, 7, 8], [4, 9, 0, 0], [7, 0, 0, 0]], tf.int64)
SOURCE_LENGTH = tf.constant([4, 2, 1], tf.int64)
TARGET_INPUT = tf.constant([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 9, 2, 0]], tf.int64)
# Three rows: target lengths 5, 3, 4 (the last row's padding is not a real token).
BATCH = {
    "source_ids": SOURCE,
    "source_length": SOURCE_LENGTH,
    "target_input": TARGET_INPUT,
    "target_output": tf.constant([[5, 6, 7, 2, 0], [8, 2, 0, 0, 0], [9, 9, 2, 0, 0]], tf.int64),
    "target_length": tf.constant([4, 2, 3], tf.int64),
}


def small_model(attention: str, seed: int = 3) -> Seq2Seq:
    return Seq2Seq(12, 14, embedding_dim=6, units=10, attention=attention, seed=seed)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_teacher_forcing_shapes_and_decoder_steps_agree(attention):
    model = small_model(attention)
    logits, attention_weights = model(SOURCE, SOURCE_LENGTH, TARGET_INPUT, training=True)
    assert logits.shape == (3, 5, 14) and attention_weights.shape == (3, 5, 4)
    encoded = model.encode(SOURCE, SOURCE_LENGTH)
    assert encoded.states.shape == (3, 4, 10) and encoded.final_state.shape == (3, 10)
    assert encoded.mask.dtype == tf.bool and encoded.mask.numpy().sum() == 7
    state = model.initial_state(encoded)
    hidden = encoded.final_state
    for t in range(5):  # the step-by-step decoder computes exactly what teacher forcing computes
        step_logits, state, weights = model.step(TARGET_INPUT[:, t], state)
        np.testing.assert_allclose(step_logits.numpy(), logits[:, t].numpy(), atol=1e-5)
        np.testing.assert_allclose(weights.numpy(), attention_weights[:, t].numpy(), atol=1e-6)
        old_logits, hidden, _ = model.decode_step(TARGET_INPUT[:, t], hidden, encoded)  # the older entry point
        np.testing.assert_array_equal(old_logits.numpy(), step_logits.numpy())


def test_decoder_state_rows_can_be_tiled_as_a_beam_search_would():
    """A strategy sees the state as a nest of tensors: tiling its rows tiles the step's outputs."""
    model = small_model("bahdanau")
    state = model.initial_state(model.encode(SOURCE, SOURCE_LENGTH))
    tiled = state.map_rows(lambda t: tf.repeat(t, 2, axis=0))
    assert isinstance(tiled, DecoderState) and tiled.hidden.shape == (6, 10) and tiled.memory.mask.shape == (6, 4)
    assert tiled.weights is state.weights  # per batch, not per row
    logits, _, weights = model.step(tf.fill([3], tf.constant(1, tf.int64)), state)
    tiled_logits, _, tiled_weights = model.step(tf.fill([6], tf.constant(1, tf.int64)), tiled)
    np.testing.assert_allclose(tiled_logits.numpy()[::2], logits.numpy(), atol=1e-6)
    np.testing.assert_allclose(tiled_weights.numpy()[1::2], weights.numpy(), atol=1e-6)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_padded_source_positions_get_zero_weight_and_change_nothing(attention):
    model = small_model(attention)
    _, weights = model(SOURCE, SOURCE_LENGTH, TARGET_INPUT)
    w = weights.numpy()
    assert np.all(w[1, :, 2:] == 0.0) and np.all(w[2, :, 1:] == 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    # More padding (and garbage ids under it) must not change any output.
    wider = tf.concat([SOURCE, tf.fill([3, 3], tf.constant(11, tf.int64))], axis=1)
    logits_a, _ = model(SOURCE, SOURCE_LENGTH, TARGET_INPUT)
    logits_b, weights_b = model(wider, SOURCE_LENGTH, TARGET_INPUT)
    np.testing.assert_allclose(logits_a.numpy(), logits_b.numpy(), atol=1e-5)
    assert np.all(weights_b.numpy()[:, :, 4:] == 0.0)


def test_no_attention_model_has_no_attention_variables_and_zero_weights():
    model = small_model("none")
    names = [v.name for v in model.trainable_variables]
    assert not any("attention" in n or "context" in n for n in names)
    _, weights = model(SOURCE, SOURCE_LENGTH, TARGET_INPUT)
    assert np.all(weights.numpy() == 0.0)


def test_variables_are_plain_tf_variables_created_eagerly_and_seeded():
    a, b, c = small_model("bahdanau", seed=1), small_model("bahdanau", seed=1), small_model("bahdanau", seed=2)
    assert len(a.trainable_variables) == 18  # every variable exists before the first call
    assert all(type(v).__module__.startswith("tensorflow") for v in a.trainable_variables)
    for va, vb, vc in zip(a.trainable_variables, b.trainable_variables, c.trainable_variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert not np.array_equal(a.output_kernel.numpy(), c.output_kernel.numpy())


def test_from_config_and_checkpoint_round_trip(tmp_path):
    config = ModelConfig(embedding_dim=6, units=10, attention="luong")
    model = Seq2Seq.from_config(config, 12, 14, seed=5)
    assert (model.embedding_dim, model.units, model.attention) == (6, 10, "luong")
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = Seq2Seq.from_config(config, 12, 14, seed=99)
    tf.train.Checkpoint(model=fresh).restore(path).assert_consumed()
    np.testing.assert_allclose(fresh(SOURCE, SOURCE_LENGTH, TARGET_INPUT)[0].numpy(),
                               model(SOURCE, SOURCE_LENGTH, TARGET_INPUT)[0].numpy(), atol=1e-6)


def test_unknown_attention_is_rejected():
    with pytest.raises(ValueError, match="attention must be one of"):
        Seq2Seq(5, 5, 2, 2, "dot")


def replay(model, result, source, length):
    """Re-run `step` along the greedy path: the argmaxes and the summed log-probabilities (<eos> may
    not come first)."""
    state = model.initial_state(model.encode(source, length))
    previous = tf.fill([source.shape[0]], tf.constant(1, tf.int64))
    ids, scores = [], np.zeros(source.shape[0], np.float32)
    for t in range(result["token_ids"].shape[1]):
        logits, state, _ = model.step(previous, state)
        if t == 0:
            logits = tf.where(tf.equal(tf.range(logits.shape[1]), EOS_ID)[None, :], -1e9, logits)
        log_probs = tf.nn.log_softmax(logits).numpy()
        previous = tf.argmax(logits, -1)
        ids.append(previous.numpy())
        for row in range(len(scores)):
            if t < result["length"][row]:
                scores[row] += log_probs[row, ids[-1][row]]
    return np.stack(ids, 1), scores


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_greedy_decode_runs_in_a_graph_with_a_tensor_max_length(attention):
    model = small_model(attention)
    decode = tf.function(lambda s, l, n: greedy_decode(model, s, l, n), input_signature=[
        tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32)])
    result = {k: v.numpy() for k, v in decode(SOURCE, SOURCE_LENGTH, tf.constant(6)).items()}
    eager = greedy_decode(model, SOURCE, SOURCE_LENGTH, 6)
    np.testing.assert_array_equal(result["token_ids"], eager["token_ids"].numpy())
    assert result["token_ids"].dtype == np.int64 and result["length"].dtype == np.int64
    assert result["score"].dtype == np.float32 and result["attention"].shape == (3, result["token_ids"].shape[1], 4)
    ids, scores = replay(model, result, SOURCE, SOURCE_LENGTH)
    for row in range(3):
        n = result["length"][row]
        np.testing.assert_array_equal(result["token_ids"][row, :n], ids[row, :n])
        assert np.all(result["token_ids"][row, n:] == PAD_ID)
        assert n == result["token_ids"].shape[1] or result["token_ids"][row, n - 1] == EOS_ID
    np.testing.assert_allclose(result["score"], scores, rtol=1e-4, atol=1e-4)
    if attention == "none":
        assert np.all(result["attention"] == 0.0)
    else:
        assert np.all(result["attention"][1, :, 2:] == 0.0)
    empty = decode(SOURCE, SOURCE_LENGTH, tf.constant(0))
    assert empty["token_ids"].shape == (3, 0) and empty["attention"].shape == (3, 0, 4)


def test_greedy_decode_stops_when_every_row_emitted_eos():
    model = small_model("bahdanau")
    bias = np.zeros(14, np.float32)
    bias[EOS_ID] = 100.0  # every row ends as soon as it may: after its first token
    model.output_bias.assign(bias)
    result = greedy_decode(model, SOURCE, SOURCE_LENGTH, 10)
    token_ids = result["token_ids"].numpy()
    assert token_ids.shape == (3, 2) and (token_ids[:, 0] != EOS_ID).all() and (token_ids[:, 1] == EOS_ID).all()
    assert result["length"].numpy().tolist() == [2, 2, 2]
    # The first token's log-probability among the tokens but <eos>, then log p(<eos>) ~ 0.
    logits, _, _ = model.step(tf.fill([3], tf.constant(BOS_ID, tf.int64)),
                              model.initial_state(model.encode(SOURCE, SOURCE_LENGTH)))
    first = tf.nn.log_softmax(logits.numpy()[:, [i for i in range(14) if i != EOS_ID]]).numpy().max(axis=1)
    np.testing.assert_allclose(result["score"].numpy(), first, atol=1e-3)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_teacher_forcing_gradients_match_the_step_by_step_decoder(attention):
    """The compiled teacher-forcing path with the training kernels (kernel gradients taken after its
    loops) must equal plain autodiff through an eager Python loop of `step` calls."""
    model = small_model(attention)
    labels = tf.concat([TARGET_INPUT[:, 1:], tf.zeros([3, 1], tf.int64)], axis=1)
    variables = model.trainable_variables

    @tf.function
    def compiled():
        with tf.GradientTape() as tape:
            logits, _ = model(SOURCE, SOURCE_LENGTH, TARGET_INPUT, training=True)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

    with tf.GradientTape() as tape:
        state, loss = model.initial_state(model.encode(SOURCE, SOURCE_LENGTH)), 0.0
        for t in range(TARGET_INPUT.shape[1]):
            logits, state, _ = model.step(TARGET_INPUT[:, t], state)
            loss += tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels[:, t], logits))
    reference = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
    for variable, got, want in zip(variables, compiled(), reference):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5, err_msg=variable.name)


def test_mixed_bfloat16_matmuls_stay_close_to_float32_and_train_the_same_variables():
    exact = small_model("bahdanau", seed=7)
    mixed = Seq2Seq(12, 14, embedding_dim=6, units=10, attention="bahdanau", seed=7, precision="mixed_bfloat16")
    assert [v.dtype for v in mixed.trainable_variables] == [tf.float32] * 18  # checkpoints are interchangeable
    logits_exact, weights_exact = exact(SOURCE, SOURCE_LENGTH, TARGET_INPUT)
    logits_mixed, weights_mixed = mixed(SOURCE, SOURCE_LENGTH, TARGET_INPUT)
    assert logits_mixed.dtype == tf.float32
    np.testing.assert_allclose(logits_mixed.numpy(), logits_exact.numpy(), atol=0.02)
    np.testing.assert_allclose(weights_mixed.numpy(), weights_exact.numpy(), atol=0.02)
    with pytest.raises(ValueError, match="precision must be one of"):
        Seq2Seq(5, 5, 2, 2, "luong", precision="float16")


# ---------------------------------------------------------------- attention registry, checkpoint keys

# Recorded from the model before attention became classes: checkpoints and SavedModels written
# since the first release must keep restoring (warm start reads these keys too).
COMMON_KEYS = [
    ("decoder_bias", [30]), ("decoder_kernel", [6, 30]), ("decoder_recurrent_bias", [30]),
    ("decoder_recurrent_kernel", [10, 30]), ("encoder_bias", [30]), ("encoder_kernel", [6, 30]),
    ("encoder_recurrent_bias", [30]), ("encoder_recurrent_kernel", [10, 30]), ("output_bias", [14]),
    ("output_kernel", [14, 10]), ("source_embedding", [12, 6]), ("target_embedding", [14, 6]),
]
CHECKPOINT_KEYS = {
    "bahdanau": COMMON_KEYS + [
        ("attention_key_bias", [10]), ("attention_key_kernel", [10, 10]), ("attention_query_bias", [10]),
        ("attention_query_kernel", [10, 10]), ("attention_v", [10]), ("decoder_context_kernel", [10, 30])],
    "luong": COMMON_KEYS + [("attention_key_kernel", [10, 10]), ("decoder_context_kernel", [10, 30])],
    "none": COMMON_KEYS,
}


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_checkpoint_keys_are_those_of_every_earlier_checkpoint(attention, tmp_path):
    model = small_model(attention)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    saved = {name: shape for name, shape in tf.train.list_variables(path)}
    expected = {f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE": shape for name, shape in CHECKPOINT_KEYS[attention]}
    assert {k: v for k, v in saved.items() if k.startswith("model/")} == expected
    # warm start reads every tf.Variable attribute of the model under model/<attribute>/
    assert sorted(n for n, v in vars(model).items() if isinstance(v, tf.Variable)) == sorted(
        name for name, _ in CHECKPOINT_KEYS[attention])


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_attention_comes_from_the_registry_and_owns_no_variables(attention):
    model = small_model(attention)
    mechanism = model.attention_mechanism
    assert type(mechanism) is REGISTRY[attention] and isinstance(mechanism, Attention)
    assert not isinstance(mechanism, tf.Module)
    assert not isinstance(mechanism, tf.__internal__.tracking.Trackable)
    assert len(model.trainable_variables) == len(CHECKPOINT_KEYS[attention])
    keys = mechanism.keys(model.encode(SOURCE, SOURCE_LENGTH).states)
    assert keys.shape == ((3, 4, 10) if attention != "none" else (3, 4, 0))


# ---------------------------------------------------------------- training kernels vs reference


def loss_and_gradients(model: Seq2Seq, kernels, batch=BATCH):
    @tf.function
    def run():
        with tf.GradientTape() as tape:
            sums = model.compute_loss(batch, kernels)
        return sums, [tf.convert_to_tensor(g) for g in tape.gradient(sums.loss, model.trainable_variables)]
    return run()


@pytest.mark.parametrize("precision,tolerance", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_fast_kernels_give_the_reference_loss_and_gradients(attention, precision, tolerance):
    model = Seq2Seq(12, 14, embedding_dim=6, units=10, attention=attention, seed=4, precision=precision)
    (fast, fast_grads), (ref, ref_grads) = loss_and_gradients(model, FAST), loss_and_gradients(model, REFERENCE)
    assert isinstance(FAST, FastKernels) and isinstance(REFERENCE, ReferenceKernels)
    assert fast.tokens.numpy() == ref.tokens.numpy() == 9.0  # 4 + 2 + 3 real target tokens
    assert fast.correct.numpy() == ref.correct.numpy()
    np.testing.assert_allclose(fast.loss.numpy(), ref.loss.numpy(), rtol=1e-6 if precision == "float32" else 1e-3)
    assert len(fast_grads) == len(CHECKPOINT_KEYS[attention])
    for variable, got, want in zip(model.trainable_variables, fast_grads, ref_grads):
        assert np.any(want.numpy() != 0.0), variable.name  # every variable is trained
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tolerance, atol=tolerance, err_msg=variable.name)


def test_compute_loss_is_the_masked_cross_entropy_of_the_teacher_forced_logits():
    model = small_model("luong")
    logits, _ = model(SOURCE, SOURCE_LENGTH, TARGET_INPUT)
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(BATCH["target_output"], logits).numpy()
    mask = tf.sequence_mask(BATCH["target_length"], 5).numpy()
    predicted = tf.argmax(logits, -1).numpy() == BATCH["target_output"].numpy()
    for kernels in (FAST, REFERENCE):
        sums = model.compute_loss(BATCH, kernels)
        np.testing.assert_allclose(sums.loss.numpy(), per_token[mask].sum(), rtol=1e-5)
        assert sums.tokens.numpy() == 9.0 and sums.correct.numpy() == predicted[mask].sum()


def test_fused_cross_entropy_is_stable_for_large_logits():
    kernel, bias = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), tf.zeros([3])
    states, labels = tf.constant([[1000.0, 0.0], [0.0, -1000.0]]), tf.constant([1, 1], tf.int64)
    for kernels in (FAST, REFERENCE):
        losses, correct = kernels.cross_entropy(states, labels, kernel, bias, tf.float32)
        # logits (1000, 0, 0) and (0, -1000, 0): -log softmax at index 1 = 1000 and 1000 + log 2
        np.testing.assert_allclose(losses.numpy(), [1000.0, 1000.0 + np.log(2.0)], rtol=1e-6)
        assert correct.numpy().tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dtype,tolerance", [(tf.float32, 1e-5), (tf.bfloat16, 3e-2)])
def test_fused_vocabulary_major_cross_entropy_equals_the_reference(dtype, tolerance):
    kernel = tf.random.stateless_normal([11, 6], [3, 4])
    bias = tf.random.stateless_normal([11], [5, 6])
    states = tf.random.stateless_normal([7, 6], [1, 2])
    labels = tf.constant([0, 3, 10, 4, 4, 7, 1], tf.int64)
    sources = [states, kernel, bias]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(sources)
        fused, fused_correct = FAST.cross_entropy(states, labels, kernel, bias, dtype)
        reference, reference_correct = REFERENCE.cross_entropy(states, labels, kernel, bias, dtype)
        fused_sum, reference_sum = tf.reduce_sum(fused), tf.reduce_sum(reference)
    np.testing.assert_allclose(fused.numpy(), reference.numpy(), rtol=tolerance, atol=tolerance)
    for ours, theirs in zip(tape.gradient(fused_sum, sources), tape.gradient(reference_sum, sources)):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=tolerance, atol=tolerance)
    if dtype == tf.float32:
        logits = tf.matmul(states, kernel, transpose_b=True) + bias
        expected = (tf.argmax(logits, axis=-1) == labels).numpy().astype(np.float32)
        np.testing.assert_array_equal(fused_correct.numpy(), expected)
        np.testing.assert_array_equal(reference_correct.numpy(), expected)


def test_fast_recurrence_runs_eagerly_too():
    model = small_model("bahdanau")
    with tf.GradientTape() as tape:
        fast = model.compute_loss(BATCH, FAST).loss
    eager = tape.gradient(fast, model.trainable_variables)
    _, compiled = loss_and_gradients(model, REFERENCE)
    for variable, got, want in zip(model.trainable_variables, eager, compiled):
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), want.numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=variable.name)


def test_greedy_decode_is_the_greedy_search_strategy():
    model = small_model("luong")
    strategy = GreedySearch()
    by_class, by_function = strategy(model, SOURCE, SOURCE_LENGTH, 6), greedy_decode(model, SOURCE, SOURCE_LENGTH, 6)
    for key in ("token_ids", "length", "score", "attention"):
        np.testing.assert_array_equal(by_class[key].numpy(), by_function[key].numpy())
