"""Decoding strategies over the model's step interface; greedy search is the one in use.

A strategy only needs `encode`, `initial_state` and `step` from the model (`StepModel`), and treats
the decoder state as an opaque nest of tensors (`DecoderState.map_rows` tiles or reorders its rows),
so another strategy, such as a beam search, plugs in beside `GreedySearch` without touching the
model. Decoding runs eagerly, inside `tf.function` and in a SavedModel graph alike: one
`tf.while_loop` over decoder steps.

`greedy_decode` is what the exported SavedModel serves (components/exporter/module.py), so the
evaluator, which scores that SavedModel, decodes with it too; the trainer itself never decodes (its
eval loss is teacher-forced), but the trainer's tests decode the trained model with it.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Optional, Protocol

import tensorflow as tf

from components.core.vocabulary import BOS_ID, EOS_ID, PAD_ID
from components.model.state import DecoderState


class StepModel(Protocol):
    """What a decoding strategy needs from a model (`Seq2Seq` is one)."""

    def encode(self, source_ids: tf.Tensor, source_length: tf.Tensor) -> Any: ...

    def initial_state(self, encoded: Any) -> DecoderState: ...

    def step(self, previous_ids: tf.Tensor, state: DecoderState) -> tuple[tf.Tensor, DecoderState, tf.Tensor]:
        """[B] previous ids -> (logits [B, V], next state, attention weights [B, S])."""


class DecodingStrategy(abc.ABC):
    """Source ids in, decoded ids out; subclasses choose the tokens (`search`).

    Output, a dict of tensors:
      token_ids  int64 [B, T]: the chosen ids, <pad> after a row's <eos>;
      length     int64 [B]: tokens up to and including <eos> (T if the row never emitted <eos>);
      score      float32 [B]: sum of the log-probabilities of the chosen tokens, <eos> included;
      attention  float32 [B, T, S]: attention weights per emitted token (zeros for attention 'none'
                 and after <eos>).
    T is the number of steps actually run: at most max_length (a Python int or scalar tensor).
    """

    def __call__(self, model: StepModel, source_ids: tf.Tensor, source_length: tf.Tensor,
                 max_length: Any, source_copy_ids: Optional[tf.Tensor] = None) -> dict[str, tf.Tensor]:
        """`source_copy_ids` [B, S]: the source tokens' extended ids, for a copy-attention model."""
        source_ids = tf.convert_to_tensor(source_ids, tf.int64)
        source_length = tf.convert_to_tensor(source_length, tf.int64)
        encoded = (model.encode(source_ids, source_length) if source_copy_ids is None
                   else model.encode(source_ids, source_length, copy_ids=source_copy_ids))
        state = model.initial_state(encoded)
        return self.search(model, state, tf.shape(source_ids)[0], tf.shape(source_ids)[1],
                           tf.cast(max_length, tf.int32))

    @abc.abstractmethod
    def search(self, model: StepModel, state: DecoderState, batch: tf.Tensor, source_steps: tf.Tensor,
               max_length: tf.Tensor) -> dict[str, tf.Tensor]:
        """Decode from the initial `state` of `batch` rows over `source_steps` source positions."""


class TokenConstraint(abc.ABC):
    """A rule on which tokens a hypothesis may emit next, applied to the step's log-probabilities.

    It keeps its own per-row state (a nest of tensors with the batch first), which a strategy
    carries through its loop and, like the decoder state, may reorder by rows."""

    @abc.abstractmethod
    def initial(self) -> Any:
        """The state before the first step."""

    @abc.abstractmethod
    def adjust(self, logits: tf.Tensor, state: Any) -> tf.Tensor:
        """[B, V] logits -> [B, V] logits under the rule. Working on logits (log-probabilities up to
        a per-row constant) leaves the scores of untouched tokens bit for bit as they were."""

    @abc.abstractmethod
    def update(self, state: Any, chosen: tf.Tensor) -> Any:
        """The state after the rows emitted `chosen` [B]."""

    def map_rows(self, fn: Callable[[tf.Tensor], tf.Tensor]) -> "TokenConstraint":
        """The constraint for rows `fn` makes of the batch's rows (a beam search tiles each source
        row into its beams). Only per-row tensors the constraint keeps itself are mapped; its state
        is mapped by the strategy. Default: no per-row tensors, the constraint itself."""
        return self


class Unconstrained(TokenConstraint):
    def initial(self) -> Any:
        return ()

    def adjust(self, logits: tf.Tensor, state: Any) -> tf.Tensor:
        return logits

    def update(self, state: Any, chosen: tf.Tensor) -> Any:
        return ()


# Log-probability of a forbidden token: finite, so sums and softmaxes stay free of NaN.
FORBIDDEN = -1e9


def forbid_eos_first(logits: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """[B, V] logits with <eos> forbidden at the first step: a non-empty source never translates to
    nothing (an undertrained model's likeliest first token is often <eos>). Every strategy applies
    it, after the constraint, so that a beam of width 1 stays greedy search. `translate_text` blanks
    the output of an empty source itself."""
    is_eos = tf.equal(tf.range(tf.shape(logits)[1]), EOS_ID)[None, :]
    return tf.where(tf.logical_and(tf.equal(step, 0), is_eos), FORBIDDEN, logits)


class SpanConstraint(TokenConstraint):
    """Every protected span of the source exactly once (components/text/spans.py).

    The rule, per row: the sentinel of a span the source does not have, or of one already emitted,
    is forbidden; while any of the source's spans is missing, <eos> is forbidden and its
    probability goes to the missing spans' sentinels in proportion to theirs, so where the model
    would stop, it emits the likeliest missing span instead. A hypothesis cut by max_length can
    still miss spans: the exported model appends those after the text (docs/export.md).

    `token_slots` [V] int32: the span slot of each target token (-1 for non-sentinels; a WordPiece
    vocabulary has two tokens per slot, the plain and the `##` form). `required` [B, K] bool: the
    slots each source fills.
    """

    def __init__(self, token_slots: tf.Tensor, required: tf.Tensor):
        self.token_slots = tf.convert_to_tensor(token_slots, tf.int32)
        self.required = tf.convert_to_tensor(required, tf.bool)
        self.slots = tf.shape(self.required)[1]

    def map_rows(self, fn: Callable[[tf.Tensor], tf.Tensor]) -> "SpanConstraint":
        """`required` mapped by rows; the token slots are per vocabulary, shared."""
        return SpanConstraint(self.token_slots, fn(self.required))

    def initial(self) -> tf.Tensor:
        return tf.zeros_like(self.required)  # emitted [B, K]

    def _slots(self, width: tf.Tensor) -> tf.Tensor:
        """The slots of `width` ids: a copy-attention model's extended ids past V are no sentinels."""
        return tf.pad(self.token_slots, [[0, width - tf.shape(self.token_slots)[0]]], constant_values=-1)

    def _per_token(self, per_slot: tf.Tensor, slots: tf.Tensor) -> tf.Tensor:
        """[B, K] bool per slot -> [B, width] bool per token (False for non-sentinel tokens)."""
        return tf.gather(per_slot, tf.maximum(slots, 0), axis=1) & (slots >= 0)[None, :]

    def adjust(self, logits: tf.Tensor, emitted: tf.Tensor) -> tf.Tensor:
        slots = self._slots(tf.shape(logits)[1])
        blocked = self._per_token(emitted | tf.logical_not(self.required), slots)
        logits = tf.where(blocked, FORBIDDEN, logits)
        missing = self._per_token(self.required & tf.logical_not(emitted), slots)
        any_missing = tf.reduce_any(missing, axis=1, keepdims=True)
        # p'(s) = p(s) + p(eos) * share(s) over the missing sentinels s, p'(eos) = 0: the row's
        # normalizer is unchanged, so in logits: log(exp(logit_s) + exp(logit_eos) * share(s)).
        eos = logits[:, EOS_ID:EOS_ID + 1]
        share = tf.nn.log_softmax(tf.where(missing, logits, FORBIDDEN), axis=-1)
        redirected = tf.where(missing, tf.reduce_logsumexp(tf.stack([logits, eos + share]), axis=0), logits)
        is_eos = tf.equal(tf.range(tf.shape(logits)[1]), EOS_ID)[None, :]
        redirected = tf.where(is_eos, FORBIDDEN, redirected)
        return tf.where(any_missing, redirected, logits)

    def update(self, emitted: tf.Tensor, chosen: tf.Tensor) -> tf.Tensor:
        vocab = tf.shape(self.token_slots, out_type=tf.int64)[0]
        slot = tf.where(chosen < vocab, tf.gather(self.token_slots, tf.minimum(chosen, vocab - 1)), -1)
        return emitted | tf.cast(tf.one_hot(tf.maximum(slot, 0), self.slots, dtype=tf.int32), tf.bool) & (slot >= 0)[:, None]


class GreedySearch(DecodingStrategy):
    """The most likely token at every step (never <eos> first), until every row has emitted <eos> or
    at max_length."""

    def __init__(self, constraint: TokenConstraint | None = None):
        self.constraint = constraint or Unconstrained()

    def search(self, model: StepModel, state: DecoderState, batch: tf.Tensor, source_steps: tf.Tensor,
               max_length: tf.Tensor) -> dict[str, tf.Tensor]:
        tokens_ta = tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=tf.TensorShape([None]))
        attention_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True,
                                      element_shape=tf.TensorShape([None, None]))
        constraint = self.constraint

        def keep_going(t, previous, state, rule, finished, length, score, tokens, attention):
            return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(finished)))

        def body(t, previous, state, rule, finished, length, score, tokens, attention):
            logits, state, weights = model.step(previous, state)
            logits = forbid_eos_first(constraint.adjust(logits, rule), t)
            log_probs = tf.nn.log_softmax(logits, axis=-1)
            chosen = tf.argmax(logits, axis=-1, output_type=tf.int64)
            chosen_log_prob = tf.gather(log_probs, chosen, batch_dims=1)
            running = tf.logical_not(finished)
            score += tf.where(running, chosen_log_prob, 0.0)
            length += tf.cast(running, tf.int64)
            chosen = tf.where(running, chosen, tf.constant(PAD_ID, tf.int64))
            rule = constraint.update(rule, chosen)
            weights = tf.where(running[:, None], weights, 0.0)
            finished = tf.logical_or(finished, tf.equal(chosen, EOS_ID))
            return (t + 1, chosen, state, rule, finished, length, score,
                    tokens.write(t, chosen), attention.write(t, weights))

        initial = (tf.constant(0), tf.fill([batch], tf.constant(BOS_ID, tf.int64)), state, constraint.initial(),
                   tf.zeros([batch], tf.bool), tf.zeros([batch], tf.int64), tf.zeros([batch], tf.float32),
                   tokens_ta, attention_ta)
        steps, _, _, _, _, length, score, tokens_ta, attention_ta = tf.while_loop(keep_going, body, initial)
        # stack() of an empty TensorArray needs a fully known element shape, so max_length=0 is special.
        token_ids = tf.cond(steps > 0, lambda: tf.transpose(tokens_ta.stack()),
                            lambda: tf.zeros([batch, 0], tf.int64))
        attention = tf.cond(steps > 0, lambda: tf.transpose(attention_ta.stack(), [1, 0, 2]),
                            lambda: tf.zeros([batch, 0, source_steps], tf.float32))
        return {"token_ids": token_ids, "length": length, "score": score, "attention": attention}


def greedy_decode(model: StepModel, source_ids: tf.Tensor, source_length: tf.Tensor,
                  max_length: Any, constraint: TokenConstraint | None = None,
                  source_copy_ids: Optional[tf.Tensor] = None) -> dict[str, tf.Tensor]:
    """Greedy-decode a batch (see `DecodingStrategy` for the outputs), under `constraint` if given."""
    return GreedySearch(constraint)(model, source_ids, source_length, max_length, source_copy_ids)
