"""The training loss: masked token cross-entropy under teacher forcing, over parallel sub-batches.

`projected_cross_entropy` is the vocabulary projection and the softmax cross-entropy written out
with their own gradient (softmax - one-hot): TensorFlow's SparseSoftmaxCrossEntropyWithLogits kernel
makes several more passes over the [tokens, V] logits than this, and at V in the thousands those
passes cost as much as the matmuls.
"""
from __future__ import annotations

import tensorflow as tf

from components.model import Seq2Seq
from components.trainer.data import cut_to_longest


def projected_cross_entropy(model: Seq2Seq, states: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(per-token loss [N], 1.0 where argmax == label) of `model.project(states)` for [N, U] decoder
    states and [N] labels: the projection and the cross-entropy fused, vocabulary-major.

    The logits are computed as [V, N] (kernel · statesᵀ), so that of the projection's three matmuls
    the two slow ones on the CPU, the forward pass and the kernel gradient (which would otherwise
    multiply a transposed [N, V] operand), become plain ones: 12% less time for the three at V 7k.
    """
    dtype = model.compute_dtype
    labels = tf.cast(labels, tf.int32)

    @tf.custom_gradient
    def fused(states, kernel, bias):
        # Cast once for the forward and the backward matmuls (no-ops in float32).
        states_c, kernel_c = tf.cast(states, dtype), tf.cast(kernel, dtype)
        logits = tf.cast(tf.matmul(kernel_c, states_c, transpose_b=True), tf.float32) + bias[:, None]
        top = tf.reduce_max(logits, axis=0)
        exp = tf.exp(logits - top)
        total = tf.reduce_sum(exp, axis=0)
        label_positions = tf.stack([labels, tf.range(tf.shape(labels)[0])], axis=1)
        label_logit = tf.gather_nd(logits, label_positions)
        losses = tf.math.log(total) + top - label_logit
        correct = tf.cast(label_logit >= top, tf.float32)

        def grad(upstream, _unused_correct_grad=None):
            logits_grad = tf.tensor_scatter_nd_sub(exp * (upstream / total), label_positions, upstream)
            logits_grad_c = tf.cast(logits_grad, dtype)
            states_grad = tf.matmul(logits_grad_c, kernel_c, transpose_a=True)
            kernel_grad = tf.matmul(logits_grad_c, states_c)
            return (tf.cast(states_grad, tf.float32), tf.cast(kernel_grad, tf.float32),
                    tf.reduce_sum(logits_grad, axis=1))

        return (losses, correct), grad

    return fused(states, tf.convert_to_tensor(model.output_kernel), tf.convert_to_tensor(model.output_bias))


def split_batch(batch: dict[str, tf.Tensor], parts: int) -> list[dict[str, tf.Tensor]]:
    """Split a batch into `parts` sub-batches of lengths as alike as possible, each cut to its own
    longest sequence. Rows are dealt out in order of target length (the 1st, 3rd, 5th... longest
    to one part, the 2nd, 4th... to the next), so every part runs about as many decoder steps and
    no core waits for the other. Sizes differ by at most one row; a part may be empty."""
    if parts <= 1:
        return [batch]
    source_length = batch["source_length"]
    key = batch["target_length"] * (tf.reduce_max(source_length) + 1) + source_length
    order = tf.argsort(key, direction="DESCENDING", stable=True)
    sub_batches = []
    for i in range(parts):
        rows = order[i::parts]
        sub_batches.append(cut_to_longest({name: tf.gather(value, rows) for name, value in batch.items()}))
    return sub_batches


def _sub_batch_loss(model: Seq2Seq, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    encoded = model.encode(batch["source_ids"], batch["source_length"])
    states, _ = model.decoder_states(encoded, batch["target_input"], with_attention=False)
    mask = tf.sequence_mask(batch["target_length"], tf.shape(batch["target_output"])[1])
    # Only the real decoder positions are projected: one [V, U] x [U, tokens] matmul, none on padding.
    losses, correct = projected_cross_entropy(model, tf.boolean_mask(states, mask),
                                              tf.boolean_mask(batch["target_output"], mask))
    return tf.reduce_sum(losses), tf.cast(tf.size(losses), tf.float32), tf.reduce_sum(correct)


def token_loss(model: Seq2Seq, batch: dict[str, tf.Tensor],
               sub_batches: int = 1) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(summed cross-entropy, real target tokens, correctly predicted tokens) under teacher forcing.

    With `sub_batches` > 1 the batch is dealt into parts (`split_batch`) whose graphs share no op,
    so TensorFlow runs them concurrently, one per core (see components/core/threads.py).
    The sums are the same as for the whole batch.
    """
    parts = [_sub_batch_loss(model, part) for part in split_batch(batch, sub_batches)]
    if len(parts) == 1:
        return parts[0]
    return tuple(tf.add_n(list(values)) for values in zip(*parts))
