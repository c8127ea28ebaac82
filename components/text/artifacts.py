"""The preprocess output folder, as every downstream component sees it.

Layout of PREPROCESS_DIR (written by `seq2seq preprocess`, published by an atomic rename):

    config.yaml                         resolved pipeline config (widths, tokenizer, ...)
    source.vocab, target.vocab          one token per line, id = line number, specials first
    source.vocab.counts.tsv, target...  token<TAB>count
    source.wordpiece.vocab, target...   learned WordPiece vocabularies (tokenizer: wordpiece only)
    train-NNNNN-of-MMMMM.tfrecord.gz    gzip TFRecords of tf.train.Example (schemas/examples.schema.json)
    eval-NNNNN-of-MMMMM.tfrecord.gz     (absent when no pair is in eval, e.g. eval_fraction 0)
    quarantine/rejected-*.jsonl         rejected records: file, line, reason, raw text
    stats.json                          counts, length percentiles, vocabulary sizes, timing

docs/preprocess.md describes each file and the stats keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import schemas
from components.text.vocabulary import Vocabulary
from pipeline.errors import ArtifactError
from pipeline.config import PipelineConfig, PreprocessConfig, read_config

SIDES = ("source", "target")


@dataclass(frozen=True)
class PreprocessArtifact:
    directory: str
    config: PipelineConfig

    @classmethod
    def load(cls, directory: str) -> "PreprocessArtifact":
        import tensorflow as tf

        directory = directory.rstrip("/")
        if not tf.io.gfile.isdir(directory):
            raise ArtifactError(f"preprocess output {directory} does not exist (run `seq2seq preprocess` first)")
        if not tf.io.gfile.exists(f"{directory}/config.yaml"):
            raise ArtifactError(f"{directory} is not a complete preprocess output: config.yaml is missing")
        return cls(directory, read_config(directory))

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.config.preprocess

    def vocab_path(self, side: str) -> str:
        return f"{self.directory}/{side}.vocab"

    def wordpiece_vocab_path(self, side: str) -> Optional[str]:
        if self.preprocess.tokenizer != "wordpiece":
            return None
        return f"{self.directory}/{side}.wordpiece.vocab"

    def vocabulary(self, side: str) -> Vocabulary:
        return Vocabulary.load(self.vocab_path(side))

    def split_pattern(self, split: str) -> str:
        return f"{self.directory}/{split}-*-of-*.tfrecord.gz"

    def split_files(self, split: str) -> list[str]:
        import tensorflow as tf

        return sorted(tf.io.gfile.glob(self.split_pattern(split)))

    def feature_spec(self) -> dict[str, Any]:
        return schemas.feature_spec(self.preprocess.max_source_length, self.preprocess.max_target_length)

    def tokenizer(self, side: str):
        from components.text.tokenizers import make_tokenizer

        p = self.preprocess
        return make_tokenizer(p.tokenizer, p.lowercase, self.wordpiece_vocab_path(side))

    def encoder(self, side: str):
        """The same `SequenceEncoder` the Beam job used for this side, reading the vocab file."""
        from components.text.encoding import SequenceEncoder

        width = self.preprocess.max_source_length if side == "source" else self.preprocess.max_target_length
        return SequenceEncoder(self.tokenizer(side), self.vocab_path(side), width, name=f"{side}_encoder")

    def stats(self) -> dict[str, Any]:
        import json

        import tensorflow as tf

        with tf.io.gfile.GFile(f"{self.directory}/stats.json") as f:
            return json.load(f)
