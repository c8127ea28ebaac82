"""The job as a whole: determinism across workers, the CLI, config overrides, Beam options, splits."""
import json
import logging

import pytest

from components.preprocess import inputs
from components.preprocess.transforms import STAGES
from pipeline.cli import main
from tests.preprocess_helpers import config, quarantine, read_examples, run, serialized_examples, vocab, write_lines

STEMS = ["사랑", "학교", "친구", "공부", "음식", "여행", "하늘", "바다", "도시", "노래", "시간", "마음"]
ENDINGS = ["는", "를", "에서", "하고", "입니다", "였다", "으로", "의", "도", "만"]
WORDS = ["the", "a", "school", "friend", "study", "food", "travel", "sky", "sea", "city", "song", "time"]
LEARN_MAX_WORDS = 100


def synthetic_pairs(n: int, seed: int = 0) -> list[str]:
    """Deterministic English-like -> Korean-like TSV lines with agglutinated endings."""
    lines = []
    state = seed * 7919 + 17
    for i in range(n):
        words, korean = [], []
        for j in range(3 + i % 6):
            state = (state * 1103515245 + 12345) % 2**31
            words.append(WORDS[state % len(WORDS)] + ("s" if state % 5 == 0 else ""))
            korean.append(STEMS[state % len(STEMS)] + ENDINGS[(state >> 8) % len(ENDINGS)])
        lines.append(f"{' '.join(words)} {i}\t{' '.join(korean)}")
    return lines


def write_mixed_corpus(root, n=1500):
    """TSV (split into byte ranges by the test), gzip JSONL and CSV, plus a few bad records."""
    lines = synthetic_pairs(n)
    tsv = lines[: n // 2] + ["broken line without tab", "\tmissing source"]
    write_lines(root / "a.tsv", tsv)
    write_lines(root / "b.jsonl.gz", [json.dumps(dict(zip(("source", "target"), l.split("\t"))), ensure_ascii=False)
                                      for l in lines[n // 2: 3 * n // 4]] + ["{oops"], compress=True)
    write_lines(root / "c.csv", ["source,target"] + [l.replace("\t", ",") for l in lines[3 * n // 4:]])
    return root


@pytest.mark.slow
# wordpiece only: it covers the whitespace case's steps and more (learning the pieces); the suite's
# time went to tests/test_portable_runner.py instead.
@pytest.mark.parametrize("tokenizer", ["wordpiece"])
def test_one_worker_and_two_processes_give_identical_outputs(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(inputs, "MIN_RANGE_BYTES", 0)  # several read units per file, so both workers read
    monkeypatch.setattr(inputs, "RANGES_PER_FILE_TARGET", 6)
    data = write_mixed_corpus(tmp_path / "data")
    # A learner sample smaller than either side's distinct train words (source ~1000: a number per
    # pair; target 120 stem+ending words), so that the bounded top-N and its ties by the word
    # decide what the learner sees.
    cfg = config("preprocess.eval_fraction=0.3", f"preprocess.tokenizer={tokenizer}",
                 "preprocess.vocab_pieces=200", "preprocess.max_source_length=8",
                 "preprocess.max_target_length=8", f"preprocess.learn_max_words={LEARN_MAX_WORDS}")
    one = run(data, tmp_path / "one", cfg)
    two = run(data, tmp_path / "two", cfg,
              beam_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    names = ["source.vocab", "target.vocab", "source.vocab.counts.tsv", "target.vocab.counts.tsv"]
    if tokenizer == "wordpiece":
        names += ["source.wordpiece.vocab", "target.wordpiece.vocab"]
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    a, b = serialized_examples(tmp_path / "one"), serialized_examples(tmp_path / "two")
    assert len(a["train"]) > 700 and len(a["eval"]) > 300
    assert a == b
    assert quarantine(tmp_path / "one") == quarantine(tmp_path / "two")
    assert one["shards"]["train"] == 1 and two["shards"]["train"] == 2  # the options reached Beam
    for key in ("records_read", "records_written", "rejected", "lengths", "truncated", "vocabulary_size",
                "eval_unk_rate", "learner_words", "train_words_distinct"):
        assert one[key] == two[key], key
    assert one["learner_words"] == {"source": LEARN_MAX_WORDS, "target": LEARN_MAX_WORDS}
    assert all(n > LEARN_MAX_WORDS for n in one["train_words_distinct"].values()), one["train_words_distinct"]
    for stats in (one, two):  # where the time went, in the workers or the launcher
        seconds = stats["stage_seconds"]
        assert tuple(seconds) == STAGES and all(v >= 0 for v in seconds.values()), seconds
        assert all(seconds[stage] > 0 for stage in ("span_masking", "counting", "learning", "encoding")), seconds


def test_learner_sample_is_the_top_words_by_count_then_word_however_the_counts_arrive():
    """The sample's combiners (the job's WordBuckets -> SumWords -> TopWords), fed the same counts
    split into bundles differently and merged in different orders, give the same exact top N."""
    import random

    from components.preprocess import transforms

    p = config("preprocess.tokenizer=subword", "preprocess.learn_max_words=50").preprocess
    rng = random.Random(0)
    totals = {f"w{i}".encode(): rng.choice([1, 1, 1, 2, 3, 5, 8, 40]) for i in range(2000)}
    expected = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:50]
    assert expected[-1][1] == expected[len(expected) // 2][1]  # ties at the cut: the word decides
    results = []
    for seed in range(3):
        rng = random.Random(seed)
        bundles = [{} for _ in range(1 + seed * 3)]
        for word, count in totals.items():  # a word's count spread over several bundles
            for _ in range(count):
                bundle = rng.choice(bundles)
                bundle[word] = bundle.get(word, 0) + 1
        per_bucket: dict = {}
        for bundle in bundles:
            for (group, bucket), words in transforms.word_buckets({"source": bundle, "target": {}}, p):
                per_bucket.setdefault((group, bucket), []).append(words)
        summed = transforms.SumWordCountsFn()
        top = transforms.TopWordsFn(p.learn_max_words)
        accumulators = []
        for (group, _), parts in sorted(per_bucket.items(), reverse=seed % 2 == 1):
            assert group == "source"
            counts = summed.extract_output(summed.merge_accumulators(
                [summed.add_input(summed.create_accumulator(), part) for part in parts]))
            accumulators.append(top.add_input(top.create_accumulator(), counts))
        rng.shuffle(accumulators)
        results.append(top.extract_output(top.merge_accumulators(accumulators)))
    assert results == [expected] * 3


def test_eval_split_is_stable_when_the_corpus_grows(tmp_path):
    lines = synthetic_pairs(400)
    cfg = config("preprocess.eval_fraction=0.3")
    small = run(write_lines(tmp_path / "small.tsv", lines[:200]), tmp_path / "small", cfg)
    big = run(write_lines(tmp_path / "big.tsv", lines), tmp_path / "big", cfg)
    split_of = {}
    for split in ("train", "eval"):
        for row in read_examples(tmp_path / "big", split):
            split_of[row["source_text"]] = split
    for split in ("train", "eval"):
        for row in read_examples(tmp_path / "small", split):
            assert split_of[row["source_text"]] == split
    assert 40 <= small["records_written"]["eval"] <= 80 and 90 <= big["records_written"]["eval"] <= 150
    assert small["eval_unk_rate"]["source"] is not None


def test_vocabularies_come_from_train_only_with_min_frequency_and_max_size(tmp_path):
    lines = synthetic_pairs(300)
    cfg = config("preprocess.eval_fraction=0.5", "preprocess.min_frequency=2", "preprocess.max_vocab_size=12")
    run(write_lines(tmp_path / "c.tsv", lines), tmp_path / "out", cfg)
    train = read_examples(tmp_path / "out", "train")
    counts = {}
    for row in train:
        for token in row["source_text"].split():
            counts[token] = counts.get(token, 0) + 1
    expected = sorted((t for t, n in counts.items() if n >= 2), key=lambda t: (-counts[t], t))[:8]
    assert vocab(tmp_path / "out", "source") == ["<pad>", "<bos>", "<eos>", "<unk>"] + expected
    assert len(vocab(tmp_path / "out", "target")) == 12


def test_cli_set_overrides_and_beam_args_pass_through(tmp_path):
    data = write_lines(tmp_path / "data" / "a.tsv", synthetic_pairs(40))
    write_lines(tmp_path / "data" / "b.tsv", synthetic_pairs(40, seed=1))
    out = tmp_path / "out"
    code = main(["preprocess", "--data", str(tmp_path / "data"), "--out", str(out),
                 "--set", "preprocess.max_source_length=5", "--set", "preprocess.eval_fraction=0",
                 "--", "--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    assert code == 0 and data.exists()
    rows = read_examples(out)
    assert len(rows) == 80 and all(len(r["source_ids"]) == 5 for r in rows)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"]["train"] == 2  # two workers, one shard each
    assert "max_source_length: 5" in (out / "config.yaml").read_text()


def test_cli_unknown_key_and_bad_runner_fail_clearly(tmp_path, caplog):
    data = write_lines(tmp_path / "a.tsv", ["a\tb"])
    with caplog.at_level(logging.ERROR):
        code = main(["preprocess", "--data", str(data), "--out", str(tmp_path / "out"),
                     "--set", "preprocess.max_src_length=5"])
    assert code == 2 and "preprocess.max_src_length" in caplog.text
    with pytest.raises(ValueError, match="NoSuchRunner"):
        main(["preprocess", "--data", str(data), "--out", str(tmp_path / "out2"), "--", "--runner=NoSuchRunner"])


def test_cli_missing_path_is_one_clear_line(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        code = main(["preprocess", "--data", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "out")])
    assert code == 2 and "nope.tsv: no such file, or the glob matches nothing" in caplog.text


def test_num_shards_gives_exactly_that_many_files_per_split(tmp_path):
    write_lines(tmp_path / "data" / "a.tsv", synthetic_pairs(150))
    write_lines(tmp_path / "data" / "b.tsv", synthetic_pairs(150, seed=1))
    out = tmp_path / "out"
    stats = run(tmp_path / "data", out, config("preprocess.num_shards=3", "preprocess.eval_fraction=0.2"),
                beam_args=["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    for split in ("train", "eval"):
        names = sorted(p.name for p in out.glob(f"{split}-*"))
        assert names == [f"{split}-{i:05d}-of-00003.tfrecord.gz" for i in range(3)]
    assert stats["shards"] == {"train": 3, "eval": 3, "test": 0}
    assert len(read_examples(out, "train")) == stats["records_written"]["train"]
    assert len(read_examples(out, "eval")) == stats["records_written"]["eval"] > 0
    assert not (out / "_shards").exists()


def test_reuse_served_keeps_the_vocabularies_and_maps_new_words_to_unk(tmp_path):
    first = run(write_lines(tmp_path / "a.tsv", synthetic_pairs(100)), tmp_path / "first",
                config("preprocess.eval_fraction=0"))
    grown = write_lines(tmp_path / "b.tsv", synthetic_pairs(100) + ["brandneu words here\t완전히 새로운"])
    cfg = config("preprocess.eval_fraction=0", "preprocess.vocabulary=reuse_served")
    from components.preprocess import run_preprocess

    stats = run_preprocess(str(grown), str(tmp_path / "second"), cfg, served_vocabularies=str(tmp_path / "first"))
    for name in ("source.vocab", "target.vocab", "source.vocab.counts.tsv"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    rows = {r["source_text"]: r for r in read_examples(tmp_path / "second")}
    new = rows["brandneu words here"]
    assert new["source_ids"][:3] == [3, 3, 3] and new["target_output"][:3] == [3, 3, 2]
    assert stats["records_written"]["train"] == first["records_written"]["train"] + 1
    assert stats["vocabularies_from"] == str(tmp_path / "first")
