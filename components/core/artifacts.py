"""Typed artifact handles: each one owns its folder's layout, so no consumer spells another
component's file names.

    Corpus           the raw input files (`--data`)
    PreprocessArtifact  vocabularies, TFRecord shards, quarantine, stats.json, config.yaml
    TrainedModel     checkpoints, best/, tensorboard/, config.yaml, inputs.json, metrics.json
    ExportedModel    a SavedModel with its model card and vocabularies in assets/
    Evaluation       evaluation.json, blessing.json, report.md
    PushedModel      push.json: whether and where the model was published
    ServingRoot      one model's numbered ExportedModel versions (TF Serving's model_base_path)
    ServingModels    ARTIFACTS/serving/: a ServingRoot per model name, and models.config

A handle is a frozen value (`uri` plus optional `fingerprint`, the cache key of the work that made
it); reading and writing go through `components.core.io`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Optional

import schemas
from components.core import io
from components.core.config import PipelineConfig, PreprocessConfig, read_config
from components.core.errors import ArtifactError
from components.core.languages import MODEL_NAME, Languages
from components.core.vocabulary import Vocabulary

SIDES = ("source", "target")
CONFIG = "config.yaml"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifact:
    """A folder (or file) one component wrote and others read."""

    TYPE: ClassVar[str] = "Artifact"
    uri: str
    fingerprint: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", self.uri.rstrip("/") or "/")

    @property
    def directory(self) -> str:
        return self.uri

    def path(self, *parts: str) -> str:
        return "/".join((self.uri, *parts))

    def exists(self) -> bool:
        return io.exists(self.uri)

    def with_fingerprint(self, fingerprint: Optional[str]):
        return dataclasses.replace(self, fingerprint=fingerprint)


@dataclass(frozen=True)
class Corpus(Artifact):
    """The raw corpus: a file, a folder or a glob."""

    TYPE: ClassVar[str] = "Corpus"


@dataclass(frozen=True)
class PreprocessArtifact(Artifact):
    """The preprocess output folder, as every downstream component sees it.

    Layout (written by `seq2seq preprocess`, published by an atomic rename):

        config.yaml                         resolved pipeline config (widths, tokenizer, ...)
        source.vocab, target.vocab          one token per line, id = line number, specials first
        source.vocab.counts.tsv, target...  token<TAB>count
        source.wordpiece.vocab, target...   learned WordPiece vocabularies (tokenizer: wordpiece or subword)
        source.sentencepiece.model, target... learned SentencePiece models (tokenizer: sentencepiece)
        train-NNNNN-of-MMMMM.tfrecord.gz    gzip TFRecords of tf.train.Example (schemas/examples.schema.json)
        eval-NNNNN-of-MMMMM.tfrecord.gz     (absent when no pair is in eval, e.g. eval_fraction 0)
        test-NNNNN-of-MMMMM.tfrecord.gz     the fixed test set (--test), never trained on (absent without one)
        quarantine/rejected-*.jsonl         rejected records: file, line, reason, raw text
        stats.json                          counts, length percentiles, vocabulary sizes, timing

    docs/preprocess.md describes each file and the stats keys.
    """

    TYPE: ClassVar[str] = "Examples"
    STATS: ClassVar[str] = "stats.json"
    config: Optional[PipelineConfig] = None

    @classmethod
    def load(cls, directory: str) -> "PreprocessArtifact":
        directory = directory.rstrip("/")
        if not io.isdir(directory):
            raise ArtifactError(f"preprocess output {directory} does not exist (run `seq2seq preprocess` first)")
        if not io.exists(f"{directory}/{CONFIG}"):
            raise ArtifactError(f"{directory} is not a complete preprocess output: {CONFIG} is missing")
        return cls(directory, config=read_config(directory))

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.config.preprocess

    def vocab_path(self, side: str) -> str:
        return self.path(f"{side}.vocab")

    def wordpiece_vocab_path(self, side: str) -> Optional[str]:
        """The side's learned WordPiece vocabulary (tokenizer wordpiece or subword), else None."""
        if side not in self.preprocess.wordpiece_sides:
            return None
        return self.path(f"{side}.wordpiece.vocab")

    def sentencepiece_model_path(self, side: str) -> Optional[str]:
        """The side's learned SentencePiece model (tokenizer sentencepiece), else None."""
        if side not in self.preprocess.sentencepiece_sides:
            return None
        return self.path(f"{side}.sentencepiece.model")

    def learned_tokenizer_path(self, side: str) -> Optional[str]:
        """The file the side's learned tokenizer reads (either of the above), None for the others."""
        return self.wordpiece_vocab_path(side) or self.sentencepiece_model_path(side)

    def vocabulary(self, side: str) -> Vocabulary:
        return Vocabulary.load(self.vocab_path(side))

    def split_pattern(self, split: str) -> str:
        return self.path(f"{split}-*-of-*.tfrecord.gz")

    def split_files(self, split: str) -> list[str]:
        return io.glob(self.split_pattern(split))

    def feature_spec(self) -> dict[str, Any]:
        return schemas.feature_spec(self.preprocess.max_source_length, self.preprocess.max_target_length)

    def stats(self) -> dict[str, Any]:
        return io.read_json_object(self.path(self.STATS))


@dataclass(frozen=True)
class TrainedModel(Artifact):
    """The training folder.

        config.yaml     resolved config of the run
        inputs.json     {"examples": <absolute preprocess dir>, "source_vocab_size", "target_vocab_size"}
        checkpoints/    tf.train.CheckpointManager (keep trainer.keep_checkpoints); resume reads it
        best/           the checkpoint with the best eval loss (max_to_keep=1), same structure
        tensorboard/    event files: train/* and eval/* scalars
        metrics.json    final and best eval loss, token accuracy, steps, epochs, wall time, tokens/s, history
    """

    TYPE: ClassVar[str] = "Model"
    CONFIG: ClassVar[str] = CONFIG
    INPUTS: ClassVar[str] = "inputs.json"
    CHECKPOINTS: ClassVar[str] = "checkpoints"
    BEST: ClassVar[str] = "best"
    TENSORBOARD: ClassVar[str] = "tensorboard"
    METRICS: ClassVar[str] = "metrics.json"

    @property
    def config_path(self) -> str:
        return self.path(self.CONFIG)

    @property
    def inputs_path(self) -> str:
        return self.path(self.INPUTS)

    @property
    def metrics_path(self) -> str:
        return self.path(self.METRICS)

    @property
    def checkpoints_dir(self) -> str:
        return self.path(self.CHECKPOINTS)

    @property
    def best_dir(self) -> str:
        return self.path(self.BEST)

    @property
    def tensorboard_dir(self) -> str:
        return self.path(self.TENSORBOARD)

    def config(self) -> PipelineConfig:
        if not io.exists(self.config_path):
            raise ArtifactError(f"{self.uri} is not a training folder: {CONFIG} is missing (run `seq2seq train`)")
        return read_config(self.uri)

    def inputs(self) -> Optional[dict[str, Any]]:
        return io.read_json_object(self.inputs_path) if io.exists(self.inputs_path) else None

    def metrics(self) -> dict[str, Any]:
        """metrics.json (with its per-epoch history), or {} before the first epoch ends."""
        return io.read_json_object(self.metrics_path) if io.exists(self.metrics_path) else {}

    def scalar_metrics(self) -> Optional[dict[str, Any]]:
        """The scalar entries of metrics.json (the per-epoch history stays there), or None."""
        if not io.exists(self.metrics_path):
            return None
        return {k: v for k, v in self.metrics().items() if not isinstance(v, (list, dict))}


@dataclass(frozen=True)
class ExportedModel(Artifact):
    """A SavedModel written by `seq2seq export`: assets/ holds the card, README and vocabularies."""

    TYPE: ClassVar[str] = "ExportedModel"
    CARD: ClassVar[str] = "model_card.json"
    README: ClassVar[str] = "README.md"
    PUSH_RECORD: ClassVar[str] = "assets.extra/push.json"
    GRAPH: ClassVar[str] = "saved_model.pb"
    CONTENT_FOLDERS: ClassVar[tuple[str, ...]] = ("variables", "assets")

    @property
    def assets_dir(self) -> str:
        return self.path("assets")

    @property
    def card_path(self) -> str:
        return self.path("assets", self.CARD)

    @property
    def variables_prefix(self) -> str:
        """The checkpoint prefix of the SavedModel's variables (tf.train.Checkpoint readable)."""
        return self.path("variables", "variables")

    @property
    def push_record_path(self) -> str:
        return self.path(self.PUSH_RECORD)

    def vocab_path(self, side: str) -> str:
        return self.path("assets", f"{side}.vocab")

    def card(self) -> dict[str, Any]:
        if not io.exists(self.card_path):
            raise ArtifactError(f"{self.uri} has no assets/{self.CARD}; was it written by `seq2seq export`?")
        return io.read_json_object(self.card_path)

    def push_record(self) -> dict[str, Any]:
        """assets.extra/push.json of a pushed version, {} for a model that was never pushed or whose
        record is unreadable (logged: the model itself is judged when it is loaded)."""
        if not io.exists(self.push_record_path):
            return {}
        try:
            return io.read_json_object(self.push_record_path)
        except ArtifactError as e:
            logger.warning("ignoring the push record of %s: %s", self.uri, e)
            return {}

    def languages(self) -> Languages:
        """The language pair its card records (unknown for a model without a readable card)."""
        try:
            return Languages.from_dict(self.card().get("training_data", {}).get("languages"))
        except (ArtifactError, OSError, ValueError, AttributeError):
            return Languages()

    def export_fingerprint(self) -> Optional[str]:
        """The cache key of the export that produced this model: its own, or its push record's."""
        return self.fingerprint or self.push_record().get("export_fingerprint")

    def is_complete(self) -> bool:
        """Whether the folder holds a whole SavedModel (saved_model.pb and variables/), as a server needs."""
        return io.exists(self.path(self.GRAPH)) and io.isdir(self.path("variables"))

    def content_files(self) -> list[str]:
        """The paths, relative to the model, of what a server loads: saved_model.pb, variables/*
        and assets/* (not assets.extra/, where the pusher writes its record), sorted."""
        if not io.exists(self.path(self.GRAPH)):
            raise ArtifactError(f"{self.uri} is not a SavedModel: {self.GRAPH} is missing")
        found = [self.GRAPH]
        for folder in self.CONTENT_FOLDERS:
            if not io.isdir(self.path(folder)):
                continue
            for directory, _, files in io.gfile().walk(self.path(folder)):
                relative = directory.rstrip("/")[len(self.uri) + 1:]
                found += [f"{relative}/{name.rstrip('/')}" for name in files]
        return sorted(found)

    def content_fingerprint(self) -> str:
        """sha256 over the names and bytes of `content_files()` (each file streamed), so two copies
        of one model agree, and any change to what would be served (or a renamed file) shows."""
        return io.digest([(name, io.file_digest(self.path(name))) for name in self.content_files()])


@dataclass(frozen=True)
class Evaluation(Artifact):
    """The evaluator's output: scores, the blessing verdict and a human-readable report."""

    TYPE: ClassVar[str] = "ModelEvaluation"
    EVALUATION: ClassVar[str] = "evaluation.json"
    BLESSING: ClassVar[str] = "blessing.json"
    REPORT: ClassVar[str] = "report.md"
    CONTENT_FINGERPRINT: ClassVar[str] = "content_fingerprint"  # the blessing's key

    @property
    def evaluation_path(self) -> str:
        return self.path(self.EVALUATION)

    @property
    def blessing_path(self) -> str:
        return self.path(self.BLESSING)

    def evaluation(self) -> dict[str, Any]:
        return io.read_json_object(self.evaluation_path)

    def blessing(self) -> dict[str, Any]:
        return io.read_json_object(self.blessing_path)

    @staticmethod
    def evaluated_fingerprint(blessing: dict[str, Any]) -> Optional[str]:
        """The content fingerprint (`ExportedModel.content_fingerprint`) of the model the blessing
        judged; None in a blessing written before fingerprints were recorded."""
        return blessing.get(Evaluation.CONTENT_FINGERPRINT)

    def write(self, evaluation: dict[str, Any], blessing: dict[str, Any]) -> None:
        io.write_json_atomic(self.evaluation_path, evaluation)
        io.write_json_atomic(self.blessing_path, blessing)

    def summary(self) -> dict[str, Any]:
        """The results the runner's manifest and `--json` summary carry (decoders: both decoders' scores)."""
        evaluation, blessing = self.evaluation(), self.blessing()
        return {"bleu": evaluation["bleu"], "chrf": evaluation["chrf"], "exact_match": evaluation["exact_match"],
                "eval_loss": evaluation.get("eval_loss"), "split": evaluation["split"],
                "placeholder_fidelity": evaluation.get("placeholder_fidelity"), "copy_rate": evaluation.get("copy_rate"),
                "blessed": blessing["blessed"], "blessing_reason": blessing["reason"],
                "decoder": evaluation.get("decoder"), "beam_width": evaluation.get("beam_width"),
                "decoders": evaluation.get("decoders")}


@dataclass(frozen=True)
class PushedModel(Artifact):
    """The pusher's output: push.json says whether the model was published, and where."""

    TYPE: ClassVar[str] = "PushedModel"
    RECORD: ClassVar[str] = "push.json"

    def write(self, serving_model: Optional[str]) -> None:
        io.write_json_atomic(self.path(self.RECORD), {"pushed": serving_model is not None,
                                                       "serving_model": serving_model})

    def serving_model(self) -> Optional[str]:
        path = self.path(self.RECORD)
        return io.read_json_object(path).get("serving_model") if io.exists(path) else None


class ServingRootError(ArtifactError):
    """The serving folder named is a file: a usage error."""

    exit_code = 2


# (serving folder, ignored names) already warned about: a run lists the folder several times.
_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def is_version_name(name: str) -> bool:
    """A canonical non-negative integer: ASCII digits, no leading zero (`007` and `²` are not)."""
    return name.isascii() and name.isdigit() and str(int(name)) == name


@dataclass(frozen=True)
class ServingRoot(Artifact):
    """SERVING_DIR/<version>/: complete SavedModels under increasing integer names (TF Serving's
    model_base_path). Temporary names are never numeric, so TF Serving ignores them.

    A version is a folder with a canonical integer name (`is_version_name`) holding a complete
    SavedModel (`ExportedModel.is_complete`). Everything else but the pusher's own `.partial-*`
    copies and `.push.lock*` files is named in one warning and ignored. This is the one place
    that parses the folder."""

    TYPE: ClassVar[str] = "ServingRoot"
    PARTIAL_PREFIX: ClassVar[str] = ".partial-"
    LOCK_NAME: ClassVar[str] = ".push.lock"  # not numeric: TF Serving ignores it

    def check(self) -> None:
        """Raise ServingRootError when a file stands where the folder should be."""
        if io.exists(self.uri) and not io.isdir(self.uri):
            raise ServingRootError(f"the serving folder {self.uri} is a file, not a folder; "
                                   "name a folder (it is created if missing)")

    def _entries(self) -> list[str]:
        self.check()
        if not io.isdir(self.uri):
            return []
        return sorted(name.rstrip("/") for name in io.gfile().listdir(self.uri))

    def _is_own(self, name: str) -> bool:
        return name.startswith((self.PARTIAL_PREFIX, self.LOCK_NAME))

    def _junk_reason(self, name: str) -> Optional[str]:
        """Why NAME is not a version, or None when it is one."""
        if not is_version_name(name):
            return "not a canonical version number"
        if not io.isdir(self.path(name)):
            return "a file"
        if not ExportedModel(self.path(name)).is_complete():
            return "not a complete SavedModel (saved_model.pb and variables/)"
        return None

    def scan(self) -> tuple[list[int], dict[str, str]]:
        """(version numbers oldest first, {ignored name: why}); the pusher's own files are left out."""
        found, junk = [], {}
        for name in self._entries():
            if self._is_own(name):
                continue
            reason = self._junk_reason(name)
            if reason is None:
                found.append(int(name))
            else:
                junk[name] = reason
        return sorted(found), junk

    def versions(self) -> list[int]:
        """Published version numbers, oldest first; anything else is warned about once and ignored."""
        found, junk = self.scan()
        key = (self.uri, tuple(sorted(junk)))
        if junk and key not in _WARNED:
            _WARNED.add(key)
            listed = "; ".join(f"{name!r} ({reason})" for name, reason in sorted(junk.items()))
            logger.warning("ignoring %d entr%s of the serving folder %s that %s not versions: %s", len(junk),
                           "y" if len(junk) == 1 else "ies", self.uri, "is" if len(junk) == 1 else "are", listed)
        return found

    def next_version(self) -> int:
        """One above every version and every other all-digit name: TF Serving takes any child whose
        name parses as an integer (files and `007` included) and serves the highest, so the new
        version is the one served, and it never collides with junk."""
        numbers = [int(name) for name in self._entries() if name.isascii() and name.isdigit()]
        return max([0, *self.versions(), *numbers]) + 1

    def version(self, number: int) -> ExportedModel:
        return ExportedModel(self.path(str(number)))

    def latest(self) -> Optional[ExportedModel]:
        found = self.versions()
        return self.version(found[-1]) if found else None


class ModelNameError(ArtifactError):
    """A served model's name that cannot be a folder of the serving root: a usage error."""

    exit_code = 2


@dataclass(frozen=True)
class ServingModels(Artifact):
    """ARTIFACTS/serving/: TF Serving's multi-model layout.

        serving/<name>/<version>/   each model name a ServingRoot (its model_base_path)
        serving/models.config       TF Serving's --model_config_file: one entry per name with a version

    Numbered folders directly under the root are the single-model layout of earlier versions of this
    pipeline (`legacy_versions`); `migrate` moves them under a name."""

    TYPE: ClassVar[str] = "ServingModels"
    MODELS_CONFIG: ClassVar[str] = "models.config"
    CONFIG_LOCK: ClassVar[str] = ".models.config.lock"

    def check(self) -> None:
        ServingRoot(self.uri).check()

    def model(self, name: str) -> ServingRoot:
        if not MODEL_NAME.fullmatch(name) or name.isdigit():
            raise ModelNameError(f"{name!r} cannot name a served model: use letters, digits, '.', '_' or '-', "
                                 "not only digits (a number is a version)")
        return ServingRoot(self.path(name))

    @property
    def models_config_path(self) -> str:
        return self.path(self.MODELS_CONFIG)

    def _folders(self) -> list[str]:
        self.check()
        if not io.isdir(self.uri):
            return []
        return sorted(name.rstrip("/") for name in io.gfile().listdir(self.uri) if io.isdir(self.path(name.rstrip("/"))))

    def names(self) -> list[str]:
        """The model names with at least one published version."""
        return [name for name in self._folders() if MODEL_NAME.fullmatch(name) and not name.isdigit()
                and ServingRoot(self.path(name)).scan()[0]]

    def legacy_versions(self) -> list[int]:
        """Complete SavedModels in numbered folders right under the root (the old single-model layout)."""
        return ServingRoot(self.uri).scan()[0]

    def served(self) -> dict[str, int]:
        """{name: the version TF Serving serves (the highest)} for every name with a version."""
        return {name: ServingRoot(self.path(name)).versions()[-1] for name in self.names()}

    def models_config(self) -> str:
        """TF Serving's ModelServerConfig (text format) for every name with a version."""
        entries = "".join(f'  config {{\n    name: "{name}"\n    base_path: "{self._base_path(name)}"\n'
                          f'    model_platform: "tensorflow"\n  }}\n' for name in self.names())
        return ("# Written by seq2seq-pipeline after every push: TF Serving's model config, one entry per model.\n"
                f"#   tensorflow_model_server --model_config_file={self.models_config_path} --rest_api_port=8501\n"
                f"model_config_list {{\n{entries}}}\n")

    def _base_path(self, name: str) -> str:
        import os

        path = self.path(name)
        return path if "://" in path else os.path.abspath(path)

    def write_models_config(self) -> str:
        """Rewrite models.config from the folder's contents, under a lock that serializes the pushes
        of different names (each holds only its own name's push lock)."""
        with _exclusive(self.path(self.CONFIG_LOCK)):
            io.write_text_atomic(self.models_config_path, self.models_config())
        return self.models_config_path

    def migrate(self, name: str) -> list[int]:
        """Move the old layout's numbered versions to <name>/ (keeping their numbers); the moved ones."""
        versions = self.legacy_versions()
        if not versions:
            return []
        target = self.model(name)
        clash = [v for v in versions if io.exists(target.path(str(v)))]
        if clash:
            raise ArtifactError(f"cannot move {self.uri}/{clash[0]} to {target.uri}/{clash[0]}: it exists; move "
                                f"the numbered folders of {self.uri} yourself")
        io.gfile().makedirs(target.uri)
        for version in versions:
            io.gfile().rename(self.path(str(version)), target.path(str(version)))
        return versions


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
    """A blocking flock on PATH for a local folder; nothing for a remote one."""
    if "://" in path:
        yield
        return
    import fcntl
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
