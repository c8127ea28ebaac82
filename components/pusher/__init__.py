"""Pusher: publish a blessed SavedModel as the next numbered version, in the TF Serving layout.

    SERVING_DIR/<version>/            a complete SavedModel (model_base_path=SERVING_DIR)
    SERVING_DIR/<version>/assets.extra/push.json   where it came from and its metrics

A version is copied under a non-numeric temporary name (TF Serving ignores those), loaded and
asked to translate one sentence, and only then renamed to its number. A push killed half-way
leaves only a `.partial-*` folder, which the next push removes.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Optional

from components.core import io
from components.core.artifacts import ExportedModel, ServingRoot
from components.core.errors import ArtifactError
from components.core.tftext import register_tensorflow_text_ops

logger = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
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


def _remove_partials(serving_dir: str) -> None:
    import tensorflow as tf

    for name in tf.io.gfile.listdir(serving_dir):
        if name.startswith(PARTIAL_PREFIX):
            logger.warning("removing %s/%s, left by an interrupted push", serving_dir, name.rstrip("/"))
            tf.io.gfile.rmtree(f"{serving_dir}/{name.rstrip('/')}")


def _prune(serving_dir: str, keep: int) -> list[int]:
    import tensorflow as tf

    old = versions(serving_dir)[:-keep]
    for version in old:
        tf.io.gfile.rmtree(f"{serving_dir}/{version}")
    if old:
        logger.info("removed old versions %s (pusher.keep=%d)", old, keep)
    return old


def run_push(
    saved_model: str,
    serving_dir: str,
    blessing: dict[str, Any],
    keep: int,
    record: Optional[dict[str, Any]] = None,
    before_publish: Optional[Callable[[str], None]] = None,
) -> Optional[str]:
    """Publish `saved_model` as SERVING_DIR/<next>; None (and nothing written) when not blessed.

    `before_publish(partial_dir)` runs after the copy is verified and before the rename; it is a
    seam for fault-injection tests.
    """
    import tensorflow as tf

    if not blessing.get("blessed"):
        logger.info("not pushing: the model is not blessed (%s)", blessing.get("reason", "no reason given"))
        return None
    tf.io.gfile.makedirs(serving_dir)
    _remove_partials(serving_dir)
    version = (versions(serving_dir) or [0])[-1] + 1
    partial = f"{serving_dir}/{PARTIAL_PREFIX}{version}-{os.getpid()}"
    copy_tree(saved_model, partial)
    io.write_json_atomic(ExportedModel(partial).push_record_path,
                         {**(record or {}), "version": version, "source": saved_model,
                          "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    sample = smoke_test(partial)
    logger.info("verified the copy: %r -> %r", SMOKE_SENTENCE, sample)
    if before_publish:
        before_publish(partial)
    final = f"{serving_dir}/{version}"
    tf.io.gfile.rename(partial, final)
    logger.info("pushed version %d to %s", version, final)
    _prune(serving_dir, keep)
    return final
