"""Raw text in, translations out, in the graph: what the exported SavedModel serves and what the
trainer's dev metric (trainer.select_by) scores, so the two cannot differ.

The source is encoded by the Beam job's `SequenceEncoder` (protected spans masked when configured),
decoded by a strategy under the span rule (`SpanConstraint`: each of the source's spans exactly
once), and the ids become text (`components.text.encoding.decode_ids`): spans restored, copied
tokens (copy attention) and <unk> (replaced by the most attended source token) as the source
spells them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import tensorflow as tf

from components.core.vocabulary import PAD_ID
from components.model.decoding import DecodingStrategy, GreedySearch, SpanConstraint, TokenConstraint
from components.model.seq2seq import Seq2Seq
from components.text.copying import source_copy_ids, source_surface
from components.text.encoding import SequenceEncoder, decode_ids, id_to_token_table, lookup_table
from components.text.spans import SPAN_SLOTS, token_slots
from components.text.subword import read_pieces
from components.text.tokenizers import Tokenizer


@dataclass(frozen=True)
class TextTables:
    """What turns text into a model's input and its output back into text. The tables are created
    by `build` and must stay referenced by a tracked object (the SavedModel's module) to be saved."""

    encoder: SequenceEncoder                        # source side, as the Beam job encoded it
    tokenizer: Tokenizer                            # target side, for detokenizing
    id_to_token: tf.lookup.StaticHashTable           # target id -> token
    token_to_id: tf.lookup.StaticHashTable           # target token -> id (copy ids)
    slots: Optional[tf.Tensor]                      # [V] sentinel slot of each target token, or None

    @classmethod
    def build(cls, encoder: SequenceEncoder, tokenizer: Tokenizer, target_vocab_path: str) -> "TextTables":
        slots = token_slots(read_pieces(target_vocab_path)) if encoder.masker is not None else None
        return cls(encoder, tokenizer, id_to_token_table(target_vocab_path), lookup_table(target_vocab_path), slots)

    def copy_ids(self, masked: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(source surface texts [B, S], the source tokens' extended ids [B, S]) of masked texts."""
        surface, valid = source_surface(self.encoder, masked)
        return surface, source_copy_ids(surface, valid, self.token_to_id)


def translate_text(model: Seq2Seq, tables: TextTables, text: tf.Tensor, max_length: tf.Tensor,
                   strategy: Optional[Callable[[Optional[TokenConstraint]], DecodingStrategy]] = None,
                   replace_unknown: bool = True) -> dict[str, tf.Tensor]:
    """[B] raw texts -> translation [B], tokens/token_ids [B, T], length [B], score [B],
    attention [B, T, S]. An empty source translates to '' (length 0). `replace_unknown`: an <unk>
    becomes the most attended source token (export.replace_unknown).

    `strategy(constraint)` builds the decoder (default `GreedySearch`). One that returns n-best
    outputs (`BeamSearch`: `best_token_ids` among them) gives the best hypothesis in the outputs
    above (score: its raw sum of log-probabilities, as greedy's), plus
      translations  string [B, N]: every hypothesis as text, best first. Attention is kept for the
                    best hypothesis only, so translations[:, 0] is `translation` exactly, while in
                    the others an <unk> is dropped (decoded without attention, as a model without
                    attention does); spans are restored in each.
      scores        float32 [B, N]: each hypothesis' length-penalized score, the beam's ranking
                    (descending): score / ((5 + length) / 6)^length_penalty, length counting <eos>.
                    -inf (with translation '') for the slots of a row with fewer than N distinct
                    hypotheses; 0 for an empty source.
    """
    masked, spans = tables.encoder.protect(text)
    encoded = tables.encoder.encode_masked_source(masked)
    source_length = encoded["source_length"]
    surface, copy_ids = tables.copy_ids(masked)
    constraint = None
    if spans is not None:
        constraint = SpanConstraint(tables.slots, tf.sequence_mask(spans.row_lengths(), SPAN_SLOTS))
    # An empty source would leave every attention score masked; decode it as one <pad> token so the
    # arithmetic stays finite, then blank its outputs below.
    decoded = (strategy or GreedySearch)(constraint)(model, encoded["source_ids"], tf.maximum(source_length, 1),
                                                     max_length, copy_ids if model.copy_attention else None)
    n_best = "best_token_ids" in decoded
    best = ({"token_ids": decoded["best_token_ids"], "length": decoded["best_length"],
             "score": decoded["best_score"]} if n_best else decoded)
    keep = tf.not_equal(source_length, 0)
    token_ids = tf.where(keep[:, None], best["token_ids"], tf.constant(PAD_ID, tf.int64))
    length = tf.where(keep, best["length"], tf.constant(0, tf.int64))
    attention = tf.where(keep[:, None, None], decoded["attention"], 0.0)
    # Without attention there is no source token to put in place of an <unk>.
    focus = attention if replace_unknown and model.attention != "none" else None
    tokens, translation = decode_ids(tables.id_to_token, tables.tokenizer, token_ids, length, spans, tables.slots,
                                     surface, focus)
    outputs = {
        "translation": translation,
        "tokens": tokens,
        "token_ids": token_ids,
        "length": length,
        "score": tf.where(keep, best["score"], 0.0),
        "attention": attention,
    }
    if n_best:
        outputs.update(_n_best_texts(tables, decoded, keep, spans, surface, translation))
    return outputs


def _n_best_texts(tables: TextTables, decoded: dict[str, tf.Tensor], keep: tf.Tensor,
                  spans: Optional[tf.RaggedTensor], surface: tf.Tensor,
                  translation: tf.Tensor) -> dict[str, tf.Tensor]:
    """translations and scores [B, N] of a beam's hypotheses (see `translate_text`)."""
    shape = tf.shape(decoded["token_ids"])  # [B, N, T]
    batch, count = shape[0], shape[1]
    token_ids = tf.where(keep[:, None, None], decoded["token_ids"], tf.constant(PAD_ID, tf.int64))
    length = tf.where(keep[:, None], decoded["length"], tf.constant(0, tf.int64))
    # One row per hypothesis: the source's spans and surface repeated for each of its N.
    rows = tf.repeat(tf.range(batch), count)
    row_spans = tf.gather(spans, rows) if spans is not None else None
    _, texts = decode_ids(tables.id_to_token, tables.tokenizer, tf.reshape(token_ids, tf.stack([-1, shape[2]])),
                          tf.reshape(length, [-1]), row_spans, tables.slots, tf.gather(surface, rows), None)
    texts = tf.reshape(texts, tf.stack([batch, count]))
    # The best hypothesis with its attention (<unk> replaced), exactly as `translation`.
    first = tf.equal(tf.range(count), 0)[None, :]
    texts = tf.where(first, translation[:, None], texts)
    scores = decoded["normalized_score"]
    texts = tf.where(tf.math.is_finite(scores) | first, texts, "")
    return {"translations": texts, "scores": tf.where(keep[:, None], scores, 0.0)}
