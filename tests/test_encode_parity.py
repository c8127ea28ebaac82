"""Train/serve parity of the ids: the Beam job segments with compiled tensorflow-text ops and
encodes each batch in one fused function (`copying.encode_pairs`); an exported model keeps the
core-op segmenter and the step-by-step functions. Both must give the same ids, for every
tokenizer, on real localization strings and on random ones."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import tensorflow as tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export_fixtures import BEAM_ARGS, write_tsv  # noqa: E402

REAL = [
    ("Cannot open file %s", "파일 %s을(를) 열 수 없습니다"),
    ("Deleted %(count)d messages from <b>%(folder)s</b>.", "<b>%(folder)s</b>에서 메시지 %(count)d개를 삭제했습니다."),
    ("{count} files selected", "{count}개 파일 선택됨"),
    ("Save changes to “%1$s” before closing?", "닫기 전에 “%1$s”의 변경 사항을 저장하시겠습니까?"),
    ("Téléchargement terminé : 100 %", "Download abgeschlossen: 100 %"),
    ("Use &lt;Ctrl&gt;+S to save &amp; exit", "저장하고 종료하려면 &lt;Ctrl&gt;+S를 누르세요"),
    ("Run `pip install seq2seq-pipeline` first", "먼저 `pip install seq2seq-pipeline`을 실행하세요"),
    ("Settings", "설정"),
    ("Generate API keys", "API 키 생성"),
    ("Open the file", "파일 열기"),
    ("Close the file", "파일 닫기"),
    ("The file was saved", "파일이 저장되었습니다"),
    ("Übersetzung für %s fehlt", "%s에 대한 번역이 없습니다"),
    ("Error: %d of %d tasks failed", "오류: 작업 %d개 중 %d개 실패"),
    ("Click <a href=\"{url}\">here</a> to continue", "계속하려면 <a href=\"{url}\">여기</a>를 클릭하세요"),
]
_ALPHABET = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éüßçñ가나다라마바사한국어파일"
             ".,:;!?()[]'\"-_/&#")
_PLACEHOLDERS = ["%s", "%d", "%(name)s", "{0}", "{count}", "<b>", "</b>", "&amp;", "%1$s"]


def records_of(examples: str) -> dict[str, np.ndarray]:
    from components.core.artifacts import PreprocessArtifact

    artifact = PreprocessArtifact.load(examples)
    spec = artifact.feature_spec()
    dataset = tf.data.TFRecordDataset(artifact.split_files("train"), compression_type="GZIP").batch(1024)
    parts = [tf.io.parse_example(batch, spec) for batch in dataset]
    return {key: np.concatenate([p[key].numpy() for p in parts]) for key in spec}


def _random_text(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(1, 30)):
        roll = rng.random()
        if roll < 0.1:
            words.append(rng.choice(_PLACEHOLDERS))
        elif roll < 0.13:  # longer than the segmenters' 100-byte word limit
            words.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(60, 120))))
        else:
            words.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 12))))
    separators = [" ", " ", " ", "  ", "\u00a0", "\u3000"]
    return "".join(w + rng.choice(separators) for w in words).strip() or "x"


def write_corpus(path) -> list[tuple[str, str]]:
    pairs = corpus()
    write_tsv(path, pairs)
    return pairs


def corpus() -> list[tuple[str, str]]:
    """Real localization strings and random ones (placeholders, markup, scripts, words longer than
    the 100-byte limit, NBSP and ideographic spaces)."""
    rng = random.Random(5)
    return REAL * 4 + [(_random_text(rng), _random_text(rng)) for _ in range(160)]


def raw_pairs(records: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The raw (source, target) of each record, found by its normalized source text."""
    from components.text.tokenizers import normalize

    raw = {key: pair for key, pair in zip(normalize(tf.constant([s for s, _ in pairs]), False).numpy(), pairs)}
    return [raw[key][0] for key in records["source_text"]], [raw[key][1] for key in records["source_text"]]


# Every tokenizer on one side or the other, in three jobs (each side is encoded by its own code).
SIDE_TOKENIZERS = [("subword", "wordpiece"), ("sentencepiece", "unicode_script"), ("whitespace", "subword")]


@pytest.mark.parametrize("source_tokenizer,target_tokenizer", SIDE_TOKENIZERS)
def test_beam_ids_equal_the_serving_encoders_ids(tmp_path, source_tokenizer, target_tokenizer):
    """The Beam job (compiled segmenters, the fused `encode_pairs`) against the encoders an exported
    model embeds (`encoder_for`: core-op subword, tensorflow-text's WordpieceTokenizer) run step by
    step; tests/test_export.py checks the SavedModel's own `encode` signature on this corpus."""
    from components.core.artifacts import PreprocessArtifact
    from components.preprocess import run_preprocess
    from components.text.artifacts import encoder_for
    from components.text.copying import source_copy_ids, source_surface, target_copy_output
    from pipeline.config import load_config

    config = load_config(None, [f"preprocess.source_tokenizer={source_tokenizer}",
                                f"preprocess.target_tokenizer={target_tokenizer}",
                                "preprocess.vocab_pieces=300", "preprocess.max_source_length=24",
                                "preprocess.max_target_length=26", "preprocess.eval_fraction=0",
                                "preprocess.max_length_factor=0"])
    examples = str(tmp_path / "preprocess")
    pairs = write_corpus(tmp_path / "corpus.tsv")
    run_preprocess(str(tmp_path / "corpus.tsv"), examples, config, beam_args=BEAM_ARGS)
    records = records_of(examples)
    sources, targets = (tf.constant(texts) for texts in raw_pairs(records, pairs))
    assert len(sources) > 150 and (records["source_length"] == 24).any()  # truncation exercised

    artifact = PreprocessArtifact.load(examples)
    source_encoder, target_encoder = encoder_for(artifact, "source"), encoder_for(artifact, "target")
    source = source_encoder.encode_source(sources)
    target = target_encoder.encode_target(targets, sources)
    for name, got in (("source_ids", source), ("source_length", source), ("target_input", target),
                      ("target_output", target), ("target_length", target)):
        np.testing.assert_array_equal(got[name].numpy(), records[name], err_msg=name)
    surface, valid = source_surface(source_encoder, source_encoder.protect(sources)[0])
    np.testing.assert_array_equal(source_copy_ids(surface, valid, target_encoder.table).numpy(),
                                  records["source_copy_ids"])
    masked_targets = target_encoder.protect_target(targets, sources)
    np.testing.assert_array_equal(target_copy_output(target_encoder, masked_targets, surface, valid).numpy(),
                                  records["target_copy_output"])
    for side, name in (("source", source_tokenizer), ("target", target_tokenizer)):
        if name in ("subword", "wordpiece"):  # some random words are <unk> to the learned pieces
            assert (records[f"{side}_ids" if side == "source" else "target_output"] == 3).any()
        # Truncated sides: each written token is counted, from words or a read (a word that
        # straddles the limit counts all its pieces).
        vocabulary, counted = vocabulary_counts(examples, side)
        written = written_token_counts(records, vocabulary, side)
        assert all(counted[token] >= n for token, n in written.items() if token != "<unk>"), side


def test_first_match_equals_comparing_every_pair():
    """`copying._first_match` (one tf.unique over (row, text) pairs) against the plain [B, Q, K]
    comparison, on random rows full of repeats, with padding and unneeded queries."""
    from components.text.copying import _first_match

    rng = np.random.default_rng(3)
    words = np.array([b"a", b"b", b"c", b"", b"12", b"1\x002"], dtype=object)
    queries, keys = words[rng.integers(0, 6, (64, 9))], words[rng.integers(0, 6, (64, 7))]
    query_valid, key_valid = rng.random((64, 9)) < 0.8, rng.random((64, 7)) < 0.7
    needed = rng.random((64, 9)) < 0.6
    first, found = _first_match(tf.constant(queries), tf.constant(query_valid), tf.constant(keys),
                                tf.constant(key_valid), tf.constant(needed))
    equal = (queries[:, :, None] == keys[:, None, :]) & query_valid[:, :, None] & key_valid[:, None, :]
    wanted = needed & query_valid
    np.testing.assert_array_equal(found.numpy(), equal.any(axis=2) & wanted)
    np.testing.assert_array_equal(first.numpy(), np.where(wanted & equal.any(axis=2), equal.argmax(axis=2), 0))
    assert found.numpy().any() and not found.numpy().all()


def written_token_counts(records: dict[str, np.ndarray], vocabulary: list[str], side: str) -> dict[str, int]:
    """{token: count} over a side's ids in the written train records (the target's without <eos>)."""
    ids, lengths = ((records["source_ids"], records["source_length"]) if side == "source"
                    else (records["target_output"], records["target_length"] - 1))
    kept = ids[np.arange(ids.shape[1])[None, :] < lengths[:, None]]
    return {vocabulary[i]: int(n) for i, n in zip(*np.unique(kept, return_counts=True))}


def vocabulary_counts(examples: str, side: str) -> tuple[list[str], dict[str, int]]:
    """SIDE.vocab's tokens and SIDE.vocab.counts.tsv's non-zero counts."""
    rows = [line.rsplit("\t", 1) for line in
            open(f"{examples}/{side}.vocab.counts.tsv", encoding="utf-8").read().splitlines()]
    return [token for token, _ in rows], {token: int(n) for token, n in rows if int(n)}


def test_vocabulary_counts_are_the_written_train_tokens(tmp_path):
    """A learned side's token counts come from the train words' counts, each distinct word
    segmented once (`transforms.CountPiecesFn`), not from another read of the corpus; a whitespace
    side's are its word counts. With no side truncated they are exactly the tokens written, words
    with a glued sentinel (`(%s)`, `%s을(를)`) and <unk> words included."""
    from components.core.spans import slot_of
    from components.preprocess import run_preprocess
    from pipeline.config import load_config

    config = load_config(None, ["preprocess.target_tokenizer=whitespace", "preprocess.vocab_pieces=300",
                                "preprocess.max_source_length=500", "preprocess.max_target_length=502",
                                "preprocess.eval_fraction=0"])
    examples = str(tmp_path / "preprocess")
    write_corpus(tmp_path / "corpus.tsv")
    run_preprocess(str(tmp_path / "corpus.tsv"), examples, config, beam_args=BEAM_ARGS)
    records = records_of(examples)
    stats = json.loads((tmp_path / "preprocess" / "stats.json").read_text())
    assert len(records["source_ids"]) > 150 and stats["truncated"] == {"source": 0, "target": 0}, stats["truncated"]
    for side in ("source", "target"):
        vocabulary, counted = vocabulary_counts(examples, side)
        written = written_token_counts(records, vocabulary, side)
        assert counted == {token: n for token, n in written.items() if token != "<unk>"}, side  # specials: no count
    source_vocabulary, source_counts = vocabulary_counts(examples, "source")
    glued = [token for token in source_counts if token.startswith("##") and slot_of(token) >= 0]
    assert written_token_counts(records, source_vocabulary, "source")["<unk>"] > 0
    assert source_counts["\ue000"] > 0 and glued
