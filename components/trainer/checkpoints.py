"""The training folder's layout, and restoring a trained model from it.

TRAIN_DIR/
    config.yaml     resolved config of the run
    inputs.json     {"examples": <absolute preprocess dir>, "source_vocab_size", "target_vocab_size"}
    checkpoints/    tf.train.CheckpointManager (keep trainer.keep_checkpoints); resume reads it
    best/           the checkpoint with the best eval loss (max_to_keep=1), same structure
    tensorboard/    event files: train/* and eval/* scalars
    metrics.json    final and best eval loss, token accuracy, steps, epochs, wall time, tokens/s, history

A checkpoint holds `model` (the Seq2Seq), `optimizer` (Adam slots), `step`, and the loop state.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import tensorflow as tf

from components.model import Seq2Seq
from components.text.artifacts import PreprocessArtifact
from components.text.vocabulary import VocabularyError
from pipeline.config import PipelineConfig, read_config
from pipeline.errors import ArtifactError

logger = logging.getLogger(__name__)

CONFIG = "config.yaml"
INPUTS = "inputs.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
TENSORBOARD = "tensorboard"
METRICS = "metrics.json"


def read_json(path: str) -> Optional[Any]:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ArtifactError(f"{path} is not valid JSON: {e}") from None


def vocabulary_sizes(artifact: PreprocessArtifact) -> tuple[int, int]:
    """(source, target) vocabulary sizes; a vocabulary with wrong special ids is an ArtifactError."""
    try:
        return len(artifact.vocabulary("source")), len(artifact.vocabulary("target"))
    except VocabularyError as e:
        raise ArtifactError(f"bad vocabulary in {artifact.directory}: {e}") from None


def shape_fields(config: PipelineConfig, source_vocab_size: int, target_vocab_size: int) -> dict[str, Any]:
    """What a checkpoint's variables depend on: a change in any of these cannot resume."""
    m = config.model
    return {"model.embedding_dim": m.embedding_dim, "model.units": m.units, "model.attention": m.attention,
            "source vocabulary size": source_vocab_size, "target vocabulary size": target_vocab_size}


def build_checkpoint(model: Seq2Seq, **extra: Any) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=model, **extra)


def checkpoint_to_restore(train_dir: str) -> Optional[str]:
    """The best checkpoint if there is one, else the latest."""
    return (tf.train.latest_checkpoint(f"{train_dir}/{BEST}")
            or tf.train.latest_checkpoint(f"{train_dir}/{CHECKPOINTS}"))


def restore_into(checkpoint: tf.train.Checkpoint, path: str, partial: bool) -> None:
    """Restore `path` into `checkpoint`, turning TF's shape/key errors into one ArtifactError line."""
    try:
        status = checkpoint.restore(path)
        if partial:
            status.expect_partial()
            status.assert_existing_objects_matched()
        else:
            status.assert_consumed()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        reason = str(e).strip().splitlines()[0][:300]
        raise ArtifactError(f"checkpoint {path} does not match the model built from the config "
                            f"(different model shape or vocabulary?): {reason}") from None


def restore_model(train_dir: str) -> tuple[Seq2Seq, PipelineConfig, PreprocessArtifact]:
    """(model with the best-else-latest weights, the run's config, its preprocess artifact).

    The model also carries `restored_from`, the checkpoint path it was restored from.
    """
    train_dir = train_dir.rstrip("/")
    if not tf.io.gfile.exists(f"{train_dir}/{CONFIG}"):
        raise ArtifactError(f"{train_dir} is not a training folder: {CONFIG} is missing (run `seq2seq train`)")
    config = read_config(train_dir)
    inputs = read_json(f"{train_dir}/{INPUTS}")
    if not inputs or "examples" not in inputs:
        raise ArtifactError(f"{train_dir}/{INPUTS} is missing or has no 'examples' entry")
    artifact = PreprocessArtifact.load(inputs["examples"])
    source_size, target_size = vocabulary_sizes(artifact)
    for side, size in (("source", source_size), ("target", target_size)):
        recorded = inputs.get(f"{side}_vocab_size")
        if recorded is not None and recorded != size:
            raise ArtifactError(f"{artifact.vocab_path(side)} has {size} tokens but {train_dir} was trained "
                                f"with {recorded}: the preprocess output changed after training")
    path = checkpoint_to_restore(train_dir)
    if path is None:
        raise ArtifactError(f"no checkpoint in {train_dir}/{BEST} or {train_dir}/{CHECKPOINTS}")
    model = Seq2Seq.from_config(config.model, source_size, target_size)
    restore_into(build_checkpoint(model), path, partial=True)
    model.restored_from = path
    logger.info("restored %s (%s attention) from %s", type(model).__name__, model.attention, path)
    return model, config, artifact


def absolute(path: str) -> str:
    """Absolute local paths; URLs such as gs://... unchanged."""
    return path if "://" in path else os.path.abspath(path)
