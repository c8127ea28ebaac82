"""No protected span is lost silently (issue 21, items 5 and 7).

- A pair whose source has more spans than there are sentinels (SPAN_SLOTS) is quarantined as
  too_many_spans, with the count, by the real Beam job; its words reach no vocabulary.
- The SavedModel's signatures output unprotected_spans: the spans of a source no sentinel protects
  (past SPAN_SLOTS, or a slot the vocabularies lack). `seq2seq translate` warns and --json reports it,
  and the evaluator's fidelity counts such sentences as failed.
- preprocess.vocabulary=reuse_served with protection on refuses (exit 2) vocabularies without the
  sentinels; and a model with protection on but no sentinels (what the issue pushed with 100%
  fidelity: every span appended after the text by the graph's fallback) is flagged, so its fidelity is 0.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import tensorflow as tf

from components.core.config import ConfigError
from components.core.spans import ALL_SPAN_KINDS, SPAN_SLOTS, find_spans, sentinel
from components.core.vocabulary import SPECIAL_TOKENS
from components.evaluator import fidelity_metrics
from pipeline.cli import main
from tests.preprocess_helpers import config, quarantine, read_examples, vocab, write_lines


def _braces(count: int) -> str:
    return " ".join(f"{{{k}}}" for k in range(count))


# The spans of both sides, in words the corpus has: {k} braces and printf markers.
MANY = " ".join(["%s"] * (SPAN_SLOTS + 1))
FULL = " ".join(["%d"] * SPAN_SLOTS)  # exactly as many as the sentinels: kept
SPAN_LINES = [f"w1 {{{i}}} w2 %s\tt2 %s t1 {{{i}}}" for i in range(10)]
SPAN_LINES += [f"toomany {MANY}\tzuviele {MANY}", f"exactly {FULL}\tgenau {FULL}"]
PROTECTED = ("preprocess.protected_spans=[printf, braces]", "preprocess.eval_fraction=0.0",
             "preprocess.max_source_length=24", "preprocess.max_target_length=26",
             "model.units=16", "model.embedding_dim=8")


@pytest.fixture(scope="module")
def protected(tmp_path_factory) -> dict[str, str]:
    """The real Beam job over a toy corpus with span pairs (protection on), and the SavedModel of an
    untrained tiny model built for it (no training: what is tested is the graph, not the weights)."""
    from components.core.artifacts import PreprocessArtifact
    from components.exporter.export import export_model
    from components.model import Seq2Seq
    from tests.trainer_helpers import config as embedded_config
    from tests.trainer_helpers import preprocess, synthetic_corpus

    root = tmp_path_factory.mktemp("spans")
    data = synthetic_corpus(root / "toy.tsv", 40)
    data.write_text(data.read_text(encoding="utf-8") + "\n".join(SPAN_LINES) + "\n", encoding="utf-8")
    cfg = embedded_config(*PROTECTED)
    examples = preprocess(data, root / "prep", cfg)
    artifact = PreprocessArtifact.load(str(examples))
    model = Seq2Seq.from_config(cfg.model, len(artifact.vocabulary("source")), len(artifact.vocabulary("target")))
    return {"data": str(data), "examples": str(examples), "export": export_model(model, artifact, str(root / "export"), cfg)}


@pytest.fixture(scope="module")
def translator(protected):
    from components.serving.client import load_translator

    return load_translator(protected["export"])


# --------------------------------------------------------------------------------------------
# The Beam job: more spans than sentinels is a quarantine reason with the count
# --------------------------------------------------------------------------------------------

def test_a_source_with_more_spans_than_sentinels_is_quarantined_with_its_count(protected):
    out = Path(protected["examples"])
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["rejected"]["too_many_spans"] == 1 and stats["rejected_total"] == 1
    assert stats["records_written"]["train"] == 40 + len(SPAN_LINES) - 1
    [row] = quarantine(out)
    assert (row["line"], row["reason"]) == (40 + len(SPAN_LINES) - 1, "too_many_spans")
    assert row["detail"].startswith(f"the source has {SPAN_SLOTS + 1} protected spans; the first {SPAN_SLOTS}")
    assert row["raw"] == SPAN_LINES[-2]
    # Neither its words nor its example survive; the pair at the limit does, every span a sentinel.
    assert "toomany" not in vocab(out, "source") and "zuviele" not in vocab(out, "target")
    assert "genau" in vocab(out, "target")
    kept = {r["source_text"].split()[0]: r for r in read_examples(out)}
    assert "toomany" not in kept and "exactly" in kept
    assert sorted(kept["exactly"]["source_ids"][1:SPAN_SLOTS + 1]) == list(range(4, 4 + SPAN_SLOTS))


# --------------------------------------------------------------------------------------------
# The SavedModel flags what it cannot protect; translate warns, --json reports, fidelity counts
# --------------------------------------------------------------------------------------------

def _sources() -> list[str]:
    return [f"w1 {_braces(SPAN_SLOTS + 5)} w2", "w3 {0} w4 %s", "w5 w6"]


def test_the_saved_model_counts_the_spans_past_its_sentinels(translator):
    from components.serving.client import BeamOptions

    assert translator.card["protected_spans"]["max_spans_per_text"] == SPAN_SLOTS
    raw = translator.outputs(_sources())
    assert raw["unprotected_spans"].dtype == "int64" and raw["unprotected_spans"].tolist() == [5, 0, 0]
    for beam in (None, BeamOptions(beam_width=2)):
        results = translator.translate(_sources(), beam=beam)
        assert [r.unprotected_spans for r in results] == [5, 0, 0]
    # What the Beam job encodes is unchanged: the first SPAN_SLOTS spans are sentinels, the rest text.
    tokens = translator.source_tokens(_sources()[:1])[0]
    assert tokens[1:SPAN_SLOTS + 1] == [sentinel(k) for k in range(SPAN_SLOTS)]
    assert tokens[SPAN_SLOTS + 1] == "<unk>"  # "{20}": ordinary text the vocabulary lacks


def test_translate_warns_and_json_reports_unprotected_spans(protected, capsys, caplog):
    caplog.set_level(logging.WARNING)
    code = main(["translate", "--model", protected["export"], "--json", *_sources()])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["unprotected_spans"] for r in records] == [5, 0, 0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["input 1: 5 protected span(s) get no sentinel (more spans than the model's sentinels, or "
                        "sentinels its vocabularies lack): they are ordinary text and may be lost"]


def test_fidelity_counts_sentences_with_unprotected_spans_as_failed(translator):
    sources = _sources()
    results = translator.translate(sources)
    # Hypotheses that keep every span: fidelity would be 100% without the flags.
    hypotheses = sources
    metrics, offenders = fidelity_metrics(sources, hypotheses, sources, ALL_SPAN_KINDS)
    assert metrics["placeholder_fidelity"] == 100.0 and metrics["unprotected_span_sentences"] is None
    metrics, offenders = fidelity_metrics(sources, hypotheses, sources, ALL_SPAN_KINDS,
                                          [r.unprotected_spans for r in results])
    assert metrics["unprotected_span_sentences"] == 1 and offenders == [0]
    assert metrics["placeholder_fidelity"] == 50.0 and metrics["placeholder_fidelity_count"] == 2
    # A model exported before the output: unknown, and fidelity as before.
    metrics, _ = fidelity_metrics(sources, hypotheses, sources, ALL_SPAN_KINDS, [None, None, None])
    assert metrics["unprotected_span_sentences"] is None and metrics["placeholder_fidelity"] == 100.0


# --------------------------------------------------------------------------------------------
# reuse_served without sentinels: refused; a model without sentinels: flagged, fidelity 0
# --------------------------------------------------------------------------------------------

def _vocabulary_folder(root: Path, sentinels: dict[str, int]) -> Path:
    """A served model's assets/ with SIDE.vocab holding the first `sentinels[side]` sentinels."""
    assets = root / "serving" / "1" / "assets"
    assets.mkdir(parents=True)
    for side, count in sentinels.items():
        tokens = list(SPECIAL_TOKENS) + [sentinel(k) for k in range(count)] + ["file", "of", "datei", "von"]
        (assets / f"{side}.vocab").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return assets


@pytest.mark.parametrize("sentinels, missing", [({"source": 0, "target": 0}, (20, 20)),
                                                ({"source": SPAN_SLOTS, "target": 0}, (0, 20)),
                                                ({"source": SPAN_SLOTS, "target": 15}, (0, 5))])
def test_reuse_served_refuses_vocabularies_without_every_sentinel(tmp_path, sentinels, missing):
    from components.preprocess import run_preprocess

    assets = _vocabulary_folder(tmp_path, sentinels)
    data = write_lines(tmp_path / "c.tsv", [f"file {i} of %d\tdatei {i} von %d" for i in range(5)])
    cfg = config("preprocess.protected_spans=[printf]", "preprocess.vocabulary=reuse_served")
    with pytest.raises(ConfigError) as err:
        run_preprocess(str(data), str(tmp_path / "out"), cfg, served_vocabularies=str(assets))
    assert err.value.exit_code == 2
    assert str(err.value) == (
        f"preprocess.vocabulary=reuse_served: the served model {tmp_path}/serving/1 lacks {missing[0]} of the "
        f"{SPAN_SLOTS} protected-span sentinels in its source vocabulary and {missing[1]} of {SPAN_SLOTS} in its "
        "target vocabulary (it was trained without preprocess.protected_spans); set "
        "preprocess.vocabulary=rebuild, or preprocess.protected_spans=[]")
    assert not list(tmp_path.glob("out*"))


def _module_without_sentinels(tmp_path: Path):
    """A ServingModule with protection on over vocabularies that hold no sentinel (as reuse_served
    of an unprotected model made them), around an untrained tiny model."""
    from components.exporter.module import ServingModule
    from components.model import Seq2Seq
    from components.text.encoding import SequenceEncoder
    from components.text.spans import SpanMasker
    from components.text.tokenizers import WhitespaceTokenizer

    tokens = list(SPECIAL_TOKENS) + ["delete", "file", "löschen", "datei", "?"]
    paths = {}
    for side in ("source", "target"):
        paths[side] = tmp_path / f"{side}.vocab"
        paths[side].write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    masker = SpanMasker(ALL_SPAN_KINDS, separate=True, name="source_span_masker")
    encoder = SequenceEncoder(WhitespaceTokenizer(), str(paths["source"]), 16, masker=masker)
    model = Seq2Seq(len(tokens), len(tokens), 8, 8, "bahdanau", seed=0)
    return ServingModule(model, encoder, WhitespaceTokenizer(), str(paths["source"]), str(paths["target"]), 8)


def test_a_model_without_sentinels_is_flagged_so_its_fidelity_is_not_100(tmp_path):
    module = _module_without_sentinels(tmp_path)
    sources = ["delete file %s ?", "delete {0} and {name}", "file"]
    out = module.translate(tf.constant(sources))
    translations = [t.decode() for t in out["translation"].numpy()]
    # Why the issue saw 100%: no token is a sentinel, so every span is appended after the text.
    assert [sorted(find_spans(t, ALL_SPAN_KINDS)) for t in translations] == [["%s"], ["{0}", "{name}"], []]
    assert out["unprotected_spans"].numpy().tolist() == [1, 2, 0]
    metrics, offenders = fidelity_metrics(sources, translations, sources, ALL_SPAN_KINDS,
                                          out["unprotected_spans"].numpy().tolist())
    assert metrics["placeholder_fidelity"] == 0.0 and offenders == [0, 1]
    assert metrics["unprotected_span_sentences"] == 2


def test_the_evaluator_records_how_many_sentences_had_unprotected_spans(protected, tmp_path):
    from components.core.config import EvaluatorConfig
    from components.evaluator import run_evaluation

    result = run_evaluation(protected["export"], protected["examples"], str(tmp_path / "evaluation"),
                            EvaluatorConfig(num_samples=0))
    # Every pair the Beam job kept fits the sentinels (the one with more was quarantined): 0, not unknown.
    assert result["evaluation"]["unprotected_span_sentences"] == 0
    written = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text(encoding="utf-8"))
    assert written["unprotected_span_sentences"] == 0
