"""Benchmark: the trainer's compiled train step against the seed's eager loop, and against tf.matmul.

    .venv/bin/python bench/train.py                  # 20,000 pairs, batch 64, emb 128, units 256, bahdanau
    .venv/bin/python bench/train.py --precision mixed_bfloat16
    .venv/bin/python bench/train.py --lengths uniform --vocab 5000    # the corpus of the first measurements
    .venv/bin/python bench/train.py --pairs 40000 --epochs 2 --no-seed
    .venv/bin/python bench/train.py --workers 2 --pairs 4000 --no-seed   # 1 process against 2 workers

1. Generates a synthetic parallel corpus: Zipf-distributed words from a vocabulary of --vocab
   words, a word-for-word "translation" with local reordering, and sentence lengths like those of
   short everyday sentences (Tatoeba, the corpus of the TensorFlow NMT tutorial the seed comes
   from: median 7 tokens, a tail to the 20-token limit), or uniform over 5-20 with --lengths uniform.
2. Preprocesses it with the real Beam job (DirectRunner) into the trainer's TFRecords.
3. Trains with `run_training` (bucket_by_length on) and reads steady-state real target tokens/s
   from metrics.json (first step, which traces, excluded; eval excluded).
4. Prints the model FLOPs per real target token (formula below), the achieved GFLOP/s and its
   fraction of a large tf.matmul's GFLOP/s measured in this same run (best of a measurement just
   before and just after training, float32 and bfloat16, each in a fresh process with
   TensorFlow's default thread pools, so that the one matmul uses every core).
5. Runs /work/shared/bench/seed_baseline.py (the seed's eager loop) on the same TSV with the same
   hyperparameters as a subprocess and prints the tokens/s ratio.

FLOPs per real target token (a matmul [m,k]x[k,n] counts 2mkn; training = 3x forward: the forward
pass, and the two matmuls of its backward pass), with E embedding, U units, V target vocabulary,
S/T the mean real source/target lengths (T counts <eos>):
    decoder   2E*3U (input) + 2U*3U (context) + 2U*4U (recurrent + attention query, fused)
              + 4*S*U (scores V·tanh(.) and context over S positions) + 2U*V (vocabulary projection)
    encoder   (S/T) * (2E*3U + 2U*3U + 2U*U)     (input, recurrent, attention keys W1·enc)
Elementwise work (gates, tanh, softmax) and padding are not counted: the figure is useful FLOPs.

With --workers N, the same training also runs as N local workers of a multi-worker cluster
(trainer.distribution=multi_worker, TF_CONFIG on loopback ports, one core each, the same global
batch), and the bench prints both tokens/s and the all-reduce share of a step: the time one
all-reduce of the model's gradients takes between the workers (timed alone in the same cluster
shape), over the mean step time of the workers' run. On one machine the workers split the same
cores the single process uses, so this shows the overhead of distribution, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
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
SEED_BASELINE = REPO.parent / "shared" / "bench" / "seed_baseline.py"
EMBEDDING, UNITS, BATCH = 128, 256, 64


def make_words(rng: random.Random, count: int, syllables: list[str]) -> list[str]:
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


PARTICLES = ["은", "을", "에", "가", "로", "와"]


def sentence_length(rng: random.Random, lengths: str) -> int:
    """`tatoeba`: right-skewed like short everyday sentences (median 7 tokens, a tail to 20);
    `uniform`: 5-20 tokens."""
    if lengths == "uniform":
        return rng.randint(5, 20)
    return min(20, max(3, round(rng.lognormvariate(math.log(7), 0.4))))


def generate_corpus(path: Path, pairs: int, vocab: int, lengths: str = "tatoeba", forms: int = 1,
                    seed: int = 0) -> None:
    """Zipf-distributed source words, translated word for word with local swaps (learnable).

    With `forms` > 1 each target word takes one of `forms` particles chosen by its position, the
    way a Korean eojeol is a stem plus a particle: the target vocabulary is larger than the source's.
    """
    rng = random.Random(seed)
    source_words = make_words(rng, vocab, ["ka", "to", "ri", "me", "su", "la", "no", "pe", "di", "gu", "an", "el"])
    target_words = make_words(rng, vocab, ["가", "나", "다", "라", "마", "바", "사", "아", "자", "차", "카", "타"])
    rng.shuffle(target_words)
    weights = [1.0 / (rank + 1) ** 1.05 for rank in range(vocab)]
    with path.open("w", encoding="utf-8") as f:
        for _ in range(pairs):
            ranks = rng.choices(range(vocab), weights=weights, k=sentence_length(rng, lengths))
            target = [target_words[r] + (PARTICLES[i % forms] if forms > 1 else "") for i, r in enumerate(ranks)]
            for i in range(0, len(target) - 1, 3):  # local reordering
                target[i], target[i + 1] = target[i + 1], target[i]
            f.write(" ".join(source_words[r] for r in ranks) + "\t" + " ".join(target) + "\n")


def flops_per_token(E: int, U: int, V: int, S: float, T: float) -> dict[str, float]:
    decoder = 2 * E * 3 * U + 2 * U * 3 * U + 2 * U * 4 * U + 4 * S * U + 2 * U * V
    encoder = (S / T) * (2 * E * 3 * U + 2 * U * 3 * U + 2 * U * U)
    forward = decoder + encoder
    return {"forward": forward, "train": 3 * forward, "projection_share": 2 * U * V / forward}


def matmul_gflops(dtype: str = "float32", n: int = 2048, repeats: int = 10) -> float:
    """Best-of-repeats GFLOP/s of one compiled [n,n]x[n,n] tf.matmul on this machine, now, in a fresh
    process with TensorFlow's default thread pools (all cores on the one matmul): the trainer's
    process runs one thread per op, which would halve this reference."""
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from bench.train import _matmul_gflops; " \
           f"print(_matmul_gflops({dtype!r}, {n}, {repeats}))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if run.returncode != 0:
        raise SystemExit(f"matmul reference failed:\n{run.stderr[-2000:]}")
    return float(run.stdout.strip().splitlines()[-1])


def _matmul_gflops(dtype: str, n: int, repeats: int) -> float:
    import tensorflow as tf

    a, b = tf.cast(tf.random.normal([n, n]), dtype), tf.cast(tf.random.normal([n, n]), dtype)
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def mean_lengths(examples: str) -> tuple[float, float, int]:
    """Mean real source length, mean target_length (with <eos>), target vocabulary size."""
    import tensorflow as tf

    from components.core.artifacts import PreprocessArtifact

    artifact = PreprocessArtifact.load(examples)
    spec = {k: v for k, v in artifact.feature_spec().items() if k in ("source_length", "target_length")}
    sources = targets = count = 0
    for batch in tf.data.TFRecordDataset(artifact.split_files("train"), "GZIP").batch(4096):
        parsed = tf.io.parse_example(batch, spec)
        sources += int(tf.reduce_sum(parsed["source_length"]))
        targets += int(tf.reduce_sum(parsed["target_length"]))
        count += int(batch.shape[0])
    return sources / count, targets / count, len(artifact.vocabulary("target"))


def gradient_shapes(train_dir: Path) -> list[list[int]]:
    """The shapes of the model's variables (what a train step all-reduces), from a checkpoint."""
    import tensorflow as tf

    checkpoint = tf.train.latest_checkpoint(str(train_dir / "checkpoints"))
    return [shape for name, shape in tf.train.list_variables(checkpoint)
            if name.startswith("model/") and name.endswith("/.ATTRIBUTES/VARIABLE_VALUE")]


def _allreduce_seconds(shapes_json: str, repeats: int = 50) -> None:
    """In a worker of a cluster (TF_CONFIG): time an all-reduce of tensors of SHAPES, as a train
    step reduces its gradients; the chief prints the mean seconds."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tensors = [tf.ones(shape) for shape in json.loads(shapes_json)]

    @tf.function
    def reduce_all():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tensors))

    for _ in range(5):
        reduce_all()
    start = time.perf_counter()
    for _ in range(repeats):
        tf.nest.map_structure(lambda t: t.numpy(), strategy.experimental_local_results(reduce_all()))
    if strategy.cluster_resolver.task_id == 0:
        print(f"ALLREDUCE_SECONDS {(time.perf_counter() - start) / repeats}")


def run_workers(workers: int, prep: Path, out: Path, overrides: list[str], target_tokens: float) -> dict[str, float]:
    """Train as WORKERS local workers; tokens/s from the chief's metrics.json and the all-reduce
    share of a step."""
    from pipeline.local_cluster import LocalCluster, train_command

    args = ["--examples", str(prep), "--out", str(out)] + [a for o in overrides for a in ("--set", o)]
    with LocalCluster(train_command(args), workers, out.parent / f"{out.name}-logs", cwd=REPO) as cluster:
        cluster.start()
        if cluster.wait_all(timeout=7200) != [0] * workers:
            raise SystemExit(f"the workers failed:\n{cluster.log(0)[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    shapes = json.dumps(gradient_shapes(out))
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from bench.train import _allreduce_seconds; " \
           f"_allreduce_seconds({shapes!r})"
    with LocalCluster(["-c", code], workers, out.parent / f"{out.name}-allreduce", cwd=REPO) as cluster:
        cluster.start()
        if cluster.wait_all(timeout=600) != [0] * workers:
            raise SystemExit(f"the all-reduce timing failed:\n{cluster.log(0)[-3000:]}")
        allreduce = float(cluster.log(0).split("ALLREDUCE_SECONDS ")[1].split()[0])
    tokens_per_second = metrics["train_tokens_per_second"]
    step_seconds = target_tokens / tokens_per_second
    return {"tokens_per_second": tokens_per_second, "allreduce_seconds": allreduce, "step_seconds": step_seconds,
            "allreduce_share": allreduce / step_seconds, "parameters": sum(math.prod(s) for s in json.loads(shapes))}


def run_seed(corpus: Path, pairs: int, batches: int) -> float:
    command = [sys.executable, str(SEED_BASELINE), str(corpus), "--batches", str(batches), "--batch-size",
               str(BATCH), "--units", str(UNITS), "--emb", str(EMBEDDING), "--max-len", "20",
               "--pairs", str(pairs), "--decode", "1"]
    print("$ " + " ".join(command), flush=True)
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    match = re.search(r"seed_train_tokens_per_s=([0-9.]+)", run.stdout)
    if run.returncode != 0 or not match:
        raise SystemExit(f"seed baseline failed ({run.returncode}):\n{run.stderr[-2000:]}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--vocab", type=int, default=8000, help="words per side before Zipf sampling")
    parser.add_argument("--lengths", default="tatoeba", choices=["tatoeba", "uniform"],
                        help="sentence lengths: tatoeba (median 7, tail to 20) or uniform 5-20")
    parser.add_argument("--forms", type=int, default=1,
                        help="particles per target word, Korean-style (1: none; 4 roughly triples the target vocabulary)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--attention", default="bahdanau", choices=["bahdanau", "luong", "none"])
    parser.add_argument("--no-bucket", action="store_true", help="train without length bucketing")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"],
                        help="model.precision (mixed_bfloat16: bfloat16 matmul inputs, float32 elsewhere)")
    parser.add_argument("--sub-batches", type=int, default=0,
                        help="trainer.sub_batches (0: auto, one per core; 1: one chain with multi-threaded ops)")
    parser.add_argument("--seed-batches", type=int, default=10, help="batches the seed baseline times")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed baseline")
    parser.add_argument("--workers", type=int, default=1,
                        help="also train as this many local workers (multi_worker) and compare")
    parser.add_argument("--workdir", help="keep the corpus and outputs here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse WORKDIR/corpus.tsv and WORKDIR/prep from an earlier run with the same sizes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("components.trainer.training").setLevel(logging.INFO)

    from components.core.threads import configure_cpu_threads
    from components.preprocess import run_preprocess
    from components.trainer import run_training
    from pipeline.config import load_config

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.tsv"
    recipe = {"pairs": args.pairs, "vocab": args.vocab, "lengths": args.lengths, "forms": args.forms}
    recipe_file = work / "corpus.json"
    same_recipe = not recipe_file.exists() or json.loads(recipe_file.read_text()) == recipe
    reuse = args.reuse and same_recipe and corpus.exists() and (work / "prep" / "config.yaml").exists()
    if not reuse:
        generate_corpus(corpus, args.pairs, args.vocab, args.lengths, args.forms)
        recipe_file.write_text(json.dumps(recipe))
    overrides = ["preprocess.max_source_length=20", "preprocess.max_target_length=22",
                 f"model.embedding_dim={EMBEDDING}", f"model.units={UNITS}", f"model.attention={args.attention}",
                 f"model.precision={args.precision}",
                 f"trainer.batch_size={BATCH}", f"trainer.epochs={args.epochs}", "trainer.learning_rate=0.001",
                 f"trainer.bucket_by_length={not args.no_bucket}", "trainer.log_every_steps=50",
                 f"trainer.sub_batches={args.sub_batches}"]
    config = load_config(None, overrides)
    configure_cpu_threads(config.trainer)  # as `seq2seq train` does, before TensorFlow starts
    start = time.perf_counter()
    if not reuse:
        run_preprocess(str(corpus), str(work / "prep"), config, beam_args=["--runner=DirectRunner"], overwrite=True)
    print(f"corpus: {args.pairs} pairs -> {work / 'prep'} (preprocessed in {time.perf_counter() - start:.1f}s)")
    S, T, V = mean_lengths(str(work / "prep"))

    # The machine is shared: the matmul reference is the best of a measurement before and after training.
    peaks_before = matmul_gflops("float32"), matmul_gflops("bfloat16")
    metrics = run_training(str(work / "prep"), str(work / f"train-{int(time.time())}"), config)
    tokens_per_second = metrics["train_tokens_per_second"]
    flops = flops_per_token(EMBEDDING, UNITS, V, S, T)
    achieved = tokens_per_second * flops["train"] / 1e9
    peak = max(peaks_before[0], matmul_gflops("float32"))
    peak_bf16 = max(peaks_before[1], matmul_gflops("bfloat16"))
    reference = peak_bf16 if args.precision == "mixed_bfloat16" else peak

    print(f"\nconfig: batch {BATCH}, embedding {EMBEDDING}, units {UNITS}, {args.attention}, {args.precision}, "
          f"bucket_by_length={not args.no_bucket}; target vocabulary {V}, mean lengths source {S:.2f} "
          f"target {T:.2f} (with <eos>); {metrics['steps']} steps")
    print(f"train_tokens_per_s={tokens_per_second:.0f}   (steady state, real target tokens)")
    print(f"model_flops_per_token={flops['train'] / 1e6:.2f}M   (training; forward {flops['forward'] / 1e6:.2f}M, "
          f"vocabulary projection {flops['projection_share']:.0%} of it)")
    print(f"achieved_gflops={achieved:.1f}   matmul_gflops float32={peak:.1f} bfloat16={peak_bf16:.1f} "
          f"(tf.matmul 2048x2048, best of before/after training)")
    print(f"fraction={achieved / reference:.1%} of the {args.precision.replace('mixed_', '')} matmul"
          + (f" ({achieved / peak:.1%} of the float32 one)" if reference != peak else ""))
    if args.workers > 1:
        cluster = run_workers(args.workers, work / "prep", work / f"train-{args.workers}-workers-{int(time.time())}",
                              overrides, T * BATCH)
        print(f"workers={args.workers} train_tokens_per_s={cluster['tokens_per_second']:.0f} "
              f"({cluster['tokens_per_second'] / tokens_per_second:.2f}x one process's {tokens_per_second:.0f}); "
              f"all-reduce of {cluster['parameters']:,} gradients {cluster['allreduce_seconds'] * 1000:.1f} ms = "
              f"{cluster['allreduce_share']:.0%} of a {cluster['step_seconds'] * 1000:.0f} ms step")
    if not args.no_seed:
        seed = run_seed(corpus, args.pairs, args.seed_batches)
        print(f"seed_train_tokens_per_s={seed:.0f}   speedup={tokens_per_second / seed:.1f}x")
    print(json.dumps({"precision": args.precision, "train_tokens_per_s": tokens_per_second,
                      "flops_per_token": flops["train"], "achieved_gflops": achieved, "matmul_gflops": peak,
                      "matmul_gflops_bf16": peak_bf16, "fraction": achieved / reference,
                      **({} if args.no_seed else {"seed_tokens_per_s": seed, "speedup": tokens_per_second / seed})}))


if __name__ == "__main__":
    main()
