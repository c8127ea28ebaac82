"""Raw text in, translations out, in the graph: what the exported SavedModel serves and what the
trainer's dev metric (trainer.select_by) scores, so the two cannot differ.

The source is encoded by the Beam job's `SequenceEncoder` (protected spans masked when configured),
decoded by a strategy under the span rule (`SpanConstraint`: each of the source's spans exactly
once), and the ids become text with the spans restored (`components.text.encoding.decode_ids`).
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from components.core.vocabulary import PAD_ID
from components.model.decoding import DecodingStrategy, GreedySearch, SpanConstraint
from components.text.encoding import SequenceEncoder, decode_ids
from components.text.spans import SPAN_SLOTS, token_slots
from components.text.tokenizers import Tokenizer


def target_slots(encoder: SequenceEncoder, target_tokens: list[str]) -> Optional[tf.Tensor]:
    """The target vocabulary's sentinel slots ([V] int32) when the encoder protects spans, else None."""
    return token_slots(target_tokens) if encoder.masker is not None else None


def translate_text(model, encoder: SequenceEncoder, target_table: tf.lookup.StaticHashTable,
                   target_tokenizer: Tokenizer, slots: Optional[tf.Tensor], text: tf.Tensor,
                   max_length: tf.Tensor, strategy: Optional[type[DecodingStrategy]] = None) -> dict[str, tf.Tensor]:
    """[B] raw texts -> translation [B], tokens/token_ids [B, T], length [B], score [B],
    attention [B, T, S]. An empty source translates to '' (length 0)."""
    masked, spans = encoder.protect(text)
    encoded = encoder.encode_masked_source(masked)
    source_length = encoded["source_length"]
    constraint = None
    if spans is not None:
        constraint = SpanConstraint(slots, tf.sequence_mask(spans.row_lengths(), SPAN_SLOTS))
    # An empty source would leave every attention score masked; decode it as one <pad> token so the
    # arithmetic stays finite, then blank its outputs below.
    decoded = (strategy or GreedySearch)(constraint)(model, encoded["source_ids"], tf.maximum(source_length, 1),
                                                     max_length)
    keep = tf.not_equal(source_length, 0)
    token_ids = tf.where(keep[:, None], decoded["token_ids"], tf.constant(PAD_ID, tf.int64))
    length = tf.where(keep, decoded["length"], tf.constant(0, tf.int64))
    tokens, translation = decode_ids(target_table, target_tokenizer, token_ids, length, spans, slots)
    return {
        "translation": translation,
        "tokens": tokens,
        "token_ids": token_ids,
        "length": length,
        "score": tf.where(keep, decoded["score"], 0.0),
        "attention": tf.where(keep[:, None, None], decoded["attention"], 0.0),
    }
