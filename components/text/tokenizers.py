"""Tokenizers shared by the Beam job and the serving graph.

A tokenizer is a `tf.Module` whose `tokenize` maps a batch of raw strings `[B]` to a ragged batch
of string tokens `[B, (n)]`. The Beam job calls it on thousands of strings per call and the
exported SavedModel calls the very same function, so training and serving cannot drift.

- `whitespace` (default): core TF ops only; the exported model loads with a plain `import tensorflow`.
- `unicode_script`: tensorflow-text's UnicodeScriptTokenizer (splits punctuation and script changes).
- `wordpiece`: whitespace words split into WordPiece subwords (tensorflow-text), with a vocabulary
  learned in the Beam job. Loading a model with either tensorflow-text tokenizer needs
  `import tensorflow_text` first.
- `subword`: the same WordPiece segmentation and learned vocabulary as `wordpiece`, in core TF ops
  (`components/text/subword.py`): the exported model loads with a plain `import tensorflow`.
- `sentencepiece`: SentencePiece unigram pieces (tensorflow-text's op) from a model learned in the
  Beam job; loading the exported model needs `import tensorflow_text` first.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import tensorflow as tf

from components.core.config import SENTENCEPIECE_TOKENIZERS, WORDPIECE_TOKENIZERS
from components.core.tftext import register_tensorflow_text_ops, sentencepiece_quietly
from components.core.vocabulary import UNK
from components.text.subword import CompiledWordpiece, CoreWordpiece, read_pieces

TOKENIZERS = ("whitespace", "unicode_script", "wordpiece", "subword", "sentencepiece")
WORDPIECE_SUFFIX = "##"
# SentencePiece marks where a space was (and the start of the text) with U+2581 in its pieces.
SENTENCEPIECE_SPACE = "\u2581"


# Whitespace: RE2's \s (ASCII tab, LF, FF, CR, space), Unicode separators \p{Z} (NBSP, ideographic
# space, line/paragraph separators, ...) and the BOM. Every maximal run becomes one space. The pattern
# only matches runs of two or more, or a single separator that is not a plain space, so ordinary text
# (single spaces) has no matches at all, which is much faster than matching every space
# (docs/preprocess.md), and gives the same result as replacing `[\s\p{Z}\x{FEFF}]+` (tests/test_preprocess_tokenizers.py checks every
# BMP character).
WHITESPACE_RUN = r"[\s\p{Z}\x{FEFF}]{2,}|[^ \PZ]|[\t\n\f\r\x{FEFF}]"


def normalize(texts: tf.Tensor, lowercase: bool) -> tf.Tensor:
    """Collapse whitespace runs (ASCII and Unicode separators) to one space, strip the ends, optionally lowercase."""
    texts = tf.strings.regex_replace(texts, WHITESPACE_RUN, " ")
    texts = tf.strings.strip(texts)
    if lowercase:
        texts = tf.strings.lower(texts, encoding="utf-8")
    return texts


def join_wordpieces(joined: tf.Tensor) -> tf.Tensor:
    """Space-joined WordPiece pieces -> text: a continuation piece joins the piece before it; one
    that opens a text (a decoder may start with one) just loses its `##`."""
    return tf.strings.regex_replace(joined, f"^{WORDPIECE_SUFFIX}| {WORDPIECE_SUFFIX}", "")


class Tokenizer(tf.Module):
    """Base class; subclasses implement `_split` on normalized text."""

    name = "base"
    needs_tensorflow_text = False

    def __init__(self, lowercase: bool = False):
        super().__init__(name=f"{self.name}_tokenizer")
        self.lowercase = lowercase

    def tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[B] raw strings -> [B, (n)] string tokens."""
        return self._split(normalize(tf.convert_to_tensor(texts, tf.string), self.lowercase))

    def tokenize_with_surface(self, texts: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
        """(tokens, surface) [B, (n)]: `surface` is the text each token stands for, which differs
        from the token where the tokenizer emitted <unk> (a WordPiece word no piece spells: the
        word itself). Copying (model.copy_attention) and <unk> replacement output the surface."""
        tokens = self.tokenize(texts)
        return tokens, tokens

    def detokenize(self, tokens: tf.RaggedTensor) -> tf.Tensor:
        """[B, (n)] string tokens -> [B] strings (space-joined)."""
        return tf.strings.reduce_join(tokens, axis=-1, separator=" ")

    def _split(self, texts: tf.Tensor) -> tf.RaggedTensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _unknown_words_as_surface(pieces: tf.RaggedTensor, words: tf.Tensor) -> tf.RaggedTensor:
    """[N words, (pieces)] and the [N] words -> the pieces with each <unk> replaced by its whole word."""
    word_of_piece = tf.gather(words, pieces.value_rowids())
    return pieces.with_flat_values(tf.where(tf.equal(pieces.flat_values, UNK), word_of_piece, pieces.flat_values))


class WhitespaceTokenizer(Tokenizer):
    name = "whitespace"

    def _split(self, texts: tf.Tensor) -> tf.RaggedTensor:
        return tf.strings.split(texts)


class UnicodeScriptTokenizer(Tokenizer):
    name = "unicode_script"
    needs_tensorflow_text = True

    def __init__(self, lowercase: bool = False):
        super().__init__(lowercase)
        self._impl = register_tensorflow_text_ops().UnicodeScriptTokenizer()

    def _split(self, texts: tf.Tensor) -> tf.RaggedTensor:
        return self._impl.tokenize(texts)


class _WordpieceTokenizer(Tokenizer):
    """Whitespace words, each segmented into WordPiece pieces by `self._impl` (continuation pieces
    start with ##)."""

    def _split(self, texts: tf.Tensor) -> tf.RaggedTensor:
        return self._pieces(texts).merge_dims(-2, -1)

    def _pieces(self, texts: tf.Tensor) -> tf.RaggedTensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def word_pieces(self, words: tf.Tensor) -> tf.RaggedTensor:
        """[N] normalized words (no whitespace inside) -> [N, (pieces)]: each word as `tokenize`
        segments it within a text."""
        return self._impl.tokenize(words)

    def detokenize(self, tokens: tf.RaggedTensor) -> tf.Tensor:
        return join_wordpieces(super().detokenize(tokens))


class WordpieceTokenizer(_WordpieceTokenizer):
    """Whitespace words, then greedy longest-match WordPiece; continuation pieces start with ##."""

    name = "wordpiece"
    needs_tensorflow_text = True

    def __init__(self, vocab_path: Union[str, Sequence[str]], lowercase: bool = False):
        """`vocab_path`: the learned WordPiece vocabulary file, or (in the Beam job) its token list."""
        super().__init__(lowercase)
        text = register_tensorflow_text_ops()
        if isinstance(vocab_path, str):
            self.vocab_path = vocab_path
            init = tf.lookup.TextFileInitializer(
                vocab_path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
            )
        else:
            self.vocab_path = None
            pieces = list(vocab_path)
            init = tf.lookup.KeyValueTensorInitializer(
                tf.constant(pieces, tf.string), tf.range(len(pieces), dtype=tf.int64))
        self._table = tf.lookup.StaticVocabularyTable(init, num_oov_buckets=1)
        self._impl = text.WordpieceTokenizer(
            self._table, suffix_indicator=WORDPIECE_SUFFIX, unknown_token=UNK,
            token_out_type=tf.string, max_bytes_per_word=100,
        )

    def _pieces(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[B] normalized texts -> [B, (words), (pieces)]."""
        return self._impl.tokenize(tf.strings.split(texts))

    def tokenize_with_surface(self, texts: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
        words = tf.strings.split(normalize(tf.convert_to_tensor(texts, tf.string), self.lowercase))
        pieces = self._impl.tokenize(words)
        surface = pieces.with_values(_unknown_words_as_surface(pieces.values, words.flat_values)).merge_dims(-2, -1)
        return pieces.merge_dims(-2, -1), surface


class SubwordTokenizer(_WordpieceTokenizer):
    """WordPiece in core TensorFlow ops (`components/text/subword.py`): the same pieces as
    `wordpiece` from the same learned vocabulary, and a SavedModel that needs no tensorflow-text."""

    name = "subword"

    def __init__(self, vocab: Union[str, Sequence[str]], lowercase: bool = False, compiled: bool = False):
        """`compiled`: segment with tensorflow-text's compiled FastWordpieceTokenizer (the same
        pieces; the Beam job's choice) instead of the core ops a SavedModel keeps."""
        super().__init__(lowercase)
        self.vocab_path = vocab if isinstance(vocab, str) else None
        self.needs_tensorflow_text = compiled
        self._impl = (CompiledWordpiece if compiled else CoreWordpiece)(read_pieces(vocab), unknown_token=UNK)

    def _pieces(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[B] normalized texts -> [B, (words), (pieces)]."""
        words = tf.strings.split(texts)
        pieces = self._impl.tokenize(words.flat_values)
        return tf.RaggedTensor.from_row_splits(pieces, words.row_splits, validate=False)

    def tokenize_with_surface(self, texts: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
        normalized = normalize(tf.convert_to_tensor(texts, tf.string), self.lowercase)
        pieces = self._pieces(normalized)
        words = tf.strings.split(normalized).flat_values
        surface = pieces.with_values(_unknown_words_as_surface(pieces.values, words)).merge_dims(-2, -1)
        return pieces.merge_dims(-2, -1), surface


class SentencepieceTokenizer(Tokenizer):
    """SentencePiece pieces (tensorflow-text's op) from a unigram model learned in the Beam job.

    The model is trained on normalized text with SentencePiece's identity normalization, so its
    pieces spell the normalized text exactly, a space (and the start of the text) as U+2581, and
    `detokenize` gives that text back. Text the model does not cover (characters never seen in the
    train split) becomes the model's unknown piece, `<unk>`, which is also the pipeline's.
    """

    name = "sentencepiece"
    needs_tensorflow_text = True

    def __init__(self, model: Union[str, bytes], lowercase: bool = False):
        """`model`: the learned model file (SIDE.sentencepiece.model), or (in the Beam job) its bytes."""
        super().__init__(lowercase)
        text = register_tensorflow_text_ops()
        if isinstance(model, str):
            self.model_path = model
            # Tracked, so a SavedModel carries the file in assets/ (preprocess.vocabulary: reuse_served
            # reads it there); the graph itself holds the model's bytes.
            self.model_asset = tf.saved_model.Asset(model)
            with tf.io.gfile.GFile(model, "rb") as f:
                model = f.read()
        else:
            self.model_path = None
        # Ids, then pieces: an unknown stretch of text comes out of the op as its own characters
        # (with the unknown id), and as the model's unknown piece, <unk>, from `id_to_string`.
        with sentencepiece_quietly():  # its "precompiled_charsmap is empty" line: see components/core/tftext.py
            self._impl = text.SentencepieceTokenizer(model=bytes(model), out_type=tf.int32)

    def _split(self, texts: tf.Tensor) -> tf.RaggedTensor:
        return self._impl.id_to_string(self._impl.tokenize(texts))

    def tokenize_with_surface(self, texts: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
        normalized = normalize(tf.convert_to_tensor(texts, tf.string), self.lowercase)
        ids = self._impl.tokenize(normalized)
        # The op's own pieces spell an uncovered stretch of text as it is; id_to_string says <unk>.
        _, starts, ends = self._impl.tokenize_with_offsets(normalized)
        surface = tf.strings.substr(tf.gather(normalized, ids.value_rowids()), starts.flat_values,
                                    ends.flat_values - starts.flat_values)
        pieces = self._impl.id_to_string(ids)
        is_unknown = tf.equal(pieces.flat_values, UNK)
        return pieces, pieces.with_flat_values(tf.where(is_unknown, surface, pieces.flat_values))

    def detokenize(self, tokens: tf.RaggedTensor) -> tf.Tensor:
        joined = tf.strings.reduce_join(tokens, axis=-1)
        return tf.strings.strip(tf.strings.regex_replace(joined, SENTENCEPIECE_SPACE + "+", " "))


def make_tokenizer(name: str, lowercase: bool = False,
                   wordpiece_vocab: Optional[Union[str, Sequence[str]]] = None,
                   sentencepiece_model: Optional[Union[str, bytes]] = None, compiled: bool = False) -> Tokenizer:
    """Build the tokenizer `preprocess.tokenizer` names.

    `wordpiece` and `subword` need their learned vocabulary: the file path, or the token list
    itself; `sentencepiece` its learned model: the file path, or the model's bytes. `compiled`
    (the Beam job) segments both WordPiece tokenizers with tensorflow-text's compiled
    FastWordpieceTokenizer: the same pieces, tokens and surfaces as the tokenizer a SavedModel keeps.
    """
    if name == "whitespace":
        return WhitespaceTokenizer(lowercase)
    if name == "unicode_script":
        return UnicodeScriptTokenizer(lowercase)
    if name in WORDPIECE_TOKENIZERS:
        if not wordpiece_vocab:
            raise ValueError(f"the {name} tokenizer needs the vocabulary learned by preprocessing")
        if compiled:
            return SubwordTokenizer(wordpiece_vocab, lowercase, compiled=True)
        return (WordpieceTokenizer if name == "wordpiece" else SubwordTokenizer)(wordpiece_vocab, lowercase)
    if name in SENTENCEPIECE_TOKENIZERS:
        if not sentencepiece_model:
            raise ValueError(f"the {name} tokenizer needs the model learned by preprocessing")
        return SentencepieceTokenizer(sentencepiece_model, lowercase)
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")


def needs_tensorflow_text(name: str) -> bool:
    return name in ("unicode_script", "wordpiece", "sentencepiece")
