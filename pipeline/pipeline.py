"""The one place that defines the pipeline: its components, their typed inputs and outputs, and
what enters their cache keys.

Runners (the CLI's `seq2seq run`, a cron job, an Airflow task calling the CLI) execute this
definition; components know nothing about each other, only about the artifacts they are given.
Every executor has one signature (`components.core.component.Executor`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from components.core import io
from components.core.artifacts import (
    Artifact,
    Corpus,
    Evaluation,
    ExportedModel,
    PreprocessArtifact,
    PushedModel,
    TrainedModel,
)
from components.core.component import Executor
from components.core.config import PipelineConfig
from components.evaluator import executor as evaluator
from components.exporter import executor as exporter
from components.preprocess import executor as preprocess
from components.pusher import executor as pusher
from components.trainer import executor as trainer

CORPUS = "corpus"          # the run's --data
TEST_CORPUS = "test"       # the run's --test: a fixed test set (optional)
LATEST_SERVED = "served"   # the resolver: the newest model in ARTIFACTS/serving
# The resolver for warm starts: the newest served model that was NOT trained by this component on the
# same inputs and config (its push record's lineage says so). A model trained on this very data is
# this training's own result, not a starting point, so re-running an unchanged corpus reuses the
# cache instead of training on from it; a new corpus starts from the served weights, and the key
# says which model they came from.
SERVED_FROM_OTHER_DATA = "served_from_other_data"
RESOLVERS = (LATEST_SERVED, SERVED_FROM_OTHER_DATA)


def _identity(artifact: Artifact) -> Any:
    return artifact.fingerprint


def _served_vocabularies(artifact: Artifact) -> Any:
    """A served model as a source of vocabularies: only the vocabulary bytes matter."""
    assert isinstance(artifact, ExportedModel)
    return {side: io.file_digest(artifact.vocab_path(side)) for side in ("source", "target")}


@dataclass(frozen=True)
class InputSpec:
    """One declared input: its artifact type, where it comes from, and what of it enters the key.

    `source` is an upstream component's name, `corpus` or the `served` resolver. An input with a
    `when` is wired only when the config asks for it; `optional` inputs may resolve to nothing.
    """

    type: type[Artifact]
    source: str
    optional: bool = False
    when: Optional[Callable[[PipelineConfig], bool]] = None
    key: Callable[[Artifact], Any] = _identity


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    executor: Executor
    output: type[Artifact]
    inputs: Mapping[str, InputSpec] = field(default_factory=dict)
    config_sections: tuple[str, ...] = ()  # config sections that change its output (its cache key)
    cacheable: bool = True
    resumable: bool = False           # a crashed run's output folder is continued, not restarted
    # The input whose artifact, when it is already the served model, makes this component's work moot:
    # an earlier output for it is reused (cacheable components), else the component is skipped.
    moot_if_served: Optional[str] = None

    @property
    def upstream(self) -> tuple[str, ...]:
        return tuple(spec.source for spec in self.inputs.values()
                     if spec.source not in (CORPUS, TEST_CORPUS, *RESOLVERS))


def _reuse_served_vocabulary(config: PipelineConfig) -> bool:
    return config.preprocess.vocabulary == "reuse_served"


def _warm_start(config: PipelineConfig) -> bool:
    return config.trainer.warm_start == "auto"


PIPELINE: tuple[ComponentSpec, ...] = (
    ComponentSpec(
        "preprocess", preprocess.run, PreprocessArtifact,
        inputs={"corpus": InputSpec(Corpus, CORPUS),
                "test": InputSpec(Corpus, TEST_CORPUS, optional=True),
                "served": InputSpec(ExportedModel, LATEST_SERVED, optional=True, when=_reuse_served_vocabulary,
                                    key=_served_vocabularies)},
        config_sections=("preprocess",)),
    ComponentSpec(
        "train", trainer.run, TrainedModel,
        inputs={"examples": InputSpec(PreprocessArtifact, "preprocess"),
                "served": InputSpec(ExportedModel, SERVED_FROM_OTHER_DATA, optional=True, when=_warm_start)},
        config_sections=("model", "trainer"), resumable=True),
    ComponentSpec(
        "export", exporter.run, ExportedModel,
        inputs={"model": InputSpec(TrainedModel, "train")},
        config_sections=("export",)),
    ComponentSpec(
        "evaluate", evaluator.run, Evaluation,
        inputs={"model": InputSpec(ExportedModel, "export"),
                "examples": InputSpec(PreprocessArtifact, "preprocess"),
                "training": InputSpec(TrainedModel, "train"),
                "baseline": InputSpec(ExportedModel, LATEST_SERVED, optional=True)},
        config_sections=("evaluator",), moot_if_served="model"),
    ComponentSpec(
        "push", pusher.run, PushedModel,
        inputs={"model": InputSpec(ExportedModel, "export"),
                "evaluation": InputSpec(Evaluation, "evaluate")},
        config_sections=("pusher",), cacheable=False, moot_if_served="model"),
)

COMPONENT_NAMES = tuple(spec.name for spec in PIPELINE)
