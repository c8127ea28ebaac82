"""Beam search (components/model/beam_search.py) on tiny real `Seq2Seq` models: width 1 is greedy
search bit for bit, a wide enough beam is an exhaustive search, the n-best lists are ranked by the
GNMT length penalty (and the early stop never drops a hypothesis it would prefer: a bigram
`StepModel` writes that scenario down exactly), repeated n-grams are blocked, bad requests fail
clearly, and the search runs inside a `tf.function` and a SavedModel with every setting a scalar
tensor input."""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pytest
import tensorflow as tf

from components.core.vocabulary import BOS_ID, EOS_ID, PAD_ID
from components.model import GreedySearch, Seq2Seq
from components.model.beam_search import BeamSearch, repeated_ngram_tokens
from components.model.decoding import FORBIDDEN, SpanConstraint

SOURCE = tf.constant([[5, 6, 7, 8, 9], [4, 9, 0, 0, 0], [7, 0, 0, 0, 0], [6, 6, 5, 0, 0]], tf.int64)
SOURCE_LENGTH = tf.constant([5, 2, 1, 3], tf.int64)
SETTINGS = [tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None], tf.int64)] + [
    tf.TensorSpec([], dtype) for dtype in (tf.int32, tf.float32, tf.int32, tf.int32, tf.int32)]


def tiny_model(attention: str = "bahdanau", target_vocab: int = 14, seed: int = 3, lively: bool = False,
               eos_bias: float = 0.0) -> Seq2Seq:
    """Source vocabulary 12. An untrained model says nearly the same for every source; `lively`
    scales its embeddings and output kernel up, so its outputs vary with the source."""
    model = Seq2Seq(12, target_vocab, embedding_dim=6, units=10, attention=attention, seed=seed)
    if lively:
        for variable, scale in [(model.source_embedding, 30.0), (model.target_embedding, 30.0),
                                (model.output_kernel, 4.0)]:
            variable.assign(variable * scale)
    model.output_bias.assign(tf.one_hot(EOS_ID, target_vocab) * eos_bias)
    return model


def random_sources(rows: int, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Ids 4..11, lengths 1..7, padded with <pad>."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 8, size=rows)
    ids = rng.integers(4, 12, size=(rows, 7)) * (np.arange(7)[None, :] < lengths[:, None])
    return tf.constant(ids, tf.int64), tf.constant(lengths, tf.int64)


def numpy_outputs(result: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in result.items()}


def penalty(length: np.ndarray, alpha: float) -> np.ndarray:
    return np.power((np.float32(5.0) + np.asarray(length, np.float32)) / np.float32(6.0), np.float32(alpha))


def hypotheses(result: dict[str, np.ndarray], row: int) -> list[tuple[int, ...]]:
    """The row's n-best token sequences, cut at their lengths (empty ones left out)."""
    return [tuple(ids[:n]) for ids, n, s in zip(result["token_ids"][row], result["length"][row], result["score"][row])
            if np.isfinite(s)]


def no_eos_first(logits: tf.Tensor, step: int) -> tf.Tensor:
    """No strategy ends a hypothesis before its first token: <eos> is forbidden at step 0."""
    if step > 0:
        return logits
    return tf.where(tf.equal(tf.range(logits.shape[1]), EOS_ID)[None, :], FORBIDDEN, logits)


def replay(model: Seq2Seq, source: tf.Tensor, length: tf.Tensor, token_ids: np.ndarray,
           lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-force each hypothesis [B, N, T] through `step`: summed log-probs [B, N] and the
    attention weights [B, N, T, S] (zeros after the hypothesis' end)."""
    rows, n, steps = token_ids.shape
    state = model.initial_state(model.encode(source, length)).map_rows(lambda x: tf.repeat(x, n, axis=0))
    flat, flat_lengths = token_ids.reshape(rows * n, steps), lengths.reshape(-1)
    previous = np.full(rows * n, BOS_ID)
    scores, weights = np.zeros(rows * n, np.float32), []
    for t in range(steps):
        logits, state, attention = model.step(tf.constant(previous, tf.int64), state)
        log_probs, live = tf.nn.log_softmax(no_eos_first(logits, t)).numpy(), t < flat_lengths
        scores += np.where(live, log_probs[np.arange(rows * n), flat[:, t]], 0.0).astype(np.float32)
        weights.append(attention.numpy() * live[:, None])
        previous = flat[:, t]
    attention = np.stack(weights, 1) if steps else np.zeros((rows * n, 0, source.shape[1]), np.float32)
    return scores.reshape(rows, n), attention.reshape(rows, n, steps, -1)


def span_constraint(required: np.ndarray | tf.Tensor) -> SpanConstraint:
    """Tokens 4 and 5 are the sentinels of slots 0 and 1 (of a 14-token vocabulary)."""
    slots = [-1] * 14
    slots[4], slots[5] = 0, 1
    return SpanConstraint(tf.constant(slots, tf.int32), tf.convert_to_tensor(required, tf.bool))


# ---------------------------------------------------------------- width 1 is greedy search


@pytest.mark.parametrize("lively", [False, True])
@pytest.mark.parametrize("attention", ["bahdanau", "luong", "none"])
def test_width_one_is_greedy_search(attention, lively):
    model = tiny_model(attention, lively=lively)
    source, length = random_sources(100)
    greedy = numpy_outputs(GreedySearch()(model, source, length, 10))
    beam = numpy_outputs(BeamSearch(1)(model, source, length, 10))
    if lively:  # rows differ and stop at different steps
        assert len({tuple(ids) for ids in greedy["token_ids"]}) > 3 and len(set(greedy["length"].tolist())) > 1
    assert_is_greedy(beam, greedy)


def assert_is_greedy(beam: dict[str, np.ndarray], greedy: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(beam["best_token_ids"], greedy["token_ids"])
    np.testing.assert_array_equal(beam["token_ids"][:, 0], greedy["token_ids"])
    np.testing.assert_array_equal(beam["best_length"], greedy["length"])
    np.testing.assert_allclose(beam["best_score"], greedy["score"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(beam["normalized_score"][:, 0], greedy["score"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(beam["attention"], greedy["attention"], rtol=0, atol=1e-6)


def test_width_one_is_greedy_search_under_the_span_constraint():
    model = tiny_model("luong", lively=True)
    source, length = random_sources(100, seed=1)
    required = np.random.default_rng(2).random((100, 2)) < 0.5
    greedy = numpy_outputs(GreedySearch(span_constraint(required))(model, source, length, 10))
    beam = numpy_outputs(BeamSearch(1, constraint=span_constraint(required))(model, source, length, 10))
    assert_is_greedy(beam, greedy)


def test_the_span_constraint_follows_each_beam():
    """Every hypothesis that ended with <eos> has each required sentinel once and no other: the
    constraint's state must have been tiled and reordered with the beams."""
    model = tiny_model("bahdanau", lively=True, eos_bias=2.0)
    source, length = random_sources(20, seed=3)
    required = np.random.default_rng(4).random((20, 2)) < 0.5
    result = numpy_outputs(BeamSearch(4, n_best=4, constraint=span_constraint(required))(model, source, length, 8))
    checked = 0
    for row in range(20):
        for sequence in hypotheses(result, row):
            if sequence[-1] == EOS_ID:
                assert [sequence.count(4), sequence.count(5)] == required[row].astype(int).tolist()
                checked += 1
    assert checked > 20


def test_no_strategy_ends_a_hypothesis_before_its_first_token():
    # An undertrained model whose likeliest first token is <eos>: a non-empty source must still get
    # a translation, from greedy search and from every hypothesis of a beam alike.
    model = tiny_model("bahdanau", seed=4, eos_bias=30.0)
    source, length = random_sources(5, seed=2)
    greedy = numpy_outputs(GreedySearch()(model, source, length, 6))
    assert (greedy["token_ids"][:, 0] != EOS_ID).all() and (greedy["length"] >= 1).all()
    beam = numpy_outputs(BeamSearch(4, 0.6, 3)(model, source, length, 6))
    finite = np.isfinite(beam["score"])
    assert finite[:, 0].all() and (beam["token_ids"][:, :, 0][finite] != EOS_ID).all()
    # After the first token the bias wins again: the rule only forbids an empty hypothesis.
    assert (greedy["length"] == 2).all() and (greedy["token_ids"][:, 1] == EOS_ID).all()


# ---------------------------------------------------------------- a wide beam is exhaustive


def exhaustive(model: Seq2Seq, source: tf.Tensor, length: tf.Tensor, max_length: int) -> list[tuple[tuple, float]]:
    """Every complete hypothesis of one source (ended by <eos>, or cut at max_length) with its summed
    log-probability, by running `step` on every prefix (one batch per prefix length)."""
    state = model.initial_state(model.encode(source[None], length[None]))
    prefixes, scores, complete = [()], [np.float32(0.0)], []
    for level in range(max_length):
        previous = [p[-1] if p else BOS_ID for p in prefixes]
        logits, state, _ = model.step(tf.constant(previous, tf.int64), state)
        log_probs = tf.nn.log_softmax(no_eos_first(logits, level)).numpy()
        grown, grown_scores, parents = [], [], []
        for i, prefix in enumerate(prefixes):
            for token in range(log_probs.shape[1]):
                sequence, score = prefix + (token,), np.float32(scores[i] + log_probs[i, token])
                if token == EOS_ID or level + 1 == max_length:
                    complete.append((sequence, score))
                else:
                    grown.append(sequence), grown_scores.append(score), parents.append(i)
        prefixes, scores = grown, grown_scores
        state = state.map_rows(lambda x: tf.gather(x, tf.constant(parents, tf.int32)))
    return complete


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_a_beam_as_wide_as_every_candidate_finds_the_exhaustive_n_best(alpha):
    # 6 tokens (4 specials + 2 words); with every step's candidates (6 * 5^3 at the last of 4 steps)
    # inside the beam, the search is exhaustive.
    model = tiny_model("bahdanau", target_vocab=6, seed=5, lively=True, eos_bias=-1.0)
    source, length = random_sources(6, seed=5)
    max_length, n_best = 4, 8
    result = numpy_outputs(BeamSearch(6 * 5 ** (max_length - 1), alpha, n_best)(model, source, length, max_length))
    for row in range(6):
        complete = exhaustive(model, source[row], length[row], max_length)
        ranked = sorted(complete, key=lambda h: -h[1] / penalty(len(h[0]), alpha))[:n_best]
        assert hypotheses(result, row) == [sequence for sequence, _ in ranked]
        np.testing.assert_allclose(result["score"][row], [score for _, score in ranked], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(result["length"][row], [len(sequence) for sequence, _ in ranked])
    greedy = numpy_outputs(GreedySearch()(model, source, length, max_length))
    assert np.any(result["best_score"] > greedy["score"] + 0.1)  # the search beats greedy somewhere
    # The best path leaves the top beam there: its attention must follow the back-pointers.
    _, attention = replay(model, source, length, result["token_ids"], result["length"])
    np.testing.assert_allclose(result["attention"], attention[:, 0], rtol=0, atol=1e-6)


class BigramState(NamedTuple):
    mask: tf.Tensor  # [B, S] the source's real tokens: the state's only per-row tensor

    def map_rows(self, fn: Callable[[tf.Tensor], tf.Tensor]) -> "BigramState":
        return BigramState(fn(self.mask))


class BigramModel:
    """A `StepModel` whose next-token log-probabilities depend on the previous token only (a fixed
    [V, V] table): a search scenario written down exactly."""

    def __init__(self, probabilities: dict[int, dict[int, float]], vocab: int = 6, rest: float = 0.0025):
        table = np.full((vocab, vocab), rest, np.float32)
        for previous, row in probabilities.items():
            for token, p in row.items():
                table[previous, token] = p
        self.log_probs = tf.constant(np.log(table / table.sum(1, keepdims=True)))

    def encode(self, source_ids: tf.Tensor, source_length: tf.Tensor) -> tf.Tensor:
        return tf.sequence_mask(source_length, tf.shape(source_ids)[1])

    def initial_state(self, mask: tf.Tensor) -> BigramState:
        return BigramState(mask)

    def step(self, previous_ids: tf.Tensor, state: BigramState) -> tuple[tf.Tensor, BigramState, tf.Tensor]:
        return tf.gather(self.log_probs, previous_ids), state, tf.zeros(tf.shape(state.mask))


class LogitTableModel(BigramModel):
    """A `StepModel` whose next-token logits (not log-probabilities) depend on the previous token."""

    def __init__(self, logits: np.ndarray):
        self.log_probs = tf.constant(logits, tf.float32)


def test_width_one_breaks_a_rounding_tie_as_greedy_search_does():
    """Two tokens whose logits differ by one float32 step: greedy search takes the larger (token 5);
    after a first token of probability ~1/64 their raw scores round to the same float, and a search
    that ranked the summed scores alone would take the lower id (token 4). Width 1 must not."""
    vocab, first = 64, 10
    logits = np.full((vocab, vocab), -30.0, np.float32)
    logits[BOS_ID, :] = 0.0
    logits[BOS_ID, first] = 0.01  # the likeliest first token, at a raw score of about log(1/64)
    logits[first, 4], logits[first, 5] = 1.0, np.nextafter(np.float32(1.0), np.float32(2.0))
    logits[4, EOS_ID] = logits[5, EOS_ID] = 0.0
    model = LogitTableModel(logits)
    source, length = tf.constant([[5, 6]], tf.int64), tf.constant([2], tf.int64)
    greedy = numpy_outputs(GreedySearch()(model, source, length, 5))
    assert greedy["token_ids"].tolist() == [[first, 5, EOS_ID]]
    first_score = tf.nn.log_softmax(logits[BOS_ID]).numpy()[first]
    second = tf.nn.log_softmax(logits[first]).numpy()
    assert second[5] >= second[4] and first_score + second[5] == first_score + second[4]  # the tie
    assert_is_greedy(numpy_outputs(BeamSearch(1)(model, source, length, 5)), greedy)


def test_the_early_stop_never_drops_a_hypothesis_the_length_penalty_would_prefer():
    """After a sure first token "B" (<eos> may not come first), <eos> (p .55) against "A" (.44) then A
    again (.97): a long hypothesis of raw score log p(B) + log .44 + 5 log .97 beats B <eos> once
    each is divided by ((5 + length) / 6)^2. The search may only stop once the best alive score, at
    the longest reachable length, cannot beat the pool."""
    a, b = 4, 5
    model = BigramModel({BOS_ID: {b: 0.99}, b: {EOS_ID: 0.55, a: 0.44}, a: {a: 0.97, EOS_ID: 0.02}})
    source, length = tf.constant([[5, 6]], tf.int64), tf.constant([2], tf.int64)
    plain = numpy_outputs(BeamSearch(1)(model, source, length, 7))
    assert plain["token_ids"].shape == (1, 1, 2)  # stopped after the second step: nothing can beat <eos>
    assert plain["best_token_ids"].tolist() == [[b, EOS_ID]]
    penalized = numpy_outputs(BeamSearch(1, length_penalty=2.0)(model, source, length, 7))
    assert penalized["best_token_ids"].tolist() == [[b] + [a] * 6] and penalized["best_length"].tolist() == [7]
    log_probs = model.log_probs.numpy()
    # The first step's probabilities are renormalized without <eos>.
    first = log_probs[BOS_ID, b] - np.log1p(-np.exp(log_probs[BOS_ID, EOS_ID]))
    raw = first + log_probs[b, a] + 5 * log_probs[a, a]
    np.testing.assert_allclose(penalized["best_score"], [raw], rtol=1e-6)
    np.testing.assert_allclose(penalized["normalized_score"][0], [raw / penalty(7, 2.0)], rtol=1e-6)
    assert raw / penalty(7, 2.0) > (first + log_probs[b, EOS_ID]) / penalty(2, 2.0)


# ---------------------------------------------------------------- n-best lists


def test_n_best_lists_are_ranked_by_the_length_penalty_without_duplicates():
    model = tiny_model("bahdanau", lively=True, eos_bias=1.5)
    alpha, n_best = 1.0, 6
    result = numpy_outputs(BeamSearch(6, alpha, n_best)(model, SOURCE, SOURCE_LENGTH, 8))
    steps = result["token_ids"].shape[2]
    assert result["token_ids"].shape == (4, n_best, steps) and result["attention"].shape == (4, steps, 5)
    normalized = result["normalized_score"]
    assert np.all(np.diff(normalized, axis=1) <= 0)
    np.testing.assert_allclose(normalized, result["score"] / penalty(result["length"], alpha), rtol=1e-6)
    for row in range(4):
        sequences = hypotheses(result, row)
        assert len(sequences) == n_best == len(set(sequences))
        for ids, n in zip(result["token_ids"][row], result["length"][row]):
            assert np.all(ids[n:] == PAD_ID) and EOS_ID not in ids[:n - 1]
            assert ids[n - 1] == EOS_ID or n == steps
    scores, attention = replay(model, SOURCE, SOURCE_LENGTH, result["token_ids"], result["length"])
    np.testing.assert_allclose(result["score"], scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result["attention"], attention[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result["best_token_ids"], result["token_ids"][:, 0])


def test_a_length_penalty_prefers_longer_hypotheses_as_the_formula_says():
    """Exhaustive beams under alpha 0 and 2 rank the same hypotheses: where the best differs, the
    alpha-2 one is longer and lower in raw score, and it wins by score / ((5 + length) / 6)^2."""
    model = tiny_model("luong", target_vocab=6, seed=5, lively=True, eos_bias=-1.0)
    source, length = random_sources(12, seed=5)
    width = 6 * 5 ** 3

    def search(alpha: float) -> dict[str, np.ndarray]:
        return numpy_outputs(BeamSearch(width, alpha, 2)(model, source, length, 4))

    plain, penalized = search(0.0), search(2.0)
    differ = np.flatnonzero(plain["best_length"] != penalized["best_length"])
    assert differ.size > 0
    for row in differ:
        assert penalized["best_length"][row] > plain["best_length"][row]
        assert penalized["best_score"][row] < plain["best_score"][row]
        assert (penalized["best_score"][row] / penalty(penalized["best_length"][row], 2.0)
                > plain["best_score"][row] / penalty(plain["best_length"][row], 2.0))


# ---------------------------------------------------------------- repeated n-grams


def repeats(sequence: tuple[int, ...], n: int) -> bool:
    grams = [sequence[i:i + n] for i in range(len(sequence) - n + 1)]
    return len(grams) != len(set(grams))


def test_the_repeated_ngram_tokens_are_those_completing_a_seen_ngram():
    history = tf.constant([[5, 6, 5, 0, 0], [7, 7, 7, 0, 0]], tf.int64)
    for n, expected in [(1, [[5, 6], [7]]), (2, [[6], [7]]), (3, [[], [7]]), (4, [[], []])]:
        banned = repeated_ngram_tokens(history, tf.constant(3), tf.constant(n), tf.constant(9)).numpy()
        assert [np.flatnonzero(row).tolist() for row in banned] == expected, n
    assert not repeated_ngram_tokens(history, tf.constant(0), tf.constant(2), tf.constant(9)).numpy().any()


def test_no_repeat_ngram_size_blocks_repeats_a_biased_model_would_make():
    model = tiny_model("bahdanau", lively=True, eos_bias=-3.0)
    model.output_bias.assign(tf.tensor_scatter_nd_add(model.output_bias, [[7]], [4.0]))  # loves token 7
    free = numpy_outputs(BeamSearch(4, n_best=4)(model, SOURCE, SOURCE_LENGTH, 8))
    assert all(repeats(tuple(ids[:n]), 2) for ids, n in zip(free["best_token_ids"], free["best_length"]))
    for n in (1, 2, 3):
        result = numpy_outputs(BeamSearch(4, n_best=4, no_repeat_ngram_size=n)(model, SOURCE, SOURCE_LENGTH, 8))
        sequences = [s for row in range(4) for s in hypotheses(result, row)]
        assert len(sequences) == 16 and not any(repeats(s, n) for s in sequences), n
        assert np.all(result["score"] > -100.0)  # blocked tokens were never chosen


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize("settings,max_length,message", [
    (dict(beam_width=0), 5, "beam_width must be >= 1"),
    (dict(beam_width=2, n_best=3), 5, "n_best must be <= beam_width"),
    (dict(beam_width=2, n_best=0), 5, "n_best must be >= 1"),
    (dict(beam_width=2), -1, "max_length must be >= 0"),
    (dict(beam_width=2, no_repeat_ngram_size=-2), 5, "no_repeat_ngram_size must be >= 0"),
])
def test_bad_requests_fail_with_a_clear_message(settings, max_length, message):
    model = tiny_model("none")
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        BeamSearch(**settings)(model, SOURCE, SOURCE_LENGTH, max_length)


# ---------------------------------------------------------------- in a graph


def graph_search(model: Seq2Seq) -> tf.types.experimental.GenericFunction:
    def search(source, length, width, alpha, n_best, max_length, ngram):
        return BeamSearch(width, alpha, n_best, ngram)(model, source, length, max_length)
    return tf.function(search, input_signature=SETTINGS)


def test_runs_in_a_graph_with_every_setting_a_scalar_tensor():
    model = tiny_model("bahdanau", lively=True, eos_bias=1.0)
    search = graph_search(model)
    graph = numpy_outputs(search(SOURCE, SOURCE_LENGTH, 3, 0.6, 2, 7, 2))
    eager = numpy_outputs(BeamSearch(3, 0.6, 2, 2)(model, SOURCE, SOURCE_LENGTH, 7))
    for key in eager:  # grappler may rewrite the normalization's division: a last-bit difference
        np.testing.assert_allclose(graph[key], eager[key], rtol=1e-6, atol=0, err_msg=key)
    greedy = numpy_outputs(GreedySearch()(model, SOURCE, SOURCE_LENGTH, 7))
    assert_is_greedy(numpy_outputs(search(SOURCE, SOURCE_LENGTH, 1, 0.0, 1, 7, 0)), greedy)
    empty = numpy_outputs(search(SOURCE, SOURCE_LENGTH, 4, 1.0, 3, 0, 0))
    assert empty["token_ids"].shape == (4, 3, 0) and empty["attention"].shape == (4, 0, 5)
    assert empty["best_length"].tolist() == [0] * 4 and empty["best_score"].tolist() == [0.0] * 4
    with pytest.raises(tf.errors.InvalidArgumentError, match="n_best must be <= beam_width"):
        search(SOURCE, SOURCE_LENGTH, 2, 0.0, 3, 7, 0)
    assert search.experimental_get_tracing_count() == 1


def test_runs_in_a_graph_with_python_settings_and_static_shapes():
    """Settings fixed at trace time give static shapes: the loop's shape invariants must let the
    beam rows vary all the same."""
    model = tiny_model("bahdanau", lively=True, eos_bias=1.0)
    search = tf.function(lambda source, length: BeamSearch(3, 0.6, 2, 2)(model, source, length, 7))
    graph = numpy_outputs(search(SOURCE, SOURCE_LENGTH))
    eager = numpy_outputs(BeamSearch(3, 0.6, 2, 2)(model, SOURCE, SOURCE_LENGTH, 7))
    for key in eager:
        np.testing.assert_allclose(graph[key], eager[key], rtol=1e-6, atol=0, err_msg=key)


def test_the_span_constraint_runs_in_a_graph():
    model = tiny_model("luong", lively=True)
    required = np.array([[True, False], [True, True], [False, False], [False, True]])

    @tf.function(input_signature=SETTINGS[:3] + [tf.TensorSpec([None, 2], tf.bool)])
    def search(source, length, width, required):
        return BeamSearch(width, 1.0, 2, constraint=span_constraint(required))(model, source, length, 8)

    graph = numpy_outputs(search(SOURCE, SOURCE_LENGTH, 3, required))
    eager = numpy_outputs(BeamSearch(3, 1.0, 2, constraint=span_constraint(required))(
        model, SOURCE, SOURCE_LENGTH, 8))
    for key in eager:
        np.testing.assert_allclose(graph[key], eager[key], rtol=1e-6, atol=0, err_msg=key)


def test_a_saved_model_serves_the_search(tmp_path):
    """The graph saves and reloads with core ops only (what stock TF Serving runs)."""
    model = tiny_model("luong", lively=True)
    module = tf.Module()
    module.model = model
    module.search = graph_search(model)
    tf.saved_model.save(module, str(tmp_path), signatures={"beam": module.search.get_concrete_function()})
    served = tf.saved_model.load(str(tmp_path)).signatures["beam"]
    inputs = dict(source=SOURCE, length=SOURCE_LENGTH, width=tf.constant(3), alpha=tf.constant(1.0),
                  n_best=tf.constant(3), max_length=tf.constant(6), ngram=tf.constant(0))
    got = numpy_outputs(served(**inputs))
    want = numpy_outputs(module.search(**inputs))
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
