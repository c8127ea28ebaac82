"""Load an exported SavedModel from Python: `load_translator(dir).translate(["I feel hungry"])`.

Downstream programs need none of this (a plain `tf.saved_model.load` works, see docs/export.md);
it adds the model card, the `import tensorflow_text` the card asks for, and numpy/str outputs.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from components.core.artifacts import ExportedModel
from components.core.config import MAX_BEAM_WIDTH_LIMIT, MAX_DECODE_LENGTH_LIMIT
from components.core.errors import ArtifactError, UserError
from components.core.tftext import card_uses_sentencepiece, register_tensorflow_text_ops, sentencepiece_quietly

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


class BeamOptionError(UserError):
    """A beam search setting out of range: a usage error (exit 2)."""

    exit_code = 2


class NoBeamSearchError(UserError):
    """Beam search asked of a SavedModel exported before the beam_search signatures existed."""

    exit_code = 2


@dataclass(frozen=True)
class BeamOptions:
    """Per-call beam search settings for the beam_search_with_options signature; None: the exported
    default (sent as the signature's "default" value: -1, or 0 for max_length)."""

    beam_width: Optional[int] = None
    n_best: Optional[int] = None
    length_penalty: Optional[float] = None
    no_repeat_ngram_size: Optional[int] = None

    def check(self) -> "BeamOptions":
        """Itself, or a UserError (exit 2) for a setting out of range."""
        if self.beam_width is not None and self.beam_width < 1:
            raise BeamOptionError(f"--beam-width must be at least 1, got {self.beam_width}")
        if self.beam_width is not None and self.beam_width > MAX_BEAM_WIDTH_LIMIT:
            raise BeamOptionError(f"--beam-width must be at most {MAX_BEAM_WIDTH_LIMIT} (MAX_BEAM_WIDTH_LIMIT), "
                                  f"got {self.beam_width}")
        if self.n_best is not None and self.n_best < 1:
            raise BeamOptionError(f"--n-best must be at least 1, got {self.n_best}")
        if self.n_best is not None and self.beam_width is not None and self.n_best > self.beam_width:
            raise BeamOptionError(f"--n-best {self.n_best} must be at most --beam-width {self.beam_width}")
        if self.length_penalty is not None and not self.length_penalty >= 0:
            raise BeamOptionError(f"--length-penalty must be >= 0, got {self.length_penalty}")
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 0:
            raise BeamOptionError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        return self


BEAM_SIGNATURE = "beam_search_with_options"
ATTENTION_SIGNATURE = "translate_with_attention"


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
    # Beam search only: every hypothesis' text and length-penalized score, best first (the best is
    # `translation`, and `score` its raw log-probability); empty for greedy decoding.
    translations: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    # The source's protected spans that no sentinel protects (past SPAN_SLOTS, or missing from the
    # vocabularies): ordinary text the model may drop. None for a model exported before this output.
    unprotected_spans: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        result = {"source": self.source, "translation": self.translation, "tokens": self.tokens,
                  "score": self.score, "length": len(self.tokens)}
        if self.unprotected_spans is not None:
            result["unprotected_spans"] = self.unprotected_spans
        if len(self.translations) > 1:
            result["n_best"] = [{"translation": t, "score": s} for t, s in zip(self.translations, self.scores)]
        return result


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

    @property
    def exported_beam_width(self) -> Optional[int]:
        """The beam_search signatures' default width (the card's decoding.beam); None without them."""
        beam = self.card.get("decoding", {}).get("beam") or {}
        return int(beam["beam_width"]) if self.has_beam_search and "beam_width" in beam else None

    @property
    def has_beam_search(self) -> bool:
        """Whether the model has the beam_search signatures (models exported before them do not)."""
        return BEAM_SIGNATURE in self._signatures

    def outputs(self, texts: Sequence[str], max_length: Optional[int] = None,
                beam: Optional[BeamOptions] = None, with_attention: bool = False) -> dict[str, np.ndarray]:
        """The raw serving_default outputs (or translate_with_max_length's; with `with_attention`,
        translate_with_attention's; with `beam`, beam_search_with_options', which have attention too)
        as numpy arrays. A model exported before translate_with_attention has attention in
        serving_default."""
        import tensorflow as tf

        text = tf.constant(list(texts), tf.string)
        if max_length is not None:
            check_max_length(max_length)
        if beam is not None:
            beam.check()
            if not self.has_beam_search:
                raise NoBeamSearchError(f"{self.directory} has no {BEAM_SIGNATURE} signature (exported before beam "
                                        f"search was added): re-export it, or translate without beam options")
            result = self._signatures[BEAM_SIGNATURE](
                text=text,
                beam_width=tf.constant(-1 if beam.beam_width is None else beam.beam_width, tf.int32),
                length_penalty=tf.constant(-1.0 if beam.length_penalty is None else beam.length_penalty,
                                           tf.float32),
                max_length=tf.constant(max_length or 0, tf.int32),
                n_best=tf.constant(-1 if beam.n_best is None else beam.n_best, tf.int32),
                no_repeat_ngram_size=tf.constant(
                    -1 if beam.no_repeat_ngram_size is None else beam.no_repeat_ngram_size, tf.int32))
        elif with_attention and ATTENTION_SIGNATURE in self._signatures:
            result = self._signatures[ATTENTION_SIGNATURE](text=text, max_length=tf.constant(max_length or 0, tf.int32))
        elif max_length is None:
            result = self._signatures["serving_default"](text=text)
        else:
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
                  with_attention: bool = False, beam: Optional[BeamOptions] = None) -> list[Translation]:
        """Translate a batch; `with_attention` adds source tokens and trimmed attention matrices;
        `beam` decodes with beam search (the best hypothesis, and the n-best lists)."""
        texts = list(texts)
        if not texts:
            return []
        out = self.outputs(texts, max_length, beam, with_attention)
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
                translations=[t.decode("utf-8") for t in out["translations"][i]] if "translations" in out else [],
                scores=[float(s) for s in out["scores"][i]] if "scores" in out else [],
                unprotected_spans=int(out["unprotected_spans"][i]) if "unprotected_spans" in out else None,
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
    # Only then: the descriptor redirect would also hide any other C++ line of the load.
    with sentencepiece_quietly() if card_uses_sentencepiece(card) else contextlib.nullcontext():
        loaded = tf.saved_model.load(saved_model_dir)
    return Translator(saved_model_dir, loaded, card)
