"""Typed, frozen pipeline configuration: YAML in, `--set section.key=value` overrides, strict keys.

Every component reads only its own section (plus the sections it declares as inputs), so the
whole configuration lives here in one place and a typo fails before any work starts.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, Optional, Sequence

import yaml

from components.core import io
from components.core.errors import UserError
from components.core.languages import LANGUAGE_TAG, MODEL_NAME
from components.core.spans import validate_patterns

logger = logging.getLogger(__name__)

class ConfigError(UserError, ValueError):
    """A configuration key or value is wrong; the message names the key."""

    exit_code = 2


TokenizerName = Literal["whitespace", "unicode_script", "wordpiece", "subword", "sentencepiece"]
# Tokenizers whose pieces the Beam job learns from the train split's word counts: a WordPiece
# vocabulary (SIDE.wordpiece.vocab) or a SentencePiece unigram model (SIDE.sentencepiece.model).
WORDPIECE_TOKENIZERS = ("wordpiece", "subword")
SENTENCEPIECE_TOKENIZERS = ("sentencepiece",)
LEARNED_TOKENIZERS = WORDPIECE_TOKENIZERS + SENTENCEPIECE_TOKENIZERS
SIDES = ("source", "target")
# The longest decode a model may be asked for (config, the SavedModel's signatures, the CLI):
# memory and time grow with it, and no sentence of this pipeline's data comes near it.
MAX_DECODE_LENGTH_LIMIT = 1024
# The widest beam (and the longest n-best list) a model may be asked for: the SavedModel's
# signatures refuse more in the graph, as the config and the CLI do. Memory grows with width x length.
MAX_BEAM_WIDTH_LIMIT = 64
# Keys renamed: (section, old) -> new. The old name is still read, with a warning naming the new one;
# both in one source (a config file, the --set list, a snapshot) is a ConfigError.
RENAMED_KEYS = {("preprocess", "wordpiece_vocab_size"): "vocab_pieces"}


@dataclass(frozen=True)
class PreprocessConfig:
    """The Beam preprocessing job: read, validate, tokenize, build vocabularies, write TFRecords."""

    format: Literal["auto", "tsv", "csv", "jsonl", "parquet", "aligned"] = "auto"
    source_field: str = "source"  # CSV column / JSONL field / Parquet column
    target_field: str = "target"
    # Aligned plain-text files are paired by stem: STEM<source_suffix> with STEM<target_suffix>.
    source_suffix: str = ".src"
    target_suffix: str = ".tgt"
    # The corpus's languages (en, ko, pt-BR): recorded in stats.json and the model card, and the
    # served model's default name (pusher.model_name). null: from the corpus's name when it holds an
    # SRC-TGT pair of ISO 639-1 codes (dev-en-ko.tsv), else unknown (components/core/languages.py).
    source_language: Optional[str] = None
    target_language: Optional[str] = None
    # whitespace | unicode_script | wordpiece | subword | sentencepiece: both sides, unless one is
    # named below (docs/preprocess.md, "Tokenizers")
    tokenizer: TokenizerName = "whitespace"
    source_tokenizer: Optional[TokenizerName] = None
    target_tokenizer: Optional[TokenizerName] = None
    lowercase: bool = False
    # Widths of the padded TFRecord features. target_input is <bos> + target + <eos>, so a target
    # keeps at most max_target_length - 2 tokens.
    max_source_length: int = 32
    max_target_length: int = 34
    length_policy: Literal["truncate", "reject"] = "truncate"
    # Under length_policy truncate, a side with more than max_length_factor times its limit in tokens
    # is rejected (source_too_long / target_too_long) instead of cut: it is not a sentence. 0 = never.
    max_length_factor: int = 4
    eval_fraction: float = 0.1
    min_frequency: int = 1
    max_vocab_size: Optional[int] = None  # counts the 4 special tokens; None = unlimited
    max_rejected_fraction: float = 0.1
    # Pieces learned per side from the train split: the WordPiece vocabulary (wordpiece, subword)
    # or the SentencePiece model (sentencepiece). Formerly wordpiece_vocab_size (still read).
    vocab_pieces: int = 8000
    # The learners see at most this many distinct train words per side (both sides together with
    # shared_pieces): the most frequent, ties by the word, so that learning costs the same however
    # large the corpus grows, and the sample is the same on any number of workers.
    learn_max_words: int = 200_000
    # How wordpiece and subword learn their vocabulary: bpe (SentencePiece's C++ BPE trainer, its
    # merges as WordPiece pieces) or tensorflow_text (tensorflow-text's pure-Python learner, whose
    # time grows with the sample: docs/preprocess.md).
    wordpiece_learner: Literal["bpe", "tensorflow_text"] = "bpe"
    # One piece inventory (WordPiece vocabulary or SentencePiece model) learned from both sides' train
    # words, so a word both sides hold (an identifier, a number, a file name) splits into the same
    # pieces on both: what copy attention needs to copy it piece by piece. Both sides must use the same
    # learned tokenizer.
    shared_pieces: bool = False
    num_shards: int = 0  # 0 = let the runner decide
    tokenize_batch_size: int = 2048
    vocabulary: Literal["rebuild", "reuse_served"] = "rebuild"
    # Placeholders and markup kept exactly (components/core/spans.py): kinds (python_format, printf,
    # braces, tags, entities) or regular expressions. Each span becomes a numbered sentinel token in
    # both sides, and the exported model restores it; empty = off (every span is ordinary text).
    protected_spans: tuple[str, ...] = ()

    def tokenizer_of(self, side: str) -> str:
        """The tokenizer of one side: its own key, else `tokenizer`."""
        return getattr(self, f"{side}_tokenizer") or self.tokenizer

    @property
    def learned_sides(self) -> tuple[str, ...]:
        """The sides whose tokenizer needs a piece vocabulary learned by the Beam job."""
        return tuple(side for side in SIDES if self.tokenizer_of(side) in LEARNED_TOKENIZERS)

    @property
    def wordpiece_sides(self) -> tuple[str, ...]:
        """The learned sides whose pieces are a WordPiece vocabulary (SIDE.wordpiece.vocab)."""
        return tuple(side for side in SIDES if self.tokenizer_of(side) in WORDPIECE_TOKENIZERS)

    @property
    def sentencepiece_sides(self) -> tuple[str, ...]:
        """The learned sides whose pieces come from a SentencePiece model (SIDE.sentencepiece.model)."""
        return tuple(side for side in SIDES if self.tokenizer_of(side) in SENTENCEPIECE_TOKENIZERS)


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = 128
    units: int = 256
    attention: Literal["bahdanau", "luong", "none"] = "bahdanau"
    # mixed_bfloat16: matmuls take bfloat16 inputs (AMX / AVX512-BF16 CPUs, GPUs, TPUs); variables,
    # activations and the loss stay float32. Checkpoints are the same either way.
    precision: Literal["float32", "mixed_bfloat16"] = "float32"
    # A second GRU reads the source backwards: the attention memory is the sum of both directions'
    # states, and a learned bridge combines their final states into the decoder's initial state.
    bidirectional: bool = False
    # Training-time noise only (the exported model never applies it): dropout on the embeddings and
    # the encoder/decoder GRU outputs, and word dropout, each real source and decoder-input token
    # replaced by <unk> with this probability.
    dropout: float = 0.0
    word_dropout: float = 0.0
    # Pointer-generator (See et al., 2017): each output token mixes generating from the target
    # vocabulary with copying a source token through the attention weights, by a learned gate, so
    # source tokens the target vocabulary lacks (identifiers, file names, numbers) can be output.
    copy_attention: bool = False

    # The keys the model's variables depend on: a checkpoint or served model whose values differ
    # cannot be restored into this model.
    SHAPE_KEYS: ClassVar[tuple[str, ...]] = ("embedding_dim", "units", "attention", "bidirectional", "copy_attention")

    def shape(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.SHAPE_KEYS}


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.001
    # cosine decays to 0 over the run: over trainer.epochs, or, with trainer.max_minutes, over
    # whichever of the two runs out first (so a time-budgeted run ends at a low learning rate).
    lr_schedule: Literal["constant", "cosine", "inverse_sqrt"] = "constant"
    warmup_steps: int = 0
    clip_norm: float = 5.0
    seed: int = 42
    shuffle_buffer: int = 10000
    bucket_by_length: bool = False
    # Cross-entropy against (1 - label_smoothing) on the label and label_smoothing spread over the
    # vocabulary; training only (the eval loss is the plain cross-entropy).
    label_smoothing: float = 0.0
    # How the kept checkpoint (best/) is chosen at each evaluation, and what early stopping watches:
    # the teacher-forced eval loss, or chrF / BLEU of greedy translations of `select_sample`
    # sentences of the eval split.
    select_by: Literal["loss", "chrf", "bleu"] = "loss"
    select_sample: int = 500
    early_stopping_patience: int = 0  # evaluations without improvement of select_by; 0 = off
    keep_checkpoints: int = 3
    checkpoint_every_steps: int = 0  # 0 = once per epoch
    log_every_steps: int = 50
    distribution: Literal["none", "mirrored", "multi_worker"] = "none"
    sub_batches: int = 0  # 0 = auto: one per CPU core (see components/core/threads.py)
    warm_start: Literal["auto", "never"] = "auto"
    # A warm start maps vocabulary rows by token; a side whose vocabulary shares less than this
    # fraction of its tokens with the served model's starts the run from scratch instead.
    warm_start_min_overlap: float = 0.5
    # A step whose loss or gradient norm is NaN/inf: stop with an error naming it, or skip the batch
    # (its update is not applied; counted in metrics.json). See docs/training.md, "Errors".
    on_nonfinite: Literal["fail", "skip_batch"] = "fail"
    # multi_worker: how long a worker waits for every worker of TF_CONFIG's cluster to start before
    # it exits 1 naming the missing ones.
    registration_timeout_s: float = 300.0
    # A time budget for training, counted across resumes: once it is spent, training stops right
    # after evaluating and checkpointing, and the run goes on to export. None = epochs alone decide.
    max_minutes: Optional[float] = None
    # Export the mean of the last N checkpoints of checkpoints/ (N <= keep_checkpoints) instead of
    # the best one alone; 0 or 1 = off.
    average_last: int = 0


@dataclass(frozen=True)
class ExportConfig:
    max_decode_length: Optional[int] = None  # None = preprocess.max_target_length
    # An output <unk> becomes the most attended source token (OpenNMT's replace_unknown_target),
    # in the graph; models without attention keep dropping it.
    replace_unknown: bool = True
    # The defaults of the SavedModel's beam_search signatures (serving_default stays greedy):
    # beams kept per sentence, GNMT length penalty alpha (0 = rank by raw log-probability),
    # hypotheses returned (at most beam_width), n-gram size never repeated in a hypothesis (0 = off).
    beam_width: int = 4
    length_penalty: float = 0.6
    n_best: int = 1
    no_repeat_ngram_size: int = 0


@dataclass(frozen=True)
class EvaluatorConfig:
    tolerance: float = 0.0
    min_bleu: float = 0.0
    num_samples: int = 20
    # Refuse to bless a model that keeps the source's protected spans exactly in fewer than this
    # percentage of the eval sentences whose reference keeps them (0 = never refuse).
    min_placeholder_fidelity: float = 0.0
    # The decoder the blessing judges with, for the candidate and the served baseline alike: the
    # SavedModel's beam_search_with_options (what a client asking for the best translations gets),
    # or serving_default (greedy). Both are scored and reported. beam_width null: the candidate's
    # exported default (export.beam_width); length penalty and n-gram blocking: the exported
    # defaults. A model exported before beam signatures existed is decoded greedily.
    decoder: Literal["greedy", "beam"] = "beam"
    beam_width: Optional[int] = None
    # The split the blessing judges: the fixed test set (`seq2seq run --test FILE`), the eval split,
    # or auto: the test split when the preprocess output has one, else eval (else train). Every
    # split there is gets scored and reported.
    bless_on: Literal["auto", "eval", "test"] = "auto"
    # A served version (a complete SavedModel in the serving folder) that cannot be loaded or run:
    # fail the evaluation naming it, or ignore it and judge the candidate without a baseline.
    unloadable_baseline: Literal["fail", "ignore"] = "fail"


@dataclass(frozen=True)
class PusherConfig:
    keep: int = 5
    # The served model's name: ARTIFACTS/serving/<name>/<version>/ and its entry in
    # ARTIFACTS/serving/models.config. null: the language pair (en-ko), else `default`.
    model_name: Optional[str] = None


@dataclass(frozen=True)
class PipelineConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    pusher: PusherConfig = field(default_factory=PusherConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check (and, for strings from --set, convert) a value against a field's type."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(key, value, args[0])
    if origin is tuple:
        return _coerce_tuple(key, value, typing.get_args(annotation)[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {annotation!r}")  # pragma: no cover


def _coerce_tuple(key: str, value: Any, item: Any) -> tuple:
    """A YAML list, or (from --set) a comma-separated string; '' and [] are the empty tuple."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {_short(value)}")
    return tuple(_coerce(f"{key}[{i}]", element, item) for i, element in enumerate(value))


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {_short(data)}")
    for name in data:
        if not isinstance(name, str):
            raise ConfigError(f"{prefix or 'config'}: key {name!r} is not a name (keys are strings)")
    if prefix:  # a snapshot (config.yaml of an older artifact); what a user wrote is renamed before
        data = _renamed(prefix, data, "config", warn=False)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s}; valid keys under "
            f"{prefix or 'the top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, {} if value is None else value, key)
        else:
            kwargs[name] = _coerce(key, value, hint)
    config = cls(**kwargs)
    _validate(config, prefix)
    return config


def _renamed(section: str, values: Mapping[str, Any], where: str, warn: bool = True) -> Mapping[str, Any]:
    """VALUES of SECTION (from WHERE: a file, --set) with each renamed key under its new name; the
    warning is for what a user wrote (`warn`), not for a snapshot an older version wrote."""
    renamed = dict(values)
    for (in_section, old), new in RENAMED_KEYS.items():
        if in_section != section or old not in renamed:
            continue
        if new in renamed:
            raise ConfigError(f"{where}: {section}.{old} and {section}.{new} are the same key "
                              f"({old} is its old name): give only {section}.{new}")
        logger.log(logging.WARNING if warn else logging.DEBUG, "%s: %s.%s is deprecated, use %s.%s",
                   where, section, old, section, new)
        renamed[new] = renamed.pop(old)
    return renamed


def _renamed_sections(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {section: (_renamed(section, values, where) if isinstance(values, Mapping) else values)
            for section, values in data.items()}


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _check_not_negative(config: Any, names: Sequence[str], bad) -> None:
    for name in names:
        if getattr(config, name) < 0:
            raise bad(name, "must not be negative")


def _validate(config: Any, prefix: str) -> None:
    """Range checks that types alone cannot express."""
    def bad(name: str, why: str) -> ConfigError:
        return ConfigError(f"{prefix}.{name}: {why}, got {getattr(config, name)!r}")

    if isinstance(config, PreprocessConfig):
        if config.max_source_length < 1:
            raise bad("max_source_length", "must be at least 1")
        if config.max_target_length < 3:
            raise bad("max_target_length", "must be at least 3 (<bos>, one token, <eos>)")
        if not 0.0 <= config.eval_fraction < 1.0:
            raise bad("eval_fraction", "must be in [0, 1)")
        if not 0.0 <= config.max_rejected_fraction <= 1.0:
            raise bad("max_rejected_fraction", "must be in [0, 1]")
        if config.min_frequency < 1:
            raise bad("min_frequency", "must be at least 1")
        if config.max_vocab_size is not None and config.max_vocab_size < 5:
            raise bad("max_vocab_size", "must be at least 5 (4 special tokens and one word)")
        if config.num_shards < 0:
            raise bad("num_shards", "must be 0 (auto) or positive")
        if config.tokenize_batch_size < 1:
            raise bad("tokenize_batch_size", "must be positive")
        if config.learn_max_words < 1:
            raise bad("learn_max_words", "must be positive")
        if config.max_length_factor < 0:
            raise bad("max_length_factor", "must be 0 (off) or positive")
        for name in ("source_field", "target_field", "source_suffix", "target_suffix"):
            if not getattr(config, name).strip():
                raise bad(name, "must not be empty")
        if config.source_field == config.target_field:
            raise bad("target_field", "must differ from preprocess.source_field")
        if config.source_suffix == config.target_suffix:
            raise bad("target_suffix", "must differ from preprocess.source_suffix")
        if config.shared_pieces and (config.tokenizer_of("source") != config.tokenizer_of("target")
                                     or config.tokenizer_of("source") not in LEARNED_TOKENIZERS):
            raise bad("shared_pieces", "needs both sides on the same learned tokenizer "
                      f"({', '.join(LEARNED_TOKENIZERS)})")
        _validate_languages(config, bad)
        try:
            validate_patterns(config.protected_spans)
        except ValueError as e:
            raise ConfigError(f"{prefix}.protected_spans: {e}") from None
    elif isinstance(config, ModelConfig):
        for name in ("embedding_dim", "units"):
            if getattr(config, name) < 1:
                raise bad(name, "must be positive")
        if config.copy_attention and config.attention == "none":
            raise bad("copy_attention", "copies through the attention weights: it needs model.attention "
                      "bahdanau or luong")
        for name in ("dropout", "word_dropout"):
            if not 0 <= getattr(config, name) < 1:
                raise bad(name, "must be in [0, 1)")
    elif isinstance(config, TrainerConfig):
        for name in ("epochs", "batch_size", "keep_checkpoints", "log_every_steps"):
            if getattr(config, name) < 1:
                raise bad(name, "must be positive")
        if config.learning_rate <= 0:
            raise bad("learning_rate", "must be positive")
        if config.sub_batches < 0:
            raise bad("sub_batches", "must be 0 (auto) or positive")
        _check_not_negative(config, ("warmup_steps", "clip_norm", "shuffle_buffer", "early_stopping_patience",
                                     "checkpoint_every_steps"), bad)
        if not 0 <= config.average_last <= config.keep_checkpoints:
            raise bad("average_last", f"must be in [0, trainer.keep_checkpoints = {config.keep_checkpoints}]")
        if not 0 <= config.label_smoothing < 1:
            raise bad("label_smoothing", "must be in [0, 1)")
        if config.select_sample < 1:
            raise bad("select_sample", "must be positive")
        if config.max_minutes is not None and config.max_minutes <= 0:
            raise bad("max_minutes", "must be positive (or null for no budget)")
        if not 0.0 <= config.warm_start_min_overlap <= 1.0:
            raise bad("warm_start_min_overlap", "must be in [0, 1]")
        if config.registration_timeout_s <= 0:
            raise bad("registration_timeout_s", "must be positive")
    elif isinstance(config, ExportConfig):
        if config.max_decode_length is not None and not 1 <= config.max_decode_length <= MAX_DECODE_LENGTH_LIMIT:
            raise bad("max_decode_length", f"must be in [1, {MAX_DECODE_LENGTH_LIMIT}]")
        if not 1 <= config.beam_width <= MAX_BEAM_WIDTH_LIMIT:
            raise bad("beam_width", f"must be in [1, {MAX_BEAM_WIDTH_LIMIT}] (MAX_BEAM_WIDTH_LIMIT)")
        if not 1 <= config.n_best <= config.beam_width:
            raise bad("n_best", f"must be in [1, export.beam_width = {config.beam_width}]")
        _check_not_negative(config, ("length_penalty", "no_repeat_ngram_size"), bad)
    elif isinstance(config, EvaluatorConfig):
        _check_not_negative(config, ("tolerance", "num_samples"), bad)
        for name in ("min_bleu", "min_placeholder_fidelity"):
            if not 0.0 <= getattr(config, name) <= 100.0:
                raise bad(name, "must be in [0, 100]")
        if config.beam_width is not None and not 1 <= config.beam_width <= MAX_BEAM_WIDTH_LIMIT:
            raise bad("beam_width", f"must be in [1, {MAX_BEAM_WIDTH_LIMIT}] (MAX_BEAM_WIDTH_LIMIT) or null")
    elif isinstance(config, PusherConfig):
        if config.keep < 1:
            raise bad("keep", "must be at least 1")
        if config.model_name is not None and (not MODEL_NAME.fullmatch(config.model_name)
                                              or config.model_name.isdigit()):
            raise bad("model_name", "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
                      "digit, and not only digits (a folder name and a TF Serving URL segment; a number is a "
                      "version)")


def _validate_languages(config: PreprocessConfig, bad) -> None:
    given = [name for name in ("source_language", "target_language") if getattr(config, name) is not None]
    for name in given:
        if not LANGUAGE_TAG.fullmatch(getattr(config, name)):
            raise bad(name, "must be a language code such as en, ko or pt-BR")
    if len(given) == 1:
        missing = "target_language" if given == ["source_language"] else "source_language"
        raise bad(given[0], f"needs preprocess.{missing} too (give both languages, or neither)")
    if len(given) == 2 and config.source_language.lower() == config.target_language.lower():
        raise bad("target_language", "must differ from preprocess.source_language")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (['section', 'key'], value parsed as a YAML scalar)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(f"--set {text!r}: key must look like section.key, e.g. trainer.epochs")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def _merge_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    sections = {f.name for f in dataclasses.fields(PipelineConfig)}
    for section, values in data.items():
        if section in sections and values is not None and not isinstance(values, Mapping):
            raise ConfigError(f"{section}: expected a mapping of keys, got {_short(values)}")
    merged = {section: (dict(values) if isinstance(values, Mapping) else values) for section, values in data.items()}
    given: dict[str, dict[str, Any]] = {}
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in sections:
            raise ConfigError(
                f"unknown config key {section}.{key}: no section {section!r} "
                f"(sections: {', '.join(sorted(sections))})"
            )
        # A YAML scalar like `1e-3` stays a string in YAML 1.1; the typed coercion handles it.
        given.setdefault(section, {})[key] = value
    for section, values in _renamed_sections(given, "--set").items():
        if merged.get(section) is None:  # absent, or `section:` with nothing under it
            merged[section] = {}
        merged[section].update(values)
    return merged


def read_yaml(path: str) -> dict[str, Any]:
    if not io.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    if io.isdir(path):
        raise ConfigError(f"config file {path} is a directory")
    try:
        data = yaml.safe_load(io.read_text(path)) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return data


def load_config(defaults: Mapping[str, Any], path: Optional[str] = None,
                overrides: Sequence[str] = ()) -> PipelineConfig:
    """DEFAULTS <- FILE (if given) <- --set overrides, strictly typed."""
    data = {section: values for section, values in defaults.items()}
    if path:
        for section, values in _renamed_sections(read_yaml(path), f"config file {path}").items():
            if isinstance(values, Mapping) and isinstance(data.get(section), Mapping):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
    data = _merge_overrides(data, overrides)
    return _build(PipelineConfig, data, "")


def apply_overrides(config: PipelineConfig, overrides: Sequence[str]) -> PipelineConfig:
    """CONFIG with `--set section.key=value` OVERRIDES applied, strictly typed."""
    return _build(PipelineConfig, _merge_overrides(config.to_dict(), overrides), "")


def config_from_dict(data: Mapping[str, Any]) -> PipelineConfig:
    """Rebuild a config snapshot (e.g. one written next to an artifact)."""
    return _build(PipelineConfig, dict(data), "")


def write_config(config: PipelineConfig, directory: str, name: str = "config.yaml") -> str:
    """Snapshot the resolved config into an output folder."""
    path = directory.rstrip("/") + "/" + name
    io.write_text_atomic(path, config.to_yaml())
    return path


def read_config(directory: str, name: str = "config.yaml") -> PipelineConfig:
    return config_from_dict(read_yaml(directory.rstrip("/") + "/" + name))
