"""Load an exported SavedModel from Python: `load_translator(dir).translate(["I feel hungry"])`.

Downstream programs need none of this (a plain `tf.saved_model.load` works, see docs/export.md);
it adds the model card, the `import tensorflow_text` the card asks for, and numpy/str outputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from components.core.artifacts import ExportedModel
from components.core.config import MAX_DECODE_LENGTH_LIMIT
from components.core.errors import ArtifactError, UserError
from components.core.tftext import register_tensorflow_text_ops

logger = logging.getLogger(__name__)

# The most tokens one greedy decode may produce, whatever a caller asks for (defined in the core
# config, where export.max_decode_length is checked): `seq2seq translate --max-length`,
# `Translator.translate(max_length=)` and the SavedModel's translate_with_max_length signature
# (an InvalidArgumentError in the graph) all refuse more. See docs/export.md, "Decode length".


class DecodeLengthError(UserError):
    """A requested decode length outside [1, MAX_DECODE_LENGTH_LIMIT]: a usage error (exit 2)."""

    exit_code = 2


def check_max_length(value: int, name: str = "--max-length") -> int:
    """VALUE when 1 <= VALUE <= MAX_DECODE_LENGTH_LIMIT, else a DecodeLengthError naming NAME."""
    if value < 1:
        raise DecodeLengthError(f"{name} must be at least 1, got {value}")
    if value > MAX_DECODE_LENGTH_LIMIT:
        raise DecodeLengthError(f"{name} must be at most {MAX_DECODE_LENGTH_LIMIT} (MAX_DECODE_LENGTH_LIMIT), "
                                f"got {value}")
    return int(value)


@dataclass
class Translation:
    """One sentence's result, trimmed to its real lengths."""

    source: str
    translation: str
    tokens: list[str]          # up to and including <eos> when emitted
    token_ids: list[int]
    score: float
    source_tokens: list[str] = field(default_factory=list)  # as the model sees them (<unk>, truncated)
    attention: Optional[np.ndarray] = None  # [len(tokens), len(source_tokens)]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "translation": self.translation, "tokens": self.tokens,
                "score": self.score, "length": len(self.tokens)}


def read_model_card(saved_model_dir: str) -> dict[str, Any]:
    """The model card in the SavedModel's assets; ArtifactError when absent or unreadable."""
    return ExportedModel(saved_model_dir).card()


class Translator:
    """A loaded SavedModel and its card."""

    def __init__(self, saved_model_dir: str, loaded, card: dict[str, Any]):
        self.directory = saved_model_dir
        self.loaded = loaded
        self.card = card
        self._signatures = loaded.signatures

    @property
    def max_decode_length(self) -> int:
        return int(self.card["decoding"]["max_decode_length"])

    def outputs(self, texts: Sequence[str], max_length: Optional[int] = None) -> dict[str, np.ndarray]:
        """The raw serving_default outputs (or translate_with_max_length's) as numpy arrays."""
        import tensorflow as tf

        text = tf.constant(list(texts), tf.string)
        if max_length is None:
            result = self._signatures["serving_default"](text=text)
        else:
            check_max_length(max_length)
            result = self._signatures["translate_with_max_length"](
                text=text, max_length=tf.constant(max_length, tf.int32))
        return {key: value.numpy() for key, value in result.items()}

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        result = self._signatures["encode"](text=tf.constant(list(texts), tf.string))
        return {key: value.numpy() for key, value in result.items()}

    def source_tokens(self, texts: Sequence[str]) -> list[list[str]]:
        import tensorflow as tf

        padded = self._signatures["source_tokens"](text=tf.constant(list(texts), tf.string))["source_tokens"]
        return [[t.decode("utf-8") for t in row if t] for row in padded.numpy()]

    def translate(self, texts: Sequence[str], max_length: Optional[int] = None,
                  with_attention: bool = False) -> list[Translation]:
        """Translate a batch; `with_attention` adds source tokens and trimmed attention matrices."""
        texts = list(texts)
        if not texts:
            return []
        out = self.outputs(texts, max_length)
        sources = self.source_tokens(texts) if with_attention else [[] for _ in texts]
        results = []
        for i, text in enumerate(texts):
            n = int(out["length"][i])
            results.append(Translation(
                source=text,
                translation=out["translation"][i].decode("utf-8"),
                tokens=[t.decode("utf-8") for t in out["tokens"][i][:n]],
                token_ids=[int(t) for t in out["token_ids"][i][:n]],
                score=float(out["score"][i]),
                source_tokens=sources[i],
                attention=out["attention"][i][:n, : len(sources[i])] if with_attention else None,
            ))
        return results


def load_translator(saved_model_dir: str) -> Translator:
    """Load an exported model, importing tensorflow_text first when its card says the tokenizer needs it."""
    import tensorflow as tf

    saved_model_dir = saved_model_dir.rstrip("/")
    if not tf.io.gfile.isdir(saved_model_dir):
        raise ArtifactError(f"SavedModel folder {saved_model_dir} does not exist")
    if not tf.saved_model.contains_saved_model(saved_model_dir):
        raise ArtifactError(f"{saved_model_dir} is not a SavedModel (no saved_model.pb)")
    card = read_model_card(saved_model_dir)
    if card.get("tokenizer", {}).get("needs_tensorflow_text"):
        register_tensorflow_text_ops()
    logger.debug("loading %s (tokenizer %s)", saved_model_dir, card.get("tokenizer", {}).get("name"))
    return Translator(saved_model_dir, tf.saved_model.load(saved_model_dir), card)
