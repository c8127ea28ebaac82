"""trainer.average_last: the exported weights are exactly the mean of the last N checkpoints."""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.model.checkpoints import restore_model
from components.trainer import run_training
from pipeline.config import ConfigError
from tests.trainer_helpers import config, preprocess, synthetic_corpus

SMALL = ["model.embedding_dim=8", "model.units=8", "trainer.batch_size=8", "preprocess.eval_fraction=0.2",
         "trainer.keep_checkpoints=3"]


def test_average_last_restores_the_mean_of_the_last_checkpoints(tmp_path: Path):
    examples = preprocess(synthetic_corpus(tmp_path / "toy.tsv", 40), tmp_path / "prep", config(*SMALL))
    out = tmp_path / "train"
    run_training(str(examples), str(out), config(*SMALL, "trainer.epochs=4", "trainer.average_last=3"))
    state = tf.train.get_checkpoint_state(str(out / "checkpoints"))
    last_three = list(state.all_model_checkpoint_paths)[-3:]
    assert len(last_three) == 3
    readers = [tf.train.load_checkpoint(path) for path in last_three]

    model, _, _ = restore_model(str(out))
    assert model.restored_from.startswith("mean of ")
    checked = 0
    for name, variable in vars(model).items():
        if isinstance(variable, tf.Variable):
            key = f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"
            values = [reader.get_tensor(key).astype(np.float64) for reader in readers]
            assert not np.array_equal(values[0], values[2])  # the checkpoints really differ
            np.testing.assert_array_equal(variable.numpy(), (sum(values) / 3).astype(np.float32))
            checked += 1
    assert checked >= 10


def test_average_last_cannot_exceed_the_kept_checkpoints():
    with pytest.raises(ConfigError, match="average_last"):
        config("trainer.keep_checkpoints=2", "trainer.average_last=3")
