"""Warm start: begin training from the weights of the model in service, when they fit.

They fit when the served model was trained with the same model shape (embedding_dim, units,
attention, ...) and every saved variable has the shape of this build's, apart from the number of
vocabulary rows. The vocabularies may differ, as learned subword vocabularies do on a grown corpus:
the rows of each vocabulary-shaped variable (`Seq2Seq.VOCABULARY_ROWS`: embeddings, output
projection and bias) are copied for the tokens both vocabularies hold, and a new token keeps the
row a fresh model gives it. A side whose new vocabulary shares less than
`trainer.warm_start_min_overlap` of its tokens with the served one starts the run from scratch.
Otherwise, or when anything else does not fit, training starts from scratch, and the log says why.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from components.core import io
from components.core.artifacts import SIDES, ExportedModel, PreprocessArtifact
from components.core.checkpoint_files import READ_ERRORS, describe, non_finite_tensors, variable_name
from components.core.config import ModelConfig
from components.core.vocabulary import Vocabulary, VocabularyError
from components.model import Seq2Seq

logger = logging.getLogger(__name__)


def _key(name: str) -> str:
    return f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"


def incompatibility(served_dir: str, artifact: PreprocessArtifact, model_config: ModelConfig) -> Optional[str]:
    """Why the served model's weights cannot seed this run at all, or None when they can."""
    served = ExportedModel(served_dir)
    if not io.exists(served.card_path):
        return f"{served_dir} has no model card"
    served_model = served.card().get("model", {})
    for key, value in model_config.shape().items():
        if served_model.get(key) != value:
            return f"model.{key} differs (served {served_model.get(key)!r}, now {value!r})"
    for side in SIDES:
        if not io.exists(served.vocab_path(side)):
            return f"{served.vocab_path(side)} is missing"
    return None


def vocabulary_mapping(served_dir: str, artifact: PreprocessArtifact) -> dict[str, np.ndarray]:
    """{side: for each id of this run's vocabulary, the served model's id of the same token, or -1}."""
    mapping = {}
    for side in SIDES:
        served = Vocabulary.load(ExportedModel(served_dir).vocab_path(side))
        index = {token: i for i, token in enumerate(served.tokens)}
        tokens = Vocabulary.load(artifact.vocab_path(side)).tokens
        mapping[side] = np.array([index.get(token, -1) for token in tokens], np.int64)
    return mapping


def mapping_summary(mapping: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """{side: {"kept": rows copied, "new": rows of tokens the served model lacks, "overlap": kept share}}."""
    summary = {}
    for side, old_ids in mapping.items():
        kept = int((old_ids >= 0).sum())
        summary[side] = {"kept": kept, "new": int(len(old_ids) - kept), "overlap": round(kept / len(old_ids), 4)}
    return summary


def variable_mismatches(model: Seq2Seq, checkpoint: str) -> list[str]:
    """`model`'s variables whose saved value under `checkpoint` is missing or has another shape ("name
    saved [..], now [..]"; a vocabulary-shaped variable's row count may differ); read from the
    checkpoint's index, before anything is restored."""
    saved = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
    mismatches = []
    for name, variable in vars(model).items():
        if not isinstance(variable, tf.Variable):
            continue
        if _key(name) not in saved:
            mismatches.append(f"{name} is not saved")
            continue
        saved_shape, shape = list(saved[_key(name)]), variable.shape.as_list()
        if name in Seq2Seq.VOCABULARY_ROWS:
            saved_shape, shape = saved_shape[1:], shape[1:]
        if saved_shape != shape:
            mismatches.append(f"{name} saved {list(saved[_key(name)])}, now {variable.shape.as_list()}")
    return mismatches


def _low_overlap(summary: dict[str, dict[str, Any]], threshold: float) -> Optional[str]:
    for side, entry in summary.items():
        if entry["overlap"] < threshold:
            return (f"its {side} vocabulary shares only {entry['overlap']:.1%} of this run's {side} tokens "
                    f"({entry['kept']} of {entry['kept'] + entry['new']}; trainer.warm_start_min_overlap is "
                    f"{threshold:g})")
    return None


def _assign_mapped(model: Seq2Seq, checkpoint: str, mapping: dict[str, np.ndarray]) -> None:
    """Every variable from the checkpoint; a vocabulary-shaped one row by row through MAPPING (the
    rows of new tokens keep this model's fresh initial values)."""
    reader = tf.train.load_checkpoint(checkpoint)
    for name, variable in vars(model).items():
        if not isinstance(variable, tf.Variable):
            continue
        saved = reader.get_tensor(_key(name))
        side = Seq2Seq.VOCABULARY_ROWS.get(name)
        if side is None:
            variable.assign(saved)
            continue
        rows = variable.numpy()
        old_ids = mapping[side]
        kept = old_ids >= 0
        rows[kept] = saved[old_ids[kept]]
        variable.assign(rows)


def warm_start(model: Seq2Seq, served_dir: str, artifact: PreprocessArtifact, model_config: ModelConfig,
               min_overlap: float = 0.5) -> Optional[dict[str, Any]]:
    """Load the served model's weights into `model` if they fit, mapping vocabulary rows by token;
    log the decision either way. The record for metrics.json (`from`, and per side the rows `kept`,
    `new` and the `overlap`), or None when training starts from scratch."""
    reason = incompatibility(served_dir, artifact, model_config)
    prefix = ExportedModel(served_dir).variables_prefix
    summary: dict[str, dict[str, Any]] = {}
    mapping: dict[str, np.ndarray] = {}
    if not reason:
        try:
            mapping = vocabulary_mapping(served_dir, artifact)
        except VocabularyError as e:
            reason = f"its vocabularies cannot be read ({e})"
    if not reason:
        summary = mapping_summary(mapping)
        reason = _low_overlap(summary, min_overlap)
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
        return None
    _assign_mapped(model, prefix, mapping)
    rows = "; ".join(f"{side} {entry['kept']} rows kept, {entry['new']} new" for side, entry in summary.items())
    logger.info("warm start: starting from the weights of the served model %s (%s)", served_dir, rows)
    return {"from": served_dir, **summary}
