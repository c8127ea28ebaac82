"""The piece learners: what a learned tokenizer (wordpiece, subword, sentencepiece) needs, from the
train split's sampled word counts (components/preprocess/job.py gathers the sample).

- WordPiece vocabularies (`wordpiece`, `subword`): by default (`preprocess.wordpiece_learner: bpe`)
  SentencePiece's C++ BPE trainer learns the merges from the (word, count) pairs and its pieces are
  rewritten in WordPiece's notation (a word-initial piece plain, a continuation piece with `##`),
  behind an alphabet of each frequent character in both forms; the segmenter then applies them
  greedily, longest match first, as WordPiece does. `tensorflow_text` is tensorflow-text's
  pure-Python WordPiece learner, as before (its cost grows with the sample, docs/preprocess.md).
- SentencePiece unigram models (`sentencepiece`), by SentencePiece's trainer.

Every learner sees its words sorted, with fixed thread counts, so its output depends on the
corpus alone: the same on any number of workers and in every run.
"""
from __future__ import annotations

import logging
import re
from typing import Mapping, Optional, Sequence, Union

from components.core.config import PreprocessConfig
from components.preprocess import fs
from components.preprocess.transforms import SHARED, SIDES

logger = logging.getLogger(__name__)

WORDPIECE_VOCAB = "{side}.wordpiece.vocab"
SENTENCEPIECE_MODEL = "{side}.sentencepiece.model"
# SentencePiece's trainer splits the EM steps over its threads, and the model it learns depends on
# their number: a fixed number keeps the model the same on every machine.
SENTENCEPIECE_THREADS = 4
# SentencePiece marks a word's start with this character (a piece holding it begins a word).
WORD_START = "\u2581"
WORDPIECE_SUFFIX = "##"


def learn_tokenizers(counts: Mapping[str, Mapping[bytes, int]], p: PreprocessConfig, staging: str,
                     sides: Optional[Sequence[str]] = None) -> dict[str, Union[list[str], bytes]]:
    """What each side with a learned tokenizer needs (of `sides`, default all), from its (sampled)
    train word counts, by side or, with preprocess.shared_pieces, under SHARED: {side: WordPiece
    pieces (wordpiece, subword) or SentencePiece model bytes (sentencepiece)}; the files are written."""
    learned: dict[str, Union[list[str], bytes]] = {}
    wanted = tuple(sides) if sides is not None else SIDES
    if set(p.wordpiece_sides) & set(wanted):
        learned.update(learn_wordpiece_vocabularies(counts, p, staging, wanted))
    if set(p.sentencepiece_sides) & set(wanted):
        learned.update(learn_sentencepiece_models(counts, p, staging, wanted))
    return learned


def _sorted_words(counts: Mapping[str, Mapping[bytes, int]], side: str, p: PreprocessConfig) -> list[tuple[str, int]]:
    """A side's train words and counts, or with preprocess.shared_pieces both sides' summed (the
    job sums them under SHARED already)."""
    merged: dict[str, int] = {}
    for name in ((SHARED,) if SHARED in counts else SIDES if p.shared_pieces else (side,)):
        for word, count in counts.get(name, {}).items():
            key = word.decode("utf-8") if isinstance(word, bytes) else word
            merged[key] = merged.get(key, 0) + count
    # Sorted input: a learner's output must not depend on the order the counts arrived in.
    return sorted(merged.items())


def _text_between_sentinels(words: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Sorted (word, count) pairs with each word that holds a sentinel (`file%s` masked, glued as
    the learned tokenizer sees it) replaced by its parts between sentinels, counted as often: the
    vocabulary reserves the sentinels, and no learned piece holds one."""
    from components.core.spans import SENTINEL_BASE, SPAN_SLOTS

    sentinel_run = re.compile(f"[{chr(SENTINEL_BASE)}-{chr(SENTINEL_BASE + SPAN_SLOTS - 1)}]+")
    glued = [i for i, (word, _) in enumerate(words) if sentinel_run.search(word)]
    if not glued:
        return list(words)
    merged = dict(words)
    for i in glued:
        word, count = words[i]
        del merged[word]
        for part in sentinel_run.split(word):
            if part:
                merged[part] = merged.get(part, 0) + count
    return sorted(merged.items())


def learn_wordpiece_vocabularies(counts: Mapping[str, Mapping[bytes, int]], p: PreprocessConfig, staging: str,
                                 sides: Sequence[str] = SIDES) -> dict[str, list[str]]:
    """Learn each WordPiece side's vocabulary from its train word counts (`preprocess.wordpiece_learner`).

    Writes SIDE.wordpiece.vocab and returns {side: pieces}: the 4 special tokens first, then the
    side's protected-span sentinels, then the learned pieces (none holding a sentinel character).
    """
    from components.core.spans import has_sentinel
    from components.core.vocabulary import SPECIAL_TOKENS
    from components.text.spans import reserved_tokens

    learn = learn_wordpiece_bpe if p.wordpiece_learner == "bpe" else learn_wordpiece_tensorflow_text
    result: dict[str, list[str]] = {}
    for side in (side for side in p.wordpiece_sides if side in sides):
        if p.shared_pieces and result:  # one inventory for both sides: learned once
            pieces = next(iter(result.values()))
        else:
            reserved = list(SPECIAL_TOKENS) + reserved_tokens(p, side)
            words = _text_between_sentinels(_sorted_words(counts, side, p))
            learned = learn(words, p.vocab_pieces, reserved)
            # The reserved tokens come first; the learner's own copies of sentinel characters are dropped.
            pieces = reserved + [piece for piece in learned if piece not in reserved and not has_sentinel(piece)]
        fs.write_text(f"{staging}/{WORDPIECE_VOCAB.format(side=side)}", "".join(t + "\n" for t in pieces))
        logger.info("learned a %d-piece WordPiece vocabulary for the %s side (%s learner)",
                    len(pieces), side, p.wordpiece_learner)
        result[side] = pieces
    return result


def alphabet_size(vocab_size: int) -> int:
    """The most distinct characters a WordPiece vocabulary spells words with (each in both forms):
    rarer ones make their words <unk>, so that a script with thousands of characters leaves room
    for longer pieces (tensorflow-text's learner's rule, kept by both learners)."""
    return max(1000, vocab_size // 4)


def learn_wordpiece_tensorflow_text(words: Sequence[tuple[str, int]], vocab_size: int,
                                    reserved: Sequence[str]) -> list[str]:
    """tensorflow-text's pure-Python WordPiece learner (a threshold search over candidate pieces)."""
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

    return learner.learn(list(words), vocab_size=vocab_size, reserved_tokens=list(reserved), lower_thresh=1,
                         max_unique_chars=alphabet_size(vocab_size))


def learn_wordpiece_bpe(words: Sequence[tuple[str, int]], vocab_size: int, reserved: Sequence[str]) -> list[str]:
    """WordPiece pieces from SentencePiece's C++ BPE trainer on (word, count) pairs.

    The alphabet (the `alphabet_size` most frequent characters, ties by character) comes first, each
    character as a word-initial piece and as a `##` continuation, so every word spelled with it has
    a segmentation; words with other characters are left out of training (they become <unk>). Then
    come the BPE merges in the order SentencePiece learned them, rewritten for WordPiece: a piece
    starting with SentencePiece's word-start mark becomes a word-initial piece, any other a `##`
    continuation. The segmenter applies them greedily, longest match first, which never picks some
    of BPE's intermediate merges; those are left out (they would never be seen in training, so an
    unseen word that matched one would get <unk>), and later merges take their room, up to
    `vocab_size` pieces in all.
    """
    characters = _character_counts(words)
    allowed = _alphabet(characters, alphabet_size(vocab_size))
    trained = _spelled_with(words, allowed, set(characters))
    base: list[str] = list(dict.fromkeys(list(reserved) + [form for char in sorted(allowed)
                                                             for form in (char, WORDPIECE_SUFFIX + char)]))
    if len(base) >= vocab_size or not trained:
        return base
    in_base = set(base)
    merges = [piece for piece in _wordpiece_merges(trained, 2 * vocab_size, len(allowed)) if piece not in in_base]
    budget = vocab_size - len(base)
    taken, offered = merges[:budget], min(budget, len(merges))
    for _ in range(PRUNING_ROUNDS):
        used = _used_pieces(base + taken, trained)
        taken = [piece for piece in taken if piece in used]
        more = merges[offered:offered + budget - len(taken)]
        if not more:
            break
        taken, offered = taken + more, offered + len(more)
    else:
        used = _used_pieces(base + taken, trained)
        taken = [piece for piece in taken if piece in used]
    return base + taken


# Rounds of "drop the merges the segmentation never uses, take the next ones": each round fills most
# of what the last one freed; the result is pruned once more, so it never holds an unused merge.
PRUNING_ROUNDS = 4


def _used_pieces(pieces: Sequence[str], words: Sequence[tuple[str, int]]) -> set[str]:
    """The pieces the greedy longest-match segmentation of `words` uses (tensorflow-text's compiled
    segmenter: the same pieces as the SavedModel's, tests/test_subword.py)."""
    import tensorflow as tf

    from components.text.subword import CompiledWordpiece

    segmenter = CompiledWordpiece(pieces)  # it adds <unk> when the pieces lack it
    segmented = segmenter.tokenize(tf.constant([w for w, _ in words]))
    return {piece.decode("utf-8") for piece in tf.unique(segmented.flat_values).y.numpy().tolist()}


def _wordpiece_merges(words: Sequence[tuple[str, int]], vocab_size: int, characters: int) -> list[str]:
    """SentencePiece BPE's pieces in WordPiece notation, in the order it learned them."""
    pieces = []
    for piece in _bpe_pieces(words, vocab_size, characters):
        piece = piece[len(WORD_START):] if piece.startswith(WORD_START) else WORDPIECE_SUFFIX + piece
        if piece and piece != WORDPIECE_SUFFIX:
            pieces.append(piece)
    return list(dict.fromkeys(pieces))


def _character_counts(words: Sequence[tuple[str, int]]) -> dict[str, int]:
    """{character: occurrences in the words, each word counted as often as it occurs}."""
    import collections

    # Words grouped by count, so that the characters are counted in C, one string per count.
    by_count: dict[int, list[str]] = {}
    for word, count in words:
        by_count.setdefault(count, []).append(word)
    totals: collections.Counter = collections.Counter()
    for count, group in by_count.items():
        for char, n in collections.Counter("".join(group)).items():
            totals[char] += n * count
    return dict(totals)


def _alphabet(characters: Mapping[str, int], size: int) -> set[str]:
    """The `size` most frequent characters, ties by character."""
    return {char for char, _ in sorted(characters.items(), key=lambda item: (-item[1], item[0]))[:size]}


def _spelled_with(words: Sequence[tuple[str, int]], allowed: set[str], present: set[str]) -> list[tuple[str, int]]:
    """The non-empty words that use only `allowed` characters (`present`: every character of the words)."""
    rare = present - allowed
    if not rare:
        return [(w, n) for w, n in words if w]
    pattern = re.compile("[" + "".join(re.escape(c) for c in sorted(rare)) + "]")
    return [(w, n) for w, n in words if w and not pattern.search(w)]


def _bpe_pieces(words: Sequence[tuple[str, int]], vocab_size: int, characters: int) -> list[str]:
    """SentencePiece BPE's learned pieces (merges first, in order; its characters after), without
    <unk> and the bare word-start mark."""
    import sentencepiece as spm

    # Room for every character and the word-start mark, or the trainer refuses the size.
    model = _train_on_word_counts(words, "bpe", max(vocab_size, characters + 3))
    processor = spm.SentencePieceProcessor(model_proto=model)
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())
            if not processor.is_unknown(i) and processor.id_to_piece(i) != WORD_START]


def learn_sentencepiece_models(counts: Mapping[str, Mapping[bytes, int]], p: PreprocessConfig, staging: str,
                               sides: Sequence[str] = SIDES) -> dict[str, bytes]:
    """Train each SentencePiece side's unigram model on its train word counts.

    Writes SIDE.sentencepiece.model (atomically) and returns {side: model bytes}. See
    `train_sentencepiece` for the settings.
    """
    from components.core import io
    from components.text.spans import reserved_tokens

    result: dict[str, bytes] = {}
    for side in (side for side in p.sentencepiece_sides if side in sides):
        if p.shared_pieces and result:  # one model for both sides: learned once
            model = next(iter(result.values()))
        else:
            model = train_sentencepiece(_sorted_words(counts, side, p), p.vocab_pieces, side,
                                        reserved_tokens(p, side))
        io.write_bytes_atomic(f"{staging}/{SENTENCEPIECE_MODEL.format(side=side)}", model)
        result[side] = model
    return result


def train_sentencepiece(words: Sequence[tuple[str, int]], vocab_size: int, side: str = "",
                        user_symbols: Sequence[str] = ()) -> bytes:
    """A SentencePiece unigram model (serialized) learned from (word, count) pairs.

    The words are normalized text already (the tokenizer normalizes before the model sees it), so
    the model normalizes nothing (`identity`) and its pieces spell the text exactly; every character
    of the words is covered, byte fallback is off, and the model's only special piece is its unknown
    piece, named `<unk>` like the pipeline's, so that text the model does not cover becomes `<unk>`.
    `vocab_size` pieces at most (fewer when the words hold fewer); at least one per character.
    """
    from components.core.vocabulary import UNK

    # Words are whitespace-split, so they hold no tab or newline: one `word<TAB>count` row each.
    words = [(w, n) for w, n in words if w]
    if not words:
        # No train words: the job then fails with a clear count error; this model is never used.
        words = [(UNK, 1)]
    # every character, the word-start mark, <unk>, the user symbols (protected-span sentinels)
    needed = len({c for w, _ in words for c in w} | set(user_symbols)) + 2 + len(user_symbols)
    if vocab_size < needed:
        logger.warning("preprocess.vocab_pieces %d is smaller than the %d pieces the %s side's "
                       "characters need: learning a %d-piece SentencePiece model", vocab_size, needed, side, needed)
        vocab_size = needed
    data = _train_on_word_counts(words, "unigram", vocab_size, user_symbols)
    logger.info("learned a %d-piece SentencePiece model for the %s side", _piece_count(data), side)
    return data


def _train_on_word_counts(words: Sequence[tuple[str, int]], model_type: str, vocab_size: int,
                          user_symbols: Sequence[str] = ()) -> bytes:
    """A serialized SentencePiece model (`model_type` bpe or unigram) trained on (word, count)
    pairs with the settings both learners share (`train_sentencepiece` says why)."""
    from io import BytesIO

    import sentencepiece as spm

    from components.core.vocabulary import UNK

    model = BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([f"{w}\t{n}" for w, n in words]), input_format="tsv", model_writer=model,
        model_type=model_type, vocab_size=vocab_size, hard_vocab_limit=False,
        character_coverage=1.0, byte_fallback=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=False,
        unk_id=0, unk_piece=UNK, bos_id=-1, eos_id=-1, pad_id=-1,
        user_defined_symbols=list(user_symbols), num_threads=SENTENCEPIECE_THREADS, minloglevel=2)
    return model.getvalue()


def _piece_count(model: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model).get_piece_size()
