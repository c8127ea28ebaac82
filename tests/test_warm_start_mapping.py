"""Warm start across vocabulary changes (issue 25, item 1): rows are mapped by token.

Real (tiny) Seq2Seq models and real checkpoints in the SavedModel's variables layout; the served
model's folder holds what warm start reads (card, vocabularies, variables/).
"""
import dataclasses
import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from components.core.artifacts import PreprocessArtifact
from components.core.vocabulary import SPECIAL_TOKENS
from components.model import Seq2Seq
from components.trainer.warm_start import warm_start
from pipeline.config import load_config

MODEL = dataclasses.replace(load_config(None).model, embedding_dim=8, units=8, bidirectional=False)
SERVED = {"source": ["hello", "world", "file", "open"], "target": ["안녕", "세계", "파일", "열기", "닫기"]}
# The grown corpus: "open" dropped, "close" and "save" new; on the target side two new tokens, an old one moved.
NOW = {"source": ["world", "close", "hello", "file", "save"], "target": ["세계", "안녕", "파일", "저장", "닫기", "열기", "새"]}


def _vocabulary(folder, side, tokens):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{side}.vocab").write_text("".join(t + "\n" for t in [*SPECIAL_TOKENS, *tokens]), encoding="utf-8")


def _model(tokens, seed):
    return Seq2Seq.from_config(MODEL, len(SPECIAL_TOKENS) + len(tokens["source"]),
                               len(SPECIAL_TOKENS) + len(tokens["target"]), seed=seed)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A served model's folder: its card's model shape, assets/SIDE.vocab and variables/variables."""
    root = tmp_path_factory.mktemp("served") / "1"
    for side, tokens in SERVED.items():
        _vocabulary(root / "assets", side, tokens)
    (root / "assets" / "model_card.json").write_text(json.dumps({"model": dataclasses.asdict(MODEL)}))
    model = _model(SERVED, seed=1)
    tf.train.Checkpoint(model=model).write(str(root / "variables" / "variables"))
    return root, model


def _artifact(tmp_path, tokens):
    for side, side_tokens in tokens.items():
        _vocabulary(tmp_path / "prep", side, side_tokens)
    return PreprocessArtifact(str(tmp_path / "prep"))


def _rows(tokens, side):
    return {token: i for i, token in enumerate([*SPECIAL_TOKENS, *tokens[side]])}


def test_each_tokens_row_is_the_served_row_and_new_tokens_keep_fresh_rows(served, tmp_path, caplog):
    root, old = served
    model, fresh = _model(NOW, seed=7), _model(NOW, seed=7)
    with caplog.at_level(logging.INFO, logger="components.trainer.warm_start"):
        record = warm_start(model, str(root), _artifact(tmp_path, NOW), MODEL)
    assert record == {"from": str(root), "source": {"kept": 7, "new": 2, "overlap": 0.7778},
                      "target": {"kept": 9, "new": 2, "overlap": 0.8182}}
    assert "(source 7 rows kept, 2 new; target 9 rows kept, 2 new)" in caplog.text
    for name, side in Seq2Seq.VOCABULARY_ROWS.items():
        got, saved, initial = (getattr(m, name).numpy() for m in (model, old, fresh))
        before, now = _rows(SERVED, side), _rows(NOW, side)
        for token, i in now.items():
            expected = saved[before[token]] if token in before else initial[i]
            np.testing.assert_array_equal(got[i], expected, err_msg=f"{name} row of {token!r}")
    for name, variable in vars(model).items():  # every other variable: the served value, whole
        if isinstance(variable, tf.Variable) and name not in Seq2Seq.VOCABULARY_ROWS:
            np.testing.assert_array_equal(variable.numpy(), getattr(old, name).numpy(), err_msg=name)


def test_identical_vocabularies_restore_every_variable_exactly(served, tmp_path):
    root, old = served
    model = _model(SERVED, seed=3)
    assert warm_start(model, str(root), _artifact(tmp_path, SERVED), MODEL)["source"] == {
        "kept": 8, "new": 0, "overlap": 1.0}
    for got, want in zip(model.variables, old.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_too_little_overlap_trains_from_scratch_saying_why(served, tmp_path, caplog):
    root, _ = served
    other = {"source": ["ein", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht"], "target": NOW["target"]}
    model, fresh = _model(other, seed=5), _model(other, seed=5)
    with caplog.at_level(logging.INFO, logger="components.trainer.warm_start"):
        assert warm_start(model, str(root), _artifact(tmp_path, other), MODEL, min_overlap=0.5) is None
    assert ("warm start: training from scratch because its source vocabulary shares only 33.3% of this run's "
            "source tokens (4 of 12; trainer.warm_start_min_overlap is 0.5)") in caplog.text
    for got, want in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_another_model_shape_is_still_refused(served, tmp_path, caplog):
    root, _ = served
    wider = dataclasses.replace(MODEL, units=12)
    model = Seq2Seq.from_config(wider, 9, 11, seed=0)
    with caplog.at_level(logging.INFO, logger="components.trainer.warm_start"):
        assert warm_start(model, str(root), _artifact(tmp_path, NOW), wider) is None
    assert "training from scratch because model.units differs (served 8, now 12)" in caplog.text
