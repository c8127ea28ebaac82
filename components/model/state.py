"""What the encoder hands the decoder, and what a decoding strategy carries from step to step."""
from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf


class Encoded(NamedTuple):
    """What `Seq2Seq.encode` computes once per batch and every decoder step reads.

    Shapes: B batch, S source steps, U units.
    """

    states: tf.Tensor       # [B, S, U] encoder GRU states (zeros at padded positions)
    final_state: tf.Tensor  # [B, U] state after each row's last real token
    mask: tf.Tensor         # [B, S] bool, True at real source tokens
    keys: tf.Tensor         # [B, S, K] the attention's precomputed keys (K = 0 without attention)
    copy_ids: tf.Tensor     # [B, S] int64 extended target ids of the source tokens (copy attention;
                            # [B, 0] for a model without it)


class DecoderState(NamedTuple):
    """The decoder's state between two `Seq2Seq.step` calls: a nest of tensors, so that it can be a
    `tf.while_loop` variable.

    `hidden` and `memory` have one row per sentence (a beam search tiles and reorders them with
    `map_rows`); `weights` are the step's weights, read once per batch, so that a decoding loop
    does not read (and, for Bahdanau, concatenate) the variables again at every step.
    """

    hidden: tf.Tensor             # [B, U] decoder GRU state
    memory: Encoded               # the encoder's output for these rows
    weights: dict[str, tf.Tensor]  # per batch, not per row

    def map_rows(self, fn: Callable[[tf.Tensor], tf.Tensor]) -> "DecoderState":
        """Apply `fn` (e.g. a `tf.gather` along the batch, or a tile) to every per-row tensor."""
        return self._replace(hidden=fn(self.hidden), memory=tf.nest.map_structure(fn, self.memory))
