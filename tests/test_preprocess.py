"""The Beam preprocessing job on the seed corpus: exact vocabularies, ids and output layout."""
import json

import pytest

from tests.preprocess_helpers import SEED_TSV, config, read_examples, run, vocab

SEED_SOURCE_VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>", "is", "tensorflow", "very", "I", "a", "changing",
                     "deep", "difficult", "fast", "feel", "for", "framework", "hungry", "learning"]
SEED_TARGET_VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>", "텐서플로우는", "매우", "고프다", "나는", "딥러닝을",
                     "배가", "변화한다", "빠르게", "어렵다", "위한", "프레임워크이다"]


def _pad(ids, width):
    return ids + [0] * (width - len(ids))


@pytest.fixture(scope="module")
def seed_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed") / "preprocessed"
    stats = run(SEED_TSV.parent, out, config(embedded=True))
    return out, stats


def test_seed_vocabularies_are_exact(seed_out):
    out, _ = seed_out
    assert vocab(out, "source") == SEED_SOURCE_VOCAB
    assert vocab(out, "target") == SEED_TARGET_VOCAB
    counts = (out / "source.vocab.counts.tsv").read_text(encoding="utf-8").splitlines()
    assert counts[:7] == ["<pad>\t0", "<bos>\t0", "<eos>\t0", "<unk>\t0", "is\t3", "tensorflow\t3", "very\t2"]
    assert (out / "target.vocab.counts.tsv").read_text(encoding="utf-8").splitlines()[4] == "텐서플로우는\t3"


def test_seed_examples_have_exact_ids(seed_out):
    out, _ = seed_out
    rows = {tuple(r["source_ids"]): r for r in read_examples(out, "train")}
    assert len(rows) == 4
    # "I feel hungry" -> "나는 배가 고프다"
    first = rows[tuple(_pad([7, 13, 16], 20))]
    assert first["source_length"] == 3
    assert first["target_input"] == _pad([1, 7, 9, 6, 2], 22)
    assert first["target_output"] == _pad([7, 9, 6, 2], 22)
    assert first["target_length"] == 4
    assert (first["source_text"], first["target_text"]) == ("I feel hungry", "나는 배가 고프다")
    # "tensorflow is a framework for deep learning" -> "텐서플로우는 딥러닝을 위한 프레임워크이다"
    longest = rows[tuple(_pad([5, 4, 8, 15, 14, 10, 17], 20))]
    assert longest["source_length"] == 7
    assert longest["target_output"] == _pad([4, 8, 13, 14, 2], 22)
    expected_sources = {tuple(_pad(ids, 20)) for ids in ([7, 13, 16], [5, 4, 6, 11], [5, 4, 8, 15, 14, 10, 17],
                                                          [5, 4, 6, 12, 9])}
    assert set(rows) == expected_sources


def test_seed_output_layout_and_stats(seed_out):
    out, stats = seed_out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.yaml", "quarantine", "source.vocab", "source.vocab.counts.tsv", "stats.json",
                     "target.vocab", "target.vocab.counts.tsv", "train-00000-of-00001.tfrecord.gz"]
    assert not list(out.parent.glob("*.tmp-*")), "the staging folder must be gone after publishing"
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["records_read"] == 4
    assert on_disk["records_written"] == {"train": 4, "eval": 0, "test": 0}
    assert set(on_disk["rejected"].values()) == {0}
    assert on_disk["vocabulary_size"] == {"source": 18, "target": 15}
    assert on_disk["lengths"]["source"]["max"] == 7 and on_disk["lengths"]["target"]["max"] == 4
    assert stats["records_read"] == on_disk["records_read"]
    # Where the time went, by stage (summed over workers); a stage that did not run took 0 s.
    from components.preprocess.transforms import STAGES

    seconds = on_disk["stage_seconds"]
    assert tuple(seconds) == STAGES == ("read", "span_masking", "counting", "learning", "encoding", "writing")
    assert all(isinstance(v, float) and v >= 0 for v in seconds.values()), seconds
    # (reading and writing 4 records can round to 0.000 s; each TensorFlow call takes milliseconds)
    assert seconds["counting"] > 0 and seconds["encoding"] > 0, seconds
    assert seconds["learning"] == 0  # whitespace tokens: nothing is learned
    assert 0 < on_disk["beam_job_seconds"] <= on_disk["elapsed_seconds"]
    assert on_disk["learner_words"] == on_disk["train_words_distinct"] == {"source": None, "target": None}
    from pipeline.config import read_config

    assert read_config(str(out)).preprocess.max_source_length == 20


def test_existing_output_needs_overwrite(seed_out, tmp_path):
    from components.core.errors import UserError

    out, _ = seed_out
    with pytest.raises(UserError, match="already exists"):
        run(SEED_TSV, out, config(embedded=True))
