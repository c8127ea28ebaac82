"""The trainer component: preprocess TFRecords -> trained attention seq2seq checkpoints + metrics.

`run_training(examples, out, config)` is the entry point (`seq2seq train`); `restore_model(train_dir)`
(in `checkpoints`) gives the exporter the trained model back. See docs/training.md.
"""
from components.trainer.training import TrainingInterrupted, run_training

__all__ = ["run_training", "TrainingInterrupted"]
