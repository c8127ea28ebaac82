"""`seq2seq run`: execute the pipeline definition with caching, a run manifest, a lock and a verdict.

    ARTIFACTS/runs/<run_id>/<component>/   each component's output
    ARTIFACTS/runs/<run_id>/run.json       the manifest, rewritten (atomically) after every step
    ARTIFACTS/runs/<run_id>/run.log        every log line of the run (INFO and up; DEBUG with --verbose)
    ARTIFACTS/serving/<name>/<version>/    blessed models, TF Serving's multi-model layout
    ARTIFACTS/serving/models.config        TF Serving's --model_config_file, one entry per name

Exit codes: 0 pushed (or already serving), 3 not blessed, 1 failed, 2 bad config/usage,
4 another run holds the lock, 130/143 interrupted by SIGINT/SIGTERM (run.json says `interrupted`;
the same command continues: finished steps are reused, training resumes from its checkpoint).
With --json the last stdout line is a JSON summary.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import secrets
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

from components.core import io
from components.core.artifacts import (
    Artifact,
    Corpus,
    ExportedModel,
    PreprocessArtifact,
    PushedModel,
    ServingModels,
    ServingRoot,
)
from components.core.component import RunContext
from components.core.config import PipelineConfig
from components.core.errors import ArtifactError, InputError, UserError
from components.core.io import digest, write_json_atomic
from components.core.languages import Languages, model_name, resolve_languages
from pipeline.console import Progress
from pipeline.fingerprint import code_digest, corpus_fingerprint, library_versions, package_versions, resolve_corpus
from pipeline.lock import LockedError, RunLock
from pipeline.pipeline import CORPUS, LATEST_SERVED, PIPELINE, SERVED_FROM_OTHER_DATA, TEST_CORPUS, ComponentSpec

logger = logging.getLogger(__name__)

EXIT_PUSHED, EXIT_FAILED, EXIT_NOT_BLESSED = 0, 1, 3
SUCCEEDED, CACHED, FAILED, RUNNING, SKIPPED = "succeeded", "cached", "failed", "running", "skipped"
INTERRUPTED = "interrupted"
MANIFEST_METRICS = ("bleu", "chrf", "exact_match", "placeholder_fidelity", "copy_rate", "eval_loss", "split",
                    "blessed", "decoder", "beam_width", "decoders")


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT outside the trainer's own handler (which saves a checkpoint first).

    The signal number travels in args[1]: Beam re-raises an exception from a DoFn as
    type(e)(args[0] + " [while running ...]", *args[1:])."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message, int(signum))

    @property
    def exit_code(self) -> int:
        return 128 + int(self.args[1])


def stop_signal(error: BaseException) -> Optional[str]:
    """The signal's name when ERROR is a stop by signal, else None: RunInterrupted, a bare
    KeyboardInterrupt (SIGINT: the default handler, or the trainer's second Ctrl-C), or an error
    with the shell's exit code 128 + signal (the trainer's TrainingInterrupted, checkpoint saved)."""
    if isinstance(error, KeyboardInterrupt):
        code = getattr(error, "exit_code", 128 + signal.SIGINT)
    elif isinstance(error, UserError) and error.exit_code > 128:
        code = error.exit_code
    else:
        return None
    try:
        return signal.Signals(code - 128).name
    except ValueError:
        return None


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise RunInterrupted wherever the run is (preprocess, export, evaluate,
    push), so that it ends as `interrupted` with its summary and its lock released. The trainer
    installs its own handlers while it trains and puts these back when it is done."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise RunInterrupted(signal.Signals(signum).name, signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def new_run_id() -> str:
    """UTC start time to the millisecond, so run ids sort in start order, plus a random suffix."""
    now = time.time()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now % 1 * 1000):03d}Z-{secrets.token_hex(3)}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class RunState:
    """Everything one run knows; serialized as run.json."""

    run_id: str
    artifacts: str
    data: str
    config: PipelineConfig
    beam_args: list[str]
    use_cache: bool = True
    started_at: str = field(default_factory=_now)
    corpus: dict[str, str] = field(default_factory=dict)
    test: Optional[str] = None  # --test
    test_files: dict[str, str] = field(default_factory=dict)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, Artifact] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    base_fingerprints: dict[str, str] = field(default_factory=dict)  # keys without lineage-dependent inputs
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = RUNNING
    reason: Optional[str] = None
    serving_model: Optional[str] = None
    baseline: Optional[ExportedModel] = None
    samples: list[dict[str, str]] = field(default_factory=list)
    manifest_written: bool = False
    log: Optional[str] = None  # RUN_DIR/run.log, once it is being written
    languages: Languages = field(default_factory=Languages)  # the corpus's pair (config or corpus name)
    model_name: Optional[str] = None  # served as ARTIFACTS/serving/<model_name>/, once resolved
    migrated: list[int] = field(default_factory=list)  # old-layout versions this run moved under model_name

    @property
    def run_dir(self) -> str:
        return f"{self.artifacts}/runs/{self.run_id}"

    @property
    def serving_models(self) -> ServingModels:
        return ServingModels(f"{self.artifacts}/serving")

    @property
    def serving_root(self) -> ServingRoot:
        """serving/<model_name>/: this run's model's versions (resolved at the start of the run)."""
        if self.model_name is None:
            raise ArtifactError("the run's model name is not resolved yet")
        return self.serving_models.model(self.model_name)

    @property
    def corpus_artifact(self) -> Corpus:
        """The corpus, keyed by its files' names and bytes (the names matter: they pick the reader)."""
        return Corpus(self.data, digest(sorted((os.path.basename(p), h) for p, h in self.corpus.items()),
                                        self.languages.to_dict()))

    @property
    def test_artifact(self) -> Optional[Corpus]:
        """The fixed test set (--test), keyed as the corpus is; None without one."""
        if not self.test:
            return None
        return Corpus(self.test, digest(sorted((os.path.basename(p), h) for p, h in self.test_files.items())))

    @property
    def context(self) -> RunContext:
        return RunContext(self.run_id, tuple(self.beam_args), self.serving_root, dict(self.base_fingerprints),
                          serving_models=self.serving_models, model_name=self.model_name)

    @property
    def cached(self) -> list[str]:
        return [name for name, c in self.components.items() if c.get("status") == CACHED]

    def manifest(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "reason": self.reason,
            "started_at": self.started_at, "ended_at": None if self.status == RUNNING else _now(),
            "data": self.data, "test": self.test, "artifacts": self.artifacts, "beam_args": self.beam_args,
            "config": self.config.to_dict(), "inputs": {"corpus": self.corpus, "test": self.test_files or None},
            "components": self.components, "metrics": self.metrics,
            "serving_model": self.serving_model, "baseline_model": self.baseline.uri if self.baseline else None,
            "model_name": self.model_name, "languages": self.languages.to_dict(),
            "log": self.log, "versions": package_versions(),
        }

    def save(self) -> None:
        write_json_atomic(f"{self.run_dir}/run.json", io.without_non_finite(self.manifest()))
        self.manifest_written = True


# ---------------------------------------------------------------- cache


def _earlier_runs(artifacts: str, current: str) -> list[dict[str, Any]]:
    """Manifests of earlier runs, newest first."""
    manifests = []
    for path in sorted(io.glob(f"{artifacts}/runs/*/run.json"), reverse=True):
        if f"/runs/{current}/" in path:
            continue
        try:
            manifests.append(io.read_json_object(path))
        except (ValueError, OSError):
            logger.warning("ignoring unreadable manifest %s", path)
    return manifests


def find_cached(artifacts: str, current: str, name: str, fingerprint: str) -> Optional[dict[str, Any]]:
    for manifest in _earlier_runs(artifacts, current):
        entry = manifest.get("components", {}).get(name, {})
        if entry.get("fingerprint") == fingerprint and entry.get("status") in (SUCCEEDED, CACHED) \
                and io.exists(entry.get("output", "")):
            return {**entry, "run_id": entry.get("cached_from") or manifest["run_id"]}
    return None


def find_interrupted(artifacts: str, current: str, name: str, fingerprint: str) -> Optional[str]:
    """The output folder of an earlier, unfinished attempt at the same work (to resume it)."""
    for manifest in _earlier_runs(artifacts, current):
        entry = manifest.get("components", {}).get(name, {})
        if entry.get("fingerprint") == fingerprint and entry.get("status") in (RUNNING, FAILED, INTERRUPTED) \
                and io.isdir(entry.get("output", "")):
            return entry["output"]
    return None


# ---------------------------------------------------------------- wiring and caching


def resolve_latest_served(serving_root: ServingRoot) -> Optional[ExportedModel]:
    """The served baseline, as TFX's LatestBlessedModelResolver finds it: the newest pushed version,
    fingerprinted by the export that produced it (its own path when its push record has none)."""
    latest = serving_root.latest()
    if latest is None:
        return None
    return latest.with_fingerprint(latest.export_fingerprint() or latest.uri)


def resolve_served_from_other_data(serving_root: ServingRoot, component: str, base_key: str
                                   ) -> Optional[ExportedModel]:
    """The newest served model whose lineage does not show COMPONENT run with BASE_KEY (the key of
    its other inputs, config and code): a model trained on other data, or by another recipe."""
    for number in reversed(serving_root.versions()):
        version = serving_root.version(number)
        if version.push_record().get("lineage", {}).get(component) != base_key:
            return version.with_fingerprint(version.export_fingerprint() or version.uri)
    return None


def resolve_inputs(state: RunState, spec: ComponentSpec, base_key: Optional[str] = None) -> dict[str, Artifact]:
    """The declared inputs of SPEC, by name: upstream outputs, the corpus and the served baseline.

    Without BASE_KEY the lineage-dependent input (SERVED_FROM_OTHER_DATA) is left out: its
    resolution needs the key of all the others first."""
    resolved: dict[str, Artifact] = {}
    for name, input_spec in spec.inputs.items():
        if input_spec.when is not None and not input_spec.when(state.config):
            continue
        if input_spec.source == CORPUS:
            artifact: Optional[Artifact] = state.corpus_artifact
        elif input_spec.source == TEST_CORPUS:
            artifact = state.test_artifact
        elif input_spec.source == LATEST_SERVED:
            artifact = state.baseline
        elif input_spec.source == SERVED_FROM_OTHER_DATA:
            if base_key is None:
                continue
            artifact = resolve_served_from_other_data(state.serving_root, spec.name, base_key)
        else:
            artifact = state.outputs[input_spec.source]
        if artifact is None:
            if not input_spec.optional:
                raise ArtifactError(f"{spec.name}: its input {name!r} ({input_spec.source}) is missing")
            continue
        if not isinstance(artifact, input_spec.type):
            raise ArtifactError(f"{spec.name}: input {name!r} is a {type(artifact).__name__}, "
                                f"not the declared {input_spec.type.__name__}")
        resolved[name] = artifact
    return resolved


def fingerprint(state: RunState, spec: ComponentSpec, inputs: Mapping[str, Artifact]) -> str:
    """The cache key: the inputs (as each declares), the config sections, the component's code and
    the versions of the libraries it runs on (docs/pipeline.md, "Caching")."""
    keys = {name: spec.inputs[name].key(artifact) for name, artifact in sorted(inputs.items())}
    keys = {name: key for name, key in keys.items() if key is not None}  # None: not part of the key
    sections = {s: dataclasses.asdict(getattr(state.config, s)) for s in spec.config_sections}
    return digest(spec.name, keys, sections, code_digest(spec.executor.__module__), library_versions())


def _run_component(state: RunState, spec: ComponentSpec, progress: "Progress") -> None:
    base_key = fingerprint(state, spec, resolve_inputs(state, spec))
    inputs = resolve_inputs(state, spec, base_key)
    key = fingerprint(state, spec, inputs)
    state.fingerprints[spec.name], state.base_fingerprints[spec.name] = key, base_key
    entry: dict[str, Any] = {"fingerprint": key, "started_at": _now(),
                             "inputs": {name: artifact.uri for name, artifact in inputs.items()}}
    state.components[spec.name] = entry
    hit = find_cached(state.artifacts, state.run_id, spec.name, key) \
        if spec.cacheable and state.use_cache else None
    if hit:
        state.outputs[spec.name] = spec.output(hit["output"], key)
        entry.update(status=CACHED, output=hit["output"], cached_from=hit["run_id"], ended_at=_now(),
                     seconds=0.0, metrics=hit.get("metrics", {}))
        logger.info("%s: reusing the output of run %s (same inputs and config)", spec.name, hit["run_id"])
        progress.done(spec.name, CACHED)
        return
    out = f"{state.run_dir}/{spec.name}"
    if spec.resumable and state.use_cache:
        out = find_interrupted(state.artifacts, state.run_id, spec.name, key) or out
        if out != f"{state.run_dir}/{spec.name}":
            logger.info("%s: resuming the interrupted attempt in %s", spec.name, out)
            entry["resumed"] = True
    entry.update(status=RUNNING, output=out)
    output = spec.output(out, key)
    state.outputs[spec.name] = output
    state.save()
    started = time.time()
    progress.start(spec.name)
    try:
        entry["metrics"] = spec.executor(inputs, output, state.config, state.context)
    except BaseException as e:
        status = INTERRUPTED if stop_signal(e) else FAILED
        entry.update(status=status, error=str(e) or type(e).__name__, ended_at=_now(),
                     seconds=round(time.time() - started, 3))
        progress.done(spec.name, status)
        raise
    entry.update(status=SUCCEEDED, ended_at=_now(), seconds=round(time.time() - started, 3))
    progress.done(spec.name, SUCCEEDED)
    state.save()


def _is_moot(state: RunState, spec: ComponentSpec) -> bool:
    """SPEC's `moot_if_served` input is the very model in service."""
    if not spec.moot_if_served or state.baseline is None:
        return False
    upstream = spec.inputs[spec.moot_if_served].source
    return state.fingerprints.get(upstream) == state.baseline.fingerprint


def _reuse_for_served(state: RunState, spec: ComponentSpec, progress: "Progress") -> None:
    """The candidate is already served: reuse the output this component made for it, else skip."""
    upstream = spec.inputs[spec.moot_if_served].source
    if spec.cacheable:
        for manifest in _earlier_runs(state.artifacts, state.run_id):
            components = manifest.get("components", {})
            entry = components.get(spec.name, {})
            if components.get(upstream, {}).get("fingerprint") == state.fingerprints[upstream] \
                    and entry.get("status") in (SUCCEEDED, CACHED) and io.exists(entry.get("output", "")):
                state.outputs[spec.name] = spec.output(entry["output"], entry.get("fingerprint"))
                state.components[spec.name] = {**entry, "status": CACHED, "seconds": 0.0,
                                               "cached_from": entry.get("cached_from") or manifest["run_id"]}
                logger.info("%s: reusing the output of run %s (its %s is the served model)", spec.name,
                            state.components[spec.name]["cached_from"], upstream)
                progress.done(spec.name, CACHED)
                return
    state.components[spec.name] = {"status": SKIPPED, "fingerprint": state.fingerprints[upstream],
                                   "reason": f"this {upstream} is already served as {state.baseline.uri}"}
    progress.done(spec.name, SKIPPED, state.components[spec.name]["reason"])


def prepare_serving(state: RunState) -> None:
    """Before any work: move an old single-model serving folder under a name, and refuse a name whose
    served model translates another language pair (it would be judged against, and replaced by, this one)."""
    models = state.serving_models
    legacy = models.legacy_versions()
    if legacy:
        name = _legacy_name(state, legacy[-1])
        state.migrated = models.migrate(name)
        config = models.write_models_config()
        logger.warning("moved the serving folder's versions %s to %s/%s/ (TF Serving's multi-model layout): "
                       "start TF Serving with --model_config_file=%s instead of --model_base_path=%s",
                       ", ".join(map(str, state.migrated)), models.uri, name, config, models.uri)
    latest = state.serving_root.latest()
    if latest is not None and latest.languages().conflicts_with(state.languages):
        served = latest.languages()
        raise ModelNameConflict(
            f"{latest.uri} translates {served.source}→{served.target}, and this run's corpus is "
            f"{state.languages.describe()}: serve it under "
            f"another name (--set pusher.model_name=NAME), or set preprocess.source_language/target_language")


class ModelNameConflict(UserError):
    exit_code = 2


def _legacy_name(state: RunState, newest: int) -> str:
    """The name for the old layout's versions: their pair's (from the newest's card, else from the data
    of the run that pushed it), else this run's name."""
    version = ExportedModel(f"{state.serving_models.uri}/{newest}")
    languages = version.languages()
    run_id = version.push_record().get("run_id")
    if not languages.known and run_id and io.exists(f"{state.artifacts}/runs/{run_id}/run.json"):
        try:
            data = io.read_json_object(f"{state.artifacts}/runs/{run_id}/run.json").get("data") or ""
        except (ArtifactError, OSError, ValueError):
            data = ""
        languages = resolve_languages(PipelineConfig().preprocess, data) if data else languages
    return model_name(None, languages) if languages.known else state.model_name


def execute(state: RunState, progress: "Progress") -> int:
    prepare_serving(state)
    state.baseline = resolve_latest_served(state.serving_root)
    for spec in PIPELINE:
        if _is_moot(state, spec):
            _reuse_for_served(state, spec, progress)
        else:
            _run_component(state, spec, progress)
        state.metrics.update({k: v for k, v in state.components[spec.name].get("metrics", {}).items()
                              if k in MANIFEST_METRICS})
    state.serving_model = _serving_model(state)
    if state.serving_model:
        state.status = "pushed"
        return EXIT_PUSHED
    state.status = "not_blessed"
    state.reason = next((entry["metrics"]["blessing_reason"] for entry in state.components.values()
                         if "blessing_reason" in entry.get("metrics", {})), None)
    return EXIT_NOT_BLESSED


def _serving_model(state: RunState) -> Optional[str]:
    """Where this run's model is served: where it was pushed, or the baseline when it already was."""
    for spec in PIPELINE:
        if spec.output is PushedModel:
            if state.components[spec.name].get("status") == SKIPPED:
                return state.baseline.uri if state.baseline else None
            return state.components[spec.name].get("metrics", {}).get("serving_model")
    return None


# ---------------------------------------------------------------- presentation


def _summary(state: RunState) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {state.run_id}: {state.status}")
    for column in ("component", "status", "seconds", "output"):
        table.add_column(column)
    for name, entry in state.components.items():
        status = entry.get("status", "")
        if entry.get("cached_from"):
            status += f" (run {entry['cached_from']})"
        table.add_row(name, status, f"{entry.get('seconds', 0.0):.1f}", entry.get("output", entry.get("reason", "")))
    console = Console(file=sys.stdout, width=160, record=False)
    with console.capture() as capture:
        console.print(table)
        metrics = {k: state.metrics.get(k) for k in ("bleu", "chrf", "exact_match", "placeholder_fidelity",
                                                     "copy_rate", "eval_loss", "split")}
        console.print("metrics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))
        if state.metrics.get("decoders"):
            console.print("decoders: " + _decoders_line(state.metrics["decoders"]))
        examples = next((a for a in state.outputs.values() if isinstance(a, PreprocessArtifact)), None)
        try:  # where the preprocessing's time went (stats.json, summed over workers); never fails the summary
            stages = examples.stats().get("stage_seconds") if examples else None
        except (UserError, OSError, ValueError):
            stages = None
        if isinstance(stages, dict) and stages:
            console.print("preprocess stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
        if state.reason:
            console.print(f"reason: {state.reason}")
        if state.manifest_written:  # not after a lock refusal, nor when the folder cannot be written
            console.print(f"manifest: {state.run_dir}/run.json")
        if state.log:
            console.print(f"log: {state.log}")
        for line in _serving_lines(state):
            console.print(line)
        for sample in state.samples:
            console.print(f"  {sample['source']}  ->  {sample['translation']}")
    return capture.get()


def _served(state: RunState) -> Optional[dict[str, int]]:
    """{name: version} of what TF Serving would serve from ARTIFACTS/serving now; None if unreadable."""
    try:
        return state.serving_models.served()
    except (UserError, OSError, ValueError):
        return None


def _serving_lines(state: RunState) -> list[str]:
    """What serves this run's model name now, and the root's other names, for the summary."""
    served = _served(state)
    if state.model_name is None or served is None:
        return [f"serving model: {state.serving_model or 'none pushed'}"]
    root = state.serving_models
    name = state.model_name
    pushed = state.components.get("push", {}).get("metrics", {}).get("serving_model")
    if name not in served:
        line = f"serving {name}: nothing yet ({root.uri}/{name}/ has no version)"
    else:
        where = f"{root.uri}/{name}/{served[name]}"
        why = ("pushed by this run" if pushed == where else "this run's model, already served"
               if state.serving_model == where else "this run's model was not pushed")
        line = f"serving {name}: version {served[name]} ({where}; {why})"
    lines = [f"serving model: {state.serving_model or 'none pushed'}", line]
    others = [f"{other} version {version}" for other, version in served.items() if other != name]
    if others:
        lines.append("also serving: " + ", ".join(others))
    if served:
        lines.append(f"TF Serving: --model_config_file={root.models_config_path}")
    return lines


def _decoders_line(decoders: dict[str, dict[str, Any]]) -> str:
    """"beam search (width 4), the blessing's: bleu=31.04 chrf=46.45; greedy search: bleu=29.39 chrf=42.78"."""
    parts = []
    for entry in sorted(decoders.values(), key=lambda e: not e.get("blessing")):
        label = f"beam search (width {entry.get('beam_width')})" if entry.get("decoder") == "beam" else "greedy search"
        if entry.get("blessing"):
            label += ", the blessing's"
        parts.append(f"{label}: bleu={_fmt(entry.get('bleu'))} chrf={_fmt(entry.get('chrf'))}")
    return "; ".join(parts)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _sample_translations(state: RunState, limit: int = 10) -> None:
    """Translate a few corpus sentences with the model now in service, as a user would."""
    if not state.serving_model:
        return
    from components.evaluator import load_references, translate_all

    examples = next(a for a in state.outputs.values() if isinstance(a, PreprocessArtifact))
    _, sources, _ = load_references(examples.uri)
    results = translate_all(state.serving_model, sources[:limit])
    state.samples = [{"source": r.source, "translation": r.translation} for r in results]


def run_pipeline(args: argparse.Namespace, config: PipelineConfig) -> int:
    """Entry point of `seq2seq run`. Whatever happens, with --json the last stdout line is the summary."""
    from components.core.threads import configure_cpu_threads

    configure_cpu_threads(config.trainer)  # before any component starts TensorFlow
    artifacts = os.path.abspath(args.artifacts) if "://" not in args.artifacts else args.artifacts.rstrip("/")
    state = RunState(new_run_id(), artifacts, args.data, config, list(args.beam_args), use_cache=not args.no_cache,
                     test=getattr(args, "test", None))
    code = EXIT_FAILED
    try:
        lock = RunLock(artifacts, state.run_id).acquire()
    except LockedError as e:  # another run owns the folder: touch nothing, not even a manifest
        logger.error("%s", e)
        state.status, state.reason, code = FAILED, str(e), e.exit_code
    except OSError as e:  # the artifacts folder cannot be written (read-only, disk full, ...)
        logger.error("cannot use the artifacts folder %s: %s", artifacts, e)
        state.status, state.reason = FAILED, f"cannot use the artifacts folder {artifacts}: {e}"
    else:
        try:
            with interrupt_on_signals(), run_log(state):
                code = _run_locked(state, args.data)
        finally:
            lock.release()
    _print_summary(state, args.json)
    # A lock refusal and a stop by signal keep their own exit codes; any other failure is 1, even after a push.
    return EXIT_FAILED if state.status == FAILED and code in (EXIT_PUSHED, EXIT_NOT_BLESSED) else code


RUN_LOG = "run.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def run_log(state: RunState) -> Iterator[None]:
    """Every log record of the run also goes to RUN_DIR/run.log: INFO and up, DEBUG too with
    --verbose (the root logger's level decides). A remote run folder gets a copy of a local file
    at the end; a log that cannot be written is a warning, never a failed run."""
    local = "://" not in state.run_dir
    path = f"{state.run_dir}/{RUN_LOG}"
    try:
        if local:
            os.makedirs(state.run_dir, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
        else:
            import tempfile

            fd, scratch = tempfile.mkstemp(prefix="seq2seq-run-", suffix=".log")
            os.close(fd)
            handler = logging.FileHandler(scratch, encoding="utf-8")
    except OSError as e:
        logger.warning("cannot write %s (%s): the run goes on without its log file", path, e)
        yield
        return
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    state.log = path
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        if not local:
            _upload_log(handler.baseFilename, path, state)


def _upload_log(scratch: str, path: str, state: RunState) -> None:
    try:
        with open(scratch, encoding="utf-8") as f:
            io.write_text_atomic(path, f.read())
    except Exception as e:  # noqa: BLE001 - the summary must still be printed
        logger.warning("could not copy the run's log to %s: %s", path, e)
        state.log = None
    finally:
        os.remove(scratch)


def _print_summary(state: RunState, as_json: bool) -> None:
    try:
        sys.stdout.write(_summary(state))
    finally:
        if as_json:
            sys.stdout.write(io.json_line(io.without_non_finite(json_summary(state))))
        sys.stdout.flush()


def _run_locked(state: RunState, data: str) -> int:
    """Run the pipeline; every failure ends up in the state (and run.json), never as an exception."""
    code = EXIT_FAILED
    try:
        tidy_earlier_runs(state.artifacts, state.run_id)
        files = resolve_corpus(data)
        if not files:
            raise InputError(f"--data {data}: no such file, or the glob matches nothing")
        state.corpus = corpus_fingerprint(files)
        state.languages = resolve_languages(state.config.preprocess, data)
        state.model_name = model_name(state.config.pusher.model_name, state.languages)
        if state.test:
            state.test_files = corpus_fingerprint(resolve_corpus(state.test))
        logger.info("run %s: %d corpus file(s), artifacts in %s", state.run_id, len(files), state.run_dir)
        logger.info("languages %s; the model is served as %s (pusher.model_name)", state.languages.describe(),
                    state.model_name)
        with Progress([spec.name for spec in PIPELINE]) as progress:
            code = execute(state, progress)
        _sample_translations(state)
    except KeyboardInterrupt as e:
        code = _interrupted(state, e)
    except UserError as e:
        if stop_signal(e):  # the trainer stopped on a signal, after saving a checkpoint
            code = _interrupted(state, e)
        else:  # its own exit code: 2 for a usage error found late (a file as the serving folder), 4 locked
            state.status, state.reason, code = FAILED, str(e), e.exit_code
            logger.error("%s", e)
    except Exception as e:  # a bug or a failing machine, not bad input: keep the traceback in the log
        state.status, state.reason = FAILED, _describe(e)
        logger.exception("run %s failed", state.run_id)
    finally:
        if state.status == RUNNING:
            state.status, state.reason = FAILED, "interrupted"
        _save_final(state)
    return code


def _interrupted(state: RunState, error: BaseException) -> int:
    """Record a stop by signal: status `interrupted`, a reason naming the signal, exit 128 + signal."""
    name = stop_signal(error) or signal.SIGINT.name
    if isinstance(error, UserError):
        reason = str(error)  # the trainer's own: the step, the checkpoint and how to resume
    else:
        where = next((n for n, c in state.components.items() if c.get("status") == INTERRUPTED), None)
        reason = f"interrupted by {name}{f' during {where}' if where else ''}; run the same command again " \
                 f"to continue (finished steps are reused)"
    if state.serving_model:
        reason += f"; {state.serving_model} was already pushed"
    state.status, state.reason = INTERRUPTED, reason
    logger.error("%s", reason)
    return 128 + int(signal.Signals[name])


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"the disk is full: {error}"
    return f"{type(error).__name__}: {error}"


def _save_final(state: RunState) -> None:
    """Write the final run.json; when even that fails, say so in the result instead of raising."""
    try:
        state.save()
    except Exception as e:  # noqa: BLE001 - the summary must still be printed
        logger.error("could not write %s/run.json: %s", state.run_dir, e)
        state.manifest_written = False  # an earlier copy may exist, but it does not say how the run ended
        if state.status != FAILED:
            state.status, state.reason = FAILED, f"could not write the run manifest: {_describe(e)}"


# Temporaries and failed outputs are removed once they are this old (the lock guarantees no live
# run of this folder is writing them).
STALE_AFTER_S = 24 * 3600
STALE_PATTERNS = ("runs/*/*.tmp-*", "runs/*/run.json.tmp*", "runs/*/*.failed", "runs/*/*/*.tmp-*")


def tidy_earlier_runs(artifacts: str, current: str, now: Optional[float] = None) -> None:
    """Mark runs whose manifest still says `running` as `interrupted` (we hold the lock, so none is),
    and remove temporaries older than STALE_AFTER_S."""
    now = time.time() if now is None else now
    for path in io.glob(f"{artifacts}/runs/*/run.json"):
        if f"/runs/{current}/" in path:
            continue
        try:
            manifest = io.read_json_object(path)
        except (ValueError, OSError):
            continue
        if manifest.get("status") == RUNNING:
            manifest.update(status=INTERRUPTED, reason="the run ended without finishing (killed, or its machine stopped)")
            io.write_json_atomic(path, io.without_non_finite(manifest))
            logger.info("marked the abandoned run %s as interrupted", manifest.get("run_id"))
    for pattern in STALE_PATTERNS:
        for path in io.glob(f"{artifacts}/{pattern}"):
            if now - io.gfile().stat(path).mtime_nsec / 1e9 > STALE_AFTER_S:
                logger.info("removing %s, left by an earlier run more than a day ago", path)
                remove = io.gfile().rmtree if io.isdir(path) else io.gfile().remove
                remove(path)


def json_summary(state: RunState) -> dict[str, Any]:
    return {
        "run_id": state.run_id, "status": state.status, "reason": state.reason,
        "serving_model": state.serving_model, "model_name": state.model_name,
        "languages": state.languages.to_dict(), "serving": _served(state),
        "metrics": {k: state.metrics.get(k) for k in ("bleu", "chrf", "exact_match", "placeholder_fidelity",
                                                      "copy_rate", "eval_loss", "decoder", "beam_width",
                                                      "decoders")},
        "cached": state.cached, "manifest": f"{state.run_dir}/run.json" if state.manifest_written else None,
        "log": state.log,
    }
