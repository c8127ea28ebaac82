"""The Beam preprocessing component: corpus -> validated, tokenized, padded TFRecords + vocabularies.

`run_preprocess(data, out, config, beam_args, overwrite)` is the entry point; `seq2seq preprocess`
calls it. See docs/preprocess.md for formats, quarantine, stats and running on a cluster.
"""
from components.preprocess.job import pipeline_options, run_preprocess

__all__ = ["run_preprocess", "pipeline_options"]
