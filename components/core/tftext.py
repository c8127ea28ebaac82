"""Registering tensorflow-text's ops: the one place that imports `tensorflow_text`.

Its tokenizers are custom ops, so every process that runs them (a Beam worker, a model loader)
must import the package first. The default tokenizer needs none of this.
"""
from __future__ import annotations

from types import ModuleType

from components.core.errors import ArtifactError

INSTALL_HINT = "pip install 'tensorflow-text' with the same minor version as tensorflow"


def register_tensorflow_text_ops() -> ModuleType:
    """Import tensorflow_text (which registers its ops in this process) and return it."""
    try:
        import tensorflow_text
    except ImportError as e:
        raise ArtifactError(f"this tokenizer needs tensorflow-text: {INSTALL_HINT}") from e
    return tensorflow_text
