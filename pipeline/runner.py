"""`seq2seq run`: execute the pipeline definition with caching, a run manifest, a lock and a verdict.

    ARTIFACTS/runs/<run_id>/<component>/   each component's output
    ARTIFACTS/runs/<run_id>/run.json       the manifest, rewritten (atomically) after every step
    ARTIFACTS/serving/<version>/           blessed models, TF Serving layout

Exit codes: 0 pushed (or already serving), 3 not blessed, 1 failed, 2 bad config/usage,
4 another run holds the lock. With --json the last stdout line is a JSON summary.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pipeline.config import PipelineConfig
from pipeline.errors import InputError, UserError
from pipeline.io import write_json_atomic
from pipeline.fingerprint import corpus_fingerprint, digest, file_digest, resolve_corpus
from pipeline.lock import LockedError, RunLock
from pipeline.pipeline import PIPELINE, ComponentSpec

logger = logging.getLogger(__name__)

EXIT_PUSHED, EXIT_FAILED, EXIT_NOT_BLESSED = 0, 1, 3
SUCCEEDED, CACHED, FAILED, RUNNING, SKIPPED = "succeeded", "cached", "failed", "running", "skipped"


def new_run_id() -> str:
    """UTC start time to the millisecond, so run ids sort in start order, plus a random suffix."""
    now = time.time()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now % 1 * 1000):03d}Z-{secrets.token_hex(3)}"


def package_versions() -> dict[str, str]:
    from importlib import metadata

    names = ("seq2seq-pipeline", "tensorflow", "tensorflow-text", "apache-beam", "keras", "pyarrow", "sacrebleu")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_json(path: str) -> dict[str, Any]:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


@dataclass
class RunState:
    """Everything one run knows; serialized as run.json."""

    run_id: str
    artifacts: str
    data: str
    config: PipelineConfig
    beam_args: list[str]
    export_overrides: list[str]
    use_cache: bool = True
    started_at: str = field(default_factory=_now)
    corpus: dict[str, str] = field(default_factory=dict)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = RUNNING
    reason: Optional[str] = None
    serving_model: Optional[str] = None
    baseline_model: Optional[str] = None
    samples: list[dict[str, str]] = field(default_factory=list)

    @property
    def run_dir(self) -> str:
        return f"{self.artifacts}/runs/{self.run_id}"

    @property
    def serving_dir(self) -> str:
        return f"{self.artifacts}/serving"

    @property
    def cached(self) -> list[str]:
        return [name for name, c in self.components.items() if c.get("status") == CACHED]

    def manifest(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "reason": self.reason,
            "started_at": self.started_at, "ended_at": None if self.status == RUNNING else _now(),
            "data": self.data, "artifacts": self.artifacts, "beam_args": self.beam_args,
            "config": self.config.to_dict(), "inputs": {"corpus": self.corpus},
            "components": self.components, "metrics": self.metrics,
            "serving_model": self.serving_model, "baseline_model": self.baseline_model,
            "versions": package_versions(),
        }

    def save(self) -> None:
        write_json_atomic(f"{self.run_dir}/run.json", self.manifest())


# ---------------------------------------------------------------- cache


def _earlier_runs(artifacts: str, current: str) -> list[dict[str, Any]]:
    """Manifests of earlier runs, newest first."""
    import tensorflow as tf

    manifests = []
    for path in sorted(tf.io.gfile.glob(f"{artifacts}/runs/*/run.json"), reverse=True):
        if f"/runs/{current}/" in path:
            continue
        try:
            manifests.append(_read_json(path))
        except (ValueError, OSError):
            logger.warning("ignoring unreadable manifest %s", path)
    return manifests


def find_cached(artifacts: str, current: str, name: str, fingerprint: str) -> Optional[dict[str, Any]]:
    import tensorflow as tf

    for manifest in _earlier_runs(artifacts, current):
        entry = manifest.get("components", {}).get(name, {})
        if entry.get("fingerprint") == fingerprint and entry.get("status") in (SUCCEEDED, CACHED) \
                and tf.io.gfile.exists(entry.get("output", "")):
            return {**entry, "run_id": entry.get("cached_from") or manifest["run_id"]}
    return None


def find_interrupted(artifacts: str, current: str, name: str, fingerprint: str) -> Optional[str]:
    """The output folder of an earlier, unfinished attempt at the same work (to resume it)."""
    import tensorflow as tf

    for manifest in _earlier_runs(artifacts, current):
        entry = manifest.get("components", {}).get(name, {})
        if entry.get("fingerprint") == fingerprint and entry.get("status") in (RUNNING, FAILED) \
                and tf.io.gfile.isdir(entry.get("output", "")):
            return entry["output"]
    return None


# ---------------------------------------------------------------- component executors


def _preprocess(state: RunState, out: str) -> dict[str, Any]:
    from components.preprocess import run_preprocess

    stats = run_preprocess(state.data, out, state.config, beam_args=state.beam_args, overwrite=True,
                           served_vocabularies=_served_vocabularies(state))
    return {"records_read": stats.get("records_read"), "records_written": stats.get("records_written"),
            "rejected": stats.get("rejected")}


def _served_vocabularies(state: RunState) -> Optional[str]:
    """The served model's vocabulary folder, when preprocess.vocabulary=reuse_served asks for it."""
    if state.config.preprocess.vocabulary != "reuse_served" or not state.baseline_model:
        return None
    return f"{state.baseline_model}/assets"


def _train(state: RunState, out: str) -> dict[str, Any]:
    from components.trainer import run_training

    metrics = run_training(state.outputs["preprocess"], out, state.config, warm_start_from=state.baseline_model)
    return {k: metrics.get(k) for k in ("best_eval_loss", "final_eval_loss", "token_accuracy", "steps",
                                        "epochs", "train_tokens_per_second") if k in metrics}


def _export(state: RunState, out: str) -> dict[str, Any]:
    from components.exporter import run_export

    run_export(state.outputs["train"], out, overrides=state.export_overrides)
    return {}


def _evaluate(state: RunState, out: str) -> dict[str, Any]:
    from components.evaluator import run_evaluation

    run_evaluation(state.outputs["export"], state.outputs["preprocess"], out, state.config.evaluator,
                            train_dir=state.outputs["train"], baseline_model=state.baseline_model)
    return _evaluation_summary(out)


def _evaluation_summary(out: str) -> dict[str, Any]:
    evaluation = _read_json(f"{out}/evaluation.json")
    blessing = _read_json(f"{out}/blessing.json")
    return {"bleu": evaluation["bleu"], "chrf": evaluation["chrf"], "exact_match": evaluation["exact_match"],
            "eval_loss": evaluation.get("eval_loss"), "split": evaluation["split"],
            "blessed": blessing["blessed"], "blessing_reason": blessing["reason"]}


def _push(state: RunState, out: str) -> dict[str, Any]:
    from components.pusher import run_push

    blessing = _read_json(f"{state.outputs['evaluate']}/blessing.json")
    record = {"run_id": state.run_id, "export_fingerprint": state.fingerprints["export"],
              "metrics": {k: state.metrics.get(k) for k in ("bleu", "chrf", "exact_match", "eval_loss")}}
    state.serving_model = run_push(state.outputs["export"], state.serving_dir, blessing,
                                   state.config.pusher.keep, record=record)
    write_json_atomic(f"{out}/push.json", {"pushed": state.serving_model is not None,
                                             "serving_model": state.serving_model})
    return {"serving_model": state.serving_model}


EXECUTORS: dict[str, Callable[[RunState, str], dict[str, Any]]] = {
    "preprocess": _preprocess, "train": _train, "export": _export, "evaluate": _evaluate, "push": _push,
}


# ---------------------------------------------------------------- orchestration


def _fingerprint(state: RunState, spec: ComponentSpec) -> str:
    upstream = [state.fingerprints[name] for name in spec.inputs]
    sections = {s: dataclasses.asdict(getattr(state.config, s)) for s in spec.config_sections}
    extra: Any = None
    if spec.name == "preprocess":
        vocabularies = _served_vocabularies(state)
        extra = [sorted((os.path.basename(p), h) for p, h in state.corpus.items()),
                 vocabularies and {side: file_digest(f"{vocabularies}/{side}.vocab") for side in ("source", "target")}]
    if spec.name == "evaluate":
        extra = _baseline_key(state)
    return digest(spec.name, upstream, sections, extra, package_versions()["seq2seq-pipeline"])


def _baseline_key(state: RunState) -> Optional[str]:
    if not state.baseline_model:
        return None
    from components.pusher import read_push_record

    return read_push_record(state.baseline_model).get("export_fingerprint") or state.baseline_model


def _already_serving(state: RunState) -> bool:
    """The candidate is the very export that is in service: nothing to evaluate or push."""
    return bool(state.baseline_model) and _baseline_key(state) == state.fingerprints.get("export")


def _run_component(state: RunState, spec: ComponentSpec, progress: "Progress") -> None:
    fingerprint = _fingerprint(state, spec)
    state.fingerprints[spec.name] = fingerprint
    entry: dict[str, Any] = {"fingerprint": fingerprint, "started_at": _now()}
    state.components[spec.name] = entry
    hit = find_cached(state.artifacts, state.run_id, spec.name, fingerprint) \
        if spec.cacheable and state.use_cache else None
    if hit:
        state.outputs[spec.name] = hit["output"]
        entry.update(status=CACHED, output=hit["output"], cached_from=hit["run_id"], ended_at=_now(),
                     seconds=0.0, metrics=hit.get("metrics", {}))
        logger.info("%s: reusing the output of run %s (same inputs and config)", spec.name, hit["run_id"])
        progress.done(spec.name, "cached")
        return
    out = f"{state.run_dir}/{spec.name}"
    if spec.resumable and state.use_cache:
        out = find_interrupted(state.artifacts, state.run_id, spec.name, fingerprint) or out
        if out != f"{state.run_dir}/{spec.name}":
            logger.info("%s: resuming the interrupted attempt in %s", spec.name, out)
            entry["resumed"] = True
    entry.update(status=RUNNING, output=out)
    state.outputs[spec.name] = out
    state.save()
    started = time.time()
    progress.start(spec.name)
    try:
        entry["metrics"] = EXECUTORS[spec.name](state, out)
    except BaseException as e:
        entry.update(status=FAILED, error=str(e) or type(e).__name__, ended_at=_now(),
                     seconds=round(time.time() - started, 3))
        progress.done(spec.name, "failed")
        raise
    entry.update(status=SUCCEEDED, ended_at=_now(), seconds=round(time.time() - started, 3))
    progress.done(spec.name, f"{entry['seconds']:.1f}s")
    state.save()


def _skip(state: RunState, name: str, why: str, progress: "Progress") -> None:
    state.components[name] = {"status": SKIPPED, "reason": why, "fingerprint": state.fingerprints.get("export")}
    progress.done(name, "skipped")


def execute(state: RunState, progress: "Progress") -> int:
    from components.pusher import latest_version

    state.baseline_model = latest_version(state.serving_dir)
    for spec in PIPELINE:
        if spec.name in ("evaluate", "push") and _already_serving(state):
            if spec.name == "evaluate":
                _reuse_served_evaluation(state, progress)
            else:
                state.serving_model = state.baseline_model
                _skip(state, "push", f"this export is already served as {state.baseline_model}", progress)
            continue
        _run_component(state, spec, progress)
        state.metrics.update({k: v for k, v in state.components[spec.name].get("metrics", {}).items()
                              if k in ("bleu", "chrf", "exact_match", "eval_loss", "split", "blessed")})
    if state.serving_model:
        state.status = "pushed"
        return EXIT_PUSHED
    state.status = "not_blessed"
    state.reason = state.components["evaluate"].get("metrics", {}).get("blessing_reason")
    return EXIT_NOT_BLESSED


def _reuse_served_evaluation(state: RunState, progress: "Progress") -> None:
    """The served model is this candidate: reuse the evaluation that blessed it."""
    import tensorflow as tf

    for manifest in _earlier_runs(state.artifacts, state.run_id):
        entry = manifest.get("components", {}).get("evaluate", {})
        if manifest.get("components", {}).get("export", {}).get("fingerprint") == state.fingerprints["export"] \
                and entry.get("status") in (SUCCEEDED, CACHED) and tf.io.gfile.exists(entry.get("output", "")):
            state.outputs["evaluate"] = entry["output"]
            state.components["evaluate"] = {**entry, "status": CACHED, "seconds": 0.0,
                                            "cached_from": entry.get("cached_from") or manifest["run_id"]}
            state.metrics.update({k: v for k, v in entry.get("metrics", {}).items()
                                  if k in ("bleu", "chrf", "exact_match", "eval_loss", "split", "blessed")})
            progress.done("evaluate", "cached")
            return
    _skip(state, "evaluate", "this export is already served", progress)


# ---------------------------------------------------------------- presentation


class Progress:
    """A live per-component display on stderr (plain log lines when stderr is not a terminal)."""

    def __init__(self, names: list[str]):
        from rich.console import Console
        from rich.progress import Progress as RichProgress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self._progress = RichProgress(SpinnerColumn(), TextColumn("{task.description:<11}"),
                                      TextColumn("{task.fields[state]}"), TimeElapsedColumn(),
                                      console=self.console, transient=False)
        self._tasks = {n: self._progress.add_task(n, total=1, state="waiting", start=False) for n in names}

    def __enter__(self) -> "Progress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def start(self, name: str) -> None:
        self._progress.start_task(self._tasks[name])
        self._progress.update(self._tasks[name], state="running")

    def done(self, name: str, what: str) -> None:
        self._progress.update(self._tasks[name], state=what, completed=1)
        self._progress.stop_task(self._tasks[name])


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
        metrics = {k: state.metrics.get(k) for k in ("bleu", "chrf", "exact_match", "eval_loss", "split")}
        console.print("metrics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))
        if state.reason:
            console.print(f"reason: {state.reason}")
        console.print(f"manifest: {state.run_dir}/run.json")
        console.print(f"serving model: {state.serving_model or 'none pushed'}")
        for sample in state.samples:
            console.print(f"  {sample['source']}  ->  {sample['translation']}")
    return capture.get()


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _sample_translations(state: RunState, limit: int = 10) -> None:
    """Translate a few corpus sentences with the model now in service, as a user would."""
    if not state.serving_model:
        return
    from components.evaluator import load_references, translate_all

    _, sources, _ = load_references(state.outputs["preprocess"])
    results = translate_all(state.serving_model, sources[:limit])
    state.samples = [{"source": r.source, "translation": r.translation} for r in results]


def run_pipeline(args: argparse.Namespace, config: PipelineConfig) -> int:
    """Entry point of `seq2seq run`."""
    from components.trainer.threads import configure_cpu_threads

    configure_cpu_threads(config.trainer)  # before any component starts TensorFlow
    artifacts = os.path.abspath(args.artifacts) if "://" not in args.artifacts else args.artifacts.rstrip("/")
    export_overrides = [o for o in args.overrides if o.strip().startswith("export.")]
    state = RunState(new_run_id(), artifacts, args.data, config, list(args.beam_args), export_overrides,
                     use_cache=not args.no_cache)
    try:
        lock = RunLock(artifacts, state.run_id).acquire()
    except LockedError as e:  # another run owns the folder: touch nothing, not even a manifest
        logger.error("%s", e)
        if args.json:
            print(json.dumps({**json_summary(state), "status": FAILED, "reason": str(e), "manifest": None}))
        return e.exit_code
    try:
        code = _run_locked(state, args.data)
    finally:
        lock.release()
    sys.stdout.write(_summary(state))
    if args.json:
        sys.stdout.write(json.dumps(json_summary(state), ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return code if state.status != FAILED else EXIT_FAILED


def _run_locked(state: RunState, data: str) -> int:
    """Run the pipeline; every failure ends up in the state (and run.json), never as an exception."""
    code = EXIT_FAILED
    try:
        files = resolve_corpus(data)
        if not files:
            raise InputError(f"--data {data}: no such file, or the glob matches nothing")
        state.corpus = corpus_fingerprint(files)
        logger.info("run %s: %d corpus file(s), artifacts in %s", state.run_id, len(files), state.run_dir)
        with Progress([spec.name for spec in PIPELINE]) as progress:
            code = execute(state, progress)
        _sample_translations(state)
    except UserError as e:
        state.status, state.reason = FAILED, str(e)
        logger.error("%s", e)
    except Exception as e:  # a bug, not bad input: keep the traceback in the log
        state.status, state.reason = FAILED, f"{type(e).__name__}: {e}"
        logger.exception("run %s failed", state.run_id)
    finally:
        if state.status == RUNNING:
            state.status, state.reason = FAILED, "interrupted"
        state.save()
    return code


def json_summary(state: RunState) -> dict[str, Any]:
    return {
        "run_id": state.run_id, "status": state.status, "reason": state.reason,
        "serving_model": state.serving_model,
        "metrics": {k: state.metrics.get(k) for k in ("bleu", "chrf", "exact_match", "eval_loss")},
        "cached": state.cached, "manifest": f"{state.run_dir}/run.json",
    }
