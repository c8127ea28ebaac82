"""Scheduled retraining: the hash split is stable as the corpus grows."""
import pytest
import tensorflow as tf

from components.preprocess import run_preprocess
from pipeline.config import load_config

pytestmark = pytest.mark.slow


def _split_sources(directory, split):
    files = tf.io.gfile.glob(f"{directory}/{split}-*.tfrecord.gz")
    spec = {"source_text": tf.io.FixedLenFeature([], tf.string)}
    return {tf.io.parse_single_example(r, spec)["source_text"].numpy().decode()
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")}


def _write(path, pairs):
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")


def test_growing_corpus_keeps_every_old_pair_in_its_split(tmp_path):
    config = load_config(overrides=["preprocess.eval_fraction=0.3"])
    old = [(f"sentence number {i} here", f"문장 {i} 번") for i in range(150)]
    new = [(f"another sentence {i} now", f"다른 문장 {i}") for i in range(150)]
    _write(tmp_path / "v1.tsv", old)
    run_preprocess(str(tmp_path / "v1.tsv"), str(tmp_path / "p1"), config)
    _write(tmp_path / "v2.tsv", new[:75] + old + new[75:])  # new lines before and after, order changed
    run_preprocess(str(tmp_path / "v2.tsv"), str(tmp_path / "p2"), config)

    old_eval, old_train = _split_sources(tmp_path / "p1", "eval"), _split_sources(tmp_path / "p1", "train")
    new_eval, new_train = _split_sources(tmp_path / "p2", "eval"), _split_sources(tmp_path / "p2", "train")
    assert 20 < len(old_eval) < 80  # about 30% of 150: the split really splits
    assert old_eval <= new_eval and old_train <= new_train
    assert not old_eval & new_train
