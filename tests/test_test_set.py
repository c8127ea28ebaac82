"""A fixed test set (issue 23): `seq2seq run/preprocess --test FILE` goes through the corpus' own
validation and encoding into a `test` split, is never learned from, keeps a corpus pair with a test
source out of training and eval, and the evaluator scores it beside the eval split (hypotheses
files, sacrebleu's signatures) and may bless on it. Real Beam on the DirectRunner, a real export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from preprocess_helpers import config, read_examples, write_lines

from components.core.artifacts import Evaluation, PreprocessArtifact
from components.core.config import ConfigError, EvaluatorConfig
from components.core.errors import InputError

CORPUS = [f"w{i % 7} w{i % 5} w{i % 3}\tt{i % 3} t{i % 5} t{i % 7}" for i in range(60)]
# Line 1 is also corpus line 1 (by normalized source: extra spaces); line 2 is new and has a word
# the corpus lacks; line 3 is malformed; line 4 is a blank.
TEST = ["w0   w0 w0\tt0 t0 t0 other", "w6 zebra\tt6 zz", "no tab here", "", "w1 w1 w1\tt1 t1 t1"]


def _sources(examples: list[dict]) -> list[str]:
    return [e["source_text"] for e in examples]


@pytest.fixture(scope="module")
def test_run(tmp_path_factory) -> dict:
    from components.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("test_set")
    corpus, test = write_lines(root / "corpus.tsv", CORPUS), write_lines(root / "test.tsv", TEST)
    cfg = config("preprocess.eval_fraction=0.25")
    out = root / "prep"
    stats = run_preprocess(str(corpus), str(out), cfg, beam_args=["--runner=DirectRunner"], test_data=str(test))
    return {"root": root, "corpus": corpus, "test": test, "out": out, "stats": stats, "config": cfg}


def test_the_test_set_is_its_own_split_and_its_sources_are_never_trained_on(test_run):
    out, stats = test_run["out"], test_run["stats"]
    test = read_examples(out, "test")
    assert _sources(test) == ["w0 w0 w0", "w6 zebra", "w1 w1 w1"]  # normalized, in file order, the bad line out
    assert [e["target_text"] for e in test] == ["t0 t0 t0 other", "t6 zz", "t1 t1 t1"]
    trained = _sources(read_examples(out, "train")) + _sources(read_examples(out, "eval"))
    assert not {"w0 w0 w0", "w1 w1 w1"} & set(trained)
    # CORPUS line i has source "w{i%7} w{i%5} w{i%3}": w0 w0 w0 at i = 0, 105, ...; w1 w1 w1 at i = 1, 106, ...
    overlap = [i for i, line in enumerate(CORPUS) if line.split("\t")[0] in ("w0 w0 w0", "w1 w1 w1")]
    assert stats["rejected"]["in_test_set"] == len(overlap) == 2
    assert stats["records_written"] == {"train": stats["records_written"]["train"],
                                        "eval": stats["records_written"]["eval"], "test": 3}
    assert stats["records_read"] == len(CORPUS) + 4  # the test file's 4 records (the blank is not one)
    assert sum(stats["records_written"].values()) + stats["rejected_total"] == stats["records_read"]
    quarantined = [json.loads(line) for path in (out / "quarantine").glob("rejected-*.jsonl")
                   for line in path.read_text(encoding="utf-8").splitlines()]
    by_reason = {(q["reason"], Path(q["file"]).name, q["line"]) for q in quarantined}
    assert by_reason == {("in_test_set", "corpus.tsv", 1), ("in_test_set", "corpus.tsv", 2),
                         ("wrong_column_count", "test.tsv", 3)}
    assert stats["test_data"] == str(test_run["test"])


def test_nothing_is_learned_from_the_test_set(test_run):
    artifact = PreprocessArtifact.load(str(test_run["out"]))
    assert "zebra" not in artifact.vocabulary("source").tokens and "zz" not in artifact.vocabulary("target").tokens
    test = read_examples(test_run["out"], "test")
    assert test[1]["source_ids"][1] == 3  # <unk>: the word only the test set has


def test_a_test_file_of_the_corpus_itself_is_refused(test_run, tmp_path):
    from components.preprocess import run_preprocess

    with pytest.raises(InputError, match="is also a file of the corpus"):
        run_preprocess(str(test_run["root"] / "corpus.tsv"), str(tmp_path / "out"), test_run["config"],
                       beam_args=["--runner=DirectRunner"], test_data=str(test_run["corpus"]))
    assert not (tmp_path / "out").exists()


def test_the_evaluator_scores_every_split_and_blesses_on_the_chosen_one(test_run, tmp_path):
    from components.evaluator import run_evaluation
    from components.exporter.export import export_model
    from components.model import Seq2Seq
    from components.text.metrics import score

    artifact = PreprocessArtifact.load(str(test_run["out"]))
    cfg = test_run["config"]
    model = Seq2Seq.from_config(cfg.model, len(artifact.vocabulary("source")), len(artifact.vocabulary("target")))
    export = export_model(model, artifact, str(tmp_path / "model"), cfg)

    auto = tmp_path / "auto"
    result = run_evaluation(export, str(test_run["out"]), str(auto), EvaluatorConfig(decoder="greedy"))
    evaluation = result["evaluation"]
    assert evaluation["split"] == "test" and evaluation["examples"] == 3
    assert set(evaluation["splits"]) == {"test", "eval"} and evaluation["splits"]["test"]["blessing"]
    for split, entry in evaluation["splits"].items():
        hypotheses = (auto / entry["hypotheses"]).read_text(encoding="utf-8").split("\n")[:-1]
        references = [e["target_text"] for e in read_examples(test_run["out"], split)]
        assert len(hypotheses) == len(references) == entry["count"]
        assert score(hypotheses, references).bleu == entry["bleu"]
    assert evaluation["bleu"] == evaluation["splits"]["test"]["bleu"]
    assert evaluation["sacrebleu"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert evaluation["sacrebleu"]["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    report = (auto / "report.md").read_text(encoding="utf-8")
    assert "on the **test** split (3 pairs)" in report and "| test | 3 |" in report
    assert f"bleu `{evaluation['sacrebleu']['bleu']}`" in report
    assert Evaluation(str(auto)).evaluation()["splits"] == evaluation["splits"]

    on_eval = run_evaluation(export, str(test_run["out"]), str(tmp_path / "eval"),
                             EvaluatorConfig(decoder="greedy", bless_on="eval"))["evaluation"]
    assert on_eval["split"] == "eval" and on_eval["splits"]["eval"]["blessing"] and not on_eval["splits"]["test"]["blessing"]
    assert on_eval["splits"]["test"]["bleu"] == evaluation["bleu"]


def test_blessing_on_a_missing_test_split_is_a_usage_error(tmp_path):
    from components.evaluator import blessing_split
    from components.preprocess import run_preprocess

    out = tmp_path / "prep"
    run_preprocess(str(write_lines(tmp_path / "corpus.tsv", CORPUS)), str(out), config("preprocess.eval_fraction=0.25"),
                   beam_args=["--runner=DirectRunner"])
    with pytest.raises(ConfigError, match="evaluator.bless_on=test: .* has no test split; pass the test set with"):
        blessing_split(str(out), "test")
    assert blessing_split(str(out), "auto") == blessing_split(str(out), "eval") == "eval"


@pytest.mark.slow
def test_seq2seq_run_with_test_blesses_on_it_and_keys_its_cache_on_the_file(tmp_path, capsys):
    from preprocess_helpers import SEED_TSV

    from pipeline.cli import main

    seed = SEED_TSV.read_text(encoding="utf-8").splitlines()
    corpus = write_lines(tmp_path / "data" / "seed.tsv", seed)
    test = write_lines(tmp_path / "held-out.tsv", [seed[0], "I am hungry\t나는 배가 고프다"])
    artifacts = tmp_path / "artifacts"
    args = ["run", "--data", str(corpus), "--test", str(test), "--artifacts", str(artifacts),
            "--config", str(Path(__file__).resolve().parents[1] / "pipeline" / "embedded.yaml"),
            "--set", "trainer.epochs=3", "--set", "evaluator.decoder=greedy", "--json"]
    assert main(args) in (0, 3)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads(Path(result["manifest"]).read_text(encoding="utf-8"))
    assert manifest["test"] == str(test) and list(manifest["inputs"]["test"]) == [str(test)]
    examples = manifest["components"]["preprocess"]["output"]
    stats = PreprocessArtifact.load(examples).stats()
    assert stats["records_written"] == {"train": 3, "eval": 0, "test": 2} and stats["rejected"]["in_test_set"] == 1
    evaluation = Evaluation(manifest["components"]["evaluate"]["output"]).evaluation()
    assert evaluation["split"] == "test" and evaluation["examples"] == 2 and set(evaluation["splits"]) == {"test"}

    # The test file's bytes are in preprocessing's cache key (another file: another key), as the corpus' are.
    from pipeline.config import load_config
    from pipeline.fingerprint import corpus_fingerprint
    from pipeline.pipeline import PIPELINE
    from pipeline.runner import RunState, fingerprint, resolve_inputs

    def key(test_path) -> str:
        state = RunState("key", str(artifacts), str(corpus), load_config(None, []), [], test=test_path)
        state.corpus = corpus_fingerprint([str(corpus)])
        state.test_files = corpus_fingerprint([test_path]) if test_path else {}
        return fingerprint(state, PIPELINE[0], resolve_inputs(state, PIPELINE[0]))

    before = key(str(test))
    assert key(str(test)) == before and key(None) != before
    write_lines(test, [seed[1]])
    assert key(str(test)) != before
    assert main([*args[:4], str(tmp_path / "missing.tsv"), *args[5:]]) == 2  # a usage error, before anything runs
