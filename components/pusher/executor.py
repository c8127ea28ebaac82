"""The pusher component's executor: a blessed ExportedModel -> the next serving version."""
from __future__ import annotations

from typing import Any, Mapping

from components.core.artifacts import Artifact, Evaluation, PushedModel
from components.core.component import RunContext
from components.core.config import PipelineConfig
from components.core.errors import ArtifactError
from components.pusher import run_push

RECORDED_METRICS = ("bleu", "chrf", "exact_match", "eval_loss")


def run(inputs: Mapping[str, Artifact], output: Artifact, config: PipelineConfig,
        context: RunContext) -> dict[str, Any]:
    if context.serving_root is None:
        raise ArtifactError("push: the run has no serving folder to publish to")
    model, evaluation = inputs["model"], inputs["evaluation"]
    assert isinstance(evaluation, Evaluation) and isinstance(output, PushedModel)
    summary = evaluation.summary()
    record = {"run_id": context.run_id, "export_fingerprint": model.fingerprint,
              "metrics": {key: summary.get(key) for key in RECORDED_METRICS}, "lineage": dict(context.lineage)}
    # run_push checks the model on disk against the blessing's content fingerprint, under the
    # serving folder's push lock (the one `seq2seq push` takes).
    serving_model = run_push(model.uri, context.serving_root.uri, evaluation.blessing(), config.pusher.keep,
                             record=record, run_id=context.run_id)
    output.write(serving_model)
    return {"serving_model": serving_model}
