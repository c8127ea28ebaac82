"""Restoring a trained model from its training folder (layout: `components.core.artifacts.TrainedModel`).

A checkpoint holds `model` (the Seq2Seq), `optimizer` (Adam slots), `step`, and the loop state.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import tensorflow as tf

from components.core.artifacts import PreprocessArtifact, TrainedModel
from components.core.checkpoint_files import checkpoint_prefixes, first_readable
from components.core.config import PipelineConfig
from components.core.errors import ArtifactError
from components.core.vocabulary import VocabularyError
from components.model import Seq2Seq

logger = logging.getLogger(__name__)


def vocabulary_sizes(artifact: PreprocessArtifact) -> tuple[int, int]:
    """(source, target) vocabulary sizes; a vocabulary with wrong special ids is an ArtifactError."""
    try:
        return len(artifact.vocabulary("source")), len(artifact.vocabulary("target"))
    except VocabularyError as e:
        raise ArtifactError(f"bad vocabulary in {artifact.directory}: {e}") from None


def shape_fields(config: PipelineConfig, source_vocab_size: int, target_vocab_size: int) -> dict[str, Any]:
    """What a checkpoint's variables depend on: a change in any of these cannot resume."""
    return {**{f"model.{key}": value for key, value in config.model.shape().items()},
            "source vocabulary size": source_vocab_size, "target vocabulary size": target_vocab_size}


def build_checkpoint(model: Seq2Seq, **extra: Any) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=model, **extra)


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


def readable_checkpoint(train_dir: str) -> Optional[str]:
    """The newest readable checkpoint of best/, else of checkpoints/; unreadable ones (a cut or
    garbled file) are logged with their path and passed over. None when the folder has none at all;
    an ArtifactError naming each one when none of them reads back."""
    training = TrainedModel(train_dir)
    candidates = checkpoint_prefixes(training.best_dir) + checkpoint_prefixes(training.checkpoints_dir)
    path, skipped = first_readable(candidates)
    if path is None and skipped:
        raise ArtifactError(f"no readable checkpoint in {training.best_dir} or {training.checkpoints_dir}: "
                            + "; ".join(skipped))
    return path


def restore_model(train_dir: str) -> tuple[Seq2Seq, PipelineConfig, PreprocessArtifact]:
    """(model with the weights of the newest readable best-else-latest checkpoint, the run's config,
    its preprocess artifact).

    The model also carries `restored_from`, the checkpoint path it was restored from.
    """
    training = TrainedModel(train_dir)
    train_dir = training.uri
    config = training.config()
    inputs = training.inputs()
    if not inputs or "examples" not in inputs:
        raise ArtifactError(f"{training.inputs_path} is missing or has no 'examples' entry")
    artifact = PreprocessArtifact.load(inputs["examples"])
    source_size, target_size = vocabulary_sizes(artifact)
    for side, size in (("source", source_size), ("target", target_size)):
        recorded = inputs.get(f"{side}_vocab_size")
        if recorded is not None and recorded != size:
            raise ArtifactError(f"{artifact.vocab_path(side)} has {size} tokens but {train_dir} was trained "
                                f"with {recorded}: the preprocess output changed after training")
    path = readable_checkpoint(train_dir)
    if path is None:
        raise ArtifactError(f"no checkpoint in {training.best_dir} or {training.checkpoints_dir}")
    model = Seq2Seq.from_config(config.model, source_size, target_size)
    restore_into(build_checkpoint(model), path, partial=True)
    model.restored_from = path
    averaged = latest_readable(training.checkpoints_dir, config.trainer.average_last)
    if config.trainer.average_last > 1 and len(averaged) > 1:
        average_into(model, averaged)
        model.restored_from = f"mean of {', '.join(averaged)}"
    logger.info("restored %s (%s attention) from %s", type(model).__name__, model.attention, model.restored_from)
    return model, config, artifact


def latest_readable(directory: str, count: int) -> list[str]:
    """The newest COUNT readable checkpoints of DIRECTORY, newest first (unreadable ones logged and skipped)."""
    found: list[str] = []
    candidates = checkpoint_prefixes(directory)
    while len(found) < count and candidates:
        path, skipped = first_readable(candidates)
        if path is None:
            break
        found.append(path)
        candidates = candidates[candidates.index(path) + 1:]
    return found


def average_into(model: Seq2Seq, checkpoints: list[str]) -> None:
    """Set every variable of MODEL to its mean over CHECKPOINTS (trainer.average_last)."""
    readers = [tf.train.load_checkpoint(path) for path in checkpoints]
    for name, variable in vars(model).items():
        if isinstance(variable, tf.Variable):
            key = f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"
            mean = sum(reader.get_tensor(key).astype("float64") for reader in readers) / len(readers)
            variable.assign(mean.astype(variable.dtype.as_numpy_dtype))
    logger.info("averaged the weights of %d checkpoints (trainer.average_last)", len(checkpoints))


def absolute(path: str) -> str:
    """Absolute local paths; URLs such as gs://... unchanged."""
    return path if "://" in path else os.path.abspath(path)
