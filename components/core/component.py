"""The one contract every component's executor follows, as TFX's `Executor.Do` does.

    run(inputs: Mapping[str, Artifact], output: Artifact, config: PipelineConfig, context: RunContext)
        -> dict of scalar metrics for the run manifest

`inputs` holds the declared input artifacts by name (an optional input that was not resolved is
absent); `output` is the handle of the folder to write, whose layout the handle's type owns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol

from components.core.artifacts import Artifact, ServingModels, ServingRoot
from components.core.config import PipelineConfig


@dataclass(frozen=True)
class RunContext:
    """What a run knows beyond the artifacts and the config (TFX's execution properties)."""

    run_id: str
    beam_args: tuple[str, ...] = ()
    serving_root: Optional[ServingRoot] = None  # where the pusher publishes: serving/<name>/
    # Each component's key so far, without lineage-dependent inputs: the pusher records it with the
    # model, so a later run can tell a model trained on its own data from one trained on other data.
    lineage: Mapping[str, str] = field(default_factory=dict)
    serving_models: Optional[ServingModels] = None  # serving/: its models.config lists every name
    model_name: Optional[str] = None  # the name the model is served under (pusher.model_name, or the pair)


class Executor(Protocol):
    def __call__(self, inputs: Mapping[str, Artifact], output: Artifact, config: PipelineConfig,
                 context: RunContext) -> dict[str, Any]: ...
