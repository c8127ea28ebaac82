"""Protected spans in the graph: each placeholder or markup span becomes a numbered sentinel token,
and the sentinels of a translation become the source's spans again.

`SpanMasker` runs inside `SequenceEncoder` (components/text/encoding.py), the one function the Beam
job and the exported SavedModel share, so training and serving mask alike. The patterns are
components/core/spans.py's; the masking uses core TF ops only (RE2's `regex_replace` and a string
split), so a SavedModel with protection still loads with a plain `import tensorflow`.

How a text is masked: every span match is wrapped in a delimiter that no text holds (`\\x01`, which
is removed from the text first), the text is split on it, and then the pieces alternate text, span,
text, span, ..., text (adjacent spans give empty text pieces between them). Span i (0-based, left to
right) becomes sentinel i for the first SPAN_SLOTS spans; `SpanMasker.count` counts them all, so the
Beam job can quarantine a pair with more and serving can flag them (`unprotected_spans`).

A target is masked against its source: a target span takes the sentinel of the source span with the
same text and the same occurrence number (the second `%s` of the target is the second `%s` of the
source), so reordered placeholders (`%2$s ... %1$s`) keep their numbers; a target span the source
does not have stays ordinary text.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from components.core.config import LEARNED_TOKENIZERS, WORDPIECE_TOKENIZERS, PreprocessConfig
from components.core.spans import SENTINEL_CLASS, SPAN_SLOTS, combined_pattern, sentinel_tokens, sentinels, slot_of

DELIMITER = "\x01"


class SpanMasker(tf.Module):
    """Find spans in whitespace-normalized text and replace them with sentinel tokens."""

    def __init__(self, items: Sequence[str], separate: bool, name: str = "span_masker"):
        """`items`: span kinds or regexes; `separate`: surround each sentinel with spaces (for
        tokenizers that split on whitespace alone, so the sentinel is a token of its own)."""
        super().__init__(name=name)
        if not items:
            raise ValueError("a SpanMasker needs at least one span pattern")
        self.items = tuple(items)
        self.pattern = combined_pattern(self.items)
        self.separate = bool(separate)
        texts = [f" {s} " if separate else s for s in sentinels()]
        self._sentinel_texts = tf.constant(texts, tf.string)

    def _pieces(self, texts: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
        """(pieces [B, (2n+1)], is_span [B, (2n+1)]) of each text, alternating text and span."""
        texts = tf.strings.regex_replace(texts, f"{DELIMITER}|{SENTINEL_CLASS}", "")
        wrapped = tf.strings.regex_replace(texts, f"({self.pattern})", f"{DELIMITER}\\1{DELIMITER}")
        pieces = tf.strings.split(wrapped, sep=DELIMITER)
        position = tf.ragged.range(pieces.row_lengths())
        return pieces, tf.equal(position % 2, 1)

    def mask(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.RaggedTensor]:
        """[B] texts -> (masked texts [B], spans [B, (n)] in order, at most SPAN_SLOTS per text)."""
        return self._masked(*self._pieces(tf.convert_to_tensor(texts, tf.string)))

    def _masked(self, pieces: tf.RaggedTensor, is_span: tf.RaggedTensor) -> tuple[tf.Tensor, tf.RaggedTensor]:
        slot = tf.ragged.range(pieces.row_lengths()) // 2
        masked_flat = tf.where(is_span.flat_values & (slot.flat_values < SPAN_SLOTS),
                               tf.gather(self._sentinel_texts, tf.minimum(slot.flat_values, SPAN_SLOTS - 1)),
                               pieces.flat_values)
        masked = tf.strings.reduce_join(pieces.with_flat_values(masked_flat), axis=1)
        spans = tf.ragged.boolean_mask(pieces, is_span)[:, :SPAN_SLOTS]
        return self._tidy(masked), spans

    def mask_and_count(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.RaggedTensor, tf.Tensor]:
        """`mask` and `count` from one pass of the patterns: (masked [B], spans [B, (n)], counts [B])."""
        pieces, is_span = self._pieces(tf.convert_to_tensor(texts, tf.string))
        masked, spans = self._masked(pieces, is_span)
        return masked, spans, tf.reduce_sum(tf.cast(is_span, tf.int64), axis=1)

    def count(self, texts: tf.Tensor) -> tf.Tensor:
        """[B] texts -> int64 [B]: every span of each text, those past SPAN_SLOTS included (which
        `mask` leaves as ordinary text: the Beam job quarantines such pairs, serving flags them)."""
        _, is_span = self._pieces(tf.convert_to_tensor(texts, tf.string))
        return tf.reduce_sum(tf.cast(is_span, tf.int64), axis=1)

    def mask_like(self, texts: tf.Tensor, source_spans: tf.RaggedTensor) -> tf.Tensor:
        """[B] targets and their sources' spans -> masked targets [B] (see the module docstring)."""
        pieces, is_span = self._pieces(tf.convert_to_tensor(texts, tf.string))
        spans = tf.ragged.boolean_mask(pieces, is_span)
        slot, found = _match_spans(spans, source_spans)
        replaced = tf.where(found, tf.gather(self._sentinel_texts, tf.maximum(slot, 0)), spans.flat_values)
        masked_flat = tf.tensor_scatter_nd_update(pieces.flat_values, tf.where(is_span.flat_values), replaced)
        return self._tidy(tf.strings.reduce_join(pieces.with_flat_values(masked_flat), axis=1))

    def _tidy(self, texts: tf.Tensor) -> tf.Tensor:
        if not self.separate:
            return texts
        return tf.strings.strip(tf.strings.regex_replace(texts, " {2,}", " "))


def _occurrence(spans: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """[B, M] padded spans -> how many equal spans come before each one in its row."""
    same = tf.equal(spans[:, :, None], spans[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    width = tf.shape(spans)[1]
    earlier = tf.linalg.band_part(tf.ones([width, width]), -1, 0) - tf.eye(width)  # [i, i'] = i' < i
    return tf.reduce_sum(tf.cast(same, tf.float32) * earlier[None], axis=2)


def _match_spans(spans: tf.RaggedTensor, source_spans: tf.RaggedTensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(slot, found) per target span (flat, in ragged order): the source span with equal text and
    equal occurrence number.

    Only the rows whose target has a span take part (most rows have none), and the sources are
    padded to their longest row there, not to SPAN_SLOTS: the [rows, spans, spans] comparisons
    are what this costs (docs/preprocess.md). A row's flat spans keep their order, so the result
    lines up with `spans.flat_values`."""
    rows = tf.where(spans.row_lengths() > 0)[:, 0]
    spans, source_spans = tf.gather(spans, rows), tf.gather(source_spans, rows)
    target = spans.to_tensor("")
    target_valid = tf.sequence_mask(spans.row_lengths(), tf.shape(target)[1])
    # One empty column more, so the argmax below never runs over an empty axis.
    source = tf.concat([source_spans.to_tensor(""), tf.fill([tf.shape(rows)[0], 1], "")], axis=1)
    source_valid = tf.sequence_mask(source_spans.row_lengths(), tf.shape(source)[1])
    match = (tf.equal(target[:, :, None], source[:, None, :])
             & tf.equal(_occurrence(target, target_valid)[:, :, None], _occurrence(source, source_valid)[:, None, :])
             & target_valid[:, :, None] & source_valid[:, None, :])
    slot = tf.argmax(tf.cast(match, tf.int32), axis=2, output_type=tf.int32)
    found = tf.reduce_any(match, axis=2)
    return tf.boolean_mask(slot, target_valid), tf.boolean_mask(found, target_valid)


def masker_for(p: PreprocessConfig, side: str, separate: Optional[bool] = None) -> Optional[SpanMasker]:
    """The side's masker under `preprocess.protected_spans`, or None when protection is off.

    Learned tokenizers keep a sentinel glued to its neighbours (`%s:` is the sentinel, then `:`, with
    no space between them in the output); whitespace and unicode_script need it as a word of its own.
    `separate` overrides that (the piece learners' word counts keep sentinels out of other words).
    """
    if not p.protected_spans:
        return None
    if separate is None:
        separate = p.tokenizer_of(side) not in LEARNED_TOKENIZERS
    return SpanMasker(p.protected_spans, separate=separate, name=f"{side}_span_masker")


def reserved_tokens(p: PreprocessConfig, side: str) -> list[str]:
    """The sentinel tokens the side's vocabulary holds right after the special tokens ([] when off)."""
    if not p.protected_spans:
        return []
    return sentinel_tokens(continuation=p.tokenizer_of(side) in WORDPIECE_TOKENIZERS)


def token_slots(tokens: Sequence[str]) -> tf.Tensor:
    """[V] int32: the span slot of each vocabulary token, -1 for tokens that are not sentinels."""
    return tf.constant([slot_of(token) for token in tokens], tf.int32)


def slots_of(slots: tf.Tensor, token_ids: tf.Tensor) -> tf.Tensor:
    """The span slot of each id (-1 for non-sentinels and for a copy model's extended ids past V)."""
    vocab = tf.shape(slots, out_type=tf.int64)[0]
    return tf.where(token_ids < vocab, tf.gather(slots, tf.minimum(token_ids, vocab - 1)), -1)


def span_table(spans: tf.RaggedTensor) -> tf.Tensor:
    """[B, (n)] spans -> [B, SPAN_SLOTS], '' where a source has fewer spans."""
    return spans.to_tensor("", shape=[None, SPAN_SLOTS])


def restore_spans(tokens: tf.Tensor, token_ids: tf.Tensor, spans: tf.RaggedTensor, slots: tf.Tensor) -> tf.Tensor:
    """Decoded tokens [B, T] with each sentinel token replaced by its source span (a `##` prefix kept,
    so the detokenizer glues it as it would have glued the sentinel)."""
    slot = slots_of(slots, token_ids)
    span_text = tf.gather(span_table(spans), tf.maximum(slot, 0), batch_dims=1)
    restored = tf.strings.regex_replace(tokens, SENTINEL_CLASS, "") + span_text
    return tf.where((slot >= 0) & tf.not_equal(tokens, ""), restored, tokens)


def missing_spans(token_ids: tf.Tensor, length: tf.Tensor, spans: tf.RaggedTensor, slots: tf.Tensor) -> tf.Tensor:
    """[B] the source spans a decoded row lacks, space-joined in source order ('' when none)."""
    valid = tf.sequence_mask(length, tf.shape(token_ids, out_type=tf.int64)[1])
    slot = tf.where(valid, slots_of(slots, token_ids), -1)
    emitted = tf.reduce_any(tf.one_hot(slot, SPAN_SLOTS, on_value=True, off_value=False, dtype=tf.bool), axis=1)
    required = tf.sequence_mask(spans.row_lengths(), SPAN_SLOTS)
    table = span_table(spans)
    lacking = tf.ragged.boolean_mask(table, required & tf.logical_not(emitted))
    return tf.strings.reduce_join(lacking, axis=1, separator=" ")


def usable_slots(*vocabularies: Sequence[str]) -> list[bool]:
    """[SPAN_SLOTS] whether span slot k has its sentinel in every one of the `vocabularies`: a slot
    a vocabulary lacks (one built without protected spans) cannot protect its span."""
    held = [{slot_of(token) for token in tokens} for tokens in vocabularies]
    return [all(k in slots for slots in held) for k in range(SPAN_SLOTS)]


def unprotected_spans(counts: tf.Tensor, usable: Sequence[bool]) -> tf.Tensor:
    """Each text's span count [B] -> int64 [B]: how many of its spans get no working sentinel, the
    ones past SPAN_SLOTS and the ones whose slot is not `usable`. Those are ordinary text to the
    model, which may drop or change them: serving reports the number (docs/export.md)."""
    counts = tf.cast(counts, tf.int64)
    past = tf.maximum(counts - SPAN_SLOTS, 0)
    lacking = tf.sequence_mask(tf.minimum(counts, SPAN_SLOTS), SPAN_SLOTS) & tf.logical_not(
        tf.constant(list(usable), tf.bool))[None, :]
    return past + tf.reduce_sum(tf.cast(lacking, tf.int64), axis=1)
