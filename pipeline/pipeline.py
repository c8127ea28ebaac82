"""The one place that defines the pipeline: its components, their inputs and their cache keys.

Runners (the CLI's `seq2seq run`, a cron job, an Airflow task calling the CLI) execute this
definition; components know nothing about each other, only about the artifacts they are given.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[str, ...]           # upstream components whose outputs this one reads
    config_sections: tuple[str, ...]  # config sections that change its output (its cache key)
    cacheable: bool = True
    resumable: bool = False           # a crashed run's output folder is continued, not restarted


PIPELINE: tuple[ComponentSpec, ...] = (
    ComponentSpec("preprocess", inputs=(), config_sections=("preprocess",)),
    ComponentSpec("train", inputs=("preprocess",), config_sections=("model", "trainer"), resumable=True),
    ComponentSpec("export", inputs=("train",), config_sections=("export",)),
    # The served baseline is an input too; the runner adds its fingerprint to the key.
    ComponentSpec("evaluate", inputs=("export", "preprocess", "train"), config_sections=("evaluator",)),
    ComponentSpec("push", inputs=("export", "evaluate"), config_sections=("pusher",), cacheable=False),
)

COMPONENT_NAMES = tuple(spec.name for spec in PIPELINE)
