"""The evaluator component's executor: ExportedModel (+ the served baseline) -> Evaluation."""
from __future__ import annotations

from typing import Any, Mapping

from components.core.artifacts import Artifact, Evaluation
from components.core.component import RunContext
from components.core.config import PipelineConfig
from components.evaluator import run_evaluation


def run(inputs: Mapping[str, Artifact], output: Artifact, config: PipelineConfig,
        context: RunContext) -> dict[str, Any]:
    baseline = inputs.get("baseline")
    run_evaluation(inputs["model"].uri, inputs["examples"].uri, output.uri, config.evaluator,
                   train_dir=inputs["training"].uri, baseline_model=baseline.uri if baseline else None)
    return Evaluation(output.uri).summary()
