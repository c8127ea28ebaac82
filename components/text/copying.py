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


def _first_match(queries: tf.Tensor, query_valid: tf.Tensor, keys: tf.Tensor, key_valid: tf.Tensor,
                 needed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """For [B, Q] queries and [B, K] keys: (index of the first equal key in the same row [B, Q],
    found [B, Q]), computed where `needed` [B, Q] (0 and False elsewhere).

    One `tf.unique` over the (row, text) pairs of the valid keys and the needed queries, instead of
    comparing every query with every key ([B, Q, K] string comparisons cost far more:
    docs/preprocess.md); exact, since a row number holds no NUL, so each (row, text) pair has a
    string of its own."""
    key_at, query_at = tf.where(key_valid), tf.where(needed & query_valid)  # [N, 2]: (row, position)

    def pairs(texts: tf.Tensor, at: tf.Tensor) -> tf.Tensor:
        return tf.strings.join([tf.strings.as_string(at[:, 0]), tf.gather_nd(texts, at)], separator="\x00")

    unique, index = tf.unique(tf.concat([pairs(keys, key_at), pairs(queries, query_at)], axis=0))
    keys_count = tf.shape(key_at)[0]
    never = tf.constant(tf.int64.max, tf.int64)
    positions = tf.concat([key_at[:, 1], tf.fill(tf.shape(query_at)[:1], never)], axis=0)
    first_key = tf.math.unsorted_segment_min(positions, index, tf.size(unique))
    match = tf.gather(first_key, index[keys_count:])
    found = match < never
    shape = tf.shape(queries, out_type=tf.int64)
    return tf.scatter_nd(query_at, tf.where(found, match, 0), shape), tf.scatter_nd(query_at, found, shape)


def source_surface(source: SequenceEncoder, masked: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The source tokens' surface texts [B, S] ('' padded) and validity [B, S], S = the source width."""
    return _padded(source.tokenizer.tokenize_with_surface(masked)[1], source.width)


def source_copy_ids(surface: tf.Tensor, valid: tf.Tensor, target_table: tf.lookup.StaticHashTable) -> tf.Tensor:
    """[B, S] extended ids of the source tokens (<pad> at padding); see the module docstring.
    `target_table`: the target vocabulary's token -> id table (`encoding.lookup_table`)."""
    size = tf.cast(target_table.size(), tf.int64)
    ids = target_table.lookup(surface)
    unknown = tf.equal(ids, UNK_ID)
    first, _ = _first_match(surface, valid, surface, valid, unknown)
    copy_ids = tf.where(unknown, size + first, ids)
    return tf.where(valid, copy_ids, tf.constant(PAD_ID, tf.int64))


def target_copy_output(target: SequenceEncoder, masked_targets: tf.Tensor, surface: tf.Tensor,
                       valid: tf.Tensor) -> tf.Tensor:
    """`target_output` [B, T] with each <unk> label that a source token spells replaced by that
    token's copy id (V + its first position)."""
    tokens, target_surface = target.tokenizer.tokenize_with_surface(masked_targets)
    return copy_labels(target, tokens, target_surface, surface, valid)


def copy_labels(target: SequenceEncoder, tokens: tf.RaggedTensor, target_surface: tf.RaggedTensor,
                surface: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """`target_copy_output` of a target's tokens and their surfaces [B, (n)] (tokenized already)."""
    keep = target.width - 2
    token_text, token_valid = _padded(tokens, keep)
    text, _ = _padded(target_surface, keep)
    ids = target.table.lookup(token_text)
    unknown = tf.equal(ids, UNK_ID)
    first, found = _first_match(text, token_valid, surface, valid, unknown)  # the first match: its own first position
    labels = tf.where(unknown & found, tf.cast(target.table.size(), tf.int64) + first, ids)
    labels = tf.RaggedTensor.from_tensor(labels, lengths=tf.reduce_sum(tf.cast(token_valid, tf.int64), axis=1))
    eos = tf.fill([labels.nrows(), 1], tf.constant(EOS_ID, tf.int64))
    return tf.concat([labels, eos], axis=1).to_tensor(PAD_ID, shape=[None, target.width])


def encode_pairs(source: SequenceEncoder, target: SequenceEncoder, sources: tf.Tensor, targets: tf.Tensor
                 ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """Raw pairs [B] -> (the source features, the target features) of their training examples:
    `encode_source` plus source_copy_ids and span_count, `encode_target` plus target_copy_output.

    The same functions the SavedModel runs (`protect`, the tokenizers, `source_features`, the copy
    ids), but each step once: the spans are found once for both sides and each side is tokenized
    once, so the Beam job does not repeat them for every feature."""
    masked_sources, spans, span_count = source.protect_with_counts(sources)
    masked_targets = target.protect_target_like(targets, spans)
    source_tokens, source_surfaces = source.tokenizer.tokenize_with_surface(masked_sources)
    target_tokens, target_surfaces = target.tokenizer.tokenize_with_surface(masked_targets)
    encoded_source = source.source_features(source.ids_of(source_tokens))
    encoded_target = target.target_features(target.ids_of(target_tokens))
    surface, valid = _padded(source_surfaces, source.width)
    encoded_source["source_copy_ids"] = source_copy_ids(surface, valid, target.table)
    encoded_source["span_count"] = span_count
    encoded_target["target_copy_output"] = copy_labels(target, target_tokens, target_surfaces, surface, valid)
    return encoded_source, encoded_target
