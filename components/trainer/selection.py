"""Checkpoint selection on a dev metric: greedy translations of a fixed sample of the eval split,
scored with chrF or BLEU against its reference texts (trainer.select_by).

The teacher-forced eval loss rewards a model for predicting the next reference token; what ships is
a greedy decoder that feeds itself its own tokens, and that loops, drops or invents words in ways
the loss does not see. So the kept checkpoint can be chosen by what the exported model will do:
the same in-graph greedy decoder (`components.model.decoding.greedy_decode`), the same id -> text
step as the SavedModel (`components.text.encoding.decode_ids`), the same sacrebleu metrics as the
evaluator (`components.text.metrics`).
"""
from __future__ import annotations

import logging
from typing import Sequence

import tensorflow as tf

from components.core.artifacts import PreprocessArtifact
from components.model import Seq2Seq
from components.model.decoding import greedy_decode
from components.text.artifacts import tokenizer_for
from components.text.encoding import decode_ids, id_to_token_table
from components.text.metrics import Scores, score

logger = logging.getLogger(__name__)


def read_sample(files: Sequence[str], artifact: PreprocessArtifact, size: int,
                batch_size: int) -> list[dict[str, tf.Tensor]]:
    """The first `size` examples of the eval shards (in file order, so every evaluation of a run,
    and a resumed run, scores the same sentences), batched: source ids and lengths, reference texts."""
    spec = artifact.feature_spec()
    wanted = {name: spec[name] for name in ("source_ids", "source_length", "target_text")}
    dataset = (tf.data.TFRecordDataset(list(files), compression_type="GZIP").take(size).batch(batch_size)
               .map(lambda records: tf.io.parse_example(records, wanted)))
    return list(dataset)


class DevScorer:
    """Greedy-decodes the sample with the model being trained and scores it (chrF and BLEU)."""

    def __init__(self, model: Seq2Seq, artifact: PreprocessArtifact, batches: list[dict[str, tf.Tensor]]):
        self.batches = batches
        self.references = [text.decode("utf-8") for batch in batches for text in batch["target_text"].numpy()]
        tokenizer = tokenizer_for(artifact, "target")
        table = id_to_token_table(artifact.vocab_path("target"))
        max_length = artifact.preprocess.max_target_length
        spec = {name: tf.TensorSpec([None, None] if name == "source_ids" else [None], tf.int64)
                for name in ("source_ids", "source_length")}

        @tf.function(input_signature=[spec])
        def translate(batch):
            # An empty source (a quarantine-free corner, but possible) decodes from one <pad>, as in
            # the SavedModel.
            decoded = greedy_decode(model, batch["source_ids"], tf.maximum(batch["source_length"], 1), max_length)
            return decode_ids(table, tokenizer, decoded["token_ids"], decoded["length"])[1]

        self._translate = translate

    def __len__(self) -> int:
        return len(self.references)

    def translations(self) -> list[str]:
        return [text.decode("utf-8") for batch in self.batches
                for text in self._translate({"source_ids": batch["source_ids"],
                                             "source_length": batch["source_length"]}).numpy()]

    def score(self) -> Scores:
        return score(self.translations(), self.references)
