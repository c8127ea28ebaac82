"""The text library's view of a preprocess output: the tokenizer and encoder the Beam job used.

The folder's layout belongs to `components.core.artifacts.PreprocessArtifact`; this module only
builds the text-processing objects from it, so training, export and tests cannot drift from it.
"""
from __future__ import annotations

from components.core.artifacts import PreprocessArtifact
from components.text.encoding import SequenceEncoder
from components.text.spans import masker_for
from components.text.tokenizers import Tokenizer, make_tokenizer


def tokenizer_for(artifact: PreprocessArtifact, side: str) -> Tokenizer:
    p = artifact.preprocess
    return make_tokenizer(p.tokenizer_of(side), p.lowercase, artifact.wordpiece_vocab_path(side),
                          artifact.sentencepiece_model_path(side))


def encoder_for(artifact: PreprocessArtifact, side: str) -> SequenceEncoder:
    """The same `SequenceEncoder` the Beam job used for this side, reading the vocab file."""
    p = artifact.preprocess
    width = p.max_source_length if side == "source" else p.max_target_length
    return SequenceEncoder(tokenizer_for(artifact, side), artifact.vocab_path(side), width, name=f"{side}_encoder",
                           masker=masker_for(p, side))
