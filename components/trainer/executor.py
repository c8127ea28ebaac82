"""The trainer component's executor: PreprocessArtifact (+ the served model) -> TrainedModel."""
from __future__ import annotations

from typing import Any, Mapping

from components.core.artifacts import Artifact
from components.core.component import RunContext
from components.core.config import PipelineConfig
from components.trainer.training import run_training

REPORTED = ("best_eval_loss", "final_eval_loss", "token_accuracy", "steps", "epochs", "train_tokens_per_second",
            "warm_start")


def run(inputs: Mapping[str, Artifact], output: Artifact, config: PipelineConfig,
        context: RunContext) -> dict[str, Any]:
    served = inputs.get("served")
    metrics = run_training(inputs["examples"].uri, output.uri, config,
                           warm_start_from=served.uri if served else None)
    return {key: metrics[key] for key in REPORTED if key in metrics}
