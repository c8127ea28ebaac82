"""Ids for copying source tokens into the output (model.copy_attention), shared by the Beam job, which
writes them into the TFRecords, and the exported model, which computes them for its inputs.

A copy-attention model predicts over an extended vocabulary: the V target ids, then one id per source
position, V + i. Source token i copies as its target id when the target vocabulary has its surface
text (its own spelling, or the whole word where the tokenizer said <unk>), and otherwise as V + f,
with f the first position holding the same text, so that repeats of one unknown token share one id.
A target token the target vocabulary lacks is labelled with the copy id of the source token with
the same text, when there is one (<unk> otherwise).
"""
from __future__ import annotations

import tensorflow as tf

from components.core.vocabulary import EOS_ID, PAD_ID, UNK_ID
from components.text.encoding import SequenceEncoder


def _padded(tokens: tf.RaggedTensor, width: int) -> tuple[tf.Tensor, tf.Tensor]:
    """[B, (n)] strings -> ([B, width] with '' padding, [B, width] validity), truncated to width."""
    kept = tokens[:, :width]
    return kept.to_tensor("", shape=[None, width]), tf.sequence_mask(kept.row_lengths(), width)


def _first_match(queries: tf.Tensor, query_valid: tf.Tensor, keys: tf.Tensor,
                 key_valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """For [B, Q] queries and [B, K] keys: (index of the first equal key [B, Q], found [B, Q])."""
    equal = tf.equal(queries[:, :, None], keys[:, None, :]) & query_valid[:, :, None] & key_valid[:, None, :]
    return tf.argmax(tf.cast(equal, tf.int32), axis=2, output_type=tf.int64), tf.reduce_any(equal, axis=2)


def source_surface(source: SequenceEncoder, masked: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The source tokens' surface texts [B, S] ('' padded) and validity [B, S], S = the source width."""
    return _padded(source.tokenizer.tokenize_with_surface(masked)[1], source.width)


def source_copy_ids(surface: tf.Tensor, valid: tf.Tensor, target_table: tf.lookup.StaticHashTable) -> tf.Tensor:
    """[B, S] extended ids of the source tokens (<pad> at padding); see the module docstring.
    `target_table`: the target vocabulary's token -> id table (`encoding.lookup_table`)."""
    size = tf.cast(target_table.size(), tf.int64)
    ids = target_table.lookup(surface)
    first, _ = _first_match(surface, valid, surface, valid)
    copy_ids = tf.where(tf.equal(ids, UNK_ID), size + first, ids)
    return tf.where(valid, copy_ids, tf.constant(PAD_ID, tf.int64))


def target_copy_output(target: SequenceEncoder, masked_targets: tf.Tensor, surface: tf.Tensor,
                       valid: tf.Tensor) -> tf.Tensor:
    """`target_output` [B, T] with each <unk> label that a source token spells replaced by that
    token's copy id (V + its first position)."""
    tokens, target_surface = target.tokenizer.tokenize_with_surface(masked_targets)
    keep = target.width - 2
    token_text, token_valid = _padded(tokens, keep)
    text, _ = _padded(target_surface, keep)
    ids = target.table.lookup(token_text)
    first, found = _first_match(text, token_valid, surface, valid)  # the first match: its own first position
    labels = tf.where(tf.equal(ids, UNK_ID) & found, tf.cast(target.table.size(), tf.int64) + first, ids)
    labels = tf.RaggedTensor.from_tensor(labels, lengths=tf.reduce_sum(tf.cast(token_valid, tf.int64), axis=1))
    eos = tf.fill([labels.nrows(), 1], tf.constant(EOS_ID, tf.int64))
    return tf.concat([labels, eos], axis=1).to_tensor(PAD_ID, shape=[None, target.width])
