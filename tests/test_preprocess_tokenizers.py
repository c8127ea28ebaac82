"""Tokenizers inside the job, and train/serve parity: the artifact's encoder reproduces the TFRecords."""
import numpy as np
import pytest

from components.core.artifacts import PreprocessArtifact
from components.preprocess.examples import serialize_examples
from components.text.artifacts import encoder_for, tokenizer_for
from tests.preprocess_helpers import SEED_TSV, config, read_examples, run, vocab, write_lines
from tests.test_preprocess_runner import synthetic_pairs


def _assert_parity(out):
    """Encoding source_text/target_text with the artifact's SequenceEncoders gives the written ids."""
    artifact = PreprocessArtifact.load(str(out))
    rows = read_examples(out, "train")
    src = encoder_for(artifact, "source").encode_source([r["source_text"] for r in rows])
    tgt = encoder_for(artifact, "target").encode_target([r["target_text"] for r in rows],
                                                        [r["source_text"] for r in rows])
    assert src["source_ids"].numpy().tolist() == [r["source_ids"] for r in rows]
    assert tgt["target_input"].numpy().tolist() == [r["target_input"] for r in rows]
    assert tgt["target_output"].numpy().tolist() == [r["target_output"] for r in rows]
    return artifact, rows


def test_seed_ids_match_the_serving_encoder(tmp_path):
    run(SEED_TSV, tmp_path / "out", config(embedded=True))
    _assert_parity(tmp_path / "out")


def test_unicode_script_splits_punctuation_and_scripts(tmp_path):
    data = write_lines(tmp_path / "c.tsv", ["Hello, world!\t안녕,세상!", "TF2.21rocks\tTF는좋다"])
    out = tmp_path / "out"
    run(data, out, config("preprocess.tokenizer=unicode_script", "preprocess.eval_fraction=0"))
    assert set(vocab(out, "source")[4:]) == {"Hello", ",", "world", "!", "TF", "2.21", "rocks"}
    assert set(vocab(out, "target")[4:]) == {"안녕", ",", "세상", "!", "TF", "는좋다"}
    _assert_parity(out)


@pytest.mark.slow
def test_wordpiece_learns_subwords_and_round_trips(tmp_path):
    data = write_lines(tmp_path / "c.tsv", synthetic_pairs(600))
    out = tmp_path / "out"
    stats = run(data, out, config("preprocess.tokenizer=wordpiece", "preprocess.vocab_pieces=120",
                                  "preprocess.eval_fraction=0", "preprocess.max_target_length=40"))
    pieces = (out / "target.wordpiece.vocab").read_text(encoding="utf-8").split("\n")[:-1]
    assert pieces[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert any(p.startswith("##") for p in pieces) and len(pieces) <= 130
    target_vocab = vocab(out, "target")
    assert any(t.startswith("##") for t in target_vocab) and "<unk>" not in target_vocab[4:]
    artifact, rows = _assert_parity(out)
    # ids -> pieces -> detokenized text gives back the (normalized) target
    tokenizer = tokenizer_for(artifact, "target")
    for row in rows[:50]:
        length = row["target_length"] - 1
        tokens = [[target_vocab[i] for i in row["target_output"][:length]]]
        import tensorflow as tf

        text = tokenizer.detokenize(tf.ragged.constant(tokens)).numpy()[0].decode("utf-8")
        assert text == row["target_text"]
    assert stats["lengths"]["target"]["max"] > stats["lengths"]["source"]["max"] // 2


def test_example_bytes_equal_tf_train_example_serialization():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    ints = {"source_ids": rng.integers(0, 40000, (16, 7)), "source_length": rng.integers(0, 8, 16),
            "target_output": rng.integers(0, 2**40, (16, 5))}
    ints["source_ids"][0, 0] = -3
    texts = {"source_text": [f"문장 {i}".encode() for i in range(16)], "target_text": [b""] * 16}
    fast = serialize_examples(ints, texts)
    for i in range(16):
        feature = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=np.atleast_1d(v[i]).tolist()))
                   for k, v in ints.items()}
        feature.update({k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v[i]])) for k, v in texts.items()})
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        assert fast[i] == example.SerializeToString(deterministic=True)


def test_fast_whitespace_pattern_equals_the_plain_one_on_every_bmp_character():
    import tensorflow as tf

    from components.text.tokenizers import normalize

    chars = [chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    texts = [f"{p}a{c}b {c}{c}c{c} d{s}" for c in chars for p, s in (("", ""), (c, c))]
    plain = tf.strings.strip(tf.strings.regex_replace(texts, r"[\s\p{Z}\x{FEFF}]+", " "))
    assert normalize(tf.constant(texts), lowercase=False).numpy().tolist() == plain.numpy().tolist()
    assert normalize(tf.constant(["\ufeffA\u3000\u00a0B\r\n"]), lowercase=True).numpy().tolist() == [b"a b"]


def test_lowercase_applies_to_vocabularies_and_texts(tmp_path):
    out = tmp_path / "out"
    run(SEED_TSV, out, config("preprocess.lowercase=true", embedded=True))
    assert "i" in vocab(out, "source") and "I" not in vocab(out, "source")
    texts = {r["source_text"] for r in read_examples(out)}
    assert "i feel hungry" in texts
    _assert_parity(out)


@pytest.mark.slow
def test_subword_writes_the_same_pieces_and_examples_as_wordpiece(tmp_path):
    """`subword` is WordPiece in core TF ops: from the same corpus, the same learned pieces,
    vocabularies and TFRecords as the tensorflow-text tokenizer."""
    data = write_lines(tmp_path / "c.tsv", synthetic_pairs(400))
    outputs = {}
    for name in ("wordpiece", "subword"):
        outputs[name] = tmp_path / name
        run(data, outputs[name], config(f"preprocess.tokenizer={name}", "preprocess.vocab_pieces=120",
                                        "preprocess.eval_fraction=0", "preprocess.max_target_length=40"))
    for side in ("source", "target"):
        assert (outputs["subword"] / f"{side}.wordpiece.vocab").read_text() == \
            (outputs["wordpiece"] / f"{side}.wordpiece.vocab").read_text()
        assert vocab(outputs["subword"], side) == vocab(outputs["wordpiece"], side)
    assert read_examples(outputs["subword"], "train") == read_examples(outputs["wordpiece"], "train")
    artifact, _ = _assert_parity(outputs["subword"])
    assert not tokenizer_for(artifact, "target").needs_tensorflow_text


@pytest.mark.slow
def test_each_side_can_have_its_own_tokenizer(tmp_path):
    data = write_lines(tmp_path / "c.tsv", synthetic_pairs(300))
    out = tmp_path / "out"
    stats = run(data, out, config("preprocess.tokenizer=whitespace", "preprocess.target_tokenizer=subword",
                                  "preprocess.vocab_pieces=100",
                                  "preprocess.eval_fraction=0", "preprocess.max_target_length=40"))
    assert not (out / "source.wordpiece.vocab").exists() and (out / "target.wordpiece.vocab").exists()
    assert not any(t.startswith("##") for t in vocab(out, "source"))  # whole whitespace words
    assert any(t.startswith("##") for t in vocab(out, "target"))
    assert stats["tokenizer"] == "source whitespace, target subword"
    artifact, _ = _assert_parity(out)
    assert tokenizer_for(artifact, "source").name == "whitespace"
    assert tokenizer_for(artifact, "target").name == "subword"
