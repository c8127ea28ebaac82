"""Beam search over the model's step interface, in core TensorFlow ops only (servable by stock TF
Serving: no tensorflow-addons, no GatherTree, no custom ops).

The beam width, length penalty, n-best size and n-gram blocking size may be Python numbers or
scalar tensors (per-request SavedModel inputs): every shape that depends on them is dynamic.

One `tf.while_loop` over decoder steps. The K alive hypotheses of each source row are rows
b*K + k of the tiled decoder state. At each step:
  1. every alive hypothesis scores every token: its raw score (sum of log-probabilities, as in
     `GreedySearch`) plus the step's log-softmax of the constraint-adjusted logits (<eos> is
     forbidden at the first step, as in `GreedySearch`);
  2. the top 2K candidates of each row are kept, sorted by raw score (taken from each beam's top 2K
     tokens by logit, so that width 1 breaks ties exactly as greedy search's argmax does);
  3. candidates ending in <eos> among the top K are complete: they enter the row's pool of
     `n_best` finished hypotheses, ranked by the GNMT-normalized score raw / ((5 + length) / 6)^alpha
     (length counts <eos>). Only the top K may finish (as in fairseq), so that width 1 is exactly
     greedy search: a second-best <eos> never overtakes the greedy path;
  4. the best K candidates not ending in <eos> stay alive (a finished hypothesis is not extended,
     so the pool and the beam never hold the same sequence); the decoder state and the
     constraint's state follow their parents (`DecoderState.map_rows` + gather).
The candidates' tokens and parents are written to TensorArrays (back-pointers); a hypothesis is
(the step of its last token, its candidate slot there), and a second loop walks the
back-pointers from the last step to the first to recover the n-best sequences.

The loop stops at max_length, where the alive hypotheses count as finished (length max_length, no
<eos>, as a greedy row that never emitted <eos>), or earlier once no row can change its n-best: the
row's pool is full and its best alive raw score, normalized with the most favourable length still
reachable, is no better than the pool's worst (log-probabilities are <= 0, so raw scores only fall).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from components.core.vocabulary import BOS_ID, EOS_ID, PAD_ID
from components.model.decoding import (
    FORBIDDEN,
    DecodingStrategy,
    StepModel,
    TokenConstraint,
    Unconstrained,
    forbid_eos_first,
)
from components.model.state import DecoderState

# The score of "no hypothesis" (beams not yet filled at the first step, empty pool slots).
NO_HYPOTHESIS = float("-inf")


class Hypotheses(NamedTuple):
    """Per source row, H complete hypotheses, each named by where its last token was chosen."""

    normalized: tf.Tensor  # [B, H] float32 score / length_penalty(length): the ranking (-inf: none)
    score: tf.Tensor       # [B, H] float32 raw sum of log-probabilities
    length: tf.Tensor      # [B, H] int64 tokens, <eos> included
    end: tf.Tensor         # [B, H] int32 step of the last token (-1: no token)
    slot: tf.Tensor        # [B, H] int32 the last token's candidate slot at step `end`


class Carry(NamedTuple):
    """The search loop's variables. R = B*K rows, C = the candidates kept per row and step (2K)."""

    step: tf.Tensor
    previous: tf.Tensor     # [R] int64 the alive hypotheses' last tokens
    state: Any              # the decoder state, R rows
    rule: Any               # the constraint's state, R rows
    alive_score: tf.Tensor  # [B, K] float32 raw scores, best first (-inf: empty beam)
    alive_slot: tf.Tensor   # [B, K] int32 the alive hypotheses' candidate slots at the last step
    history: tf.Tensor      # [R, max_length] int64 tokens so far ([R, 0] without n-gram blocking)
    finished: Hypotheses    # [B, n_best], best first
    done: tf.Tensor         # [B] bool: the row's n-best can no longer change
    tokens: tf.TensorArray     # per step [B, C] int64 candidate tokens
    parents: tf.TensorArray    # per step [B, C] int32 candidate's alive beam (0..K-1)
    slots: tf.TensorArray      # per step [B, K] int32 the slots that stayed alive, by new beam
    attention: tf.TensorArray  # per step [B, K, S] float32 attention of the alive beams


def length_penalty(length: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """GNMT's lp = ((5 + length) / 6)^alpha; alpha 0 gives exactly 1 (ranking by raw score)."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def repeated_ngram_tokens(history: tf.Tensor, step: tf.Tensor, n: tf.Tensor, vocab: tf.Tensor) -> tf.Tensor:
    """[R, V] bool: the tokens that would complete an n-gram already in the row's first `step` tokens
    of `history` [R, L] (n >= 1; n = 1 forbids every token already emitted)."""
    rows, prefix = tf.shape(history)[0], n - 1
    starts = tf.range(tf.maximum(step - prefix, 0))  # n-grams wholly inside the history
    windows = tf.gather(history, starts[:, None] + tf.range(prefix)[None, :], axis=1)  # [R, P, n-1]
    # The last n-1 tokens (clamped indices only occur when there is no n-gram to compare with).
    suffix = tf.gather(history, tf.maximum(tf.range(step - prefix, step), 0), axis=1)  # [R, n-1]
    seen = tf.reduce_all(tf.equal(windows, suffix[:, None, :]), axis=2)  # [R, P]
    following = tf.cast(tf.gather(history, starts + prefix, axis=1), tf.int32)  # [R, P]
    row_ids = tf.broadcast_to(tf.range(rows)[:, None], tf.shape(following))
    # A scatter, not a one-hot [R, P, V]: a real vocabulary is tens of thousands of tokens.
    banned = tf.tensor_scatter_nd_max(tf.zeros(tf.stack([rows, vocab]), tf.int32),
                                      tf.reshape(tf.stack([row_ids, following], axis=-1), [-1, 2]),
                                      tf.reshape(tf.cast(seen, tf.int32), [-1]))
    return banned > 0


def _no_hypotheses(shape: tf.Tensor) -> Hypotheses:
    """An empty pool: ranked last, no tokens."""
    return Hypotheses(tf.fill(shape, NO_HYPOTHESIS), tf.fill(shape, NO_HYPOTHESIS), tf.zeros(shape, tf.int64),
                      tf.fill(shape, -1), tf.zeros(shape, tf.int32))


def _best(pool: Hypotheses, extra: Hypotheses, n: tf.Tensor) -> Hypotheses:
    """The n best of both by normalized score. top_k puts the lower index first on ties, so a
    hypothesis already in `pool` is never displaced by an equally scored newcomer."""
    merged = Hypotheses(*[tf.concat([a, b], axis=1) for a, b in zip(pool, extra)])
    _, keep = tf.math.top_k(merged.normalized, n)
    return Hypotheses(*[tf.gather(x, keep, batch_dims=1) for x in merged])


def _row_invariants(state: Any) -> Any:
    """Shape invariants for an opaque nest with some per-row tensors (those `map_rows` reaches, if
    it has it; else all): the row count varies with the (tensor) beam width, nothing else does
    (the model may read static inner dimensions, e.g. the GRU's units)."""
    per_row: set[int] = set()
    if hasattr(state, "map_rows"):
        state.map_rows(lambda x: per_row.add(id(x)) or x)
    else:
        per_row = {id(x) for x in tf.nest.flatten(state)}
    return tf.nest.map_structure(
        lambda x: tf.TensorShape([None]).concatenate(x.shape[1:]) if id(x) in per_row else x.shape, state)


class BeamSearch(DecodingStrategy):
    """The n best hypotheses of a beam search (see the module docstring).

    Output, a dict of tensors (T: steps run, at most max_length; N: n_best; S: source steps):
      token_ids         int64 [B, N, T] each hypothesis, <pad> after its <eos>;
      length            int64 [B, N] tokens up to and including <eos> (T if cut by max_length);
      score             float32 [B, N] raw sum of log-probabilities, <eos> included;
      normalized_score  float32 [B, N] score / ((5 + length) / 6)^length_penalty, the ranking
                        (descending);
      best_token_ids [B, T], best_length [B], best_score [B]: the first hypothesis;
      attention         float32 [B, T, S] the best hypothesis' attention weights per emitted token
                        (zeros after its <eos>).
    A row with fewer than N distinct hypotheses (tiny vocabulary, tiny max_length) fills the rest
    with empty ones: score -inf, length 0, all <pad>.
    """

    def __init__(self, beam_width: Any, length_penalty: Any = 0.0, n_best: Any = 1,
                 no_repeat_ngram_size: Any = 0, constraint: TokenConstraint | None = None):
        self.beam_width = beam_width
        self.length_penalty = length_penalty
        self.n_best = n_best
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.constraint = constraint or Unconstrained()

    def _settings(self, max_length: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """(width, n_best, alpha, ngram, max_length) as tensors, checked in the graph (a request's
        inputs may be bad: InvalidArgumentError, with the message, at run time)."""
        width = tf.cast(self.beam_width, tf.int32)
        n_best = tf.cast(self.n_best, tf.int32)
        ngram = tf.cast(self.no_repeat_ngram_size, tf.int32)
        checks = [
            tf.debugging.assert_greater_equal(width, 1, message="beam_width must be >= 1"),
            tf.debugging.assert_greater_equal(n_best, 1, message="n_best must be >= 1"),
            tf.debugging.assert_less_equal(n_best, width, message="n_best must be <= beam_width"),
            tf.debugging.assert_greater_equal(max_length, 0, message="max_length must be >= 0"),
            tf.debugging.assert_greater_equal(ngram, 0, message="no_repeat_ngram_size must be >= 0"),
        ]
        with tf.control_dependencies(checks):
            return (tf.identity(width), tf.identity(n_best), tf.cast(self.length_penalty, tf.float32),
                    tf.identity(ngram), tf.identity(max_length))

    def search(self, model: StepModel, state: DecoderState, batch: tf.Tensor, source_steps: tf.Tensor,
               max_length: tf.Tensor) -> dict[str, tf.Tensor]:
        width, n_best, alpha, ngram, max_length = self._settings(max_length)
        final = self._run(model, state, batch, width, n_best, alpha, ngram, max_length)
        steps = final.step
        # Cut by max_length, the alive hypotheses are complete too; after an early stop they are
        # not, and cannot beat the pool anyway.
        cut = steps >= max_length
        shape = tf.shape(final.alive_score)
        alive = Hypotheses(tf.where(cut, final.alive_score / length_penalty(steps, alpha), NO_HYPOTHESIS),
                           final.alive_score, tf.fill(shape, tf.cast(steps, tf.int64)), tf.fill(shape, steps - 1),
                           final.alive_slot)
        best = _best(final.finished, alive, n_best)
        token_ids, attention = _backtrack(final, best, batch, n_best, source_steps)
        return {"token_ids": token_ids, "length": best.length, "score": best.score,
                "normalized_score": best.normalized, "best_token_ids": token_ids[:, 0],
                "best_length": best.length[:, 0], "best_score": best.score[:, 0], "attention": attention}

    def _run(self, model: StepModel, state: DecoderState, batch: tf.Tensor, width: tf.Tensor, n_best: tf.Tensor,
             alpha: tf.Tensor, ngram: tf.Tensor, max_length: tf.Tensor) -> Carry:
        """The search loop, from the initial state to the last step."""
        def tile(x: tf.Tensor) -> tf.Tensor:
            return tf.repeat(x, width, axis=0)

        constraint = self.constraint.map_rows(tile)  # its own per-row tensors (the state: below)
        rows = batch * width
        # Only beam 0 holds a hypothesis (the empty one) at first: the others would duplicate it.
        alive_score = tf.concat([tf.zeros([batch, 1]), tf.fill(tf.stack([batch, width - 1]), NO_HYPOTHESIS)], 1)

        def table(dtype: tf.DType) -> tf.TensorArray:
            # Read back more than once: the walk reads each step's alive slots at two positions.
            return tf.TensorArray(dtype, size=0, dynamic_size=True, clear_after_read=False,
                                  element_shape=tf.TensorShape(None))

        initial = Carry(
            step=tf.constant(0), previous=tf.fill([rows], tf.constant(BOS_ID, tf.int64)),
            state=state.map_rows(tile), rule=tf.nest.map_structure(tile, self.constraint.initial()),
            alive_score=alive_score, alive_slot=tf.zeros([batch, width], tf.int32),
            history=tf.zeros(tf.stack([rows, tf.where(ngram > 0, max_length, 0)]), tf.int64),
            finished=_no_hypotheses(tf.stack([batch, n_best])),
            done=tf.zeros([batch], tf.bool),
            tokens=table(tf.int64), parents=table(tf.int32), slots=table(tf.int32), attention=table(tf.float32))

        def keep_going(c: Carry) -> tf.Tensor:
            return tf.logical_and(c.step < max_length, tf.logical_not(tf.reduce_all(c.done)))

        def body(c: Carry) -> list[Carry]:
            return [self._step(model, constraint, c, batch, width, n_best, alpha, ngram, max_length)]

        # The beam's row count and the candidates' count follow the (tensor) width: let them vary.
        invariants = Carry(
            step=initial.step.shape, previous=tf.TensorShape([None]), state=_row_invariants(initial.state),
            rule=_row_invariants(initial.rule), alive_score=tf.TensorShape([None, None]),
            alive_slot=tf.TensorShape([None, None]), history=tf.TensorShape([None, None]),
            finished=Hypotheses(*[tf.TensorShape([None, None])] * 5), done=tf.TensorShape([None]),
            tokens=None, parents=None, slots=None, attention=None)
        return tf.while_loop(keep_going, body, [initial], shape_invariants=[invariants])[0]

    def _step(self, model: StepModel, constraint: TokenConstraint, c: Carry, batch: tf.Tensor, width: tf.Tensor,
              n_best: tf.Tensor, alpha: tf.Tensor, ngram: tf.Tensor, max_length: tf.Tensor) -> Carry:
        """One decoder step of every alive hypothesis; see the module docstring."""
        t = c.step
        logits, state, weights = model.step(c.previous, c.state)
        logits = forbid_eos_first(constraint.adjust(logits, c.rule), t)
        vocab = tf.shape(logits)[1]
        # Blocked last, so no rule can give a repeated n-gram its probability back.
        logits = tf.cond(ngram > 0,
                         lambda: tf.where(repeated_ngram_tokens(c.history, t, ngram, vocab), FORBIDDEN, logits),
                         lambda: logits)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        # Each beam's best 2K tokens by logit first: the row's best 2K candidates are among them, and
        # a tie that rounding creates in the summed scores keeps the greedy order (the larger logit).
        per_beam = tf.minimum(2 * width, vocab)
        _, beam_token = tf.math.top_k(logits, per_beam)  # [R, P]
        total = tf.reshape(c.alive_score, [-1])[:, None] + tf.gather(log_probs, beam_token, batch_dims=1)
        score, index = tf.math.top_k(tf.reshape(total, tf.stack([batch, width * per_beam])),
                                     tf.minimum(2 * width, width * per_beam))  # [B, C], best first
        parent = index // per_beam
        token = tf.cast(tf.gather(tf.reshape(beam_token, tf.stack([batch, width * per_beam])), index, batch_dims=1),
                        tf.int64)
        is_eos = tf.equal(token, EOS_ID)
        slot = tf.broadcast_to(tf.range(tf.shape(score)[1])[None, :], tf.shape(score))

        finishing = is_eos & (slot < width) & (score > NO_HYPOTHESIS)
        new = Hypotheses(tf.where(finishing, score / length_penalty(t + 1, alpha), NO_HYPOTHESIS), score,
                         tf.fill(tf.shape(score), tf.cast(t + 1, tf.int64)), tf.fill(tf.shape(score), t), slot)
        finished = _best(c.finished, new, n_best)

        alive_score, alive_slot = tf.math.top_k(tf.where(is_eos, NO_HYPOTHESIS, score), width)
        alive_token = tf.reshape(tf.gather(token, alive_slot, batch_dims=1), [-1])
        rows = tf.reshape(tf.range(batch)[:, None] * width + tf.gather(parent, alive_slot, batch_dims=1), [-1])

        def follow(x: tf.Tensor) -> tf.Tensor:
            return tf.gather(x, rows)

        rule = constraint.update(tf.nest.map_structure(follow, c.rule), alive_token)
        history = follow(c.history)
        history = tf.where(tf.equal(tf.range(tf.shape(history)[1]), t)[None, :], alive_token[:, None], history)

        # Done: the pool is full and no alive hypothesis can beat its worst, at any reachable length.
        bound = alive_score[:, 0] / tf.maximum(length_penalty(t + 1, alpha), length_penalty(max_length, alpha))
        worst = tf.reduce_min(finished.normalized, axis=1)
        done = (worst > NO_HYPOTHESIS) & (bound <= worst)
        return Carry(
            step=t + 1, previous=alive_token, state=state.map_rows(follow), rule=rule, alive_score=alive_score,
            alive_slot=alive_slot, history=history, finished=finished, done=done,
            tokens=c.tokens.write(t, token), parents=c.parents.write(t, parent), slots=c.slots.write(t, alive_slot),
            attention=c.attention.write(t, tf.reshape(weights, tf.stack([batch, width, -1]))))


def _backtrack(final: Carry, best: Hypotheses, batch: tf.Tensor, n_best: tf.Tensor,
               source_steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Token ids [B, N, T] of the hypotheses and the first one's attention [B, T, S], walking the
    back-pointers from the last step to the first."""
    steps = final.step

    def body(j, cursor, tokens, attention):
        active = j <= best.end  # [B, N]: the hypothesis has a token at step j
        token = tf.where(active, tf.gather(final.tokens.read(j), cursor, batch_dims=1), tf.constant(PAD_ID, tf.int64))
        parent = tf.gather(final.parents.read(j), cursor, batch_dims=1)  # its beam before step j
        weights = tf.gather(final.attention.read(j), parent[:, 0], batch_dims=1)
        weights = tf.where(active[:, :1], weights, 0.0)
        # Beam k before step j is the candidate in slot slots[j - 1][k] of step j - 1.
        earlier = tf.gather(final.slots.read(tf.maximum(j - 1, 0)), parent, batch_dims=1)
        cursor = tf.where(active, earlier, cursor)
        return j - 1, cursor, tokens.write(j, token), attention.write(j, weights)

    def walk() -> tuple[tf.Tensor, tf.Tensor]:
        tokens = tf.TensorArray(tf.int64, size=steps, element_shape=tf.TensorShape([None, None]))
        attention = tf.TensorArray(tf.float32, size=steps, element_shape=tf.TensorShape([None, None]))
        _, _, tokens, attention = tf.while_loop(lambda j, *_: j >= 0, body,
                                                (steps - 1, best.slot, tokens, attention))
        return tf.transpose(tokens.stack(), [1, 2, 0]), tf.transpose(attention.stack(), [1, 0, 2])

    def empty() -> tuple[tf.Tensor, tf.Tensor]:
        # stack() of an empty TensorArray needs a fully known element shape, so max_length=0 is special.
        return tf.zeros(tf.stack([batch, n_best, 0]), tf.int64), tf.zeros(tf.stack([batch, 0, source_steps]))

    return tf.cond(steps > 0, walk, empty)
