"""The pipeline's configuration front end: the packaged default.yaml under a file and `--set` overrides.

The types, parsing and validation live in the shared core (`components.core.config`); this layer
only knows where the packaged defaults are.
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Optional, Sequence

import yaml

from components.core import config as core_config
from components.core.config import ConfigError, PipelineConfig, read_config, write_config

DEFAULT_CONFIG = "default.yaml"

__all__ = ["ConfigError", "PipelineConfig", "default_yaml", "load_config", "read_config", "write_config"]


def default_yaml() -> dict[str, Any]:
    text = resources.files("pipeline").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Defaults <- the packaged default.yaml <- FILE (if given) <- --set overrides, strictly typed."""
    return core_config.load_config(default_yaml(), path, overrides)
