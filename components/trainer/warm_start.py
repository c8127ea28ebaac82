"""Warm start: begin training from the weights of the model in service, when they fit.

They fit when the served model was trained with the same model shape (embedding_dim, units,
attention) and byte-identical vocabularies; `preprocess.vocabulary: reuse_served` guarantees the
latter on a growing corpus. Otherwise training starts from scratch, and the log says why.
"""
from __future__ import annotations

import json
import logging
from typing import Optional

import tensorflow as tf

from components.model import Seq2Seq
from components.text.artifacts import SIDES, PreprocessArtifact
from pipeline.config import ModelConfig

logger = logging.getLogger(__name__)

SHAPE_KEYS = ("embedding_dim", "units", "attention")


def _read(path: str, mode: str = "r"):
    with tf.io.gfile.GFile(path, mode) as f:
        return f.read()


def incompatibility(served_dir: str, artifact: PreprocessArtifact, model_config: ModelConfig) -> Optional[str]:
    """Why the served model's weights cannot seed this run, or None when they can."""
    card_path = f"{served_dir}/assets/model_card.json"
    if not tf.io.gfile.exists(card_path):
        return f"{served_dir} has no model card"
    served_model = json.loads(_read(card_path)).get("model", {})
    for key in SHAPE_KEYS:
        if served_model.get(key) != getattr(model_config, key):
            return f"model.{key} differs (served {served_model.get(key)!r}, now {getattr(model_config, key)!r})"
    for side in SIDES:
        served_vocab = f"{served_dir}/assets/{side}.vocab"
        if not tf.io.gfile.exists(served_vocab):
            return f"{served_vocab} is missing"
        if _read(served_vocab, "rb") != _read(artifact.vocab_path(side), "rb"):
            return (f"the {side} vocabulary differs from the served model's "
                    "(set preprocess.vocabulary=reuse_served to keep it)")
    return None


def warm_start(model: Seq2Seq, served_dir: str, artifact: PreprocessArtifact, model_config: ModelConfig) -> bool:
    """Load the served model's weights into `model` if they fit; log the decision either way."""
    reason = incompatibility(served_dir, artifact, model_config)
    if reason:
        logger.info("warm start: training from scratch because %s", reason)
        return False
    status = tf.train.Checkpoint(model=model).read(f"{served_dir}/variables/variables")
    status.expect_partial()
    status.assert_existing_objects_matched()
    logger.info("warm start: starting from the weights of the served model %s", served_dir)
    return True
