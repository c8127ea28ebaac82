"""The exporter component's executor: TrainedModel -> ExportedModel (a SavedModel).

The training folder fixes every section the weights depend on; the run's own `export` section,
from `--config` or `--set` alike, sets how the model is exported.
"""
from __future__ import annotations

from typing import Any, Mapping

from components.core.artifacts import Artifact
from components.core.component import RunContext
from components.core.config import PipelineConfig
from components.exporter.export import run_export


def run(inputs: Mapping[str, Artifact], output: Artifact, config: PipelineConfig,
        context: RunContext) -> dict[str, Any]:
    run_export(inputs["model"].uri, output.uri, export=config.export)
    return {}
