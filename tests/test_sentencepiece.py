"""The sentencepiece tokenizer: a SentencePiece unigram model learned in the Beam job, run by
tensorflow-text's op in the job and in the exported SavedModel.

Real Beam on the DirectRunner, tiny multilingual corpora (Korean, German, English, placeholders and
markup), exact values.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from components.core.artifacts import PreprocessArtifact
from components.text.artifacts import encoder_for, tokenizer_for
from tests.preprocess_helpers import config, read_examples, run, vocab, write_lines

# (English, German, Korean): the same UI strings, with printf/format placeholders and markup.
TRIPLES = [
    ("Hello, world!", "Hallo, Welt!", "안녕하세요, 세계!"),
    ("You have {count} new messages.", "Sie haben {count} neue Nachrichten.", "새 메시지가 {count}개 있습니다."),
    ("Delete %s files?", "%s Dateien löschen?", "%s 파일을 삭제할까요?"),
    ("Welcome back, %(name)s!", "Willkommen zurück, %(name)s!", "다시 오신 것을 환영합니다, %(name)s!"),
    ("<b>Warning:</b> the file is too large…", "<b>Warnung:</b> die Datei ist zu groß…",
     "<b>경고:</b> 파일이 너무 큽니다…"),
    ("Greetings from Munich, beautiful street!", "Grüße aus München, schöne Straße!",
     "뮌헨에서 안부를 전합니다, 아름다운 거리!"),
    ("The girl runs over the bridge.", "Das Mädchen läuft über die Brücke.", "소녀가 다리 위를 달립니다."),
]
# Each language on both sides: en -> ko, de -> en, ko -> de.
PAIRS = [pair for en, de, ko in TRIPLES for pair in ((en, ko), (de, en), (ko, de))]
# Pinned, whatever pipeline/default.yaml says: every pair trains, nothing is cut or dropped.
PINNED = ["preprocess.max_source_length=64", "preprocess.max_target_length=66", "preprocess.eval_fraction=0",
          "preprocess.lowercase=false", "preprocess.min_frequency=1", "preprocess.max_vocab_size=null",
          "preprocess.vocab_pieces=150"]


def _corpus(tmp_path: Path) -> Path:
    # Messy raw spacing on some lines: the job and the served model must normalize alike.
    lines = [f"  {s}\u00a0 \t{t}" if i % 4 == 0 else f"{s}\t{t}" for i, (s, t) in enumerate(PAIRS)]
    return write_lines(tmp_path / "corpus.tsv", lines)


def _normalized(texts: list[str]) -> list[str]:
    import tensorflow as tf

    from components.text.tokenizers import normalize

    return [t.decode("utf-8") for t in normalize(tf.constant(texts), lowercase=False).numpy().tolist()]


def _assert_ids_match_the_encoders(out: Path) -> tuple[PreprocessArtifact, list[dict]]:
    """The artifact's encoders, on the raw corpus texts, give the TFRecords' ids."""
    artifact = PreprocessArtifact.load(str(out))
    rows = read_examples(out, "train")
    raw = {"source": dict(zip(_normalized([s for s, _ in PAIRS]), (s for s, _ in PAIRS))),
           "target": dict(zip(_normalized([t for _, t in PAIRS]), (t for _, t in PAIRS)))}
    assert len(rows) == len(PAIRS)
    src = encoder_for(artifact, "source").encode_source([raw["source"][r["source_text"]] for r in rows])
    tgt = encoder_for(artifact, "target").encode_target([raw["target"][r["target_text"]] for r in rows])
    assert src["source_ids"].numpy().tolist() == [r["source_ids"] for r in rows]
    assert src["source_length"].numpy().tolist() == [r["source_length"] for r in rows]
    assert tgt["target_input"].numpy().tolist() == [r["target_input"] for r in rows]
    assert tgt["target_output"].numpy().tolist() == [r["target_output"] for r in rows]
    return artifact, rows


@pytest.fixture(scope="module")
def sentencepiece_run(tmp_path_factory) -> Path:
    """One preprocess output with `preprocess.tokenizer=sentencepiece` on both sides."""
    root = tmp_path_factory.mktemp("sentencepiece")
    out = root / "preprocess"
    run(_corpus(root), out, config("preprocess.tokenizer=sentencepiece", *PINNED))
    return out


# ---------------------------------------------------------------- learning the model


def test_learned_model_settings(tmp_path):
    """Identity normalization, every character covered, no byte pieces, <unk> as the only special
    piece, written atomically; the same model whatever order the counts come in; a vocabulary size
    below the characters' needs grows to fit; no words still give a model."""
    import sentencepiece as spm

    from components.preprocess.learners import learn_sentencepiece_models, train_sentencepiece

    words = {"Straße…": 3, "%(name)s": 2, "안녕하세요": 5, "{count}": 1, "<b>": 4, "Hallo": 2}
    p = config("preprocess.source_tokenizer=sentencepiece", "preprocess.target_tokenizer=whitespace",
               "preprocess.vocab_pieces=60").preprocess
    counts = {"source": {w.encode(): n for w, n in words.items()}, "target": {b"ignored": 1}}
    learned = learn_sentencepiece_models(counts, p, str(tmp_path))
    assert set(learned) == {"source"} and os.listdir(tmp_path) == ["source.sentencepiece.model"]
    assert (tmp_path / "source.sentencepiece.model").read_bytes() == learned["source"]
    backwards = {"source": {w.encode(): n for w, n in reversed(list(words.items()))}}
    assert learn_sentencepiece_models(backwards, p, str(tmp_path / "again"))["source"] == learned["source"]

    model = spm.SentencePieceProcessor(model_proto=learned["source"])
    pieces = [model.id_to_piece(i) for i in range(model.get_piece_size())]
    assert pieces[0] == "<unk>" and model.unk_id() == 0 and model.bos_id() == model.eos_id() == model.pad_id() == -1
    assert not any(p.startswith("<0x") for p in pieces) and len(pieces) <= 60
    for word in words:  # nothing normalized away (NFKC would turn … into ...), nothing unknown
        assert model.decode(model.encode(word)) == word and 0 not in model.encode(word)

    chars = len(set("".join(words)))
    small = spm.SentencePieceProcessor(model_proto=train_sentencepiece(sorted(words.items()), 5))
    assert small.get_piece_size() >= chars + 2
    empty = spm.SentencePieceProcessor(model_proto=train_sentencepiece([], 100))
    assert empty.id_to_piece(0) == "<unk>"


# ---------------------------------------------------------------- the Beam job


@pytest.mark.slow
def test_job_writes_models_and_the_ids_the_serving_encoder_gives(sentencepiece_run):
    import sentencepiece as spm
    import tensorflow as tf

    out = sentencepiece_run
    names = set(os.listdir(out))
    assert {"source.sentencepiece.model", "target.sentencepiece.model"} <= names
    assert not {n for n in names if "wordpiece" in n or ".tmp-" in n}
    for side in ("source", "target"):
        model = spm.SentencePieceProcessor(model_file=str(out / f"{side}.sentencepiece.model"))
        assert model.id_to_piece(0) == "<unk>" and model.get_piece_size() <= 150
        assert vocab(out, side)[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
        assert "<unk>" not in vocab(out, side)[4:]
        assert any(t.startswith("\u2581") for t in vocab(out, side))  # pieces, not whole words
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["tokenizer"] == "sentencepiece" and stats["records_written"] == {"train": len(PAIRS), "eval": 0, "test": 0}
    assert stats["truncated"] == {"source": 0, "target": 0}

    artifact, rows = _assert_ids_match_the_encoders(out)
    # TFRecord ids -> the pipeline's vocabulary -> pieces -> detokenized: the normalized target text.
    tokenizer, target_vocab = tokenizer_for(artifact, "target"), vocab(out, "target")
    assert tokenizer.name == "sentencepiece" and tokenizer.needs_tensorflow_text
    pieces = [[target_vocab[i] for i in r["target_output"][: r["target_length"] - 1]] for r in rows]
    texts = tokenizer.detokenize(tf.ragged.constant(pieces)).numpy().tolist()
    assert [t.decode("utf-8") for t in texts] == [r["target_text"] for r in rows]


@pytest.mark.slow
def test_round_trip_on_korean_german_english_placeholders_and_markup(sentencepiece_run):
    import tensorflow as tf

    from components.core.vocabulary import UNK_ID

    artifact = PreprocessArtifact.load(str(sentencepiece_run))
    texts = [text for triple in TRIPLES for text in triple] + [
        "  Hallo %(name)s,\u3000안녕하세요 <b>{count}</b> Straße…  ",  # new mixes of covered characters
        "%s %s {count}{count} <b></b>",
        "",
    ]
    for side in ("source", "target"):
        tokenizer = tokenizer_for(artifact, side)
        tokens = tokenizer.tokenize(tf.constant(texts))
        assert "<unk>".encode() not in tokens.flat_values.numpy().tolist()
        back = [t.decode("utf-8") for t in tokenizer.detokenize(tokens).numpy().tolist()]
        assert back == _normalized(texts)
    # Characters the model never saw become the pipeline's <unk>.
    tokenizer = tokenizer_for(artifact, "source")
    assert tokenizer.tokenize(tf.constant(["漢字 Hallo"])).to_list()[0][:2] == ["\u2581".encode(), b"<unk>"]
    ids = encoder_for(artifact, "source").encode_source(tf.constant(["漢字"]))["source_ids"].numpy()[0]
    assert UNK_ID in ids.tolist()


@pytest.mark.slow
def test_each_side_can_have_its_own_tokenizer(tmp_path):
    out = tmp_path / "out"
    stats = run(_corpus(tmp_path), out, config(
        "preprocess.source_tokenizer=sentencepiece", "preprocess.target_tokenizer=subword", *PINNED))
    names = set(os.listdir(out))
    assert {"source.sentencepiece.model", "target.wordpiece.vocab"} <= names
    assert not {"target.sentencepiece.model", "source.wordpiece.vocab"} & names
    assert stats["tokenizer"] == "source sentencepiece, target subword"
    assert any(t.startswith("\u2581") for t in vocab(out, "source"))
    assert any(t.startswith("##") for t in vocab(out, "target"))
    artifact, _ = _assert_ids_match_the_encoders(out)
    assert tokenizer_for(artifact, "source").name == "sentencepiece"
    assert tokenizer_for(artifact, "target").name == "subword"
    assert artifact.learned_tokenizer_path("source") == str(out / "source.sentencepiece.model")
    assert artifact.learned_tokenizer_path("target") == str(out / "target.wordpiece.vocab")


# ---------------------------------------------------------------- export


@pytest.mark.slow
def test_exported_model_loads_with_tensorflow_text_and_encodes_as_the_tfrecords(sentencepiece_run, tmp_path):
    from components.core.config import apply_overrides
    from components.exporter.export import export_model
    from components.model.seq2seq import Seq2Seq
    from tests.test_export import parse_records, run_fresh_python

    artifact = PreprocessArtifact.load(str(sentencepiece_run))
    small = apply_overrides(artifact.config, ["model.embedding_dim=16", "model.units=32"])
    model = Seq2Seq.from_config(small.model, len(artifact.vocabulary("source")), len(artifact.vocabulary("target")))
    export = Path(export_model(model, artifact, str(tmp_path / "export"), small))
    card = json.loads((export / "assets" / "model_card.json").read_text(encoding="utf-8"))
    assert card["tokenizer"]["name"] == "sentencepiece" and card["tokenizer"]["needs_tensorflow_text"] is True
    assert card["vocabulary_sizes"]["source_sentencepiece"] <= 150
    assert "import tensorflow_text" in (export / "assets" / "README.md").read_text(encoding="utf-8")
    for side in ("source", "target"):  # the learned models travel as assets (reuse_served reads them there)
        name = f"{side}.sentencepiece.model"
        assert (export / "assets" / name).read_bytes() == (sentencepiece_run / name).read_bytes()

    records = parse_records(artifact.split_files("train"), artifact.feature_spec())
    raw = dict(zip(_normalized([s for s, _ in PAIRS]), (s for s, _ in PAIRS)))
    texts = [raw[key.decode("utf-8")] for key in records["source_text"]]
    out = run_fresh_python("""
        import json, sys
        import tensorflow as tf
        try:
            tf.saved_model.load(sys.argv[1])
            failed_without = False
        except Exception as e:  # the tokenizer's ops are not registered yet
            failed_without = "not registered" in str(e) or "Op type" in str(e)
        import tensorflow_text  # as the model card says
        model = tf.saved_model.load(sys.argv[1])
        encoded = model.signatures["encode"](text=tf.constant(json.loads(sys.argv[2])))
        out = model.signatures["serving_default"](text=tf.constant(["Hallo, Welt!", ""]))
        print(json.dumps({"failed_without": failed_without,
                          "source_ids": encoded["source_ids"].numpy().tolist(),
                          "source_length": encoded["source_length"].numpy().tolist(),
                          "last_translation": out["translation"].numpy()[-1].decode()}))
    """, tmp_path, str(export), json.dumps(texts))
    assert out["failed_without"] is True
    assert out["source_ids"] == records["source_ids"].tolist()
    assert out["source_length"] == records["source_length"].tolist()
    assert out["last_translation"] == ""

    # preprocess.vocabulary=reuse_served takes the models from the SavedModel's assets as they are:
    # the same corpus gives the same files and examples.
    from components.preprocess import run_preprocess
    from tests.preprocess_helpers import serialized_examples

    reused = tmp_path / "reused"
    reuse = apply_overrides(small, ["preprocess.vocabulary=reuse_served"])
    stats = run_preprocess(str(_corpus(tmp_path)), str(reused), reuse, served_vocabularies=str(export / "assets"))
    assert stats["vocabularies_from"] == str(export / "assets")
    for name in ("source.sentencepiece.model", "target.sentencepiece.model", "source.vocab", "target.vocab"):
        assert (reused / name).read_bytes() == (sentencepiece_run / name).read_bytes()
    assert serialized_examples(reused) == serialized_examples(sentencepiece_run)
