"""Ceiling: how fast could a train step be if it did nothing but its matmuls?

    .venv/bin/python bench/train_ceiling.py                 # bench/train.py's shapes: batch 64, E 128, U 256
    .venv/bin/python bench/train_ceiling.py --vocab 4994 --source 13 --target 14

Times, one thread each (as the trainer runs its sub-batches, one per core), every matmul of one
sub-batch's train step at bench/train.py's shapes: the forward pass, both matmuls of its backward
pass, the per-step matmuls of the two recurrences and the attention's batched products, each shape
timed on its own (best of several rounds), summed with the count of each per step. It then prints:

- the matmul-only time per sub-batch and the tokens/s it allows with every core busy (a ceiling:
  no gates, no tanh, no softmax, no optimizer, no scheduling, perfect scaling over cores);
- that ceiling's GFLOP/s (with bench/train.py's FLOP formula) as a fraction of the same
  2048x2048 tf.matmul reference bench/train.py uses, measured in this run;
- the time a step may spend on everything else if it is to reach --target-fraction of the
  reference, as a share of the step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train import BATCH, EMBEDDING, UNITS, flops_per_token, matmul_gflops  # noqa: E402
from components.core.threads import resolve_sub_batches  # noqa: E402
from pipeline.config import load_config  # noqa: E402


def step_matmuls(b: int, S: int, T: int, E: int, U: int, V: int) -> list[tuple[str, tuple, int]]:
    """(what, (M, K, N, transpose_a, transpose_b, batch), calls per sub-batch step) for the model's
    matmuls as components/model/seq2seq.py and components/trainer/loss.py issue them."""
    bS, bT = b * S, b * T
    shapes = [
        ("encoder input x·W", (bS, E, 3 * U, False, False, 0), 1),
        ("  d input", (bS, 3 * U, E, False, False, 0), 1),
        ("  d W", (E, bS, 3 * U, True, False, 0), 1),
        ("encoder h·U per step", (b, U, 3 * U, False, False, 0), S),
        ("  d h per step", (b, 3 * U, U, False, False, 0), S),
        ("  d U after the loop", (U, bS, 3 * U, True, False, 0), 1),
        ("attention keys W1·enc", (bS, U, U, False, False, 0), 1),
        ("  d enc", (bS, U, U, False, False, 0), 1),
        ("  d W1", (U, bS, U, True, False, 0), 1),
        ("decoder input x·W", (bT, E, 3 * U, False, False, 0), 1),
        ("  d input", (bT, 3 * U, E, False, False, 0), 1),
        ("  d W", (E, bT, 3 * U, True, False, 0), 1),
        ("decoder h·[U|W2] per step", (b, U, 4 * U, False, False, 0), T),
        ("  d h per step", (b, 4 * U, U, False, False, 0), T),
        ("  d [U|W2] after the loop", (U, bT, 4 * U, True, False, 0), 1),
        ("context·C per step", (b, U, 3 * U, False, False, 0), T),
        ("  d context per step", (b, 3 * U, U, False, False, 0), T),
        ("  d C after the loop", (U, bT, 3 * U, True, False, 0), 1),
        ("scores V·tanh(.) per step", (S, U, 1, False, False, b), T),
        ("  d V, d tanh per step", (S, 1, U, False, False, b), 2 * T),
        ("context Σ a·enc per step", (1, S, U, False, False, b), T),
        ("  d a, d enc per step", (S, U, 1, False, False, b), 2 * T),
        ("projection [V,U]·statesᵀ", (V, U, bT, False, True, 0), 1),
        ("  d states", (bT, V, U, True, False, 0), 1),
        ("  d kernel", (V, bT, U, False, False, 0), 1),
    ]
    return shapes


def time_matmul(shape: tuple, rounds: int) -> float:
    """Best seconds per call of one matmul of `shape`, on one thread, inside a compiled loop."""
    import tensorflow as tf

    M, K, N, transpose_a, transpose_b, batch = shape
    lead = [batch] if batch else []
    a = tf.random.normal(lead + ([K, M] if transpose_a else [M, K]))
    b = tf.random.normal(lead + ([N, K] if transpose_b else [K, N]))
    flops = 2 * M * K * N * max(batch, 1)
    repeats = max(3, min(2000, int(2e9 / flops)))  # about 20 ms a round at 100 GFLOP/s

    @tf.function
    def loop():
        def body(i, total):
            out = tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
            return i + 1, total + tf.reshape(out, [-1])[0]
        return tf.while_loop(lambda i, _: i < repeats, body, (tf.constant(0), tf.constant(0.0)))[1]

    loop().numpy()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        loop().numpy()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=7309, help="target vocabulary (bench/train.py default corpus: 7309)")
    parser.add_argument("--source", type=int, default=8, help="source steps per sub-batch (default corpus: 7.56 mean)")
    parser.add_argument("--target", type=int, default=9, help="target steps per sub-batch (default corpus: 8.56 mean)")
    parser.add_argument("--sub-batches", type=int, default=0,
                        help="sub-batches run at once (0: as the trainer resolves it, one per core, at least 16 rows each)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target-fraction", type=float, default=0.5)
    args = parser.parse_args()
    reference = matmul_gflops("float32")  # in its own process, before this one pins TF to one thread per op

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.sub_batches <= 0:
        args.sub_batches = resolve_sub_batches(load_config(None, [f"trainer.batch_size={BATCH}"]).trainer)
    b, S, T, V = BATCH // args.sub_batches, args.source, args.target, args.vocab
    total = 0.0
    print(f"one sub-batch of {b} rows, {S} source and {T} target steps, E {EMBEDDING}, U {UNITS}, V {V}:")
    for what, shape, calls in step_matmuls(b, S, T, EMBEDDING, UNITS, V):
        seconds = time_matmul(shape, args.rounds)
        M, K, N, _, _, batch = shape
        rate = 2 * M * K * N * max(batch, 1) / seconds / 1e9
        total += calls * seconds
        print(f"  {what:28s} {calls:3d} x {seconds * 1e6:8.1f} us  ({rate:6.1f} GFLOP/s)")
    reference = max(reference, matmul_gflops("float32"))
    tokens = b * T
    flops = flops_per_token(EMBEDDING, UNITS, V, S, T)["train"]
    ceiling_tokens = args.sub_batches * tokens / total
    ceiling_gflops = ceiling_tokens * flops / 1e9
    budget = args.sub_batches * tokens * flops / (args.target_fraction * reference * 1e9)
    print(f"matmul_only_ms_per_sub_batch={total * 1e3:.2f}   ({tokens} target tokens)")
    print(f"ceiling_tokens_per_s={ceiling_tokens:.0f}   ({args.sub_batches} sub-batches at once, nothing but matmuls)")
    print(f"ceiling_gflops={ceiling_gflops:.1f}   matmul_gflops float32={reference:.1f}   "
          f"ceiling_fraction={ceiling_gflops / reference:.1%}")
    left = budget - total
    print(f"for {args.target_fraction:.0%}: a step may take {budget * 1e3:.2f} ms per sub-batch, of which "
          f"{max(left, 0) * 1e3:.2f} ms ({max(left, 0) / budget:.0%}) for everything that is not a matmul")


if __name__ == "__main__":
    main()
