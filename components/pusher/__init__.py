"""Pusher: publish a blessed SavedModel as the next numbered version, in the TF Serving layout.

    SERVING_DIR/<version>/            a complete SavedModel (model_base_path=SERVING_DIR)
    SERVING_DIR/<version>/assets.extra/push.json   where it came from and its metrics

`seq2seq run` pushes to ARTIFACTS/serving/<name>/ (TF Serving's multi-model layout) and rewrites
ARTIFACTS/serving/models.config after each push (`ServingModels`).

A push holds SERVING_DIR/.push.lock (components/core/lock.py: a dead holder's lock is taken over)
from before it tidies the folder until after it prunes, so two pushes never meet; a second one
fails with exit 4 naming the first. It publishes only the model the blessing judged: the blessing's
content fingerprint must match the model's on disk and its copy's. A version is copied under a
non-numeric temporary name (TF Serving ignores those), loaded and asked to translate one sentence,
and only then renamed to its number. A push killed half-way leaves only a `.partial-*` folder,
which the next push removes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable, ContextManager, Optional

from components.core import io
from components.core.artifacts import Evaluation, ExportedModel, ServingModels, ServingRoot
from components.core.errors import ArtifactError
from components.core.lock import FileLock
from components.core.tftext import register_tensorflow_text_ops

logger = logging.getLogger(__name__)

PARTIAL_PREFIX = ServingRoot.PARTIAL_PREFIX
SMOKE_SENTENCE = "hello"


def versions(serving_dir: str) -> list[int]:
    """Published version numbers, oldest first."""
    return ServingRoot(serving_dir).versions()


def latest_version(serving_dir: str) -> Optional[str]:
    latest = ServingRoot(serving_dir).latest()
    return latest.uri if latest else None


def copy_tree(src: str, dst: str) -> None:
    """Recursive copy through tf.io.gfile, so gs:// serving folders work too."""
    import tensorflow as tf

    for directory, _, files in tf.io.gfile.walk(src):
        relative = os.path.relpath(directory, src)
        target = dst if relative == "." else f"{dst}/{relative}"
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(f"{directory}/{name}", f"{target}/{name}", overwrite=True)


def smoke_test(model_dir: str, sentence: str = SMOKE_SENTENCE) -> str:
    """Load the copy as a server would and translate one sentence; raise if it cannot."""
    import tensorflow as tf

    register_tensorflow_text_ops()  # a tensorflow-text tokenizer needs its ops in this process
    try:
        out = tf.saved_model.load(model_dir).signatures["serving_default"](text=tf.constant([sentence]))
        return out["translation"].numpy()[0].decode("utf-8")
    except Exception as e:  # noqa: BLE001 - any failure means the copy must not be published
        raise ArtifactError(f"the copy of the model at {model_dir} does not load and translate: {e}") from e


class PushLock(FileLock):
    """SERVING_DIR/.push.lock: one push at a time per serving folder (`seq2seq push` and `run`)."""

    holder_kind = "push"
    subject = "serving folder"

    def __init__(self, serving_dir: str, model: str, run_id: Optional[str] = None):
        super().__init__(serving_dir, ServingRoot.LOCK_NAME, {"model": model, "run_id": run_id})

    def describe(self, holder: dict[str, Any]) -> str:
        run = f", run {holder['run_id']}" if holder.get("run_id") else ""
        return f"pushing {holder.get('model')}{run}"


def _push_lock(serving_dir: str, model: str, run_id: Optional[str]) -> ContextManager[Any]:
    if "://" in serving_dir:  # no hard links or flock on object stores
        logger.warning("the remote serving folder %s cannot be locked: make sure no other push to it runs "
                       "at the same time", serving_dir)
        return contextlib.nullcontext()
    return PushLock(serving_dir, model, run_id)


def check_evaluated(model_dir: str, blessing: dict[str, Any], what: str = "") -> str:
    """The model's content fingerprint; ArtifactError unless it is the one the blessing recorded
    (a model replaced after its evaluation, e.g. re-exported with --overwrite, is not pushed)."""
    expected = Evaluation.evaluated_fingerprint(blessing)
    if not expected:
        raise ArtifactError(f"the blessing of {blessing.get('candidate_model') or 'this model'} records no content "
                            f"fingerprint (it predates them): evaluate {model_dir} again, then push")
    actual = ExportedModel(model_dir).content_fingerprint()
    if actual != expected:
        raise ArtifactError(f"{what or model_dir} is not the model that was evaluated: its content fingerprint is "
                            f"{actual}, the blessing's is {expected}; evaluate it again, then push")
    return actual


class LanguagePairError(ArtifactError):
    """The serving folder serves another language pair: a usage error (name the model differently)."""

    exit_code = 2


def _check_language_pair(root: ServingRoot, model: ExportedModel) -> None:
    """A name serves one language pair: a model of another pair is not pushed over it."""
    latest = root.latest()
    if latest is None or not latest.languages().conflicts_with(model.languages()):
        return
    served, new = latest.languages(), model.languages()
    raise LanguagePairError(f"{latest.uri} translates {served.source}→{served.target} and {model.uri} "
                            f"{new.source}→{new.target}: push it to another model's folder")


def _remove_partials(serving_dir: str) -> None:
    import tensorflow as tf

    for name in tf.io.gfile.listdir(serving_dir):
        if name.startswith(PARTIAL_PREFIX):
            logger.warning("removing %s/%s, left by an interrupted push", serving_dir, name.rstrip("/"))
            tf.io.gfile.rmtree(f"{serving_dir}/{name.rstrip('/')}")


def _prune(serving_dir: str, keep: int) -> list[int]:
    """Remove the oldest versions beyond `keep` (junk is not a version, so never touched). The new
    version is already published, so a version that cannot be removed is a warning, not a failure."""
    import tensorflow as tf

    removed = []
    for version in versions(serving_dir)[:-keep]:
        try:
            tf.io.gfile.rmtree(f"{serving_dir}/{version}")
            removed.append(version)
        except (tf.errors.OpError, OSError) as e:
            logger.warning("could not remove the old version %s/%d: %s", serving_dir, version, e)
    if removed:
        logger.info("removed old versions %s (pusher.keep=%d)", removed, keep)
    return removed


def run_push(
    saved_model: str,
    serving_dir: str,
    blessing: dict[str, Any],
    keep: int,
    record: Optional[dict[str, Any]] = None,
    before_publish: Optional[Callable[[str], None]] = None,
    run_id: Optional[str] = None,
    models: Optional[ServingModels] = None,
) -> Optional[str]:
    """Publish `saved_model` as SERVING_DIR/<next>; None (and nothing written) when not blessed.
    With MODELS (the folder above SERVING_DIR), its models.config is rewritten after the push.

    The blessing must record `saved_model`'s content fingerprint (the evaluator writes it); the
    push record gets it too. `before_publish(partial_dir)` runs after the copy is verified and
    before the rename, under the lock; it is a seam for fault-injection tests.
    """
    import tensorflow as tf

    root = ServingRoot(serving_dir)
    root.check()
    if not blessing.get("blessed"):
        logger.info("not pushing: the model is not blessed (%s)", blessing.get("reason", "no reason given"))
        return None
    fingerprint = check_evaluated(saved_model, blessing)
    _check_language_pair(root, ExportedModel(saved_model))
    tf.io.gfile.makedirs(serving_dir)
    with _push_lock(serving_dir, saved_model, run_id):
        _remove_partials(serving_dir)
        version = root.next_version()
        partial = f"{serving_dir}/{PARTIAL_PREFIX}{version}-{os.getpid()}"
        try:
            _copy_verified(saved_model, partial, blessing, {**(record or {}), "content_fingerprint": fingerprint,
                                                            "version": version})
            if before_publish:
                before_publish(partial)
            final = f"{serving_dir}/{version}"
            tf.io.gfile.rename(partial, final)
        except BaseException:
            if tf.io.gfile.exists(partial):  # ours, under the lock: a failed push leaves nothing
                tf.io.gfile.rmtree(partial)
            raise
        logger.info("pushed version %d to %s", version, final)
        _prune(serving_dir, keep)
        if models is not None:
            logger.info("TF Serving's model config: %s", models.write_models_config())
    return final


def _copy_verified(saved_model: str, partial: str, blessing: dict[str, Any], record: dict[str, Any]) -> None:
    """Copy the model to `partial`, check the copy is still what was evaluated, write the push
    record and smoke-test it."""
    copy_tree(saved_model, partial)
    check_evaluated(partial, blessing, what=f"the copy of {saved_model} (changed while it was copied)")
    io.write_json_atomic(ExportedModel(partial).push_record_path,
                         {**record, "source": saved_model,
                          "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    sample = smoke_test(partial)
    logger.info("verified the copy: %r -> %r", SMOKE_SENTENCE, sample)
