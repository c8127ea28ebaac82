"""WordPiece segmentation in core TensorFlow ops, so a SavedModel using it loads without tensorflow-text.

The algorithm is WordPiece's greedy longest-match-first, as tensorflow-text's `WordpieceTokenizer`
runs it (tests/test_subword.py checks that both give the same pieces): from the start of a word,
take the longest vocabulary piece that matches (continuation pieces carry the `##` prefix), then
continue after it; a word with a position no piece matches, or longer than MAX_BYTES_PER_WORD,
becomes one unknown token.

In the graph: every substring of up to `max_piece_chars` characters at every position is looked up
in one hash table at once ([words, chars, lengths]), and a `tf.while_loop` then walks each word from
match to match.

`CompiledWordpiece` is the same segmentation by tensorflow-text's `FastWordpieceTokenizer` (a
compiled trie, LinMaxMatch): the Beam job segments the corpus with it, and the SavedModel keeps
`CoreWordpiece`, so the served model needs no tensorflow-text. Both give the same pieces for every
word (tests/test_subword.py on real and random words; tests/test_encode_parity.py through the Beam
job and the SavedModel's `encode`).
"""
from __future__ import annotations

from typing import Sequence, Union

import tensorflow as tf

from components.core.vocabulary import UNK

SUFFIX_INDICATOR = "##"
MAX_BYTES_PER_WORD = 100


def read_pieces(vocab: Union[str, Sequence[str]]) -> list[str]:
    """The pieces of a vocabulary file (one per line) or of a token list."""
    if isinstance(vocab, str):
        from components.core.io import read_text

        text = read_text(vocab)
        return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    return list(vocab)


def _piece_chars(piece: str) -> int:
    return len(piece[len(SUFFIX_INDICATOR):] if piece.startswith(SUFFIX_INDICATOR) else piece)


def check_pieces(pieces: Sequence[str]) -> list[str]:
    pieces = list(pieces)
    if not pieces:
        raise ValueError("a WordPiece vocabulary needs at least one piece")
    return pieces


class CoreWordpiece(tf.Module):
    """Greedy longest-match WordPiece over a fixed piece list, in core ops only."""

    def __init__(self, pieces: Sequence[str], unknown_token: str = UNK, name: str = "core_wordpiece"):
        super().__init__(name=name)
        pieces = check_pieces(pieces)
        self.max_piece_chars = max(1, max(_piece_chars(p) for p in pieces))
        self.unknown_token = unknown_token
        self._pieces = tf.constant(pieces, tf.string)
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self._pieces, tf.range(len(pieces), dtype=tf.int64)),
            default_value=-1)

    def tokenize(self, words: tf.Tensor) -> tf.RaggedTensor:
        """[N] words (no whitespace inside) -> [N, (pieces)] piece strings."""
        words = tf.convert_to_tensor(words, tf.string)
        chars = tf.strings.unicode_split(words, "UTF-8")
        lengths = chars.row_lengths()
        best_len, best_id = self._longest_matches(chars.to_tensor(default_value=""), lengths)
        piece_ids, counts, failed = self._walk(best_len, best_id, lengths)
        failed = tf.logical_or(failed, tf.strings.length(words) > MAX_BYTES_PER_WORD)
        pieces = tf.gather(self._pieces, tf.maximum(piece_ids, 0))
        pieces = tf.concat([pieces, tf.fill([tf.shape(words)[0], 1], "")], axis=1)  # room for the unknown token
        first = tf.range(tf.shape(pieces)[1])[None, :] == 0
        pieces = tf.where(tf.logical_and(failed[:, None], first), self.unknown_token, pieces)
        return tf.RaggedTensor.from_tensor(pieces, lengths=tf.where(failed, tf.constant(1, tf.int64), counts))

    def _longest_matches(self, chars: tf.Tensor, lengths: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """For every word and start position: the length in characters and the id of the longest
        vocabulary piece that starts there (0 and -1 when none does)."""
        words, width = tf.shape(chars)[0], tf.shape(chars)[1]
        padded = tf.concat([chars, tf.fill([words, self.max_piece_chars], "")], axis=1)
        start = tf.range(width, dtype=tf.int64)[None, :]
        joined = chars
        best_len = tf.zeros([words, width], tf.int64)
        best_id = tf.fill([words, width], tf.constant(-1, tf.int64))
        for length in range(1, self.max_piece_chars + 1):
            if length > 1:
                joined = tf.strings.join([joined, padded[:, length - 1:length - 1 + width]])
            keys = tf.where(start == 0, joined, tf.strings.join([SUFFIX_INDICATOR, joined]))
            found = self._table.lookup(keys)
            fits = start + length <= lengths[:, None]
            hit = tf.logical_and(fits, found >= 0)
            best_len = tf.where(hit, tf.constant(length, tf.int64), best_len)
            best_id = tf.where(hit, found, best_id)
        return best_len, best_id

    def _walk(self, best_len: tf.Tensor, best_id: tf.Tensor, lengths: tf.Tensor
              ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Follow the matches from position 0: (piece ids [N, T] padded with -1, pieces per word [N],
        whether a word hit a position without a match [N])."""
        words = tf.shape(best_len)[0]
        last = tf.maximum(tf.shape(best_len, out_type=tf.int64)[1] - 1, 0)

        def running(position, failed):
            return tf.logical_and(position < lengths, tf.logical_not(failed))

        def keep_going(step, position, failed, count, emitted):
            return tf.reduce_any(running(position, failed))

        def body(step, position, failed, count, emitted):
            active = running(position, failed)
            at = tf.minimum(position, last)[:, None]
            length = tf.gather(best_len, at, batch_dims=1)[:, 0]
            piece = tf.gather(best_id, at, batch_dims=1)[:, 0]
            failed = tf.logical_or(failed, tf.logical_and(active, length == 0))
            emit = tf.logical_and(active, length > 0)
            emitted = emitted.write(step, tf.where(emit, piece, tf.constant(-1, tf.int64)))
            return (step + 1, position + tf.where(emit, length, 0), failed,
                    count + tf.cast(emit, tf.int64), emitted)

        initial = (tf.constant(0), tf.zeros([words], tf.int64), tf.zeros([words], tf.bool),
                   tf.zeros([words], tf.int64),
                   tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=tf.TensorShape([None])))
        steps, _, failed, count, emitted = tf.while_loop(keep_going, body, initial)
        piece_ids = tf.cond(steps > 0, lambda: tf.transpose(emitted.stack()),
                            lambda: tf.zeros([words, 0], tf.int64))
        return piece_ids, count, failed


class CompiledWordpiece(tf.Module):
    """`CoreWordpiece`'s segmentation by tensorflow-text's compiled FastWordpieceTokenizer: the
    same pieces, far faster on large batches (docs/preprocess.md), but its op needs tensorflow-text
    in the process, so only the Beam job uses it."""

    def __init__(self, pieces: Sequence[str], unknown_token: str = UNK, name: str = "compiled_wordpiece"):
        super().__init__(name=name)
        from components.core.tftext import register_tensorflow_text_ops

        pieces = check_pieces(pieces)
        if unknown_token not in pieces:  # the compiled tokenizer emits it, so it must be a piece
            pieces = pieces + [unknown_token]
        self._impl = register_tensorflow_text_ops().FastWordpieceTokenizer(
            vocab=pieces, suffix_indicator=SUFFIX_INDICATOR, max_bytes_per_word=MAX_BYTES_PER_WORD,
            token_out_type=tf.string, unknown_token=unknown_token, no_pretokenization=True,
            support_detokenization=False)

    def tokenize(self, words: tf.Tensor) -> tf.RaggedTensor:
        """[N] words (no whitespace inside) -> [N, (pieces)] piece strings."""
        return self._impl.tokenize(tf.convert_to_tensor(words, tf.string))
