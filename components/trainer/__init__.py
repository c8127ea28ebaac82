"""The trainer component: preprocess TFRecords -> trained attention seq2seq checkpoints + metrics.

`run_training(examples, out, config)` is the entry point (`seq2seq train`); `executor.run` is its
pipeline executor. The exporter restores the model with `components.model.checkpoints`. See docs/training.md.
"""
from components.trainer.training import TrainingInterrupted, run_training

__all__ = ["run_training", "TrainingInterrupted"]
