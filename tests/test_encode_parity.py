"""Train/serve parity of the ids: the Beam job segments with compiled tensorflow-text ops and
encodes each batch in one fused function (`copying.encode_pairs`); the SavedModel keeps the core-op
segmenter and the step-by-step functions. Both must give the same ids, for every tokenizer, on
real localization strings and on random ones."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import tensorflow as tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.export_fixtures import BEAM_ARGS, write_tsv  # noqa: E402

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


def _records(examples: str) -> dict[str, np.ndarray]:
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


def _corpus() -> list[tuple[str, str]]:
    rng = random.Random(5)
    return REAL * 4 + [(_random_text(rng), _random_text(rng)) for _ in range(160)]


@pytest.mark.parametrize("tokenizer", ["subword", "wordpiece", "sentencepiece", "whitespace", "unicode_script"])
def test_beam_ids_equal_the_savedmodel_encode_ids(tmp_path, tokenizer):
    from components.core.artifacts import PreprocessArtifact
    from components.exporter.export import export_model
    from components.model.seq2seq import Seq2Seq
    from components.preprocess import run_preprocess
    from components.text.artifacts import encoder_for
    from components.text.copying import source_copy_ids, source_surface, target_copy_output
    from components.text.tokenizers import normalize
    from pipeline.config import load_config

    pairs = _corpus()
    config = load_config(None, [f"preprocess.tokenizer={tokenizer}", "preprocess.wordpiece_vocab_size=300",
                                "preprocess.max_source_length=24", "preprocess.max_target_length=26",
                                "preprocess.eval_fraction=0", "preprocess.max_length_factor=0",
                                "model.embedding_dim=4", "model.units=4", "model.bidirectional=false"])
    examples = str(tmp_path / "preprocess")
    run_preprocess(str(write_tsv(tmp_path / "corpus.tsv", pairs)), examples, config, beam_args=BEAM_ARGS)
    records = _records(examples)
    raw = {key: pair for key, pair in zip(normalize(tf.constant([s for s, _ in pairs]), False).numpy(), pairs)}
    sources = [raw[key][0] for key in records["source_text"]]
    targets = [raw[key][1] for key in records["source_text"]]
    assert len(sources) > 150 and (records["source_length"] == 24).any()  # truncation exercised

    artifact = PreprocessArtifact.load(examples)
    model = Seq2Seq.from_config(config.model, len(artifact.vocabulary("source")), len(artifact.vocabulary("target")))
    export = export_model(model, artifact, str(tmp_path / "export"), config)
    encoded = tf.saved_model.load(export).signatures["encode"](text=tf.constant(sources))
    np.testing.assert_array_equal(encoded["source_ids"].numpy(), records["source_ids"])
    np.testing.assert_array_equal(encoded["source_length"].numpy(), records["source_length"])

    # The target side and the copy ids, by the serving tokenizer and the step-by-step functions.
    source_encoder, target_encoder = encoder_for(artifact, "source"), encoder_for(artifact, "target")
    target = target_encoder.encode_target(tf.constant(targets), tf.constant(sources))
    for name in ("target_input", "target_output", "target_length"):
        np.testing.assert_array_equal(target[name].numpy(), records[name])
    surface, valid = source_surface(source_encoder, source_encoder.protect(tf.constant(sources))[0])
    np.testing.assert_array_equal(source_copy_ids(surface, valid, target_encoder.table).numpy(),
                                  records["source_copy_ids"])
    masked_targets = target_encoder.protect_target(tf.constant(targets), tf.constant(sources))
    np.testing.assert_array_equal(target_copy_output(target_encoder, masked_targets, surface, valid).numpy(),
                                  records["target_copy_output"])
    if tokenizer in ("subword", "wordpiece"):  # some random words are <unk> pieces
        assert (records["source_ids"] == 3).any()
