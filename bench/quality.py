"""Benchmark: translation quality per minute of CPU, today's defaults against the new ones.

    .venv/bin/python bench/quality.py                                   # dev-en-ko, 10 minutes each
    .venv/bin/python bench/quality.py --data ../shared/data/dev-en-de.tsv --minutes 10
    .venv/bin/python bench/quality.py --recipes new --ablate            # each new element off in turn
    .venv/bin/python bench/quality.py --recipes new --ablate --only "protected spans"
    .venv/bin/python bench/quality.py --recipes new --beam-widths 4       # greedy against beam 4 too

For each recipe, in its own process and one after the other (so each has the machine): preprocess the
TSV (the pipeline's own hash split, eval_fraction 0.05), train under `trainer.max_minutes`, export the
SavedModel, and score the export on the eval split with the evaluator (sacrebleu BLEU and chrF, exact
match, placeholder fidelity and identifier copy rate). Prints one row per recipe: those, eval loss,
training tokens/s and minutes.

Recipes:
- `today`: the defaults this project shipped before the quality work (word-level whitespace
  tokens, no regularization, constant learning rate, 10 epochs), pinned here so they stay comparable.
- `new`: `pipeline/default.yaml` as it is now.
- with --ablate: `new` with each of its new elements switched back off, one run each.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dev-en-ko.tsv"
EVAL_FRACTION = 0.05
# Beam widths compared with greedy decoding on each recipe's export (--beam-widths; empty = none).
BEAM_WIDTHS: list[str] = []

# Today's defaults (pipeline/default.yaml before the quality work), written out in full.
TODAY = {
    "preprocess.tokenizer": "whitespace", "preprocess.max_source_length": 32, "preprocess.max_target_length": 34,
    "model.embedding_dim": 128, "model.units": 256, "model.attention": "bahdanau",
    "model.bidirectional": False, "model.dropout": 0.0, "model.word_dropout": 0.0,
    "trainer.epochs": 10, "trainer.batch_size": 64, "trainer.learning_rate": 0.001,
    "trainer.lr_schedule": "constant", "trainer.warmup_steps": 0, "trainer.label_smoothing": 0.0,
    "trainer.select_by": "loss", "trainer.bucket_by_length": False,
}

# Each element of `new`, as the overrides that toggle it (for --ablate): switched off, or, for word
# dropout (an option the recipe leaves off), switched on.
ABLATIONS: dict[str, dict[str, object]] = {
    "subword units": {"preprocess.tokenizer": "whitespace", "preprocess.max_source_length": 32,
                      "preprocess.max_target_length": 34},
    "bidirectional encoder": {"model.bidirectional": False},
    "dropout": {"model.dropout": 0.0},
    "+ word dropout 0.1": {"model.word_dropout": 0.1},
    "label smoothing": {"trainer.label_smoothing": 0.0},
    "cosine schedule": {"trainer.lr_schedule": "constant", "trainer.warmup_steps": 0},
    "bpe wordpiece learner": {"preprocess.wordpiece_learner": "tensorflow_text"},
    "chrF selection": {"trainer.select_by": "loss"},
    "length bucketing": {"trainer.bucket_by_length": False},
    "protected spans": {"preprocess.protected_spans": "[]"},
    "+ copy attention": {"model.copy_attention": True},
}


def new_recipe() -> dict[str, object]:
    return {}  # pipeline/default.yaml itself


def recipes(names: list[str], ablate: bool, changes: dict[str, str],
            only: tuple[str, ...] = ()) -> dict[str, dict[str, object]]:
    chosen = {name: (TODAY if name == "today" else {**new_recipe(), **changes}) for name in names if name}
    if ablate:
        for element, off in ABLATIONS.items():
            if only and element not in only:
                continue
            label = f"new {element}" if element.startswith("+") else f"new without {element}"
            chosen[label] = {**new_recipe(), **changes, **off}
    return chosen


def overrides(recipe: dict[str, object], minutes: float) -> list[str]:
    values = {"preprocess.eval_fraction": EVAL_FRACTION, **recipe, "trainer.max_minutes": minutes,
              "trainer.warm_start": "never"}
    return [f"{key}={value}" for key, value in values.items()]


def run_one(data: str, workdir: Path, settings: list[str]) -> dict[str, object]:
    """Preprocess, train, export and evaluate one recipe in this process; returns its row."""
    from components.core.threads import configure_cpu_threads
    from components.evaluator import run_evaluation
    from components.exporter import run_export
    from components.preprocess import run_preprocess
    from components.trainer import run_training
    from pipeline.config import load_config

    config = load_config(None, settings)
    # As `seq2seq run` does, before TensorFlow runs its first op (the Beam job's): the thread pools
    # are fixed from then on.
    configure_cpu_threads(config.trainer)
    started = time.monotonic()
    # Recipes with the same corpus and preprocess section share one preprocess output (the ablations
    # of model and trainer elements), as the pipeline's cache would share it.
    # Keyed on the preprocessing code too: an output of older code is not this code's.
    from pipeline.fingerprint import code_digest

    code = code_digest("components.preprocess.executor")
    key = hashlib.sha256(f"{Path(data).resolve()}\n{config.preprocess}\n{code}".encode()).hexdigest()[:12]
    for stale in ("train", "export", "evaluate"):  # a bench run never resumes an earlier one
        shutil.rmtree(workdir / stale, ignore_errors=True)
    examples = workdir.parent / f"preprocess-{key}"
    if not (examples / "_SUCCESS").exists():
        run_preprocess(data, str(examples), config, beam_args=["--runner=DirectRunner"], overwrite=True)
        (examples / "_SUCCESS").write_text("")
    preprocess_minutes = (time.monotonic() - started) / 60
    metrics = run_training(str(examples), str(workdir / "train"), config)
    run_export(str(workdir / "train"), str(workdir / "export"), overwrite=True)
    # Greedy, as every earlier row of this bench (the evaluator scores beam search beside it).
    result = run_evaluation(str(workdir / "export"), str(examples), str(workdir / "evaluate"),
                            dataclasses.replace(config.evaluator, decoder="greedy"))
    evaluation = result["evaluation"]
    decoders = compare_decoders(str(workdir / "export"), str(examples), BEAM_WIDTHS) if BEAM_WIDTHS else {}
    beam = evaluation["decoders"].get("beam") or {}
    return {"decoders": decoders, "bleu": evaluation["bleu"], "chrf": evaluation["chrf"], "exact_match": evaluation["exact_match"],
            "beam_bleu": beam.get("bleu"), "beam_chrf": beam.get("chrf"),
            "placeholder_fidelity": evaluation.get("placeholder_fidelity"),
            "placeholder_sentences": evaluation.get("placeholder_fidelity_count"),
            "copy_rate": evaluation.get("copy_rate"), "copy_count": evaluation.get("copy_rate_count"),
            "eval_loss": metrics.get("best_eval_loss"), "tokens_per_second": metrics.get("train_tokens_per_second"),
            "train_minutes": (metrics.get("wall_time_s") or 0.0) / 60, "preprocess_minutes": preprocess_minutes,
            "epochs": metrics.get("epochs"), "examples": evaluation["examples"]}


def repeated_trigram_share(texts: list[str]) -> float:
    """Percent of outputs in which some word trigram occurs twice (a decoding loop)."""
    def loops(text: str) -> bool:
        words = text.split()
        grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        return len(grams) != len(set(grams))
    return 100.0 * sum(map(loops, texts)) / max(1, len(texts))


def compare_decoders(export: str, examples: str, widths: list[str]) -> dict[str, object]:
    """Greedy against beam search on the eval split, with the exported model: each of `widths` is
    a width ("4") or a width and an n-gram size to block ("4:3")."""
    from components.evaluator import load_references, translate_batches
    from components.serving import BeamOptions, load_translator
    from components.text.metrics import score

    _, sources, references = load_references(examples)
    translator = load_translator(export)
    rows: dict[str, object] = {}
    for setting in ["greedy", *widths]:
        started = time.monotonic()
        if setting == "greedy":
            name, outputs = "greedy", translate_batches(translator, sources)
        else:
            width, _, ngram = setting.partition(":")
            beam = BeamOptions(beam_width=int(width), n_best=1, no_repeat_ngram_size=int(ngram or 0))
            name = f"beam {width}" + (f", no repeated {ngram}-grams" if ngram else "")
            outputs = translate_batches(_Beam(translator, beam), sources)
        texts = [o.translation for o in outputs]
        scores = score(texts, references)
        rows[name] = {"bleu": scores.bleu, "chrf": scores.chrf, "repeated_trigrams": repeated_trigram_share(texts),
                      "seconds": round(time.monotonic() - started, 1)}
    return rows


class _Beam:
    """A translator whose `translate` decodes with the given beam options (for translate_batches)."""

    def __init__(self, translator, beam):
        self.translator, self.beam = translator, beam

    def translate(self, texts):
        return self.translator.translate(texts, beam=self.beam)


def run_in_subprocess(name: str, data: str, workdir: Path, settings: list[str]) -> dict[str, object]:
    out = workdir / "row.json"
    command = [sys.executable, __file__, "--_one", str(out), "--data", data, "--workdir", str(workdir),
               "--settings", json.dumps(settings), "--beam-widths", ",".join(BEAM_WIDTHS)]
    print(f"[{name}] {' '.join(settings)}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads(out.read_text())


def print_decoders(rows: dict[str, dict[str, object]]) -> None:
    if not any(row.get("decoders") for row in rows.values()):
        return
    print("\n| recipe | decoder | BLEU | chrF | outputs with a repeated trigram % | seconds |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        for decoder, d in (row.get("decoders") or {}).items():
            print(f"| {name} | {decoder} | {d['bleu']:.2f} | {d['chrf']:.2f} | {d['repeated_trigrams']:.1f} | "
                  f"{d['seconds']} |")


def print_table(rows: dict[str, dict[str, object]], data: str, minutes: float) -> None:
    print(f"\n{Path(data).name}, training budget {minutes:g} min, 2 cores")
    print("| recipe | BLEU | chrF | exact % | placeholder fidelity % (sentences) | copy rate % (identifiers) "
          "| eval loss | train tokens/s | train min | epochs |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def percent(value: object, count: object) -> str:
        return "—" if value is None else f"{value:.1f} ({count})"

    for name, row in rows.items():
        loss = row["eval_loss"]
        print(f"| {name} | {row['bleu']:.2f} | {row['chrf']:.2f} | {row['exact_match']:.1f} | "
              f"{percent(row.get('placeholder_fidelity'), row.get('placeholder_sentences'))} | "
              f"{percent(row.get('copy_rate'), row.get('copy_count'))} | "
              f"{'—' if loss is None else f'{loss:.3f}'} | {row['tokens_per_second'] or 0:,.0f} | "
              f"{row['train_minutes']:.1f} | {row['epochs']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="source<TAB>target corpus")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per recipe")
    parser.add_argument("--recipes", default="today,new", help="comma-separated: today, new")
    parser.add_argument("--ablate", action="store_true", help="also run `new` with each new element off")
    parser.add_argument("--only", default="", help="with --ablate: comma-separated elements to toggle "
                        f"(of: {', '.join(ABLATIONS)})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the `new` recipe (and its ablations), as `seq2seq --set` would")
    parser.add_argument("--beam-widths", default="",
                        help="beam settings to compare with greedy decoding on each export: widths, or "
                             "WIDTH:N to also block repeated N-grams, e.g. 4,4:3")
    parser.add_argument("--workdir", default="/tmp/bench-quality")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    BEAM_WIDTHS[:] = [w.strip() for w in args.beam_widths.split(",") if w.strip()]
    if args._one:
        # The pipeline's own progress lines (step, loss, tokens/s, dev chrF), also kept in WORKDIR/log.txt.
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=[
            logging.StreamHandler(), logging.FileHandler(Path(args.workdir) / "log.txt")])
        for noisy in ("apache_beam", "absl", "tensorflow"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        row = run_one(args.data, Path(args.workdir), json.loads(args.settings))
        Path(args._one).write_text(json.dumps(row))
        return
    if not Path(args.data).exists():
        sys.exit(f"no corpus at {args.data} (pass --data FILE.tsv)")
    rows = {}
    only = tuple(part.strip() for part in args.only.split(",") if part.strip())
    unknown = [element for element in only if element not in ABLATIONS]
    if unknown:
        sys.exit(f"--only: unknown element {unknown[0]!r}; elements: {', '.join(ABLATIONS)}")
    changes = dict(change.split("=", 1) for change in args.set)
    for index, (name, recipe) in enumerate(recipes(args.recipes.split(","), args.ablate, changes, only).items()):
        workdir = Path(args.workdir) / f"{index}-{name.replace(' ', '_')}"
        rows[name] = run_in_subprocess(name, args.data, workdir, overrides(recipe, args.minutes))
        print(json.dumps({name: rows[name]}), flush=True)
    print_table(rows, args.data, args.minutes)
    print_decoders(rows)


if __name__ == "__main__":
    main()
