"""Registering tensorflow-text's ops: the one place that imports `tensorflow_text`.

Its tokenizers are custom ops, so every process that runs them (a Beam worker, a model loader)
must import the package first. The default tokenizer needs none of this.
"""
from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any, Iterator, Mapping

from components.core.errors import ArtifactError
from components.core.quiet import stderr_to_devnull, verbose_requested

INSTALL_HINT = "pip install 'tensorflow-text' with the same minor version as tensorflow"


def register_tensorflow_text_ops() -> ModuleType:
    """Import tensorflow_text (which registers its ops in this process) and return it."""
    try:
        import tensorflow_text
    except ImportError as e:
        raise ArtifactError(f"this tokenizer needs tensorflow-text: {INSTALL_HINT}") from e
    return tensorflow_text


@contextlib.contextmanager
def sentencepiece_quietly() -> Iterator[None]:
    """Around what loads a SentencePiece model into tensorflow-text's op (building the tokenizer,
    loading a SavedModel that holds one): without --verbose, file descriptor 2 goes to /dev/null.

    The SentencePiece copy inside the op prints "precompiled_charsmap is empty. use identity
    normalization." on std::cerr at each load, through its own logging, which TF_CPP_MIN_LOG_LEVEL
    does not reach and the op has no setting for (measured with tensorflow-text 2.21). The
    pipeline's models are identity-normalized by design (the text is normalized before them), so
    the line says nothing; Python errors still propagate after the descriptor is restored."""
    if verbose_requested():
        yield
        return
    with stderr_to_devnull():
        yield


def card_uses_sentencepiece(card: Mapping[str, Any]) -> bool:
    """Whether an exported model's card names SentencePiece as either side's tokenizer."""
    tokenizer = card.get("tokenizer", {})
    return "sentencepiece" in (tokenizer.get("name"), tokenizer.get("source"), tokenizer.get("target"))
