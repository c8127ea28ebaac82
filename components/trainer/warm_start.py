"""Warm start: begin training from the weights of the model in service, when they fit.

They fit when the served model was trained with the same model shape (embedding_dim, units,
attention) and byte-identical vocabularies; `preprocess.vocabulary: reuse_served` guarantees the
latter on a growing corpus, and when every saved variable has the shape of this build's (a model
exported by an earlier build may store a kernel in another layout). Otherwise training starts
from scratch, and the log says why.
"""
from __future__ import annotations

import logging
from typing import Optional

import tensorflow as tf

from components.core import io
from components.core.artifacts import SIDES, ExportedModel, PreprocessArtifact
from components.core.checkpoint_files import READ_ERRORS, describe, non_finite_tensors, variable_name
from components.core.config import ModelConfig
from components.model import Seq2Seq

logger = logging.getLogger(__name__)

def incompatibility(served_dir: str, artifact: PreprocessArtifact, model_config: ModelConfig) -> Optional[str]:
    """Why the served model's weights cannot seed this run, or None when they can."""
    served = ExportedModel(served_dir)
    if not io.exists(served.card_path):
        return f"{served_dir} has no model card"
    served_model = served.card().get("model", {})
    for key, value in model_config.shape().items():
        if served_model.get(key) != value:
            return f"model.{key} differs (served {served_model.get(key)!r}, now {value!r})"
    for side in SIDES:
        served_vocab = served.vocab_path(side)
        if not io.exists(served_vocab):
            return f"{served_vocab} is missing"
        if io.read_bytes(served_vocab) != io.read_bytes(artifact.vocab_path(side)):
            return (f"the {side} vocabulary differs from the served model's "
                    "(set preprocess.vocabulary=reuse_served to keep it)")
    return None


def variable_mismatches(model: Seq2Seq, checkpoint: str) -> list[str]:
    """`model`'s variables whose saved value under `checkpoint` has another shape ("name saved [..],
    now [..]"); read from the checkpoint's index, before anything is restored."""
    saved = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
    mismatches = []
    for name, variable in vars(model).items():
        key = f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"
        if isinstance(variable, tf.Variable) and key in saved and list(saved[key]) != variable.shape.as_list():
            mismatches.append(f"{name} saved {list(saved[key])}, now {variable.shape.as_list()}")
    return mismatches


def warm_start(model: Seq2Seq, served_dir: str, artifact: PreprocessArtifact, model_config: ModelConfig) -> bool:
    """Load the served model's weights into `model` if they fit; log the decision either way."""
    reason = incompatibility(served_dir, artifact, model_config)
    prefix = ExportedModel(served_dir).variables_prefix
    if not reason:
        try:  # one pass over the served weights: readable, and finite
            broken = non_finite_tensors(prefix)
        except READ_ERRORS as e:
            reason, broken = f"its variables {prefix} cannot be read ({describe(e)})", []
        if broken:
            reason = f"its variables hold NaN or infinity ({', '.join(variable_name(k) for k in broken[:5])})"
    if not reason:
        mismatches = variable_mismatches(model, prefix)
        if mismatches:
            reason = f"its variables have other shapes (exported by an earlier build?): {'; '.join(mismatches)}"
    if reason:
        logger.info("warm start: training from scratch because %s", reason)
        return False
    status = tf.train.Checkpoint(model=model).read(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
    logger.info("warm start: starting from the weights of the served model %s", served_dir)
    return True
