"""`run_preprocess`: build and run the Beam job, check its counts, publish the output folder.

The pipeline reads the corpus twice instead of holding it anywhere:

    read #1 -> validate -> tokenize -> count train tokens --CombineGlobally--> vocabularies
    read #2 -> validate -> encode with the vocabularies (side input) -> gzip TFRecord shards
            \\-> rejects -> quarantine/*.jsonl          counts of every step -> stats

With a learned tokenizer, read #1 counts whitespace words instead, summed per (side, hash bucket)
key; the learners get the `preprocess.learn_max_words` most frequent (a bounded top N per bucket,
then overall). A WordPiece side's token counts then come from the summed buckets, each distinct
word segmented once; a SentencePiece or unicode_script side needs a further read to count them.

Only counts, vocabularies and file names cross between stages, so memory stays flat as the
corpus grows, and every stage splits over the runner's workers by read unit. Each step also
reports the seconds it spent by stage (transforms.STAGES), summed into stats.json.
"""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any, Mapping, Optional, Sequence, Union

import schemas
from components.core.config import ConfigError, PipelineConfig, PreprocessConfig
from components.core.errors import ArtifactError, InputError, UserError
from components.core.languages import Languages, resolve_languages
from components.preprocess import fs, inputs, learners, transforms
from components.preprocess.learners import SENTENCEPIECE_MODEL, WORDPIECE_VOCAB
from components.preprocess.transforms import METRICS, NEWLINES, REJECTED, SIDES, SPLITS, STAGES, Learned

logger = logging.getLogger(__name__)

DEFAULT_RUNNER = "DirectRunner"  # named explicitly: the default Prism runner downloads a binary
METRICS_FILE = "_metrics.json"
SHARD_DIR = "_shards"
QUARANTINE_DIR = "quarantine"
QUARANTINE_PREFIX = "rejected"
PERCENTILES = (50, 90, 95, 99)


class OutputExistsError(UserError):
    """The output folder exists and --overwrite was not given."""


def pipeline_options(beam_args: Sequence[str] = ()):
    """Beam options from the args after `--`, with the offline DirectRunner unless --runner is given."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.insert(0, f"--runner={DEFAULT_RUNNER}")
    return PipelineOptions(args)


def _direct_runner(options):
    """The DirectRunner's own in-process/multi-process engine (FnApiRunner), without its Prism try.

    Beam's DirectRunner first tries the Prism runner, which downloads a binary and fails (or
    hangs) offline; our pipeline needs nothing Prism offers, so a DirectRunner request goes straight
    to the engine the DirectRunner falls back to. It honours --direct_num_workers and
    --direct_running_mode. Any other --runner is left to Beam.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    name = options.view_as(StandardOptions).runner
    if name not in ("DirectRunner", "direct", "directrunner", "SwitchingDirectRunner"):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=provision)


def run_preprocess(data: str, out: str, config: PipelineConfig, beam_args: Sequence[str] = (),
                   overwrite: bool = False, served_vocabularies: Optional[str] = None,
                   test_data: Optional[str] = None) -> dict[str, Any]:
    """Corpus at DATA (path, directory or glob) -> OUT (layout in components/core/artifacts.py).

    TEST_DATA (any input format) is a fixed test set: validated, encoded and written as the `test`
    split with the same tokenizers and vocabularies, never learned from; a corpus pair whose source
    is in it is kept out of training and eval (quarantined as in_test_set).

    With preprocess.vocabulary=reuse_served, `served_vocabularies` is a folder holding the served
    model's source.vocab/target.vocab (and *.wordpiece.vocab for wordpiece and subword,
    *.sentencepiece.model for sentencepiece): a preprocess output or a SavedModel's assets/. They
    are used as they are (new words become <unk>), so the served model's weights fit the new
    examples. Returns the stats dict also written to OUT/stats.json.
    """
    started = time.time()
    out = fs.absolute(out.rstrip("/"))
    if fs.exists(out) and not overwrite:
        raise OutputExistsError(f"output folder {out} already exists (pass --overwrite to replace it)")
    units = inputs.resolve_inputs(fs.absolute(data), config.preprocess)
    test_units = inputs.resolve_test_inputs(fs.absolute(test_data), config.preprocess, units) if test_data else []
    reuse_from = _reuse_source(config.preprocess, served_vocabularies)
    staging = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    for folder in (staging, f"{staging}/{SHARD_DIR}", f"{staging}/{QUARANTINE_DIR}"):
        fs.makedirs(folder)
    keep_staging = False
    try:
        reused = _copy_reused_vocabularies(reuse_from, config.preprocess, staging) if reuse_from else None
        job_started = time.time()
        _run_pipeline(units, staging, config.preprocess, beam_args, reused, test_units)
        job_seconds = time.time() - job_started
        metrics = _read_json(f"{staging}/{METRICS_FILE}")
        metrics["beam_job_seconds"] = job_seconds
        published = transforms.publish_files(metrics.pop("files", {}), staging)
        if config.preprocess.num_shards > 0:
            published.update(_fill_empty_shards(staging, metrics, config.preprocess.num_shards))
        metrics["shards"] = published
        stats = build_stats(metrics, config.preprocess, time.time() - started)
        stats["vocabularies_from"] = reuse_from or "corpus"
        stats["test_data"] = fs.absolute(test_data) if test_data else None
        stats["languages"] = resolve_languages(config.preprocess, data).to_dict()
        _write_json(f"{staging}/stats.json", stats)
        fs.write_text(f"{staging}/config.yaml", config.to_yaml())
        try:
            check_counts(stats, config.preprocess, out)
        except InputError:
            keep_staging = True
            _move(staging, f"{out}.failed", replace=True)
            raise
        fs.remove_tree(f"{staging}/{METRICS_FILE}")
        fs.remove_tree(f"{staging}/{SHARD_DIR}")  # leftovers of retried bundles, if any
        _move(staging, out, replace=overwrite)
    finally:
        if not keep_staging:
            fs.remove_tree(staging)
    log_summary(stats, data, out)
    return stats


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------

def _reuse_source(p: PreprocessConfig, served_vocabularies: Optional[str]) -> Optional[str]:
    if p.vocabulary != "reuse_served":
        return None
    if not served_vocabularies:
        logger.warning("preprocess.vocabulary=reuse_served but no served model is given: "
                       "building the vocabularies from the corpus")
        return None
    return served_vocabularies.rstrip("/")


def _copy_reused_vocabularies(directory: str, p: PreprocessConfig, staging: str
                              ) -> tuple[dict[str, list[str]], Optional[dict[str, Union[list[str], bytes]]]]:
    """Check (special ids) and copy the served vocabularies (and learned tokenizer files) into the
    output; returns their tokens (and the learned pieces or models, for the learned sides)."""
    from components.core.vocabulary import COUNTS_SUFFIX, Vocabulary, VocabularyError

    def tokens_of(path: str) -> list[str]:
        if not fs.exists(path):
            raise ArtifactError(f"preprocess.vocabulary=reuse_served: {path} does not exist")
        text = fs.read_text(path)
        return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")

    vocabularies: dict[str, list[str]] = {}
    learned: Optional[dict[str, Union[list[str], bytes]]] = {} if p.learned_sides else None
    for side in SIDES:
        path = f"{directory}/{side}.vocab"
        tokens = tokens_of(path)
        try:
            Vocabulary(tuple(tokens))
        except VocabularyError as e:
            raise ArtifactError(f"{path}: {e}") from None
        fs.write_text(f"{staging}/{side}.vocab", "".join(t + "\n" for t in tokens))
        if fs.exists(path + COUNTS_SUFFIX):
            fs.write_text(f"{staging}/{side}.vocab{COUNTS_SUFFIX}", fs.read_text(path + COUNTS_SUFFIX))
        vocabularies[side] = tokens
        if learned is not None and side in p.wordpiece_sides:
            name = WORDPIECE_VOCAB.format(side=side)
            pieces = tokens_of(f"{directory}/{name}")
            fs.write_text(f"{staging}/{name}", "".join(t + "\n" for t in pieces))
            learned[side] = pieces
        elif learned is not None and side in p.sentencepiece_sides:
            name = SENTENCEPIECE_MODEL.format(side=side)
            if not fs.exists(f"{directory}/{name}"):
                raise ArtifactError(f"preprocess.vocabulary=reuse_served: {directory}/{name} does not exist")
            model = fs.read_bytes(f"{directory}/{name}")
            fs.write_bytes(f"{staging}/{name}", model)
            learned[side] = model
    _check_reused_sentinels(directory, p, vocabularies, learned)
    logger.info("reusing the served vocabularies from %s (source %d, target %d tokens)", directory,
                len(vocabularies["source"]), len(vocabularies["target"]))
    return vocabularies, learned


def _served_model_name(directory: str) -> str:
    """The served model a vocabulary folder belongs to: a SavedModel's assets/ is its model's."""
    return directory[: -len("/assets")] if directory.endswith("/assets") else directory


def _check_reused_sentinels(directory: str, p: PreprocessConfig, vocabularies: Mapping[str, Sequence[str]],
                            learned: Optional[Mapping[str, Union[list[str], bytes]]]) -> None:
    """With preprocess.protected_spans, both sides' spans become sentinels: reused vocabularies (and
    WordPiece pieces) must hold every one, or each span would be <unk> to the model and its output
    could only carry the spans appended after the text. A ConfigError (exit 2) naming the served
    model and the count; the served model is never changed, so refusing keeps the warm start honest."""
    from components.core.config import WORDPIECE_TOKENIZERS
    from components.core.spans import SPAN_SLOTS, sentinel

    if not p.protected_spans:
        return
    missing: dict[str, int] = {}
    for side in SIDES:
        held = set(vocabularies[side])
        pieces = learned.get(side) if learned else None
        if isinstance(pieces, list):  # a WordPiece side: its tokenizer must produce the sentinels too
            held &= set(pieces)
        prefixes = ("", "##") if p.tokenizer_of(side) in WORDPIECE_TOKENIZERS else ("",)
        # A slot is missing when any form of its sentinel is (a WordPiece side needs the `##` one too).
        missing[side] = sum(not all(prefix + sentinel(k) in held for prefix in prefixes) for k in range(SPAN_SLOTS))
    if any(missing.values()):
        raise ConfigError(
            f"preprocess.vocabulary=reuse_served: the served model {_served_model_name(directory)} lacks "
            f"{missing['source']} of the {SPAN_SLOTS} protected-span sentinels in its source vocabulary and "
            f"{missing['target']} of {SPAN_SLOTS} in its target vocabulary (it was trained without "
            f"preprocess.protected_spans); set preprocess.vocabulary=rebuild, or preprocess.protected_spans=[]")


def _run_pipeline(units: Sequence[inputs.ReadUnit], staging: str, p: PreprocessConfig,
                  beam_args: Sequence[str],
                  reused: Optional[tuple[dict[str, list[str]], Optional[Learned]]] = None,
                  test_units: Sequence[inputs.ReadUnit] = ()) -> None:
    import apache_beam as beam
    from apache_beam.runners.runner import PipelineState

    # Beam logs every string type hint it cannot resolve; ours are for readers, not for Beam.
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    options = pipeline_options(beam_args)
    threads = transforms.worker_threads(options.get_all_options())
    pipeline = beam.Pipeline(runner=_direct_runner(options), options=options)
    units_pc = pipeline | "ReadUnits" >> beam.Create(list(units))

    first = units_pc | "ReadForCounts" >> beam.ParDo(
        transforms.ReadFn(p, final=False, newlines_only=reused is not None)
    ).with_outputs(NEWLINES, METRICS, main="batches")
    reports = [first[METRICS]]  # every step's counts and stage times, summed into the stats
    learned = None
    if reused is not None:
        vocabularies = pipeline | "ReusedVocabularies" >> beam.Create([reused[0]])
        if reused[1] is not None:
            learned = beam.pvalue.AsSingleton(pipeline | "ReusedPieces" >> beam.Create([reused[1]]))
    elif p.learned_sides:
        learned, words, side_buckets = _learn_pieces(pipeline, first.batches, p, staging, reports, threads)
        if transforms.counts_pieces_from_words(p):
            counts = _count_pieces_from_words(words, side_buckets, learned, p, threads, reports)
        else:  # a SentencePiece or unicode_script side: its tokens are not its words' pieces
            second = units_pc | "ReadForTokenCounts" >> beam.ParDo(
                transforms.ReadFn(p, final=False), after=learned).with_outputs(NEWLINES, METRICS, main="batches")
            reports.append(second[METRICS])
            counted = second.batches | "CountTokens" >> beam.ParDo(
                transforms.CountTokensFn(p, None, True, threads), learned=learned
            ).with_outputs(METRICS, main="counts")
            counts = counted.counts
            reports.append(counted[METRICS])
    else:
        counted = first.batches | "CountTokens" >> beam.ParDo(
            transforms.CountTokensFn(p, None, True, threads)).with_outputs(METRICS, main="counts")
        counts = counted.counts
        reports.append(counted[METRICS])
    if reused is None:
        built = (counts
                 | "SumTokens" >> beam.CombineGlobally(transforms.SumCountsFn())
                 | "Vocabularies" >> beam.FlatMap(_vocabularies_step, p, staging).with_outputs(
                     METRICS, main="vocabularies"))
        vocabularies = built.vocabularies
        reports.append(built[METRICS])

    newline_counts = first[NEWLINES] | "NewlineCounts" >> beam.combiners.ToList()
    # The test set is read with the corpus' final read (validated and quarantined alike), after
    # the vocabularies: nothing is learned or counted from it.
    final_units = units_pc if not test_units else pipeline | "ReadAllUnits" >> beam.Create([*units, *test_units])
    final = final_units | "Read" >> beam.ParDo(
        transforms.ReadFn(p, final=True), newline_counts=beam.pvalue.AsSingleton(newline_counts)
    ).with_outputs(REJECTED, METRICS, main="batches")
    side_inputs: dict[str, Any] = {"vocabularies": beam.pvalue.AsSingleton(vocabularies)}
    if learned is not None:
        side_inputs["learned"] = learned
    if test_units:
        side_inputs["test_sources"] = beam.pvalue.AsSingleton(_test_sources(pipeline, test_units, p, threads))
    encoded = final.batches | "EncodeAndWrite" >> beam.ParDo(
        transforms.EncodeAndWriteFn(p, f"{staging}/{SHARD_DIR}", threads, sorted({u.path for u in test_units})),
        **side_inputs
    ).with_outputs(REJECTED, METRICS, transforms.SHARD_PARTS, main="unused")
    quarantined = ((final[REJECTED], encoded[REJECTED])
                   | "AllRejects" >> beam.Flatten()
                   | "Quarantine" >> beam.ParDo(transforms.QuarantineFn(f"{staging}/{SHARD_DIR}")))
    vocabulary_sizes = vocabularies | "VocabularySizes" >> beam.Map(
        lambda v: {"vocabulary_size": {side: len(tokens) for side, tokens in v.items()}})
    reports += [final[METRICS], encoded[METRICS], quarantined, vocabulary_sizes]
    if p.num_shards > 0:
        reports.append(encoded[transforms.SHARD_PARTS]
                       | "GroupShardParts" >> beam.GroupByKey()
                       | "ConcatenateShards" >> beam.ParDo(transforms.ConcatenateShardFn(staging, p.num_shards)))
    _ = (tuple(reports)
         | "AllMetrics" >> beam.Flatten()
         | "SumMetrics" >> beam.CombineGlobally(transforms.NestedSumFn())
         | "WriteMetrics" >> beam.Map(lambda m: _write_json(f"{staging}/{METRICS_FILE}", m)))

    all_options = options.get_all_options()
    workers = all_options.get("direct_num_workers")
    logger.info("running the Beam job on %s (%s worker%s, %s; %d read unit%s)",
                all_options.get("runner") or DEFAULT_RUNNER, workers, "" if workers == 1 else "s",
                all_options.get("direct_running_mode"), len(units), "" if len(units) == 1 else "s")
    relay = logging.getLogger("apache_beam.runners.portability.local_job_service")
    worker_filter = _WorkerLogFilter()
    relay.addFilter(worker_filter)
    step_errors = logging.getLogger("apache_beam.runners.common")
    user_error_filter = _UserErrorLogFilter()
    step_errors.addFilter(user_error_filter)
    try:
        result = pipeline.run()
        state = result.wait_until_finish()
    except Exception as e:
        error = worker_user_error(e)
        if error is None:
            raise
        raise error from None
    finally:
        relay.removeFilter(worker_filter)
        step_errors.removeFilter(user_error_filter)
    if state not in (PipelineState.DONE, None):
        raise RuntimeError(f"the Beam job ended in state {state}")


def _test_sources(pipeline: Any, test_units: Sequence[inputs.ReadUnit], p: PreprocessConfig,
                  threads: Optional[int]) -> Any:
    """The set of the test set's normalized-source digests, one PCollection element."""
    import apache_beam as beam

    return (pipeline
            | "TestUnits" >> beam.Create(list(test_units))
            | "ReadTestSources" >> beam.ParDo(transforms.ReadFn(p, final=False))
            | "TestSourceDigests" >> beam.ParDo(transforms.TestSourcesFn(p, threads=threads))
            | "TestSourceSet" >> beam.combiners.ToList()
            | "Frozen" >> beam.Map(frozenset))


_WHILE_RUNNING = re.compile(r"(?: \[while running '[^']*'\])+$")
# The user errors a worker raises (a corpus file it cannot read, a split that leaves no train words):
# by name, for the runners that report a worker's exception as text.
_WORKER_ERRORS: dict[str, type[UserError]] = {"InputError": InputError, "ConfigError": ConfigError}
_USER_ERROR_LINE = re.compile(r"\b(?:components\.core\.(?:errors|config)\.)?(InputError|ConfigError): "
                              r"(.+?)(?: \[while running '|\\n|\n|$)")


def worker_user_error(error: BaseException) -> Optional[UserError]:
    """The InputError or ConfigError a worker raised (a corpus file it cannot read: a truncated gzip,
    ...; preprocess.eval_fraction leaving no train words), as one clear error of the same class (and
    exit code), or None for any other failure.

    In-process runners re-raise the worker's exception with " [while running 'STEP']" appended;
    multi-process and remote runners report it as text, inside their own exception.
    """
    if isinstance(error, (InputError, ConfigError)):
        return type(error)(_WHILE_RUNNING.sub("", str(error)))
    match = _USER_ERROR_LINE.search(str(error))
    return _WORKER_ERRORS[match.group(1)](match.group(2)) if match else None


class _UserErrorLogFilter(logging.Filter):
    """Drop the traceback an in-process step logs for a user error: it reaches the launcher, which
    reports it as one line (`worker_user_error`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        raised = record.exc_info[1] if record.exc_info else None
        return not isinstance(raised, tuple(_WORKER_ERRORS.values()))


class _WorkerLogFilter(logging.Filter):
    """Multi-process workers print their own log lines and also relay each one as a protobuf dump.

    Keep only relayed warnings and errors (the workers' INFO lines are already on stderr), as
    one readable line.
    """

    PATTERN = re.compile(r'severity: (\w+).*?message: "((?:[^"\\]|\\.)*)"', re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.PATTERN.search(record.getMessage())
        if not match:
            return True
        severity, message = match.groups()
        if severity in ("DEBUG", "INFO", "NOTICE"):
            return False
        record.msg, record.args = "worker %s: %s", (severity, message.encode().decode("unicode_escape", "replace"))
        return True


def _learn_pieces(pipeline, batches, p: PreprocessConfig, staging: str, reports: list, threads: Optional[int]):
    """The learned sides' pieces, as a singleton side input, learned from a bounded sample: the
    `preprocess.learn_max_words` most frequent train words of each side (or of both sides, with
    preprocess.shared_pieces), ties by the word. Also returns the bundles' word counts and the
    summed ((side, bucket), {word: count}) buckets.

    The word counts are summed per (side, hash bucket) key, so each worker sums a share of the
    words, and each bucket keeps only its own top N before one combiner picks the top N of those:
    no step holds every unique word, and the sample is the same however the work was split.
    Appends the steps' METRICS to `reports`.
    """
    import apache_beam as beam

    words = batches | "CountWords" >> beam.ParDo(
        transforms.CountTokensFn(p, "whitespace", True, threads)).with_outputs(METRICS, main="counts")
    side_buckets = (words.counts
                    | "WordBuckets" >> beam.FlatMap(transforms.word_buckets, p)
                    | "SumWords" >> beam.CombinePerKey(transforms.SumWordCountsFn()))
    buckets = side_buckets
    if p.shared_pieces:
        buckets = (side_buckets
                   | "GroupBuckets" >> beam.Map(transforms.group_bucket, p)
                   | "SumGroupWords" >> beam.CombinePerKey(transforms.SumWordCountsFn()))
    samples = (buckets
               | "WordsByGroup" >> beam.Map(lambda kv: (kv[0][0], kv[1]))
               | "TopWords" >> beam.CombinePerKey(transforms.TopWordsFn(p.learn_max_words)))
    distinct = (buckets
                | "DistinctWords" >> beam.Map(lambda kv: (kv[0][0], len(kv[1])))
                | "SumDistinctWords" >> beam.CombinePerKey(sum))
    totals = (words.counts
              | "WordTotals" >> beam.FlatMap(transforms.word_totals)
              | "SumWordTotals" >> beam.CombinePerKey(sum))
    # One element per learner group (each side, or SHARED), so the runner may learn them in parallel.
    groups = sorted({transforms.learner_group(p, side) for side in p.learned_sides})
    learned = (pipeline
               | "LearnerGroups" >> beam.Create(groups)
               | "LearnPieces" >> beam.FlatMap(
                   _learn_step, p, staging, samples=beam.pvalue.AsDict(samples),
                   distinct=beam.pvalue.AsDict(distinct), totals=beam.pvalue.AsDict(totals)
               ).with_outputs(METRICS, main="learned"))
    merged = (learned.learned
              | "AllLearned" >> beam.combiners.ToList()
              | "MergeLearned" >> beam.Map(lambda parts: {side: value for part in parts for side, value in part.items()}))
    reports += [words[METRICS], learned[METRICS]]
    return beam.pvalue.AsSingleton(merged), words, side_buckets


def _count_pieces_from_words(words, side_buckets, learned, p: PreprocessConfig, threads: Optional[int],
                             reports: list):
    """Every side's token counts without reading the corpus again: a WordPiece side's from its
    summed word buckets (`transforms.CountPiecesFn`); a whitespace side's are its word counts.
    Appends the step's METRICS to `reports`."""
    import apache_beam as beam

    pieces = side_buckets | "CountPieces" >> beam.ParDo(
        transforms.CountPiecesFn(p, threads=threads), learned=learned).with_outputs(METRICS, main="counts")
    reports.append(pieces[METRICS])
    own = [side for side in SIDES if side not in p.learned_sides]
    if not own:
        return pieces.counts
    own_counts = words.counts | "OwnTokenCounts" >> beam.Map(transforms.own_token_counts, own)
    return (pieces.counts, own_counts) | "AllTokenCounts" >> beam.Flatten()


def _learn_step(group: str, p: PreprocessConfig, staging: str, samples: Mapping[str, Sequence[tuple[bytes, int]]],
                distinct: Mapping[str, int], totals: Mapping[str, int]):
    """Learn one group's pieces (a side's, or both sides' under SHARED) from its sampled words:
    {side: learned}, then a METRICS report of the learning time and of how many distinct words the
    learners saw, of how many in the train split."""
    import apache_beam as beam

    started = time.perf_counter()
    _check_train_words(totals, p)
    sides = [side for side in p.learned_sides if transforms.learner_group(p, side) == group]
    learned = learners.learn_tokenizers({group: dict(samples.get(group, ()))}, p, staging, sides)
    seconds = time.perf_counter() - started
    yield learned
    yield beam.pvalue.TaggedOutput(METRICS, {
        **transforms.stage_report(learning=seconds),
        "learner_words": {side: len(samples.get(group, ())) for side in sides},
        "train_words_distinct": {side: int(distinct.get(group, 0)) for side in sides}})


def _vocabularies_step(counts: Mapping[str, Mapping[bytes, int]], p: PreprocessConfig, staging: str):
    """`build_vocabularies`, then a METRICS report of its time (counted as counting)."""
    import apache_beam as beam

    started = time.perf_counter()
    vocabularies = build_vocabularies(counts, p, staging)
    seconds = time.perf_counter() - started
    yield vocabularies
    yield beam.pvalue.TaggedOutput(METRICS, transforms.stage_report(counting=seconds))


def build_vocabularies(counts: Mapping[str, Mapping[bytes, int]], p: PreprocessConfig, staging: str
                       ) -> dict[str, list[str]]:
    """{side: {token: count}} -> SIDE.vocab + SIDE.vocab.counts.tsv; returns {side: tokens} for the encoders.

    Specials first, then tokens by descending count, ties by token; min_frequency and
    max_vocab_size applied.
    """
    from components.core.vocabulary import Vocabulary
    from components.text.spans import reserved_tokens

    tokens = {}
    for side in SIDES:
        decoded = {(t.decode("utf-8") if isinstance(t, bytes) else t): n for t, n in counts.get(side, {}).items()}
        vocabulary = Vocabulary.from_counts(decoded, p.min_frequency, p.max_vocab_size, reserved_tokens(p, side))
        vocabulary.save(f"{staging}/{side}.vocab")
        tokens[side] = list(vocabulary.tokens)
    return tokens


def _tokenizer_names(p: PreprocessConfig) -> str:
    source, target = p.tokenizer_of("source"), p.tokenizer_of("target")
    return source if source == target else f"source {source}, target {target}"


def _check_train_words(totals: Mapping[str, int], p: PreprocessConfig) -> None:
    """A learned side needs train words to learn its pieces from: with none, one clear line (a
    ConfigError naming preprocess.eval_fraction when the eval split took them) instead of the
    learner's traceback. `totals`: {side: train words counted}."""
    words = {side: int(totals.get(side, 0)) for side in SIDES}
    empty = [side for side in p.learned_sides if not sum(words[name] for name in (SIDES if p.shared_pieces else (side,)))]
    if not empty:
        return
    what = (f"no train words to learn the {_tokenizer_names(p)} pieces of the {' and '.join(empty)} side"
            f"{'s' if len(empty) > 1 else ''} from (train words: source {words['source']}, target {words['target']})")
    if p.eval_fraction > 0:
        raise ConfigError(f"preprocess.eval_fraction={p.eval_fraction:g} leaves {what}; lower preprocess.eval_fraction")
    raise InputError(f"{what}: every record is rejected or empty")


# --------------------------------------------------------------------------------------------
# Stats and checks
# --------------------------------------------------------------------------------------------

def _percentiles(histogram: Mapping[str, int]) -> dict[str, Any]:
    """Nearest-rank percentiles, max and mean of a {length: count} histogram."""
    items = sorted((int(k), v) for k, v in histogram.items())
    total = sum(v for _, v in items)
    if not total:
        return {**{f"p{q}": None for q in PERCENTILES}, "max": None, "mean": None}
    result: dict[str, Any] = {}
    for q in PERCENTILES:
        rank, seen = max(1, -(-q * total // 100)), 0
        for value, count in items:
            seen += count
            if seen >= rank:
                result[f"p{q}"] = value
                break
    result["max"] = items[-1][0]
    result["mean"] = round(sum(k * v for k, v in items) / total, 3)
    return result


def build_stats(metrics: Mapping[str, Any], p: PreprocessConfig, elapsed: float) -> dict[str, Any]:
    read = int(metrics.get("records_read", 0))
    written = {split: int(metrics.get("records_written", {}).get(split, 0)) for split in SPLITS}
    rejected = {reason: int(metrics.get("rejected", {}).get(reason, 0)) for reason in schemas.reject_reasons()}
    unknown = set(metrics.get("rejected", {})) - set(rejected)
    assert not unknown, f"reject reasons missing from schemas/record.schema.json: {unknown}"
    eval_tokens, eval_unk = metrics.get("eval_tokens", {}), metrics.get("eval_unk", {})
    learner_words, train_words = metrics.get("learner_words", {}), metrics.get("train_words_distinct", {})
    stage_seconds = metrics.get("stage_seconds", {})
    return {
        "records_read": read,
        "records_written": written,
        "rejected": rejected,
        "rejected_total": sum(rejected.values()),
        "blank_lines": int(metrics.get("blank_lines", 0)),
        "lengths": {side: _percentiles(metrics.get(f"{side}_lengths", {})) for side in SIDES},
        "truncated": {side: int(metrics.get("truncated", {}).get(side, 0)) for side in SIDES},
        "vocabulary_size": {side: int(metrics.get("vocabulary_size", {}).get(side, 0)) for side in SIDES},
        "eval_unk_rate": {side: (round(eval_unk.get(side, 0) / eval_tokens[side], 6)
                                 if eval_tokens.get(side) else None) for side in SIDES},
        "shards": {split: int(metrics.get("shards", {}).get(split, 0)) for split in SPLITS},
        "tokenizer": _tokenizer_names(p),
        "length_policy": p.length_policy,
        # The learned sides' sample (null for the other sides, and for reused vocabularies): the
        # distinct words the learner saw, at most preprocess.learn_max_words, of how many in train.
        "learner_words": {side: learner_words.get(side) for side in SIDES},
        "train_words_distinct": {side: train_words.get(side) for side in SIDES},
        # Timings (the only keys that differ between two runs of the same job): each stage's
        # seconds summed over the workers, the Beam job's wall time, and run_preprocess's.
        "stage_seconds": {stage: round(float(stage_seconds.get(stage, 0.0)), 3) for stage in STAGES},
        "beam_job_seconds": round(float(metrics.get("beam_job_seconds", 0.0)), 3),
        "elapsed_seconds": round(elapsed, 3),
        "pairs_per_second": round(read / elapsed, 1) if elapsed > 0 else None,
    }


def check_counts(stats: Mapping[str, Any], p: PreprocessConfig, out: str) -> None:
    """Conservation (read = written + rejected) and the rejected-fraction limit."""
    read, written = stats["records_read"], sum(stats["records_written"].values())
    rejected = stats["rejected_total"]
    if read != written + rejected:
        raise RuntimeError(f"record counts do not add up: read {read} != written {written} + rejected {rejected}")
    quarantine = f"{out}.failed/{QUARANTINE_DIR}/{QUARANTINE_PREFIX}-*.jsonl"
    if read == 0:
        raise InputError("the input holds no records (only blank lines or empty files)")
    # A pair kept out because the test set holds its source is no fault of the corpus.
    fraction = (rejected - stats["rejected"].get(transforms.IN_TEST_SET, 0)) / read
    if fraction > p.max_rejected_fraction:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(stats["rejected"].items(), key=lambda x: -x[1])
                            if n and r != transforms.IN_TEST_SET)
        raise InputError(
            f"{rejected} of {read} records rejected ({fraction:.1%} > preprocess.max_rejected_fraction="
            f"{p.max_rejected_fraction:g}): {reasons}; see the quarantine in {quarantine}")
    if written == 0:
        raise InputError(f"no examples were written: all {read} records were rejected; see the quarantine in {quarantine}")
    if stats["records_written"]["train"] == 0:
        # Records were written, all to eval: the split setting is what to change (a usage error).
        raise ConfigError(f"preprocess.eval_fraction={p.eval_fraction:g} leaves no training examples "
                          f"({stats['records_written']['eval']} eval, 0 train); lower preprocess.eval_fraction")


def format_stage_seconds(stats: Mapping[str, Any]) -> str:
    """`read 1.2s, span_masking 0.3s, ...`: where a preprocess run's time went (stats.json)."""
    return ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in stats.get("stage_seconds", {}).items())


def _test_lines(stats: Mapping[str, Any]) -> list[str]:
    """The fixed test set's line of the summary (none without --test)."""
    if not stats.get("test_data"):
        return []
    overlap = stats["rejected"].get(transforms.IN_TEST_SET, 0)
    return [f"  test set     {stats['test_data']}: {stats['records_written']['test']} pairs written to the test "
            f"split; {overlap} corpus pair{'' if overlap == 1 else 's'} with a test source kept out of training "
            f"and eval (quarantine reason {transforms.IN_TEST_SET})"]


def log_summary(stats: Mapping[str, Any], data: str, out: str) -> None:
    """One screen: what went in, what came out, and where."""
    rejected = ", ".join(f"{r}={n}" for r, n in stats["rejected"].items() if n) or "none"
    lengths = "; ".join(f"{side} p50={v['p50']} p95={v['p95']} max={v['max']}"
                        for side, v in stats["lengths"].items())
    unk = ", ".join(f"{side}={'n/a' if r is None else f'{r:.2%}'}" for side, r in stats["eval_unk_rate"].items())
    lines = [
        f"preprocess finished: {data} -> {out}",
        f"  records      read {stats['records_read']}, written train {stats['records_written']['train']} "
        f"+ eval {stats['records_written']['eval']}, rejected {stats['rejected_total']} ({rejected})",
        f"  blank lines  {stats['blank_lines']} skipped",
        *_test_lines(stats),
        f"  languages    {Languages.from_dict(stats.get('languages')).describe()}",
        f"  tokenizer    {stats['tokenizer']}; vocabulary source {stats['vocabulary_size']['source']}, "
        f"target {stats['vocabulary_size']['target']}",
        f"  lengths      {lengths}",
        f"  truncated    source {stats['truncated']['source']}, target {stats['truncated']['target']}",
        f"  eval <unk>   {unk}",
        f"  shards       train {stats['shards']['train']}, eval {stats['shards']['eval']}",
        f"  quarantine   {out}/{QUARANTINE_DIR}/",
        f"  stages       {format_stage_seconds(stats)} (summed over workers; "
        f"Beam job {stats['beam_job_seconds']:.1f}s)",
        f"  elapsed      {stats['elapsed_seconds']:.1f}s ({stats['pairs_per_second']} pairs/s)",
    ]
    if any(n is not None for n in stats["learner_words"].values()):
        sample = ", ".join(f"{side} {n} of {stats['train_words_distinct'][side]}"
                           for side, n in stats["learner_words"].items() if n is not None)
        lines.insert(4, f"  learned from {sample} distinct train words")
    logger.info("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def _fill_empty_shards(staging: str, metrics: Mapping[str, Any], num_shards: int) -> dict[str, int]:
    """With preprocess.num_shards, a split that has examples gets exactly that many files."""
    import gzip

    counts = {}
    for split in SPLITS:
        if not metrics.get("records_written", {}).get(split):
            continue
        for shard in range(num_shards):
            path = f"{staging}/{split}-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"
            if not fs.exists(path):
                fs.write_bytes(path, gzip.compress(b""))
        counts[split] = num_shards
    return counts


def _read_json(path: str) -> dict[str, Any]:
    if not fs.exists(path):
        raise RuntimeError(f"the Beam job finished without writing {path}")
    return json.loads(fs.read_text(path))


def _write_json(path: str, value: Any) -> None:
    fs.write_text(path, json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def _move(source: str, destination: str, replace: bool) -> None:
    """Publish a finished folder under its final name; an old one is removed only after."""
    old: Optional[str] = None
    if fs.exists(destination):
        if not replace:
            raise OutputExistsError(f"output folder {destination} already exists")
        old = f"{destination}.old-{uuid.uuid4().hex[:8]}"
        fs.move_tree(destination, old)
    fs.move_tree(source, destination)
    if old:
        fs.remove_tree(old)
