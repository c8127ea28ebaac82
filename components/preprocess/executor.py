"""The preprocess component's executor: corpus (+ a fixed test set) -> PreprocessArtifact (the Beam job)."""
from __future__ import annotations

from typing import Any, Mapping

from components.core.artifacts import Artifact, ExportedModel
from components.core.component import RunContext
from components.core.config import PipelineConfig
from components.preprocess.job import run_preprocess


def run(inputs: Mapping[str, Artifact], output: Artifact, config: PipelineConfig,
        context: RunContext) -> dict[str, Any]:
    served = inputs.get("served")
    vocabularies = served.assets_dir if isinstance(served, ExportedModel) else None
    test = inputs.get("test")
    stats = run_preprocess(inputs["corpus"].uri, output.uri, config, beam_args=context.beam_args,
                           overwrite=True, served_vocabularies=vocabularies, test_data=test.uri if test else None)
    return {key: stats.get(key) for key in ("records_read", "records_written", "rejected")}
