"""Serving benchmark: the exported SavedModel, loaded as a downstream user would, against the seed.

    .venv/bin/python bench/serve.py [--steps 20] [--pairs 4000] [--train-epochs 0]

Builds a synthetic corpus, preprocesses it (Beam, DirectRunner), builds the bench/train.py model
size (embedding 128, units 256, bahdanau) -- untrained by default, or trained for
--train-epochs epochs -- and exports it with export.max_decode_length=STEPS. It then loads the
SavedModel with a plain `tf.saved_model.load` and measures, on serving_default:

- sentences/s and decoded tokens/s (<eos> included) at batch 64;
- p50/p95 latency of single-sentence requests, and the p50 of those that decoded exactly STEPS
  tokens (an untrained model rarely emits <eos>, so almost all do);

then the same on beam_search_with_options at widths 1, 4 and 8 (--beam-widths): decoded tokens/s
of the best hypothesis at batch 64, and the single-sentence p50 latency at width 4;

and in the same run executes ../shared/bench/seed_baseline.py --decode-steps STEPS on the same
corpus with the same sizes: its per-sentence eager `prediction` loop decodes exactly STEPS tokens
per sentence. Ratios: our batch-64 tokens/s over the seed's tokens/s (target >= 100x), and the
seed's mean per-sentence latency over our p50 single-sentence latency at STEPS tokens (target >= 10x).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SEED_BASELINE = REPO.parent / "shared" / "bench" / "seed_baseline.py"
BATCH = 64


def make_corpus(path: Path, pairs: int, seed: int = 7) -> list[str]:
    """Synthetic parallel corpus: 5-15 word sources over a 2000-word vocabulary, word-mapped targets."""
    rng = random.Random(seed)
    sources = []
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(pairs):
            words = [f"w{int(rng.paretovariate(1.1)) % 2000}" for _ in range(rng.randint(5, 15))]
            target = [f"t{w[1:]}" for w in reversed(words)]
            f.write(" ".join(words) + "\t" + " ".join(target) + "\n")
            sources.append(" ".join(words))
    return sources


def build_export(work: Path, corpus: Path, steps: int, train_epochs: int) -> str:
    """Preprocess the corpus, build (or briefly train) the bench-size model, export it."""
    from components.preprocess import run_preprocess
    from pipeline.config import load_config

    overrides = [
        "model.embedding_dim=128", "model.units=256", "model.attention=bahdanau",
        "preprocess.max_source_length=20", "preprocess.max_target_length=22", "preprocess.eval_fraction=0.0",
        f"export.max_decode_length={steps}", f"trainer.epochs={max(train_epochs, 1)}", "trainer.batch_size=64",
    ]
    config = load_config(overrides=overrides)
    preprocessed = str(work / "preprocess")
    run_preprocess(str(corpus), preprocessed, config, beam_args=["--runner=DirectRunner"])
    out = str(work / "export")
    if train_epochs > 0:
        from components.exporter import run_export
        from components.trainer import run_training

        run_training(preprocessed, str(work / "train"), config)
        return run_export(str(work / "train"), out)
    from components.core.artifacts import PreprocessArtifact
    from components.exporter.export import export_model
    from components.model.seq2seq import Seq2Seq

    artifact = PreprocessArtifact.load(preprocessed)
    model = Seq2Seq.from_config(config.model, len(artifact.vocabulary("source")),
                                len(artifact.vocabulary("target")), seed=config.trainer.seed)
    return export_model(model, artifact, out, config)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure_served(saved_model: str, sources: list[str], steps: int, batches: int, singles: int) -> dict:
    """Load with plain TensorFlow, as a downstream user would, and time serving_default."""
    import tensorflow as tf

    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    text = lambda batch: tf.constant(batch, tf.string)  # noqa: E731
    serve(text=text(sources[:BATCH]))  # warm-up: first call initializes tables and kernels
    serve(text=text(sources[:1]))

    sentences = tokens = 0
    started = time.perf_counter()
    for i in range(batches):
        batch = [sources[(i * BATCH + j) % len(sources)] for j in range(BATCH)]
        out = serve(text=text(batch))
        tokens += int(out["length"].numpy().sum())
        sentences += len(batch)
    elapsed = time.perf_counter() - started

    latencies, full_length = [], []
    for i in range(singles):
        begin = time.perf_counter()
        out = serve(text=text([sources[i % len(sources)]]))
        length = int(out["length"].numpy()[0])
        latency = time.perf_counter() - begin
        latencies.append(latency)
        if length == steps:
            full_length.append(latency)
    return {
        "batch_sentences_per_s": sentences / elapsed,
        "batch_tokens_per_s": tokens / elapsed,
        "batch_mean_tokens": tokens / sentences,
        "single_p50_ms": 1000 * percentile(latencies, 50),
        "single_p95_ms": 1000 * percentile(latencies, 95),
        "single_full_steps_count": len(full_length),
        "single_full_steps_p50_ms": 1000 * percentile(full_length, 50) if full_length else None,
        "single_requests": singles,
    }


def measure_beam(saved_model: str, sources: list[str], widths: list[int], batches: int, singles: int,
                 latency_width: int = 4) -> dict:
    """Beam search (beam_search_with_options) beside greedy: decoded tokens/s of the best hypothesis
    at batch 64 for each width, and the single-sentence p50 latency at `latency_width`."""
    import tensorflow as tf

    beam = tf.saved_model.load(saved_model).signatures["beam_search_with_options"]

    def call(batch: list[str], width: int):
        return beam(text=tf.constant(batch, tf.string), beam_width=tf.constant(width), n_best=tf.constant(1),
                    length_penalty=tf.constant(-1.0), max_length=tf.constant(0),
                    no_repeat_ngram_size=tf.constant(-1))

    results: dict[str, dict] = {}
    for width in widths:
        call(sources[:BATCH], width)  # warm-up
        tokens, started = 0, time.perf_counter()
        for i in range(batches):
            batch = [sources[(i * BATCH + j) % len(sources)] for j in range(BATCH)]
            tokens += int(call(batch, width)["length"].numpy().sum())
        results[f"width_{width}"] = {"batch_tokens_per_s": tokens / (time.perf_counter() - started)}
    call(sources[:1], latency_width)
    latencies = []
    for i in range(singles):
        begin = time.perf_counter()
        call([sources[i % len(sources)]], latency_width)
        latencies.append(time.perf_counter() - begin)
    results[f"single_width_{latency_width}_p50_ms"] = 1000 * percentile(latencies, 50)
    return results


def run_seed(script: Path, corpus: Path, steps: int, decode: int) -> dict:
    """The seed's eager per-sentence greedy loop, same corpus and sizes, exactly `steps` tokens each."""
    command = [sys.executable, str(script), str(corpus), "--batches", "1", "--batch-size", str(BATCH),
               "--units", "256", "--emb", "128", "--max-len", "20", "--decode", str(decode),
               "--decode-steps", str(steps)]
    print("seed command:", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"seed baseline failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = dict(re.findall(r"^(seed_\w+)=([0-9.eE+-]+)$", done.stdout, flags=re.M))
    return {key: float(value) for key, value in figures.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="decode steps per sentence (both sides)")
    parser.add_argument("--pairs", type=int, default=4000, help="synthetic corpus size")
    parser.add_argument("--batches", type=int, default=30, help="timed batches of 64")
    parser.add_argument("--singles", type=int, default=200, help="timed single-sentence requests")
    parser.add_argument("--seed-decode", type=int, default=20, help="sentences the seed decodes")
    parser.add_argument("--train-epochs", type=int, default=0, help="train briefly first (0 = untrained)")
    parser.add_argument("--seed-baseline", type=Path, default=DEFAULT_SEED_BASELINE)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the corpus and models here")
    parser.add_argument("--beam-widths", default="1,4,8", help="beam widths timed beside greedy ('' = none)")
    args = parser.parse_args()
    if not args.seed_baseline.exists():
        raise SystemExit(f"seed baseline {args.seed_baseline} not found (pass --seed-baseline)")

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus.tsv"
        sources = make_corpus(corpus, args.pairs)
        saved_model = build_export(work, corpus, args.steps, args.train_epochs)
        ours = measure_served(saved_model, sources, args.steps, args.batches, args.singles)
        widths = [int(w) for w in args.beam_widths.split(",") if w.strip()]
        beam = measure_beam(saved_model, sources, widths, args.batches, args.singles) if widths else {}
        seed = run_seed(args.seed_baseline, corpus, args.steps, args.seed_decode)

    seed_latency_ms = 1000.0 / seed["seed_greedy_sentences_per_s"]
    our_latency_ms = ours["single_full_steps_p50_ms"] or ours["single_p50_ms"]
    report = {
        "model": "embedding 128, units 256, bahdanau, " + (
            f"trained {args.train_epochs} epoch(s)" if args.train_epochs else "untrained"),
        "steps": args.steps, "ours": ours, "beam": beam, "seed": seed,
        "seed_mean_latency_ms": seed_latency_ms,
        "tokens_per_s_ratio": ours["batch_tokens_per_s"] / seed["seed_greedy_tokens_per_s"],
        "latency_ratio": seed_latency_ms / our_latency_ms,
    }
    print(f"served batch {BATCH}: {ours['batch_sentences_per_s']:.1f} sentences/s, "
          f"{ours['batch_tokens_per_s']:.0f} decoded tokens/s ({ours['batch_mean_tokens']:.1f} tokens/sentence)")
    print(f"served single sentence: p50 {ours['single_p50_ms']:.2f} ms, p95 {ours['single_p95_ms']:.2f} ms; "
          f"p50 at exactly {args.steps} tokens: {our_latency_ms:.2f} ms "
          f"({ours['single_full_steps_count']}/{ours['single_requests']} requests)")
    print(f"seed (eager, per sentence, {args.steps} steps): {seed['seed_greedy_sentences_per_s']:.2f} sentences/s, "
          f"{seed['seed_greedy_tokens_per_s']:.1f} tokens/s, {seed_latency_ms:.1f} ms/sentence")
    print(f"ratio decoded tokens/s (ours batch {BATCH} / seed): {report['tokens_per_s_ratio']:.1f}x (target >= 100x)")
    print(f"ratio single-sentence latency (seed / ours p50, {args.steps} tokens): "
          f"{report['latency_ratio']:.1f}x (target >= 10x)")
    for width in widths:
        rate = beam[f"width_{width}"]["batch_tokens_per_s"]
        print(f"beam width {width}, batch {BATCH}: {rate:.0f} decoded tokens/s "
              f"({100 * rate / ours['batch_tokens_per_s']:.0f}% of greedy's; target >= 25% at width 4)")
    if beam:
        latency = beam["single_width_4_p50_ms"]
        print(f"beam width 4, single sentence: p50 {latency:.2f} ms "
              f"({latency / ours['single_p50_ms']:.2f}x greedy's p50; target <= 3x)")
    print("json:", json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
