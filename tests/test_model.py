"""The pure-TF attention seq2seq and its greedy decoder, on in-memory tensors."""
import numpy as np
import pytest
import tensorflow as tf

from components.model import Seq2Seq, greedy_decode
from components.core.vocabulary import EOS_ID, PAD_ID
from pipeline.config import ModelConfig

ATTENTIONS = ["bahdanau", "luong", "none"]
SOURCE = tf.constant([[5, 6, 7, 8], [4, 9, 0, 0], [7, 0, 0, 0]], tf.int64)
SOURCE_LENGTH = tf.constant([4, 2, 1], tf.int64)
TARGET_INPUT = tf.constant([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 9, 2, 0]], tf.int64)


def small_model(attention: str, seed: int = 3) -> Seq2Seq:
    return Seq2Seq(12, 14, embedding_dim=6, units=10, attention=attention, seed=seed)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_teacher_forcing_shapes_and_decode_step_agree(attention):
    model = small_model(attention)
    logits, attention_weights = model(SOURCE, SOURCE_LENGTH, TARGET_INPUT, training=True)
    assert logits.shape == (3, 5, 14) and attention_weights.shape == (3, 5, 4)
    encoded = model.encode(SOURCE, SOURCE_LENGTH)
    assert encoded.states.shape == (3, 4, 10) and encoded.final_state.shape == (3, 10)
    assert encoded.mask.dtype == tf.bool and encoded.mask.numpy().sum() == 7
    state = encoded.final_state
    for t in range(5):  # the step-by-step decoder computes exactly what teacher forcing computes
        step_logits, state, weights = model.decode_step(TARGET_INPUT[:, t], state, encoded)
        np.testing.assert_allclose(step_logits.numpy(), logits[:, t].numpy(), atol=1e-5)
        np.testing.assert_allclose(weights.numpy(), attention_weights[:, t].numpy(), atol=1e-6)


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
    """Re-run decode_step along the greedy path: the argmaxes and the summed log-probabilities."""
    encoded = model.encode(source, length)
    state, previous = encoded.final_state, tf.fill([source.shape[0]], tf.constant(1, tf.int64))
    ids, scores = [], np.zeros(source.shape[0], np.float32)
    for t in range(result["token_ids"].shape[1]):
        logits, state, _ = model.decode_step(previous, state, encoded)
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
    bias[EOS_ID] = 100.0  # every row's first token is <eos>
    model.output_bias.assign(bias)
    result = greedy_decode(model, SOURCE, SOURCE_LENGTH, 10)
    assert result["token_ids"].numpy().tolist() == [[EOS_ID]] * 3
    assert result["length"].numpy().tolist() == [1, 1, 1]
    np.testing.assert_allclose(result["score"].numpy(), 0.0, atol=1e-3)  # log p(<eos>) ~ 0


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_teacher_forcing_gradients_match_the_step_by_step_decoder(attention):
    """The compiled teacher-forcing path defers kernel gradients past its loops; they must equal
    plain autodiff through an eager Python loop of decode_step calls."""
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
        encoded = model.encode(SOURCE, SOURCE_LENGTH)
        state, loss = encoded.final_state, 0.0
        for t in range(TARGET_INPUT.shape[1]):
            logits, state, _ = model.decode_step(TARGET_INPUT[:, t], state, encoded)
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
