"""Checkpoint selection on a dev metric: greedy translations of a fixed sample of the eval split,
scored with chrF or BLEU against its reference texts (trainer.select_by).

The teacher-forced eval loss rewards a model for predicting the next reference token; what ships is
a greedy decoder that feeds itself its own tokens, and that loops, drops or invents words in ways
the loss does not see. So the kept checkpoint can be chosen by what the exported model will do:
the SavedModel's own text -> text graph (`components.model.translation.translate_text`: the Beam
job's encoder, greedy decoding under the protected-span rule, the id -> text step), on the eval
split's source texts, and the same sacrebleu metrics as the evaluator (`components.text.metrics`).
"""
from __future__ import annotations

import logging
from typing import Sequence

import tensorflow as tf

from components.core.artifacts import PreprocessArtifact
from components.model import Seq2Seq
from components.model.translation import TextTables, translate_text
from components.text.artifacts import encoder_for, tokenizer_for
from components.text.metrics import Scores, score

logger = logging.getLogger(__name__)


def read_sample(files: Sequence[str], artifact: PreprocessArtifact, size: int,
                batch_size: int) -> list[dict[str, tf.Tensor]]:
    """The first `size` examples of the eval shards (in file order, so every evaluation of a run,
    and a resumed run, scores the same sentences), batched: source and reference texts."""
    spec = artifact.feature_spec()
    wanted = {name: spec[name] for name in ("source_text", "target_text")}
    dataset = (tf.data.TFRecordDataset(list(files), compression_type="GZIP").take(size).batch(batch_size)
               .map(lambda records: tf.io.parse_example(records, wanted)))
    return list(dataset)


class DevScorer:
    """Greedy-decodes the sample with the model being trained and scores it (chrF and BLEU)."""

    def __init__(self, model: Seq2Seq, artifact: PreprocessArtifact, batches: list[dict[str, tf.Tensor]],
                 replace_unknown: bool = True):
        self.batches = batches
        self.references = [text.decode("utf-8") for batch in batches for text in batch["target_text"].numpy()]
        tables = TextTables.build(encoder_for(artifact, "source"), tokenizer_for(artifact, "target"),
                                  artifact.vocab_path("target"))
        max_length = tf.constant(artifact.preprocess.max_target_length, tf.int32)
        self._tables = tables

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
        def translate(texts):
            return translate_text(model, tables, texts, max_length, replace_unknown=replace_unknown)["translation"]

        self._translate = translate

    def __len__(self) -> int:
        return len(self.references)

    def translations(self) -> list[str]:
        return [text.decode("utf-8") for batch in self.batches
                for text in self._translate(batch["source_text"]).numpy()]

    def score(self) -> Scores:
        return score(self.translations(), self.references)
