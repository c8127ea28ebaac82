"""The Beam DoFns and combiners of the preprocessing job.

Every DoFn is a plain, picklable object: TensorFlow (and tensorflow-text) are imported in `setup`,
which runs in each worker process, and the TF modules are built there, never pickled. Elements are
batches of records (`RecordBatch`), so one TF call tokenizes or encodes thousands of strings.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import sys
import time
import uuid
import zlib
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from components.core.config import PreprocessConfig
from components.preprocess import inputs
from components.preprocess.inputs import Blank, ReadUnit, Reject

logger = logging.getLogger(__name__)

REJECTED = "rejected"
METRICS = "metrics"
NEWLINES = "newlines"
SHARD_PARTS = "shard_parts"
SPLITS = ("train", "eval", "test")  # test: the fixed test set (--test), never trained on
# The reject reason of a corpus pair whose source is in the test set (kept out of training and eval).
IN_TEST_SET = "in_test_set"
SIDES = ("source", "target")
# What the Beam job learned for the sides with a learned tokenizer (a side input of the DoFns that
# tokenize): {side: WordPiece pieces, or a SentencePiece model's bytes}.
Learned = Mapping[str, Union[Sequence[str], bytes]]
# Where the job's time goes (stats.json `stage_seconds`, summed over workers): each DoFn times its
# own work and reports it with its METRICS, so no timing crosses into the data.
STAGES = ("read", "span_masking", "counting", "learning", "encoding", "writing")
# The learners' word counts are summed per (group, bucket) key, a stable hash of the word choosing
# the bucket: each worker sums a share of the words, and no step holds every unique word at once.
WORD_BUCKETS = 16
SHARED = "shared"  # the learner group of both sides' words under preprocess.shared_pieces
# A bundle's token counts are sent on once they hold this many distinct tokens, so a worker's
# counts stay bounded however large its bundle is (the combiner adds them up all the same).
FLUSH_DISTINCT_TOKENS = 100_000
GZIP_LEVEL = 1  # of the TFRecord shards


def stage_report(**seconds: float) -> dict[str, dict[str, float]]:
    """A METRICS report of time spent, by stage (one of STAGES)."""
    assert set(seconds) <= set(STAGES), seconds
    return {"stage_seconds": seconds}


class _Stopwatch:
    """Seconds spent in a DoFn's own code, by stage; `timed` excludes the time a generator spends
    suspended at its yields (where the fused downstream steps run)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def timed(self, stage: str, items: Iterable[Any]) -> Iterator[Any]:
        iterator = iter(items)
        while True:
            started = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self.add(stage, started)
                return
            self.add(stage, started)
            yield item

    def report(self) -> dict[str, dict[str, float]]:
        return stage_report(**self.seconds)


class RecordBatch(NamedTuple):
    """Up to `tokenize_batch_size` valid records of one file: numbers and both sides."""

    path: str
    lines: list[int]
    sources: list[str]
    targets: list[str]


def source_digests(normalized_sources: Sequence[bytes]) -> list[bytes]:
    """sha256 of each normalized source (as stored in source_text): the split and shard keys."""
    return [hashlib.sha256(s).digest() for s in normalized_sources]


def is_eval(digests: Sequence[bytes], eval_fraction: float) -> np.ndarray:
    """Stable split: the first 8 digest bytes as a fraction of 2**64, below eval_fraction -> eval.

    A pair's split never depends on the rest of the corpus, so growing the corpus keeps old pairs
    in their split, and raising eval_fraction only moves pairs from train to eval.
    """
    if eval_fraction <= 0:
        return np.zeros(len(digests), bool)
    threshold = int(eval_fraction * 2**64)
    return np.array([int.from_bytes(d[:8], "big") < threshold for d in digests], bool)


def shard_index(digests: Sequence[bytes], num_shards: int) -> np.ndarray:
    """Stable shard of each pair (preprocess.num_shards > 0), from digest bytes the split does not use."""
    return np.array([int.from_bytes(d[8:16], "big") % num_shards for d in digests], np.int64)


def _tf():
    """TensorFlow, imported without its start-up lines in a worker process unless the CLI was given
    --verbose (see components/core/quiet.py)."""
    if "tensorflow" not in sys.modules:  # the first call in this process: called per batch after it
        from components.core.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    import tensorflow as tf

    return tf


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

class ReadFn(beam.DoFn):
    """ReadUnit -> RecordBatch elements; rejects and per-unit counts go to tagged outputs.

    The first read (`final=False`) also reports each byte range's newline count, from which the
    final read numbers the lines of every range; only the final read reports rejects and counts.
    """

    def __init__(self, config: PreprocessConfig, final: bool, newlines_only: bool = False):
        self.config = config
        self.final = final
        self.newlines_only = newlines_only  # reused vocabularies: the first read only numbers lines

    def process(self, unit: ReadUnit, newline_counts: Sequence[tuple[str, int, int]] = (),
                after: Any = None) -> Iterator[Any]:
        """`after`: a side input the read does not use, which makes the runner read this unit only
        once that step is done, in the step that consumes the batches (instead of reading it early
        and holding every batch until then)."""
        watch = _Stopwatch()
        started = time.perf_counter()
        if self.newlines_only:
            if unit.splittable:
                newlines, _, _ = inputs.read_range(unit)
                watch.add("read", started)
                yield beam.pvalue.TaggedOutput(NEWLINES, (unit.path, unit.start, newlines))
        else:
            # Every pass's reading counts towards "read"; the steps fused after it are not.
            yield from watch.timed("read", self._read(unit, newline_counts))
            if self.final:
                logger.info("read %s [%d..%s] in %.1fs", unit.path, unit.start,
                            unit.end if unit.end is not None else "end", time.perf_counter() - started)
        if watch.seconds:
            yield beam.pvalue.TaggedOutput(METRICS, watch.report())

    def _read(self, unit: ReadUnit, newline_counts: Sequence[tuple[str, int, int]]) -> Iterator[Any]:
        if unit.splittable:
            newlines, skipped, lines = inputs.read_range(unit)
            first_line = 1
            if not self.final:
                yield beam.pvalue.TaggedOutput(NEWLINES, (unit.path, unit.start, newlines))
            else:
                first_line = 1 + self._newlines_before(unit, newline_counts) + int(skipped)
            if unit.format == "tsv":
                yield from self._tsv_batches(unit, lines, first_line)
            else:
                yield from self._batches(unit, inputs.parse_lines(unit, iter(lines), first_line, self.config))
        elif unit.format == "tsv":
            yield from self._tsv_batches(unit, inputs.read_whole_lines(unit.path), 1)
        elif unit.format == "jsonl":
            yield from self._batches(unit, inputs.parse_lines(unit, inputs.read_whole_lines(unit.path), 1, self.config))
        elif unit.format == "csv":
            yield from self._batches(unit, inputs.read_csv(unit, self.config))
        elif unit.format == "parquet":
            yield from self._batches(unit, inputs.read_parquet(unit, self.config))
        else:
            yield from self._batches(unit, inputs.read_aligned(unit))

    def _newlines_before(self, unit: ReadUnit, counts: Sequence[tuple[str, int, int]]) -> int:
        """Newlines in the file before this range: the sum over the file's earlier ranges."""
        if getattr(self, "_prefix", None) is None:
            prefix: dict[tuple[str, int], int] = {}
            totals: dict[str, int] = {}
            for path, start, n in sorted(counts):
                prefix[(path, start)] = totals.get(path, 0)
                totals[path] = totals.get(path, 0) + n
            self._prefix = prefix
        return self._prefix[(unit.path, unit.start)]

    def _tsv_batches(self, unit: ReadUnit, lines: Iterable[bytes], first_line: int) -> Iterator[Any]:
        """The fast path for TSV: parse chunks of lines at once."""
        size = self.config.tokenize_batch_size
        lines = iter(lines)
        read = blank = 0
        while True:
            chunk = list(itertools.islice(lines, size))
            if not chunk:
                break
            numbers, sources, targets, others = inputs.parse_tsv_chunk(
                unit.path, chunk, first_line, at_file_start=unit.start == 0 and first_line == 1)
            first_line += len(chunk)
            read += len(numbers)
            for item in others:
                if isinstance(item, Blank):
                    blank += 1
                    continue
                read += 1
                if self.final:
                    yield beam.pvalue.TaggedOutput(REJECTED, item)
            if numbers:
                yield RecordBatch(unit.path, numbers, sources, targets)
        if self.final:
            yield beam.pvalue.TaggedOutput(METRICS, {"records_read": read, "blank_lines": blank})

    def _batches(self, unit: ReadUnit, parsed: Iterable[inputs.Parsed]) -> Iterator[Any]:
        size = self.config.tokenize_batch_size
        batch = RecordBatch(unit.path, [], [], [])
        read = blank = 0
        for item in parsed:
            if isinstance(item, Blank):
                blank += 1
                continue
            read += 1
            if isinstance(item, Reject):
                if self.final:
                    yield beam.pvalue.TaggedOutput(REJECTED, item)
                continue
            batch.lines.append(item.line)
            batch.sources.append(item.source)
            batch.targets.append(item.target)
            if len(batch.lines) >= size:
                yield batch
                batch = RecordBatch(unit.path, [], [], [])
        if batch.lines:
            yield batch
        if self.final:
            yield beam.pvalue.TaggedOutput(METRICS, {"records_read": read, "blank_lines": blank})


# --------------------------------------------------------------------------------------------
# Tokenizing and counting
# --------------------------------------------------------------------------------------------

class _TokenizingFn(beam.DoFn):
    """Shared setup: TF imported in the worker, tokenizers built once per DoFn instance."""

    def __init__(self, config: PreprocessConfig, tokenizer: Optional[str] = None, threads: Optional[int] = None):
        """`tokenizer` overrides both sides' (the piece learners count whitespace words);
        None uses each side's own from the config. `threads`: TensorFlow's thread pools in this
        worker (`worker_threads`), or None for its default."""
        self.config = config
        self.threads = threads
        self.side_tokenizers = {side: tokenizer or config.tokenizer_of(side) for side in SIDES}

    def setup(self) -> None:
        tf = _tf()  # first: components.text imports TensorFlow, and this import keeps it quiet
        from components.core.tftext import register_tensorflow_text_ops
        from components.text.tokenizers import needs_tensorflow_text

        if self.threads:  # one of the DirectRunner's worker processes on this machine
            _set_tf_threads(self.threads)
            _exit_without_teardown()
        if any(needs_tensorflow_text(name) for name in self.side_tokenizers.values()):
            register_tensorflow_text_ops()  # in this worker process
        # autograph=False: nothing here branches on tensors, and converting the code costs tracing time
        self._normalize = tf.function(self._normalize_impl, input_signature=[tf.TensorSpec([None], tf.string)],
                                      autograph=False)
        self._tokenizers: Optional[dict[str, Any]] = None

    def _normalize_impl(self, texts):
        from components.text.tokenizers import normalize

        return normalize(texts, lowercase=self.config.lowercase)

    def _make_tokenizers(self, learned: Optional[Learned]) -> dict[str, Any]:
        from components.text.tokenizers import make_tokenizer

        tokenizers = {}
        for side, name in self.side_tokenizers.items():
            value = learned.get(side) if learned else None
            if isinstance(value, bytes):  # a SentencePiece model
                tokenizers[side] = make_tokenizer(name, self.config.lowercase, sentencepiece_model=value)
            else:  # a WordPiece vocabulary, or nothing learned
                # compiled: the same pieces as the SavedModel's segmenter (tests/test_encode_parity.py), far faster
                tokenizers[side] = make_tokenizer(name, self.config.lowercase, list(value) if value else None,
                                                  compiled=True)
        return tokenizers

    def _protect(self, sources, targets):
        """Both sides with their protected spans masked (preprocess.protected_spans), in the graph,
        as the encoders do, and whether each source is within the span slots; unchanged (and all
        within) when protection is off. A source with more spans than SPAN_SLOTS is quarantined by
        the encoder as too_many_spans, so its pair is not counted either."""
        from components.core.spans import SPAN_SLOTS
        from components.text.spans import masker_for
        from components.text.tokenizers import normalize

        tf = _tf()
        # Each side's sentinels as its own tokenizer has them (glued to their neighbours for a
        # learned one), also in the piece learners' words: a word with a sentinel is then the word
        # the learned tokenizer segments, and the learners learn from its parts between sentinels.
        maskers = {side: masker_for(self.config, side) for side in SIDES}
        if maskers["source"] is None:
            return sources, targets, tf.ones(tf.shape(sources), tf.bool)
        masked_sources, spans, counts = maskers["source"].mask_and_count(normalize(sources, lowercase=False))
        masked_targets = maskers["target"].mask_like(normalize(targets, lowercase=False), spans)
        return masked_sources, masked_targets, counts <= SPAN_SLOTS

    def _split_flags(self, batch: RecordBatch) -> np.ndarray:
        if self.config.eval_fraction <= 0:
            return np.zeros(len(batch.sources), bool)
        digests = source_digests(self._normalize(batch.sources).numpy().tolist())
        return is_eval(digests, self.config.eval_fraction)


def worker_threads(options: Mapping[str, Any]) -> Optional[int]:
    """TensorFlow threads per worker for a job whose workers share this machine (the DirectRunner's
    multi_processing mode): its cores split between them, since each worker's own pools would
    otherwise take every core and the workers would contend for them (docs/preprocess.md). None
    (TensorFlow's default) for workers elsewhere."""
    from components.core.cpu import cpu_cores

    if options.get("direct_running_mode") != "multi_processing":
        return None
    return max(1, cpu_cores() // max(1, int(options.get("direct_num_workers") or 1)))


_EXIT_HOOKED = False


def _exit_without_teardown() -> None:
    """Let this worker process end without TensorFlow's teardown once its harness returns.

    The DirectRunner stops its worker processes one after another and waits for each to exit, and a
    process that has run TensorFlow takes over a second to tear down: that wait came at the end of
    every job. Every output is closed by then (each bundle closes its files), so a process that ends
    normally leaves at once (logs flushed, exit status 0); one that ends with an uncaught exception
    tears down as usual, keeping its traceback and status. Only for the DirectRunner's own workers.
    """
    import atexit
    import os
    import sys

    global _EXIT_HOOKED
    if _EXIT_HOOKED:
        return
    _EXIT_HOOKED = True
    failed = []
    previous_hook = sys.excepthook

    def note_failure(*exc_info):
        failed.append(True)
        previous_hook(*exc_info)

    def exit_now() -> None:
        if failed:
            return
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    sys.excepthook = note_failure
    atexit.register(exit_now)


def _set_tf_threads(threads: int) -> None:
    tf = _tf()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow has run ops in this process already: its pools are fixed
        pass


def length_limits(config: PreprocessConfig) -> tuple[int, int]:
    """The tokens a written source and target keep: max_source_length and max_target_length - 2."""
    return config.max_source_length, config.max_target_length - 2


def reject_limits(config: PreprocessConfig) -> Optional[tuple[int, int]]:
    """The most tokens a side may have without being rejected as source/target_too_long: the
    limits themselves under length_policy reject; max_length_factor times them under truncate
    (longer is not a sentence: a runaway line, a file glued into one field); None = no limit."""
    limits = length_limits(config)
    if config.length_policy == "reject":
        return limits
    if config.max_length_factor > 0:
        return limits[0] * config.max_length_factor, limits[1] * config.max_length_factor
    return None


class CountTokensFn(_TokenizingFn):
    """RecordBatch -> {side: Counter} per bundle, over the tokens that will be written: of the
    train records the encoder will not reject, and of a side it truncates, only the tokens kept.

    Counting into one Counter per bundle (in C, `Counter.update` on a token list) and emitting it
    when the bundle ends keeps both the Python work and the data sent to the combiner small.
    """

    def __init__(self, config: PreprocessConfig, tokenizer: Optional[str], apply_length_policy: bool,
                 threads: Optional[int] = None):
        super().__init__(config, tokenizer, threads)
        self.apply_length_policy = apply_length_policy

    def start_bundle(self) -> None:
        self._counts = {side: collections.Counter() for side in SIDES}
        self._watch = _Stopwatch()

    def process(self, batch: RecordBatch, learned: Optional[Learned] = None):
        started = time.perf_counter()
        if self._tokenizers is None:
            self._build(learned)
        train = ~self._split_flags(batch)
        if not train.any():
            self._watch.add("counting", started)
            return
        # Masking the spans is a traced function of its own, so that its time is seen apart.
        masking = time.perf_counter()
        self._watch.add("counting", started)
        sources, targets, within = self._mask(batch.sources, batch.targets)
        self._watch.add("span_masking", masking)
        started = time.perf_counter()
        for side, tokens in zip(SIDES, self._count(sources, targets, within, train)):
            self._counts[side].update(tokens.numpy().tolist())
        full = sum(len(c) for c in self._counts.values()) >= FLUSH_DISTINCT_TOKENS
        self._watch.add("counting", started)
        if full:
            yield self._counts
            self._counts = {side: collections.Counter() for side in SIDES}

    def _build(self, learned: Optional[Learned]) -> None:
        tf = _tf()
        strings = tf.TensorSpec([None], tf.string)
        self._tokenizers = self._make_tokenizers(learned)
        self._mask = tf.function(self._mask_impl, input_signature=[strings, strings], autograph=False)
        # One traced function for both sides: tracing tensorflow-text tokenizers takes seconds.
        self._count = tf.function(self._count_impl, input_signature=[
            strings, strings, tf.TensorSpec([None], tf.bool), tf.TensorSpec([None], tf.bool)], autograph=False)

    def finish_bundle(self):
        if any(self._counts.values()):
            yield GlobalWindows.windowed_value(self._counts)
        if self._watch.seconds:
            yield beam.pvalue.TaggedOutput(METRICS, GlobalWindows.windowed_value(self._watch.report()))

    def _mask_impl(self, sources, targets):
        """Both sides with their spans masked, and whether the source is within the span slots."""
        return self._protect(sources, targets)

    def _count_impl(self, sources, targets, within_span_slots, train):
        """Each side's kept tokens of the train records that the encoder will not reject.

        For the piece learners' word counts (whitespace words, `tokenizer` "whitespace" before a
        job with a learned tokenizer) the same rules are applied to words: a side's first N pieces
        come from its first N words at most, and a side with more words than a limit has more pieces too.
        """
        tf = _tf()
        tokens = [self._tokenizers["source"].tokenize(sources), self._tokenizers["target"].tokenize(targets)]
        lengths = [t.row_lengths() for t in tokens]
        keep = train & (lengths[0] > 0) & (lengths[1] > 0) & within_span_slots
        rejected_over = reject_limits(self.config) if self.apply_length_policy else None
        if rejected_over is not None:
            keep &= (lengths[0] <= rejected_over[0]) & (lengths[1] <= rejected_over[1])
        return [tf.ragged.boolean_mask(side_tokens, keep)[:, :limit].flat_values
                for side_tokens, limit in zip(tokens, length_limits(self.config))]


class SumCountsFn(beam.CombineFn):
    """Merge {side: {token: count}} from every bundle; the accumulator is vocabulary-sized."""

    def create_accumulator(self) -> dict:
        return {side: collections.Counter() for side in SIDES}

    def add_input(self, acc: dict, counts: Mapping) -> dict:
        for side, side_counts in counts.items():
            acc[side].update(side_counts)
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged = self.create_accumulator()
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: dict) -> dict:
        return acc


# --------------------------------------------------------------------------------------------
# The learners' sample: the most frequent train words, found without one worker holding them all
# --------------------------------------------------------------------------------------------

def learner_group(config: PreprocessConfig, side: str) -> str:
    """Whose words a learned side's pieces are learned from: its own, or both sides' (SHARED)."""
    return SHARED if config.shared_pieces else side


def word_buckets(counts: Mapping[str, Mapping[bytes, int]], config: PreprocessConfig
                 ) -> Iterator[tuple[tuple[str, int], dict[bytes, int]]]:
    """One bundle's {side: {word: count}} -> ((side, bucket), {word: count}) for the learned sides.
    The bucket is a stable hash of the word (crc32, the same in every process, unlike Python's
    `hash`), so a word's counts from every bundle meet under one key."""
    for side in config.learned_sides:
        buckets: dict[int, dict[bytes, int]] = {}
        for word, count in counts.get(side, {}).items():
            buckets.setdefault(zlib.crc32(word) % WORD_BUCKETS, {})[word] = count
        for bucket, words in buckets.items():
            yield (side, bucket), words


def group_bucket(element: tuple[tuple[str, int], Mapping[bytes, int]], config: PreprocessConfig
                 ) -> tuple[tuple[str, int], Mapping[bytes, int]]:
    """((side, bucket), words) -> ((learner group, bucket), words): with preprocess.shared_pieces,
    both sides' buckets of one hash meet under SHARED (a word hashes to one bucket on either side)."""
    (side, bucket), words = element
    return (learner_group(config, side), bucket), words


def counts_pieces_from_words(config: PreprocessConfig) -> bool:
    """Whether the learned sides' token counts can be found from their train words' counts, each
    distinct word segmented once, instead of from a further read of the corpus: when every learned
    side is a WordPiece one (a text's pieces are its words' pieces) and every other side splits at
    whitespace (its words are its tokens)."""
    from components.core.config import WORDPIECE_TOKENIZERS

    return bool(config.learned_sides) and all(
        config.tokenizer_of(side) in WORDPIECE_TOKENIZERS + ("whitespace",) for side in SIDES)


class CountPiecesFn(_TokenizingFn):
    """((side, bucket), {word: count}) of a WordPiece side -> {side: {piece: count}}: each distinct
    word segmented once by the side's learned tokenizer, its pieces counted as often as the word.

    The words are those counted for the learners (`CountTokensFn` with the whitespace override),
    so these are the counts of the tokens that a read of the corpus would count, except where a
    side is truncated: there the words are cut at the limit, and a word that straddles it counts
    all its pieces (docs/preprocess.md, "Vocabularies")."""

    def process(self, element: tuple[tuple[str, int], Mapping[bytes, int]], learned: Learned):
        started = time.perf_counter()
        if self._tokenizers is None:
            self._build(learned)
        (side, _), words = element
        tf = _tf()
        pieces, counts = self._count[side](tf.constant(list(words.keys()), tf.string),
                                           tf.constant(list(words.values()), tf.int64))
        yield {side: dict(zip(pieces.numpy().tolist(), counts.numpy().tolist()))}
        yield beam.pvalue.TaggedOutput(METRICS, stage_report(counting=time.perf_counter() - started))

    def _build(self, learned: Learned) -> None:
        tf = _tf()
        self._tokenizers = self._make_tokenizers(learned)
        spec = [tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int64)]
        self._count = {side: tf.function(self._counter(self._tokenizers[side]), input_signature=spec,
                                         autograph=False)
                       for side in self.config.wordpiece_sides}

    @staticmethod
    def _counter(tokenizer):
        def count(words, counts):
            tf = _tf()
            pieces = tokenizer.word_pieces(words)
            unique, index = tf.unique(pieces.flat_values)
            weights = tf.repeat(counts, pieces.row_lengths())
            return unique, tf.math.unsorted_segment_sum(weights, index, tf.size(unique))
        return count


def own_token_counts(counts: Mapping[str, Mapping[bytes, int]], sides: Sequence[str]) -> dict[str, Mapping[bytes, int]]:
    """A bundle's whitespace word counts, of the sides that are not learned: their token counts."""
    return {side: counts[side] for side in sides if side in counts}


def word_totals(counts: Mapping[str, Mapping[bytes, int]]) -> Iterator[tuple[str, int]]:
    """One bundle's {side: {word: count}} -> (side, words counted): what the learners check."""
    for side, side_counts in counts.items():
        yield side, sum(side_counts.values())


class SumWordCountsFn(beam.CombineFn):
    """Merge {word: count} dicts (one bucket's share of the words)."""

    def create_accumulator(self) -> collections.Counter:
        return collections.Counter()

    def add_input(self, acc: collections.Counter, counts: Mapping[bytes, int]) -> collections.Counter:
        acc.update(counts)
        return acc

    def merge_accumulators(self, accumulators: Iterable[collections.Counter]) -> collections.Counter:
        merged = collections.Counter()
        for acc in accumulators:
            merged.update(acc)
        return merged

    def extract_output(self, acc: collections.Counter) -> collections.Counter:
        return acc


def _by_frequency(item: tuple[bytes, int]) -> tuple[int, bytes]:
    """The sample's order: the most frequent first, ties by the word (a total order, so the sample
    never depends on the order the counts arrived in)."""
    return -item[1], item[0]


def top_words(items: Sequence[tuple[bytes, int]], n: int) -> list[tuple[bytes, int]]:
    """The `n` first (word, count) pairs in `_by_frequency` order, sorted that way."""
    return sorted(_top_unsorted(items, n), key=_by_frequency)


def _top_unsorted(items: Sequence[tuple[bytes, int]], n: int) -> list[tuple[bytes, int]]:
    """The `n` first pairs in `_by_frequency` order, in no order: every pair above the n-th
    largest count (found by numpy's partition), then the smallest words of those at that count."""
    if len(items) <= n:
        return list(items)
    counts = np.fromiter((count for _, count in items), np.int64, len(items))
    cut = int(np.partition(counts, len(counts) - n)[len(counts) - n])
    above = [items[i] for i in np.flatnonzero(counts > cut).tolist()]
    tied = sorted(items[i][0] for i in np.flatnonzero(counts == cut).tolist())[:n - len(above)]
    return above + [(word, cut) for word in tied]


class TopWordsFn(beam.CombineFn):
    """The `n` most frequent (word, count) pairs of the buckets' summed counts; the accumulator
    holds under 2n pairs (plus one input), cut to the top n whenever it reaches 2n, so each pair is
    ranked a bounded number of times. Exact: each word's whole count is in one bucket."""

    def __init__(self, n: int):
        self.n = n

    def create_accumulator(self) -> list:
        return []

    def _bounded(self, acc: list) -> list:
        return _top_unsorted(acc, self.n) if len(acc) >= 2 * self.n else acc

    def add_input(self, acc: list, counts: Mapping[bytes, int]) -> list:
        acc.extend(counts.items())
        return self._bounded(acc)

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        merged: list = []
        for acc in accumulators:
            merged = self._bounded(merged + acc)
        return merged

    def extract_output(self, acc: list) -> list:
        return top_words(acc, self.n)


class NestedSumFn(beam.CombineFn):
    """Merge nested {name: int | list | {name: ...}} reports: numbers add up, lists concatenate."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, acc: dict, metrics: Mapping) -> dict:
        for key, value in metrics.items():
            if isinstance(value, Mapping):
                self.add_input(acc.setdefault(key, {}), value)
            elif isinstance(value, (list, tuple)):
                acc.setdefault(key, []).extend(value)
            else:
                acc[key] = acc.get(key, 0) + value
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged: dict = {}
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: dict) -> dict:
        return acc


class QuarantineFn(beam.DoFn):
    """Rejects -> this bundle's JSONL file in the quarantine staging folder, counted by reason.

    Emits one report per bundle: {"rejected": {reason: n}, "files": {"quarantine": [path]}}.
    """

    def __init__(self, directory: str):
        self.directory = directory

    def start_bundle(self) -> None:
        self._file = None
        self._path = ""
        self._counts: dict[str, int] = {}
        self._watch = _Stopwatch()

    def process(self, reject: Reject):
        started = time.perf_counter()
        if self._file is None:
            tf = _tf()
            self._path = f"{self.directory}/rejected-{uuid.uuid4().hex}.jsonl"
            self._file = tf.io.gfile.GFile(self._path, "w")
        self._file.write(reject.to_json() + "\n")
        self._counts[reject.reason] = self._counts.get(reject.reason, 0) + 1
        self._watch.add("writing", started)
        return ()

    def finish_bundle(self):
        if self._file is None:
            return
        started = time.perf_counter()
        self._file.close()
        self._watch.add("writing", started)
        yield GlobalWindows.windowed_value({"rejected": self._counts, "files": {"quarantine": [self._path]},
                                            **self._watch.report()})


# --------------------------------------------------------------------------------------------
# Encoding and writing
# --------------------------------------------------------------------------------------------

class TestSourcesFn(_TokenizingFn):
    """RecordBatch of the test set -> the sha256 of each normalized source (the split key): the
    corpus pairs with one of these sources are kept out of training and eval."""

    def process(self, batch: RecordBatch):
        yield from source_digests(self._normalize(_tf().constant(batch.sources, _tf().string)).numpy().tolist())


class EncodeAndWriteFn(_TokenizingFn):
    """RecordBatch -> padded ids -> tf.train.Example bytes -> this bundle's gzip TFRecord shards.

    Encoding uses `components.text.encoding.SequenceEncoder`, the module the exported model's
    `encode` signature runs, so the ids here are the ids served. Each bundle writes its own shard
    per split (no shuffle of the corpus); the shard paths go out when the bundle finishes, and
    records rejected by the length rules go to the quarantine output.
    """

    def __init__(self, config: PreprocessConfig, shard_dir: str, threads: Optional[int] = None,
                 test_paths: Sequence[str] = ()):
        super().__init__(config, threads=threads)
        self.shard_dir = shard_dir
        self.test_paths = frozenset(test_paths)  # the test set's files: their rows go to the test split

    def setup(self) -> None:
        super().setup()
        self._encoders: Optional[dict[str, Any]] = None

    def start_bundle(self) -> None:
        self._writers: dict[str, Any] = {}
        self._paths: dict[str, str] = {}
        self._metrics = self._empty_metrics()
        self._watch = _Stopwatch()

    @staticmethod
    def _empty_metrics() -> dict:
        return {"records_written": {s: 0 for s in SPLITS},
                "source_lengths": {}, "target_lengths": {},
                "truncated": {"source": 0, "target": 0},
                "eval_tokens": {"source": 0, "target": 0}, "eval_unk": {"source": 0, "target": 0}}

    def _build(self, vocabularies: Mapping[str, Sequence[str]], learned: Optional[Learned]) -> None:
        from components.text.encoding import SequenceEncoder
        from components.text.spans import masker_for

        tf = _tf()
        tokenizers = self._make_tokenizers(learned)
        c = self.config
        source = SequenceEncoder(tokenizers["source"], list(vocabularies["source"]), c.max_source_length,
                                 name="source_encoder", masker=masker_for(c, "source"))
        target = SequenceEncoder(tokenizers["target"], list(vocabularies["target"]), c.max_target_length,
                                 name="target_encoder", masker=masker_for(c, "target"))
        self._modules = (source, target)  # keep the lookup tables alive
        spec = [tf.TensorSpec([None], tf.string)] * 2
        self._encoders = tf.function(self._encode_impl, input_signature=spec, autograph=False)

    def _encode_impl(self, sources, targets):
        """Both sides in one traced function (tracing tensorflow-text tokenizers takes seconds)."""
        from components.text.copying import encode_pairs
        from components.text.tokenizers import normalize

        encoded_source, encoded_target = encode_pairs(*self._modules, sources, targets)
        return (encoded_source, encoded_target,
                normalize(sources, self.config.lowercase), normalize(targets, self.config.lowercase))

    def process(self, batch: RecordBatch, vocabularies: Mapping[str, Sequence[str]],
                learned: Optional[Learned] = None, test_sources: Optional[frozenset] = None):
        # Encoding includes the span masking of this pass (inside the encoders' traced function).
        started = time.perf_counter()
        if self._encoders is None:
            self._build(vocabularies, learned)
        assert self._encoders is not None
        src, tgt, source_text, target_text = self._encoders(batch.sources, batch.targets)
        src = {k: v.numpy() for k, v in src.items()}
        tgt = {k: v.numpy() for k, v in tgt.items()}
        source_text, target_text = source_text.numpy(), target_text.numpy()
        c = self.config
        is_test = batch.path in self.test_paths
        digests = source_digests(source_text.tolist()) if c.eval_fraction > 0 or c.num_shards > 0 or test_sources \
            else []
        evals = is_eval(digests, c.eval_fraction) if c.eval_fraction > 0 else np.zeros(len(source_text), bool)
        shards = shard_index(digests, c.num_shards) if c.num_shards > 0 else np.full(len(source_text), -1)
        reasons = self._reject_reasons(src["full_length"], tgt["full_length"], src["span_count"])
        if test_sources and not is_test:  # a pair whose source is in the test set: never trained on
            in_test = np.array([d in test_sources for d in digests], bool)
            reasons[in_test & (reasons == "")] = IN_TEST_SET
        keep = reasons == ""
        if not is_test:
            self._record_stats(src, tgt, keep, evals)
        self._watch.add("encoding", started)
        for i in np.flatnonzero(~keep):
            # Counted where all rejects meet, so that conservation checks two independent tallies.
            yield beam.pvalue.TaggedOutput(REJECTED, Reject(
                batch.path, batch.lines[i], str(reasons[i]), f"{batch.sources[i]}\t{batch.targets[i]}",
                detail=_span_detail(int(src["span_count"][i])) if reasons[i] == "too_many_spans" else None))
        started = time.perf_counter()
        self._write(src, tgt, source_text, target_text, keep, evals, shards, is_test)
        self._watch.add("writing", started)

    def _write(self, src: dict, tgt: dict, source_text: np.ndarray, target_text: np.ndarray, keep: np.ndarray,
               evals: np.ndarray, shards: np.ndarray, is_test: bool = False) -> None:
        """The kept rows as tf.train.Example bytes, into this bundle's file of their split (and shard)."""
        from components.preprocess.examples import serialize_examples

        splits = (("test", keep),) if is_test else (("train", keep & ~evals), ("eval", keep & evals))
        for split, rows in splits:
            if not rows.any():
                continue
            examples = serialize_examples({
                "source_ids": src["source_ids"][rows], "source_length": src["source_length"][rows],
                "target_input": tgt["target_input"][rows], "target_output": tgt["target_output"][rows],
                "target_length": tgt["target_length"][rows],
                "source_copy_ids": src["source_copy_ids"][rows], "target_copy_output": tgt["target_copy_output"][rows],
            }, {"source_text": source_text[rows].tolist(), "target_text": target_text[rows].tolist()})
            for shard in np.unique(shards[rows]).tolist():
                writer = self._writer(split, shard)
                for i in np.flatnonzero(shards[rows] == shard).tolist():
                    writer.write(examples[i])
            self._metrics["records_written"][split] += len(examples)

    def _reject_reasons(self, source_full: np.ndarray, target_full: np.ndarray, span_count: np.ndarray) -> np.ndarray:
        from components.core.spans import SPAN_SLOTS

        reasons = np.full(source_full.shape, "", dtype=object)
        limits = reject_limits(self.config)
        if limits is not None:
            reasons[target_full > limits[1]] = "target_too_long"
            reasons[source_full > limits[0]] = "source_too_long"
        # Spans past the last sentinel would be ordinary text the model may drop: never silently.
        reasons[span_count > SPAN_SLOTS] = "too_many_spans"
        # The tokenizer decides what counts as text: a side with no tokens is empty.
        reasons[(source_full == 0) | (target_full == 0)] = "empty_side"
        return reasons

    def _record_stats(self, src: dict, tgt: dict, keep: np.ndarray, evals: np.ndarray) -> None:
        c, m = self.config, self._metrics
        for side, full, limit in (("source", src["full_length"], c.max_source_length),
                                  ("target", tgt["full_length"], c.max_target_length - 2)):
            lengths = m[f"{side}_lengths"]
            values, counts = np.unique(full[keep], return_counts=True)
            for value, count in zip(values.tolist(), counts.tolist()):
                lengths[value] = lengths.get(value, 0) + count
            m["truncated"][side] += int((full[keep] > limit).sum())
        rows = keep & evals
        if rows.any():
            from components.core.vocabulary import UNK_ID

            m["eval_tokens"]["source"] += int(src["source_length"][rows].sum())
            m["eval_unk"]["source"] += int((src["source_ids"][rows] == UNK_ID).sum())
            # target_length counts the <eos>, which is never <unk>.
            m["eval_tokens"]["target"] += int((tgt["target_length"][rows] - 1).sum())
            m["eval_unk"]["target"] += int((tgt["target_output"][rows] == UNK_ID).sum())

    def _writer(self, split: str, shard: int):
        """This bundle's file for a split (and, with preprocess.num_shards, for one shard)."""
        key = (split, shard)
        if key not in self._writers:
            tf = _tf()
            path = f"{self.shard_dir}/{split}-{shard}-{uuid.uuid4().hex}.tfrecord.gz"
            # zlib's fastest level: compressing took half the writing time at the default level,
            # for files a tenth smaller (docs/preprocess.md, "Performance").
            options = tf.io.TFRecordOptions("GZIP", compression_level=GZIP_LEVEL)
            self._writers[key] = tf.io.TFRecordWriter(path, options=options)
            self._paths[key] = path
        return self._writers[key]

    def finish_bundle(self):
        started = time.perf_counter()
        for writer in self._writers.values():
            writer.close()
        self._watch.add("writing", started)
        # Length histograms have int keys; stringify them so that every coder keeps them.
        metrics = {**self._metrics, **self._watch.report()}
        for side in SIDES:
            metrics[f"{side}_lengths"] = {str(k): v for k, v in metrics[f"{side}_lengths"].items()}
        if self.config.num_shards > 0:
            for key, path in sorted(self._paths.items()):
                yield beam.pvalue.TaggedOutput(SHARD_PARTS, GlobalWindows.windowed_value((key, path)))
        else:
            metrics["files"] = {split: [path] for (split, _), path in self._paths.items()}
        yield beam.pvalue.TaggedOutput(METRICS, GlobalWindows.windowed_value(metrics))
        logger.info("bundle wrote %s", metrics["records_written"])


def _span_detail(count: int) -> str:
    from components.core.spans import SPAN_SLOTS

    return (f"the source has {count} protected spans; the first {SPAN_SLOTS} (SPAN_SLOTS) get a sentinel, "
            f"so {count - SPAN_SLOTS} would be ordinary text the model may drop")


class ConcatenateShardFn(beam.DoFn):
    """((split, shard), [bundle files]) -> SPLIT-NNNNN-of-MMMMM.tfrecord.gz (preprocess.num_shards > 0).

    Gzip files concatenate into one valid gzip stream (TF reads every member), so a shard is its
    bundles' files copied end to end, in a fixed order; nothing is decoded.
    """

    def __init__(self, directory: str, num_shards: int):
        self.directory = directory
        self.num_shards = num_shards

    def process(self, element):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        started = time.perf_counter()
        (split, shard), parts = element
        parts = sorted(parts)
        path = f"{self.directory}/{split}-{shard:05d}-of-{self.num_shards:05d}.tfrecord.gz"
        raw = CompressionTypes.UNCOMPRESSED
        with FileSystems.create(path, compression_type=raw) as out:
            for part in parts:
                with FileSystems.open(part, compression_type=raw) as f:
                    while chunk := f.read(1 << 22):
                        out.write(chunk)
        FileSystems.delete(parts)
        yield {"shards": {split: 1}, **stage_report(writing=time.perf_counter() - started)}


def publish_files(files: Mapping[str, Sequence[str]], directory: str) -> dict[str, int]:
    """Rename the bundles' files: SPLIT-NNNNN-of-MMMMM.tfrecord.gz, quarantine/rejected-NNNNN-of-MMMMM.jsonl.

    Returns the number of files per kind. Files of failed and retried bundles are not listed, so
    they are never published.
    """
    from components.preprocess import fs

    counts = {}
    for kind, paths in files.items():
        paths = sorted(paths)
        n = len(paths)
        names = [(f"quarantine/rejected-{i:05d}-of-{n:05d}.jsonl" if kind == "quarantine"
                  else f"{kind}-{i:05d}-of-{n:05d}.tfrecord.gz") for i in range(n)]
        fs.rename_files(paths, [f"{directory}/{name}" for name in names])
        counts[kind] = n
    return counts
