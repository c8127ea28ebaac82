"""Fidelity measured and gated: placeholder fidelity and copy rate (components/text/metrics.py), the
evaluator's min_placeholder_fidelity gate, report.md's offenders, and run_evaluation end to end on
a tiny untrained SavedModel."""
from __future__ import annotations

import pytest

from components.core.artifacts import Evaluation, PreprocessArtifact
from components.core.config import EvaluatorConfig
from components.core.spans import ALL_SPAN_KINDS, placeholder_items
from components.evaluator.metrics import Blessing, decide
from components.text.metrics import (
    copy_rate,
    identifiers,
    occurs_as_token,
    placeholder_fidelity,
    span_difference,
)

# (source, reference, hypothesis)
FIDELITY = [
    # 0 counted, fails: one of the two %s is dropped
    ("Delete %s files from %s?", "Supprimer %s fichiers de %s ?", "Supprimer %s fichiers de ?"),
    # 1 counted, kept: positional arguments may swap
    ("%1$s of %2$s", "%2$s von %1$s", "%2$s de %1$s"),
    # 2 not counted: no span in the source
    ("No spans here", "Keine Spans", "rien"),
    # 3 not counted: the reference drops the span
    ("Hello {name}", "Hallo Freund", "Hallo {name}"),
    # 4 counted, fails: &amp; missing and a second {0}
    ("<b>Bold</b> &amp; {0}", "<b>Fett</b> &amp; {0}", "<b>Fett</b> {0} {0}"),
    # 5 counted, kept: %(count)d is one python_format span, not printf %( ...
    ("Save %(count)d items", "%(count)d Elemente speichern", "%(count)d Elemente sichern"),
]


def _columns(rows):
    sources, references, hypotheses = (list(column) for column in zip(*rows))
    return sources, hypotheses, references


def test_placeholder_fidelity_counts_sentences_whose_reference_keeps_the_spans():
    sources, hypotheses, references = _columns(FIDELITY)
    assert placeholder_fidelity(sources, hypotheses, references, ALL_SPAN_KINDS) == (50.0, 4, [0, 4])
    # Only printf spans: sentences 0 and 1 count (sentence 5's %(count)d is not printf).
    assert placeholder_fidelity(sources, hypotheses, references, ("printf",)) == (50.0, 2, [0])
    # A regex of one's own.
    assert placeholder_fidelity(sources, hypotheses, references, (r"\{[a-z]+\}",)) == (None, 0, [])
    # Nothing to count: None, not 0 or 100.
    assert placeholder_fidelity(["plain text"], ["x"], ["y"], ALL_SPAN_KINDS) == (None, 0, [])
    assert placeholder_fidelity(sources, hypotheses, references, ()) == (None, 0, [])
    assert placeholder_fidelity([], [], [], ALL_SPAN_KINDS) == (None, 0, [])


def test_placeholder_fidelity_needs_each_span_as_often_as_in_the_source():
    sources = ["%s and %s", "%s and %s", "%s and %s", "{0} {1}"]
    references = ["%s und %s", "%s und %s", "%s und %s", "{1} {0}"]
    hypotheses = ["%s und %s", "%s und", "%s und %s %s", "{1} {0} "]
    assert placeholder_fidelity(sources, hypotheses, references, ALL_SPAN_KINDS) == (50.0, 4, [1, 2])
    assert placeholder_fidelity(sources[:1] * 3, ["%s %s", "%s %s", "%s"], references[:1] * 3,
                                ALL_SPAN_KINDS) == (66.6667, 3, [2])
    with pytest.raises(ValueError):
        placeholder_fidelity(sources, hypotheses[:1], references, ALL_SPAN_KINDS)


def test_span_difference_names_missing_and_extra_spans():
    assert span_difference("<b>Bold</b> &amp; {0}", "<b>Fett</b> {0} {0}", ALL_SPAN_KINDS) == (["&amp;"], ["{0}"])
    assert span_difference("%s and %s", "und", ALL_SPAN_KINDS) == (["%s", "%s"], [])
    assert span_difference("%1$s %2$s", "%2$s %1$s", ALL_SPAN_KINDS) == ([], [])


def test_identifiers_strip_surrounding_punctuation_and_skip_spans():
    text = 'Call fsync() on `foo.txt`, (see pidfd_open()). Use %s and {0} "x" a_b-c/d. 42 ...'
    assert identifiers(text) == ["Call", "fsync()", "on", "foo.txt", "see", "pidfd_open()", "Use", "and",
                                 "a_b-c/d", "42"]
    assert identifiers("foo foo `foo`") == ["foo"]
    assert identifiers("<b>bold</b> &amp;") == []  # spans are placeholder fidelity's business


def test_occurs_as_token_needs_boundaries():
    assert occurs_as_token("fsync()", "Rufen Sie fsync() auf")
    assert occurs_as_token("fsync()", "fsync()를 호출합니다")  # a Korean particle may touch it
    assert occurs_as_token("foo.txt", "„foo.txt“")
    assert not occurs_as_token("foo", "food")
    assert not occurs_as_token("foo", "_foo")
    assert not occurs_as_token("foo", "barfoo")
    assert not occurs_as_token("naïve", "naïveté")
    assert not occurs_as_token("fsync()", "fsync")


# (source, reference, hypothesis)
COPY = [
    # counted: fsync(), foo.txt ("Call", "on" are not in the reference); copied: fsync()
    ("Call fsync() on `foo.txt`.", "Rufen Sie fsync() für foo.txt auf.", "Rufen Sie fsync() auf."),
    # counted: pidfd_open() (%s is a span); copied
    ("Use pidfd_open() with %s", "pidfd_open()를 %s와 함께 사용", "pidfd_open()을 사용"),
    # counted: foo ("Set" is only a part of "Setze"); not copied: "food" is another word
    ("Set foo", "Setze foo", "Setze food"),
    # nothing counted: no source token in the reference
    ("Open the door", "Öffne die Tür", "Öffne die Tür"),
]


def test_copy_rate_is_the_share_of_reference_identifiers_the_output_keeps():
    sources, hypotheses, references = _columns(COPY)
    assert copy_rate(sources, hypotheses, references) == (50.0, 4)
    assert copy_rate(sources[:1], hypotheses[:1], references[:1]) == (50.0, 2)
    assert copy_rate(sources[1:2], hypotheses[1:2], references[1:2]) == (100.0, 1)
    assert copy_rate(sources[3:], hypotheses[3:], references[3:]) == (None, 0)
    assert copy_rate([], [], []) == (None, 0)
    # An identifier repeated in one sentence counts once.
    assert copy_rate(["foo() foo() bar()"], ["foo()"], ["foo() bar()"]) == (50.0, 2)


def test_code_spans_count_for_the_copy_rate_and_not_for_placeholder_fidelity():
    items = placeholder_items(("printf", "qt", "code"))
    assert items == ("printf", "qt")
    sources, hypotheses, references = _columns(COPY)
    assert copy_rate(sources, hypotheses, references, items) == (50.0, 4)  # fsync(), pidfd_open() counted
    assert placeholder_fidelity(["Call fsync() with %1"], ["fsync() %1"], ["fsync() %1"], items) == (100.0, 1, [])
    assert placeholder_fidelity(["Call fsync()"], ["x"], ["fsync()"], items) == (None, 0, [])


def test_decide_refuses_a_candidate_below_min_placeholder_fidelity():
    blessing = decide(30.0, None, 0.0, 0.0, placeholder_fidelity=57.1429, min_placeholder_fidelity=99.0)
    assert not blessing.blessed
    assert blessing.reason == "placeholder fidelity 57.1% is below evaluator.min_placeholder_fidelity 99.0%"
    assert blessing.placeholder_fidelity == 57.1429 and blessing.min_placeholder_fidelity == 99.0
    assert blessing.to_dict()["placeholder_fidelity"] == 57.1429
    # Enough digits that the numbers differ; a better served model does not matter.
    assert decide(30.0, 10.0, 0.0, 0.0, placeholder_fidelity=99.95, min_placeholder_fidelity=100.0).reason \
        == "placeholder fidelity 99.95% is below evaluator.min_placeholder_fidelity 100.0%"
    # BLEU below min_bleu still says so first.
    assert "evaluator.min_bleu" in decide(5.0, None, 0.0, 10.0, placeholder_fidelity=0.0,
                                          min_placeholder_fidelity=50.0).reason


def test_decide_lets_through_no_fidelity_a_zero_floor_and_an_equal_one():
    none = decide(30.0, None, 0.0, 0.0, placeholder_fidelity=None, min_placeholder_fidelity=100.0)
    assert none.blessed and none.reason == "no model in service; BLEU passes evaluator.min_bleu"
    assert decide(30.0, None, 0.0, 0.0, placeholder_fidelity=0.0, min_placeholder_fidelity=0.0).blessed
    assert decide(30.0, 30.0, 0.0, 0.0, placeholder_fidelity=99.0, min_placeholder_fidelity=99.0).blessed
    # The old call still works and records no fidelity.
    old = decide(10.0, None, 0.0, 0.0)
    assert old.blessed and old.placeholder_fidelity is None and old.min_placeholder_fidelity == 0.0
    assert "worse than the served model" in decide(5.0, 10.0, 0.0, 0.0, placeholder_fidelity=100.0,
                                                   min_placeholder_fidelity=100.0).reason


def test_report_lists_the_worst_placeholder_offenders_first(tmp_path):
    from components.evaluator import worst_offenders
    from components.evaluator.report import write_report

    sources, hypotheses, references = _columns(FIDELITY)
    _, _, offenders = placeholder_fidelity(sources, hypotheses, references, ALL_SPAN_KINDS)
    worst = worst_offenders(offenders, sources, hypotheses, references, ALL_SPAN_KINDS)
    assert [(row["index"], row["missing"], row["extra"]) for row in worst] == [(4, ["&amp;"], ["{0}"]),
                                                                               (0, ["%s"], [])]
    assert worst_offenders(offenders, sources, hypotheses, references, ALL_SPAN_KINDS, limit=1)[0]["index"] == 4
    evaluation = {"split": "eval", "examples": 6, "bleu": 20.0, "chrf": 40.0, "exact_match": 0.0,
                  "placeholder_fidelity": 50.0, "placeholder_fidelity_count": 4, "copy_rate": None,
                  "copy_rate_count": 0, "fidelity_spans": list(ALL_SPAN_KINDS),
                  "baseline": {"bleu": 10.0, "chrf": 30.0, "exact_match": 0.0, "placeholder_fidelity": 25.0,
                               "placeholder_fidelity_count": 4, "copy_rate": 80.0, "copy_rate_count": 5}}
    blessing = Blessing(False, "placeholder fidelity 50.0% is below evaluator.min_placeholder_fidelity 99.0%",
                        20.0, 10.0, 0.0, 0.0, placeholder_fidelity=50.0, min_placeholder_fidelity=99.0)
    write_report(str(tmp_path), evaluation, blessing, [], [], offenders=worst)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| placeholder_fidelity (counted) | 50.00 (4) | 25.00 (4) |" in report
    assert "| copy_rate (counted) | — | 80.00 (5) |" in report
    section = report.split("## Placeholder offenders", 1)[1]
    assert section.index("<b>Bold</b> &amp; {0}") < section.index("Delete %s files from %s?")
    assert "| <b>Bold</b> &amp; {0} | <b>Fett</b> &amp; {0} | <b>Fett</b> {0} {0} | missing `&amp;`; extra `{0}` |" \
        in section
    assert "| Delete %s files from %s? | Supprimer %s fichiers de %s ? | Supprimer %s fichiers de ? | missing `%s` |" \
        in section

    write_report(str(tmp_path), evaluation, blessing, [], [])
    assert "## Placeholder offenders" not in (tmp_path / "report.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------- run_evaluation end to end

# source<TAB>target lines with spans and identifiers, among the toy pairs (spans appear once each, so
# max_vocab_size keeps them out of the target vocabulary: the model cannot write them).
SPAN_PAIRS = [
    "w1 %s w2\tt2 %s t1",
    "w3 %1$s w4 %2$s\tt4 %2$s t3 %1$s",
    "w5 {0} w6\tt6 {0} t5",
    "w7 <b> w8 </b>\t<b> t8 </b> t7",
    "w9 &amp; w10\tt10 &amp; t9",
    "w11 {name} w12\tt12 t11",  # the reference drops the span: not counted
    "Call fsync() w13\tfsync() t13",
    "w14 foo.txt w15\tt15 foo.txt t14",
]
# Protection off: the evaluator then measures with every span kind (ALL_SPAN_KINDS).
TOY = ("preprocess.protected_spans=[]", "preprocess.eval_fraction=0.0", "preprocess.max_source_length=8",
       "preprocess.max_target_length=10", "preprocess.max_vocab_size=34", "model.units=16", "model.embedding_dim=8")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """A preprocess output with span pairs, and an export of an untrained tiny model."""
    from components.exporter.export import export_model
    from components.model import Seq2Seq
    from tests.trainer_helpers import config, preprocess, synthetic_corpus

    root = tmp_path_factory.mktemp("fidelity")
    data = synthetic_corpus(root / "toy.tsv", 60)
    data.write_text(data.read_text(encoding="utf-8") + "\n".join(SPAN_PAIRS) + "\n", encoding="utf-8")
    cfg = config(*TOY)
    examples = preprocess(data, root / "prep", cfg)
    artifact = PreprocessArtifact.load(str(examples))
    target_vocabulary = artifact.vocabulary("target")
    assert not {"%s", "{0}", "<b>", "&amp;", "fsync()", "foo.txt"} & set(target_vocabulary.tokens), \
        "the test needs the spans and identifiers out of the target vocabulary"
    model = Seq2Seq.from_config(cfg.model, len(artifact.vocabulary("source")), len(target_vocabulary))
    return {"examples": str(examples), "model": export_model(model, artifact, str(root / "export"), cfg)}


@pytest.mark.slow
def test_run_evaluation_measures_records_reports_and_gates_fidelity(tiny, tmp_path):
    from components.evaluator import run_evaluation

    out = tmp_path / "eval"
    run_evaluation(tiny["model"], tiny["examples"], str(out), EvaluatorConfig(), baseline_model=tiny["model"])
    evaluation = Evaluation(str(out)).evaluation()
    assert evaluation["examples"] == 68
    assert (evaluation["placeholder_fidelity"], evaluation["placeholder_fidelity_count"]) == (0.0, 5)
    assert (evaluation["copy_rate"], evaluation["copy_rate_count"]) == (0.0, 2)
    assert evaluation["fidelity_spans"] == list(ALL_SPAN_KINDS)
    assert evaluation["baseline"]["placeholder_fidelity"] == 0.0 and evaluation["baseline"]["copy_rate_count"] == 2
    blessing = Evaluation(str(out)).blessing()
    assert blessing["blessed"] is True  # min_placeholder_fidelity 0: measured, not gated
    assert blessing["placeholder_fidelity"] == 0.0 and blessing["min_placeholder_fidelity"] == 0.0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| placeholder_fidelity (counted) | 0.00 (5) | 0.00 (5) |" in report
    offenders = report.split("## Placeholder offenders", 1)[1]
    assert "| w3 %1$s w4 %2$s | t4 %2$s t3 %1$s |" in offenders and "missing `%1$s`, `%2$s`" in offenders
    assert offenders.index("w3 %1$s") < offenders.index("w1 %s")  # two spans missing before one
    assert "{name}" not in offenders

    strict = tmp_path / "strict"
    run_evaluation(tiny["model"], tiny["examples"], str(strict), EvaluatorConfig(min_placeholder_fidelity=100.0))
    blessing = Evaluation(str(strict)).blessing()
    assert blessing["blessed"] is False
    assert blessing["reason"] == "placeholder fidelity 0.0% is below evaluator.min_placeholder_fidelity 100.0%"
    assert Evaluation(str(strict)).summary()["blessed"] is False
