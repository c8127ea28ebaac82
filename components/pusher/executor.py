"""The pusher component's executor: a blessed ExportedModel -> the next serving version."""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from components.core import io
from components.core.artifacts import Artifact, Evaluation, ExportedModel, PushedModel
from components.core.component import RunContext
from components.core.config import PipelineConfig
from components.core.errors import ArtifactError
from components.pusher import run_push

logger = logging.getLogger(__name__)

RECORDED_METRICS = ("bleu", "chrf", "exact_match", "eval_loss")
EVALUATED_CARD = "assets.extra/model_card.json"  # beside push.json, outside the content fingerprint
# evaluation.json / blessing.json entries the evaluated card's `evaluation` copies.
EVALUATION_KEYS = ("split", "examples", "bleu", "chrf", "exact_match", "placeholder_fidelity", "copy_rate",
                   "eval_loss", "decoder", "beam_width", "decoders", "splits", "sacrebleu", "baseline_model", "baseline",
                   "baseline_decoder")
BLESSING_KEYS = ("blessed", "reason", "content_fingerprint")


def run(inputs: Mapping[str, Artifact], output: Artifact, config: PipelineConfig,
        context: RunContext) -> dict[str, Any]:
    if context.serving_root is None:
        raise ArtifactError("push: the run has no serving folder to publish to")
    model, evaluation = inputs["model"], inputs["evaluation"]
    assert isinstance(evaluation, Evaluation) and isinstance(output, PushedModel)
    summary = evaluation.summary()
    record = {"run_id": context.run_id, "export_fingerprint": model.fingerprint, "model_name": context.model_name,
              "languages": model.languages().to_dict(),
              "metrics": {key: summary.get(key) for key in RECORDED_METRICS}, "lineage": dict(context.lineage)}
    # run_push checks the model on disk against the blessing's content fingerprint, under the
    # serving folder's push lock (the one `seq2seq push` takes).
    serving_model = run_push(model.uri, context.serving_root.uri, evaluation.blessing(), config.pusher.keep,
                             record=record, run_id=context.run_id, models=context.serving_models,
                             before_publish=lambda partial: write_evaluated_card(partial, evaluation, context.run_id))
    output.write(serving_model)
    return {"serving_model": serving_model}


def write_evaluated_card(version_dir: str, evaluation: Evaluation, run_id: str) -> None:
    """The model card with the evaluation filled in, at VERSION/assets.extra/model_card.json. The card
    in assets/ stays as exported: it is part of the content fingerprint the blessing judged."""
    version = ExportedModel(version_dir)
    try:
        card = version.card()
    except ArtifactError as e:  # not a card of `seq2seq export`: the model is still what was blessed
        logger.warning("no evaluated model card for %s: %s", version_dir, e)
        return
    io.write_json_atomic(version.path(EVALUATED_CARD),
                         evaluated_card(card, evaluation.evaluation(), evaluation.blessing(), run_id))


def evaluated_card(card: dict[str, Any], evaluation: dict[str, Any], blessing: dict[str, Any],
                   run_id: Optional[str] = None) -> dict[str, Any]:
    """CARD (the exporter's) with its `evaluation` filled in from evaluation.json and blessing.json:
    the evaluated metrics, the decoder the blessing judged them with, and the verdict."""
    entry: dict[str, Any] = {"status": "evaluated", "run_id": run_id}
    entry.update({key: evaluation.get(key) for key in EVALUATION_KEYS})
    entry["blessing"] = {key: blessing.get(key) for key in BLESSING_KEYS}
    return {**card, "evaluation": entry}
