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
from typing import Any, Protocol

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
                 max_length: Any) -> dict[str, tf.Tensor]:
        source_ids = tf.convert_to_tensor(source_ids, tf.int64)
        source_length = tf.convert_to_tensor(source_length, tf.int64)
        state = model.initial_state(model.encode(source_ids, source_length))
        return self.search(model, state, tf.shape(source_ids)[0], tf.shape(source_ids)[1],
                           tf.cast(max_length, tf.int32))

    @abc.abstractmethod
    def search(self, model: StepModel, state: DecoderState, batch: tf.Tensor, source_steps: tf.Tensor,
               max_length: tf.Tensor) -> dict[str, tf.Tensor]:
        """Decode from the initial `state` of `batch` rows over `source_steps` source positions."""


class GreedySearch(DecodingStrategy):
    """The most likely token at every step, until every row has emitted <eos> or at max_length."""

    def search(self, model: StepModel, state: DecoderState, batch: tf.Tensor, source_steps: tf.Tensor,
               max_length: tf.Tensor) -> dict[str, tf.Tensor]:
        tokens_ta = tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=tf.TensorShape([None]))
        attention_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True,
                                      element_shape=tf.TensorShape([None, None]))

        def keep_going(t, previous, state, finished, length, score, tokens, attention):
            return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(finished)))

        def body(t, previous, state, finished, length, score, tokens, attention):
            logits, state, weights = model.step(previous, state)
            log_probs = tf.nn.log_softmax(logits, axis=-1)
            chosen = tf.argmax(logits, axis=-1, output_type=tf.int64)
            chosen_log_prob = tf.gather(log_probs, chosen, batch_dims=1)
            running = tf.logical_not(finished)
            score += tf.where(running, chosen_log_prob, 0.0)
            length += tf.cast(running, tf.int64)
            chosen = tf.where(running, chosen, tf.constant(PAD_ID, tf.int64))
            weights = tf.where(running[:, None], weights, 0.0)
            finished = tf.logical_or(finished, tf.equal(chosen, EOS_ID))
            return (t + 1, chosen, state, finished, length, score,
                    tokens.write(t, chosen), attention.write(t, weights))

        initial = (tf.constant(0), tf.fill([batch], tf.constant(BOS_ID, tf.int64)), state,
                   tf.zeros([batch], tf.bool), tf.zeros([batch], tf.int64), tf.zeros([batch], tf.float32),
                   tokens_ta, attention_ta)
        steps, _, _, _, length, score, tokens_ta, attention_ta = tf.while_loop(keep_going, body, initial)
        # stack() of an empty TensorArray needs a fully known element shape, so max_length=0 is special.
        token_ids = tf.cond(steps > 0, lambda: tf.transpose(tokens_ta.stack()),
                            lambda: tf.zeros([batch, 0], tf.int64))
        attention = tf.cond(steps > 0, lambda: tf.transpose(attention_ta.stack(), [1, 0, 2]),
                            lambda: tf.zeros([batch, 0, source_steps], tf.float32))
        return {"token_ids": token_ids, "length": length, "score": score, "attention": attention}


def greedy_decode(model: StepModel, source_ids: tf.Tensor, source_length: tf.Tensor,
                  max_length: Any) -> dict[str, tf.Tensor]:
    """Greedy-decode a batch (see `DecodingStrategy` for the outputs)."""
    return GreedySearch()(model, source_ids, source_length, max_length)
