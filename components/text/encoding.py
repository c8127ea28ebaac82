"""Text -> padded id tensors, in TensorFlow, shared by preprocessing and serving.

The Beam job encodes batches with `SequenceEncoder` to write the TFRecords, and the exported
SavedModel's `encode` signature runs the same module, so `source_ids` match bit for bit.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import tensorflow as tf

from components.core.vocabulary import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK, UNK_ID
from components.text.spans import SpanMasker, missing_spans, restore_spans
from components.text.tokenizers import Tokenizer, normalize

VocabSource = Union[str, Sequence[str]]


def lookup_table(vocab: VocabSource) -> tf.lookup.StaticHashTable:
    """token -> id table, from a vocabulary file (tracked as a SavedModel asset) or a token list."""
    if isinstance(vocab, str):
        init = tf.lookup.TextFileInitializer(
            vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        )
    else:
        init = tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(vocab), tf.string), tf.range(len(vocab), dtype=tf.int64)
        )
    return tf.lookup.StaticHashTable(init, default_value=UNK_ID)


def id_to_token_table(vocab_path: str) -> tf.lookup.StaticHashTable:
    """id (line number) -> token, from a vocabulary file (tracked as a SavedModel asset)."""
    init = tf.lookup.TextFileInitializer(
        vocab_path, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
    )
    return tf.lookup.StaticHashTable(init, default_value=UNK)


def decode_ids(table: tf.lookup.StaticHashTable, tokenizer: Tokenizer, token_ids: tf.Tensor,
               length: tf.Tensor, spans: Optional[tf.RaggedTensor] = None,
               slots: Optional[tf.Tensor] = None, source: Optional[tf.Tensor] = None,
               attention: Optional[tf.Tensor] = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Decoded ids [B, T] and lengths [B] -> (tokens [B, T], '' past each length; texts [B]).

    The texts drop every special token (ids 0-3: <eos> and <unk> included) and are detokenized
    with the target tokenizer. With the sources' protected `spans` and the vocabulary's sentinel
    `slots`, sentinels become their spans, and spans a row never emitted are appended to its text.
    With the source tokens' surface texts `source` [B, S], an extended id V + i (copy attention)
    is source token i; with `attention` [B, T, S] too, an <unk> becomes the most attended source
    token (OpenNMT's replace_unknown_target) and is kept in the text.
    The exported model and the trainer's dev-metric both use this.
    """
    steps = tf.shape(token_ids, out_type=tf.int64)[1]
    valid = tf.sequence_mask(length, steps)
    tokens = tf.where(valid, table.lookup(token_ids), "")
    shown = token_ids >= len(SPECIAL_TOKENS)
    if source is not None:
        tokens, shown = _source_tokens(tokens, shown, token_ids, valid, table, source, attention)
    if spans is not None:
        tokens = restore_spans(tokens, token_ids, spans, slots)
    words = tf.ragged.boolean_mask(tokens, valid & shown)
    texts = tokenizer.detokenize(words)
    if spans is not None:
        texts = tf.strings.strip(tf.strings.join([texts, missing_spans(token_ids, length, spans, slots)], " "))
    return tokens, texts


def _source_tokens(tokens: tf.Tensor, shown: tf.Tensor, token_ids: tf.Tensor, valid: tf.Tensor,
                   table: tf.lookup.StaticHashTable, source: tf.Tensor,
                   attention: Optional[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """Copied (extended) ids and, given attention, <unk> as source tokens; see `decode_ids`."""
    vocab_size = tf.cast(table.size(), tf.int64)
    copied = valid & (token_ids >= vocab_size)
    position = token_ids - vocab_size
    if attention is not None:
        unknown = valid & tf.equal(token_ids, UNK_ID)
        position = tf.where(unknown, tf.argmax(attention, axis=-1), position)
        copied |= unknown
    # `source` is as wide as the source encoder (at least one position).
    position = tf.clip_by_value(position, 0, tf.cast(tf.shape(source)[1], tf.int64) - 1)
    return tf.where(copied, tf.gather(source, position, batch_dims=1), tokens), shown | copied


class SequenceEncoder(tf.Module):
    """Mask protected spans (when a `SpanMasker` is given), tokenize, map to ids (<unk> for unknown
    tokens), truncate and pad to a fixed width."""

    def __init__(self, tokenizer: Tokenizer, vocab: VocabSource, width: int, name: str = "encoder",
                 masker: Optional[SpanMasker] = None):
        super().__init__(name=name)
        self.tokenizer = tokenizer
        self.table = lookup_table(vocab)
        self.width = int(width)
        self.masker = masker

    def protect(self, texts: tf.Tensor) -> tuple[tf.Tensor, Optional[tf.RaggedTensor]]:
        """[B] source texts -> (texts with spans masked, spans [B, (n)]); unchanged and None without a masker.

        Spans are found after whitespace normalization and before lowercasing, so they come back as written.
        """
        if self.masker is None:
            return texts, None
        return self.masker.mask(normalize(tf.convert_to_tensor(texts, tf.string), lowercase=False))

    def span_counts(self, texts: tf.Tensor) -> tf.Tensor:
        """[B] source texts -> int64 [B]: the protected spans of each, those past SPAN_SLOTS included
        (found as `protect` finds them); zeros without a masker."""
        texts = tf.convert_to_tensor(texts, tf.string)
        if self.masker is None:
            return tf.zeros(tf.shape(texts), tf.int64)
        return self.masker.count(normalize(texts, lowercase=False))

    def protect_with_counts(self, texts: tf.Tensor) -> tuple[tf.Tensor, Optional[tf.RaggedTensor], tf.Tensor]:
        """`protect` and `span_counts` in one pass: (masked [B], spans [B, (n)] or None, counts [B])."""
        texts = tf.convert_to_tensor(texts, tf.string)
        if self.masker is None:
            return texts, None, tf.zeros(tf.shape(texts), tf.int64)
        return self.masker.mask_and_count(normalize(texts, lowercase=False))

    def protect_target(self, texts: tf.Tensor, sources: Optional[tf.Tensor]) -> tf.Tensor:
        """[B] target texts with the spans of their sources masked (unchanged without a masker)."""
        if self.masker is None:
            return texts
        if sources is None:
            raise ValueError("masking a target's spans needs its source texts")
        return self.protect_target_like(texts, self.protect(sources)[1])

    def protect_target_like(self, texts: tf.Tensor, source_spans: Optional[tf.RaggedTensor]) -> tf.Tensor:
        """`protect_target` with the sources' spans found already (by `protect`)."""
        if self.masker is None:
            return texts
        return self.masker.mask_like(normalize(tf.convert_to_tensor(texts, tf.string), lowercase=False), source_spans)

    def token_ids(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[B] (masked) strings -> [B, (n)] int64 ids, untruncated."""
        return self.ids_of(self.tokenizer.tokenize(texts))

    def ids_of(self, tokens: tf.RaggedTensor) -> tf.RaggedTensor:
        """[B, (n)] string tokens -> [B, (n)] int64 ids (<unk> for tokens the vocabulary lacks)."""
        return tf.ragged.map_flat_values(self.table.lookup, tokens)

    def encode_source(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """source_ids [B, width] (truncated, <pad>-padded), source_length [B], full_length [B]."""
        return self.encode_masked_source(self.protect(texts)[0])

    def encode_masked_source(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """`encode_source` of texts `protect` has masked already."""
        return self.source_features(self.token_ids(texts))

    def source_features(self, ids: tf.RaggedTensor) -> dict[str, tf.Tensor]:
        """A source's ids [B, (n)] -> source_ids, source_length, full_length (see `encode_source`)."""
        full_length = ids.row_lengths()
        kept = ids[:, : self.width]
        return {
            "source_ids": _pad(kept, self.width),
            "source_length": kept.row_lengths(),
            "full_length": full_length,
        }

    def encode_target(self, texts: tf.Tensor, sources: Optional[tf.Tensor] = None) -> dict[str, tf.Tensor]:
        """target_input = <bos> y <eos>, target_output = y <eos>, both [B, width]; y keeps width-2 ids.

        With a masker, `sources` (the pairs' source texts) say which target spans become sentinels."""
        return self.target_features(self.token_ids(self.protect_target(texts, sources)))

    def target_features(self, ids: tf.RaggedTensor) -> dict[str, tf.Tensor]:
        """A target's ids [B, (n)] -> target_input, target_output, target_length, full_length."""
        full_length = ids.row_lengths()
        kept = ids[:, : self.width - 2]
        batch = kept.nrows()
        bos = tf.fill([batch, 1], tf.constant(BOS_ID, tf.int64))
        eos = tf.fill([batch, 1], tf.constant(EOS_ID, tf.int64))
        target_output = tf.concat([kept, eos], axis=1)
        target_input = tf.concat([bos, target_output], axis=1)
        return {
            "target_input": _pad(target_input, self.width),
            "target_output": _pad(target_output, self.width),
            "target_length": target_output.row_lengths(),
            "full_length": full_length,
        }


def _pad(ids: tf.RaggedTensor, width: int) -> tf.Tensor:
    return ids.to_tensor(default_value=tf.constant(PAD_ID, tf.int64), shape=[None, width])
