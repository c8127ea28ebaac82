"""The exported `tf.Module`: raw strings in, translations out, everything in the graph.

It holds the very `SequenceEncoder` the Beam job used (tokenizer + source vocabulary table read
from the vocabulary FILE, so the file travels as a SavedModel asset), id->token tables for both
vocabularies (also from their files), the target tokenizer (for detokenizing), the trained
`Seq2Seq`, and translates with the model library's `translate_text` (components/model/translation.py):
`GreedySearch` over the model's `encode`/`initial_state`/`step` under the protected-span rule, the
one greedy decoder, which the trainer's dev metric also runs, so serving cannot drift from it.
serving_default is that greedy decoder.

Beam search (`BeamSearch`, same `translate_text`, same span rule) is offered by two more signatures.
A TF2 signature has no optional inputs, so "optional with defaults" is two signatures:
  beam_search(text): every setting at its exported default (export.beam_width, length_penalty,
    n_best, no_repeat_ngram_size, max decode length);
  beam_search_with_options(text, beam_width, length_penalty, max_length, n_best,
    no_repeat_ngram_size): each setting per call, a sentinel value meaning the exported default
    (-1 for beam_width and n_best, 0 for max_length, < 0 for length_penalty and no_repeat_ngram_size);
    beam_width 0 or a negative max_length is an error.
Both return serving_default's outputs for the best hypothesis plus translations and scores [B, N].

Attention [B, T, S] is returned by translate_with_attention (greedy) and beam_search_with_options
only: a TF Serving REST reply of serving_default would carry a T x max_source_length matrix of JSON
numbers per sentence.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from components.model.beam_search import BeamSearch
from components.model.translation import TextTables, translate_text
from components.serving.client import MAX_BEAM_WIDTH_LIMIT, MAX_DECODE_LENGTH_LIMIT
from components.text.encoding import SequenceEncoder, id_to_token_table
from components.text.spans import unprotected_spans, usable_slots
from components.text.subword import read_pieces
from components.text.tokenizers import Tokenizer

TEXT_SPEC = tf.TensorSpec([None], tf.string, name="text")
MAX_LENGTH_SPEC = tf.TensorSpec([], tf.int32, name="max_length")
BEAM_OPTION_SPECS = [
    TEXT_SPEC,
    tf.TensorSpec([], tf.int32, name="beam_width"),
    tf.TensorSpec([], tf.float32, name="length_penalty"),
    MAX_LENGTH_SPEC,
    tf.TensorSpec([], tf.int32, name="n_best"),
    tf.TensorSpec([], tf.int32, name="no_repeat_ngram_size"),
]


def _without_attention(outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """A signature's outputs without the attention matrix (which only the *_with_attention and
    *_with_options signatures return)."""
    return {key: value for key, value in outputs.items() if key != "attention"}


class ServingModule(tf.Module):
    """The object `tf.saved_model.save` writes; its signatures are listed in card.SIGNATURES."""

    def __init__(
        self,
        model: tf.Module,
        source_encoder: SequenceEncoder,
        target_tokenizer: Tokenizer,
        source_vocab_path: str,
        target_vocab_path: str,
        max_decode_length: int,
        extra_assets: Optional[dict[str, str]] = None,
        replace_unknown: bool = True,
        beam_width: int = 4,
        length_penalty: float = 0.6,
        n_best: int = 1,
        no_repeat_ngram_size: int = 0,
    ):
        super().__init__(name="translator")
        self.model = model
        self.source_encoder = source_encoder
        self.target_tokenizer = target_tokenizer
        self.source_id_to_token = id_to_token_table(source_vocab_path)
        tables = TextTables.build(source_encoder, target_tokenizer, target_vocab_path)
        # Tracked here, so the saver writes them (and their vocabulary file as an asset).
        self.target_id_to_token, self.target_token_to_id = tables.id_to_token, tables.token_to_id
        self._tables = tables
        self._usable_slots = usable_slots(read_pieces(source_vocab_path), read_pieces(target_vocab_path))
        self.replace_unknown = bool(replace_unknown)
        if not 1 <= int(max_decode_length) <= MAX_DECODE_LENGTH_LIMIT:
            raise ValueError(f"max_decode_length must be in [1, {MAX_DECODE_LENGTH_LIMIT}], got {max_decode_length}")
        self.max_decode_length = int(max_decode_length)
        if not 1 <= int(n_best) <= int(beam_width) <= MAX_BEAM_WIDTH_LIMIT or length_penalty < 0 \
                or no_repeat_ngram_size < 0:
            raise ValueError(f"bad beam defaults: beam_width {beam_width}, n_best {n_best} (1 <= n_best <= "
                             f"beam_width <= {MAX_BEAM_WIDTH_LIMIT}), length_penalty {length_penalty}, "
                             f"no_repeat_ngram_size {no_repeat_ngram_size} (both >= 0)")
        self.beam_width, self.n_best = int(beam_width), int(n_best)
        self.length_penalty, self.no_repeat_ngram_size = float(length_penalty), int(no_repeat_ngram_size)
        # README.md / model_card.json: tracked so the saver copies them into assets/.
        for attribute, path in (extra_assets or {}).items():
            setattr(self, attribute, tf.saved_model.Asset(path))

    def _encode(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        masked, _ = self.source_encoder.protect(text)
        encoded = self.source_encoder.encode_masked_source(masked)
        return {"source_ids": encoded["source_ids"], "source_length": encoded["source_length"],
                "source_copy_ids": self._tables.copy_ids(masked)[1]}

    @tf.function(input_signature=[TEXT_SPEC], autograph=False)
    def encode(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        """text [B] -> source_ids and source_copy_ids [B, max_source_length], source_length [B], as
        in the TFRecords."""
        return self._encode(text)

    @tf.function(input_signature=[TEXT_SPEC], autograph=False)
    def source_tokens(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        """text [B] -> the source tokens the model sees (<unk> for unknown), padded with ''."""
        encoded = self._encode(text)
        tokens = self.source_id_to_token.lookup(encoded["source_ids"])
        valid = tf.sequence_mask(encoded["source_length"], tf.shape(tokens)[1])
        return {"source_tokens": tf.where(valid, tokens, "")}

    @tf.function(input_signature=[TEXT_SPEC], autograph=False)
    def translate(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        """serving_default: greedy translation up to the exported max decode length (the same
        function as translate_with_max_length, called with its default: traced once, not twice)."""
        return self.translate_with_max_length(text, tf.constant(0, tf.int32))

    @tf.function(input_signature=[TEXT_SPEC, MAX_LENGTH_SPEC], autograph=False)
    def translate_with_max_length(self, text: tf.Tensor, max_length: tf.Tensor) -> dict[str, tf.Tensor]:
        """As `translate`, with max_length per call (translate_with_attention's outputs but attention)."""
        return _without_attention(self.translate_with_attention(text, max_length))

    @tf.function(input_signature=[TEXT_SPEC, MAX_LENGTH_SPEC], autograph=False)
    def translate_with_attention(self, text: tf.Tensor, max_length: tf.Tensor) -> dict[str, tf.Tensor]:
        """Greedy translation plus attention [B, T, S]; max_length <= 0 means the exported default;
        above MAX_DECODE_LENGTH_LIMIT the call fails with an InvalidArgumentError before anything is
        decoded."""
        check = tf.debugging.assert_less_equal(
            max_length, tf.constant(MAX_DECODE_LENGTH_LIMIT, tf.int32),
            message=f"translate_with_max_length/translate_with_attention: max_length must be at most {MAX_DECODE_LENGTH_LIMIT} "
                    f"(the model's MAX_DECODE_LENGTH_LIMIT); <= 0 means the exported default")
        with tf.control_dependencies([check]):
            max_length = tf.identity(max_length)
        default = tf.constant(self.max_decode_length, tf.int32)
        return self._translate(text, tf.where(max_length > 0, max_length, default))

    @tf.function(input_signature=[TEXT_SPEC], autograph=False)
    def beam_search(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        """Beam search with every setting at its exported default: serving_default's outputs for the
        best hypothesis, plus translations and scores [B, n_best]."""
        # The defaults' sentinels (see beam_search_with_options): one traced beam search, not two.
        return _without_attention(self.beam_search_with_options(text, tf.constant(-1), tf.constant(-1.0),
                                                                tf.constant(0), tf.constant(-1), tf.constant(-1)))

    @tf.function(input_signature=BEAM_OPTION_SPECS, autograph=False)
    def beam_search_with_options(self, text: tf.Tensor, beam_width: tf.Tensor, length_penalty: tf.Tensor,
                                 max_length: tf.Tensor, n_best: tf.Tensor,
                                 no_repeat_ngram_size: tf.Tensor) -> dict[str, tf.Tensor]:
        """As `beam_search`, each setting chosen per call; -1 for beam_width or n_best, 0 for
        max_length and a negative length_penalty or no_repeat_ngram_size mean the exported default
        (a default n_best is capped at the beam width). InvalidArgumentError, before anything is
        decoded, for beam_width or n_best below 1, beam_width above MAX_BEAM_WIDTH_LIMIT, n_best
        above the beam width, and max_length negative or above MAX_DECODE_LENGTH_LIMIT."""
        name = "beam_search_with_options"
        width = tf.where(tf.equal(beam_width, -1), self.beam_width, beam_width)
        n_best = tf.where(tf.equal(n_best, -1), tf.minimum(self.n_best, width), n_best)
        checks = [
            tf.debugging.assert_greater_equal(
                width, 1, message=f"{name}: beam_width must be at least 1 (-1 means the exported default)"),
            tf.debugging.assert_less_equal(
                width, tf.constant(MAX_BEAM_WIDTH_LIMIT, tf.int32),
                message=f"{name}: beam_width must be at most {MAX_BEAM_WIDTH_LIMIT} (the model's "
                        "MAX_BEAM_WIDTH_LIMIT; n_best is at most beam_width)"),
            tf.debugging.assert_greater_equal(
                n_best, 1, message=f"{name}: n_best must be at least 1 (-1 means the exported default)"),
            tf.debugging.assert_less_equal(
                n_best, width, message=f"{name}: n_best must be at most beam_width (a beam keeps beam_width "
                                       "hypotheses)"),
            tf.debugging.assert_non_negative(
                max_length, message=f"{name}: max_length must not be negative (0 means the exported default)"),
            tf.debugging.assert_less_equal(
                max_length, tf.constant(MAX_DECODE_LENGTH_LIMIT, tf.int32),
                message=f"{name}: max_length must be at most {MAX_DECODE_LENGTH_LIMIT} "
                        f"(the model's MAX_DECODE_LENGTH_LIMIT); 0 means the exported default"),
        ]
        with tf.control_dependencies(checks):
            width, n_best = tf.identity(width), tf.identity(n_best)
        return self._beam(
            text, width, tf.where(length_penalty >= 0, length_penalty, self.length_penalty),
            tf.where(max_length > 0, max_length, self.max_decode_length), n_best,
            tf.where(no_repeat_ngram_size >= 0, no_repeat_ngram_size, self.no_repeat_ngram_size))

    def _beam(self, text: tf.Tensor, width: tf.Tensor, alpha: tf.Tensor, max_length: tf.Tensor,
              n_best: tf.Tensor, ngram: tf.Tensor) -> dict[str, tf.Tensor]:
        def strategy(constraint):
            return BeamSearch(width, alpha, n_best, ngram, constraint)

        return self._flag_unprotected(text, translate_text(self.model, self._tables, text, max_length, strategy,
                                                           replace_unknown=self.replace_unknown))

    def _translate(self, text: tf.Tensor, max_length: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._flag_unprotected(
            text, translate_text(self.model, self._tables, text, max_length, replace_unknown=self.replace_unknown))

    def _flag_unprotected(self, text: tf.Tensor, outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """outputs plus unprotected_spans [B]: the source's protected spans no sentinel protects (past
        SPAN_SLOTS, or a slot the vocabularies lack), which the model may drop (0 when protection is off)."""
        counts = self.source_encoder.span_counts(text)
        return {**outputs, "unprotected_spans": unprotected_spans(counts, self._usable_slots)}

    def signatures(self) -> dict[str, tf.types.experimental.PolymorphicFunction]:
        """The signature functions, untraced: the saver traces them inside its save context, whose
        variable policy is part of tf.function's cache key, so a trace made before the save would
        be repeated there."""
        return {
            "serving_default": self.translate,
            "translate_with_max_length": self.translate_with_max_length,
            "translate_with_attention": self.translate_with_attention,
            "encode": self.encode,
            "source_tokens": self.source_tokens,
            "beam_search": self.beam_search,
            "beam_search_with_options": self.beam_search_with_options,
        }
