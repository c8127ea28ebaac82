"""Benchmark: the Beam preprocessing job (DirectRunner, 2 workers) against a single-process script.

    .venv/bin/python bench/preprocess.py                      # default recipe, 200,000 and 1,000,000 pairs
    .venv/bin/python bench/preprocess.py --corpus ../shared/data/dev-en-ko.tsv --corpus ../shared/data/dev-en-de.tsv
    .venv/bin/python bench/preprocess.py --recipe whitespace  # whitespace tokens, plain-Python reference
    .venv/bin/python bench/preprocess.py --runner portable --corpus ../shared/data/dev-en-ko.tsv

`--recipe default` (the default) runs `seq2seq preprocess` with `pipeline/default.yaml` (learned
subword pieces, protected spans) beside the script OpenNMT-tf and JoeyNMT users write: train a
SentencePiece BPE model per side on a sample of the sentences (its C++ trainer), encode every line with
its C++ encoder, and write the same padded, hash-split gzip TFRecords of tf.train.Example, in one
process. The generated corpus draws words from a two-million-word lexicon by a Zipf law, so its
vocabulary keeps growing with its size, as a real corpus's does; a fifth of the pairs hold
placeholders or markup.

`--recipe whitespace` is the earlier comparison: whitespace tokens on both sides against a plain-Python
loop doing the same work (identical vocabularies checked), on a corpus with 30,000-word vocabularies.

With `--runner portable`, the same job runs on the DirectRunner and on the portable runner (Beam's
job service and an external SDK worker pool as separate processes, the Fn API path of Flink, Spark
and Dataflow; `components.preprocess.portable`), and the two are compared (pairs/s, identical
vocabularies) instead of a reference.

Each side runs in its own process tree, timed from process start to exit (imports included), with
peak memory sampled over the whole tree (PSS, so pages shared between the Beam workers are not
counted twice). Prints pairs/s, peak memory, the speed ratio, and how time and memory grow from
the smallest corpus to the largest. Run it on an otherwise idle machine: both sides share its CPUs.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
MAX_SOURCE, MAX_TARGET, EVAL_FRACTION = 32, 34, 0.1


# ------------------------------------------------------------------------------ corpus

def generate_corpus(path: Path, pairs: int, seed: int = 0) -> None:
    """Zipf-ish English-like source words and Korean-like target words, 3-30 tokens a side."""
    rng = random.Random(seed)
    syllables = [chr(0xAC00 + i * 37) for i in range(300)]
    src_words = [f"w{i}" + "".join(rng.choice("aeioustrnl") for _ in range(rng.randint(1, 6))) for i in range(30000)]
    tgt_words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(30000)]
    cum_weights = list(itertools.accumulate(1.0 / (rank + 10) for rank in range(30000)))
    with open(path, "w", encoding="utf-8") as f:
        block = 10000
        for start in range(0, pairs, block):
            n = min(block, pairs - start)
            lines = []
            for _ in range(n):
                k = rng.randint(3, 30)
                src = rng.choices(src_words, cum_weights=cum_weights, k=k)
                tgt = rng.choices(tgt_words, cum_weights=cum_weights, k=max(1, k + rng.randint(-3, 3)))
                lines.append(" ".join(src) + "\t" + " ".join(tgt) + "\n")
            f.write("".join(lines))


# The default recipe's widths and piece count (pipeline/default.yaml), which the reference uses too.
DEFAULT_SOURCE, DEFAULT_TARGET, DEFAULT_PIECES = 64, 66, 4000
LEXICON = 2_000_000
ZIPF_EXPONENT = 1.05
# The reference's SentencePiece training sample, in sentences per side (`input_sentence_size`). It
# trains BPE: on these corpora SentencePiece's unigram trainer takes over ten times as long.
REFERENCE_SAMPLE = 200_000
PLACEHOLDERS = ["%s", "%d", "%(name)s", "%(count)d", "{count}", "{0}", "%1$s", "<b>", "</b>", "&amp;", "{{user}}"]
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr",
           "pr", "ch", "sh", "th", "bl", "gr"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "io", "ai"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "ck", "x"]
_SYLLABLES = [o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS]
_HANGUL = [chr(0xAC00 + i * 13) for i in range(800)]


def _word(rank: int, syllables: list[str]) -> str:
    """The lexicon's word of a rank: frequent words are short; the same rank is the same word."""
    length = 1 + (rank >= 100) + (rank >= 10_000) + (rank * 2654435761 % 5 == 0)
    value, parts = rank * 2654435761 % (len(syllables) ** 5) + rank, []
    for _ in range(length):
        value, digit = divmod(value, len(syllables))
        parts.append(syllables[digit])
    return "".join(parts)


def generate_zipf_corpus(path: Path, pairs: int, seed: int = 0) -> None:
    """`pairs` lines of SOURCE<TAB>TARGET: 1-24 words drawn by a Zipf law over LEXICON ranks
    (English-like source words, Hangul target words, the same rank mapped to the same word and
    the target in reverse order), a fifth of the pairs with one to three placeholders on both sides."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, LEXICON + 1, dtype=np.float64) ** ZIPF_EXPONENT
    cumulative = np.cumsum(weights) / weights.sum()
    source_words: dict[int, str] = {}
    target_words: dict[int, str] = {}
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, pairs, 50_000):
            n = min(50_000, pairs - start)
            lengths = np.minimum(1 + rng.geometric(0.16, n), 24)
            ranks = np.searchsorted(cumulative, rng.random(int(lengths.sum())))
            for rank in np.unique(ranks).tolist():
                if rank not in source_words:
                    source_words[rank] = _word(rank, _SYLLABLES)
                    target_words[rank] = _word(rank, _HANGUL)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            marked = rng.random(n) < 0.2
            lines = []
            for i in range(n):
                row = ranks[offsets[i]:offsets[i + 1]].tolist()
                source = [source_words[r] for r in row]
                target = [target_words[r] for r in reversed(row)]
                if marked[i]:
                    for k in range(int(rng.integers(1, 4))):
                        span = PLACEHOLDERS[int(rng.integers(len(PLACEHOLDERS)))]
                        source.insert(int(rng.integers(len(source) + 1)), span)
                        target.insert(int(rng.integers(len(target) + 1)), span)
                source[0] = source[0].capitalize()
                lines.append(" ".join(source) + "\t" + " ".join(target) + "\n")
            f.write("".join(lines))


# ------------------------------------------------------------------------------ reference

def reference(corpus: str, out: str) -> None:
    """The same job as one plain-Python loop: no Beam, no batching, one process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    started = time.time()
    threshold = int(EVAL_FRACTION * 2**64)
    records, counts = [], (collections.Counter(), collections.Counter())
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            columns = line.rstrip("\n").split("\t")
            if len(columns) != 2:
                continue
            src, tgt = columns[0].split(), columns[1].split()
            if not src or not tgt:
                continue
            is_eval = int.from_bytes(hashlib.sha256(" ".join(src).encode()).digest()[:8], "big") < threshold
            records.append((src, tgt, is_eval))
            if not is_eval:
                counts[0].update(src)
                counts[1].update(tgt)
    os.makedirs(out, exist_ok=True)
    index = []
    for side, counter in zip(("source", "target"), counts):
        tokens = SPECIALS + [t for t, _ in sorted(counter.items(), key=lambda item: (-item[1], item[0]))]
        with open(f"{out}/{side}.vocab", "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in tokens))
        index.append({t: i for i, t in enumerate(tokens)})
    writers = {split: tf.io.TFRecordWriter(f"{out}/{split}-00000-of-00001.tfrecord.gz", options="GZIP")
               for split in ("train", "eval")}

    def int64(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    for src, tgt, is_eval in records:
        s = [index[0].get(t, 3) for t in src[:MAX_SOURCE]]
        y = [index[1].get(t, 3) for t in tgt[: MAX_TARGET - 2]]
        example = tf.train.Example(features=tf.train.Features(feature={
            "source_ids": int64(s + [0] * (MAX_SOURCE - len(s))), "source_length": int64([len(s)]),
            "target_input": int64([1] + y + [2] + [0] * (MAX_TARGET - len(y) - 2)),
            "target_output": int64(y + [2] + [0] * (MAX_TARGET - len(y) - 1)), "target_length": int64([len(y) + 1]),
            "source_text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[" ".join(src).encode()])),
            "target_text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[" ".join(tgt).encode()])),
        }))
        writers["eval" if is_eval else "train"].write(example.SerializeToString())
    for writer in writers.values():
        writer.close()
    print(json.dumps({"elapsed_seconds": time.time() - started, "records": len(records)}))


def reference_sentencepiece(corpus: str, out: str) -> None:
    """The OpenNMT-tf / JoeyNMT way, in one process: SentencePiece per side trained on a sample of
    the sentences, its C++ encoder over every line, the same padded gzip TFRecords (sha256 split)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import sentencepiece as spm
    import tensorflow as tf

    started = time.time()
    threshold = int(EVAL_FRACTION * 2**64)
    sources, targets = [], []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            columns = line.rstrip("\n").split("\t")
            if len(columns) == 2 and columns[0].strip() and columns[1].strip():
                sources.append(columns[0])
                targets.append(columns[1])
    is_eval = [int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") < threshold for s in sources]
    os.makedirs(out, exist_ok=True)
    encoded = []
    for side, lines in (("source", sources), ("target", targets)):
        train = [line for line, e in zip(lines, is_eval) if not e]
        with open(f"{out}/{side}.model", "wb") as model:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(train), model_writer=model, model_type="bpe", vocab_size=DEFAULT_PIECES,
                input_sentence_size=REFERENCE_SAMPLE, shuffle_input_sentence=True, hard_vocab_limit=False,
                pad_id=0, bos_id=1, eos_id=2, unk_id=3, minloglevel=2)
        processor = spm.SentencePieceProcessor(model_file=f"{out}/{side}.model")
        encoded.append(processor.encode(lines))
    writers = {split: tf.io.TFRecordWriter(f"{out}/{split}-00000-of-00001.tfrecord.gz", options="GZIP")
               for split in ("train", "eval")}

    def int64(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    for src_text, tgt_text, src, tgt, e in zip(sources, targets, encoded[0], encoded[1], is_eval):
        s = src[:DEFAULT_SOURCE]
        y = tgt[: DEFAULT_TARGET - 2]
        example = tf.train.Example(features=tf.train.Features(feature={
            "source_ids": int64(s + [0] * (DEFAULT_SOURCE - len(s))), "source_length": int64([len(s)]),
            "target_input": int64([1] + y + [2] + [0] * (DEFAULT_TARGET - len(y) - 2)),
            "target_output": int64(y + [2] + [0] * (DEFAULT_TARGET - len(y) - 1)), "target_length": int64([len(y) + 1]),
            "source_text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[src_text.encode()])),
            "target_text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tgt_text.encode()])),
        }))
        writers["eval" if e else "train"].write(example.SerializeToString())
    for writer in writers.values():
        writer.close()
    print(json.dumps({"elapsed_seconds": time.time() - started, "records": len(sources)}))


# ------------------------------------------------------------------------------ measuring

def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/PID/task/TID/children: cheap, no full /proc scan)."""
    result, stack = [], [pid]
    while stack:
        p = stack.pop()
        result.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return result


def _memory_kib(pid: int) -> int:
    """PSS of a process (RSS where smaps_rollup is unavailable), in KiB."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


def measure(command: list[str], env: dict) -> tuple[float, float, str, float]:
    """(wall seconds, peak tree memory MiB, stdout, CPU seconds of the whole tree) of a command."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(_memory_kib(p) for p in _tree(proc.pid)))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.time() - started
    done.set()
    sampler.join()
    if proc.returncode:
        sys.stderr.write(stderr[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(command)}")
    # Beam's workers are waited for by their parent, so their CPU time is in ours too.
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return wall, peak / 1024, stdout, cpu


def direct_args(workers: int) -> list[str]:
    beam_args = ["--runner=DirectRunner", f"--direct_num_workers={workers}"]
    if workers > 1:
        beam_args.append("--direct_running_mode=multi_processing")
    return beam_args


def run_beam(corpus: Path, out: Path, beam_args: list[str], env: dict, recipe: str = "whitespace"
             ) -> tuple[float, float, dict, float]:
    """(wall, peak MiB, stats, CPU-s) of `seq2seq preprocess` with these Beam args. Memory and CPU
    cover the launcher's process tree only: a portable job's worker belongs to the worker pool.
    `recipe` default: pipeline/default.yaml as it is; whitespace: whitespace tokens, no spans."""
    settings = ([f"preprocess.eval_fraction={EVAL_FRACTION}"] if recipe == "default" else [
        "preprocess.tokenizer=whitespace", "preprocess.protected_spans=[]",
        f"preprocess.eval_fraction={EVAL_FRACTION}", f"preprocess.max_source_length={MAX_SOURCE}",
        f"preprocess.max_target_length={MAX_TARGET}"])
    command = [str(Path(PYTHON).parent / "seq2seq"), "preprocess", "--data", str(corpus), "--out", str(out),
               *[arg for setting in settings for arg in ("--set", setting)], "--", *beam_args]
    wall, peak, _, cpu = measure(command, env)
    stats = json.loads((out / "stats.json").read_text())
    return wall, peak, stats, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=("default", "whitespace"), default="default",
                        help="default: pipeline/default.yaml against SentencePiece; whitespace: the plain-Python reference")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated generated corpus sizes; growth is largest/smallest "
                             "(default 200000,1000000; 20000,200000 for --recipe whitespace)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runner", choices=("direct", "portable"), default="direct",
                        help="portable: compare the DirectRunner with the portable runner instead of the reference")
    parser.add_argument("--corpus", type=Path, action="append", default=[],
                        help="a TSV corpus to run instead of generated ones (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora and outputs")
    parser.add_argument("--reference", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--reference-sentencepiece", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference:
        reference(*args.reference)
        return 0
    if args.reference_sentencepiece:
        reference_sentencepiece(*args.reference_sentencepiece)
        return 0
    sizes = sorted(int(s) for s in (args.sizes or ("200000,1000000" if args.recipe == "default" else "20000,200000")).split(","))
    if args.runner == "portable":
        return compare_portable(args, sizes)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    print(f"load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    try:
        corpora = [(c.resolve(), c.name) for c in args.corpus]
        for n in [] if args.corpus else sizes:
            corpus = work / f"corpus-{n}.tsv"
            (generate_zipf_corpus if args.recipe == "default" else generate_corpus)(corpus, n)
            corpora.append((corpus, f"{n:,} pairs"))
        results = [compare(corpus, name, work / f"run-{i}", args, env) for i, (corpus, name) in enumerate(corpora)]
        if len(results) > 1 and not args.corpus:
            (small, large) = results[0], results[-1]
            time_growth, memory_growth = large["wall"] / small["wall"], large["peak"] / small["peak"]
            factor = sizes[-1] / sizes[0]
            # The issue's targets: 5.5x the time for 5x the pairs, i.e. 1.1x the pairs' growth.
            print(f"growth {sizes[0]:,} -> {sizes[-1]:,} pairs ({factor:.0f}x): time {time_growth:.2f}x "
                  f"(target <= {1.1 * factor:.1f}x: {'PASS' if time_growth <= 1.1 * factor else 'FAIL'}), "
                  f"peak memory {memory_growth:.2f}x (target <= 1.5x: {'PASS' if memory_growth <= 1.5 else 'FAIL'})")
        print(f"cpus: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.2f} "
              f"(other processes share the CPUs: wall-clock ratios are only meaningful on a quiet machine)")
    finally:
        tidy(work, args.keep)
    return 0


def compare(corpus: Path, name: str, work: Path, args: argparse.Namespace, env: dict) -> dict:
    """The Beam job and the reference on one corpus, one after the other; prints both and the ratio."""
    work.mkdir(parents=True)
    mb = corpus.stat().st_size / 2**20
    wall, peak, stats, cpu = run_beam(corpus, work / "beam", direct_args(args.workers), env, args.recipe)
    pairs = stats["records_read"]
    print(f"beam      {name:>15} ({mb:6.1f} MiB): {wall:6.1f}s wall, {pairs / wall:8,.0f} pairs/s, "
          f"peak {peak:7.0f} MiB, {cpu:6.1f} CPU-s (Beam job {stats['beam_job_seconds']:.1f}s)", flush=True)
    print("          stages (s, summed over workers): " + ", ".join(
        f"{stage} {seconds:.1f}" for stage, seconds in stats.get("stage_seconds", {}).items()), flush=True)
    script = "--reference-sentencepiece" if args.recipe == "default" else "--reference"
    ref_wall, ref_peak, stdout, ref_cpu = measure([PYTHON, __file__, script, str(corpus), str(work / "reference")], env)
    ref = json.loads(stdout.strip().splitlines()[-1])
    print(f"reference {name:>15} ({mb:6.1f} MiB): {ref_wall:6.1f}s wall, {ref['records'] / ref_wall:8,.0f} pairs/s, "
          f"peak {ref_peak:7.0f} MiB, {ref_cpu:6.1f} CPU-s (script itself {ref['elapsed_seconds']:.1f}s)", flush=True)
    if args.recipe == "whitespace":
        same = all((work / "beam" / f"{side}.vocab").read_bytes() == (work / "reference" / f"{side}.vocab").read_bytes()
                   for side in ("source", "target"))
        print(f"vocabularies identical to the reference: {'yes' if same else 'NO'}")
    speed = ref_wall / wall
    print(f"speed: beam/reference = {speed:.2f}x  (target >= 1.0: {'PASS' if speed >= 1.0 else 'FAIL'})", flush=True)
    return {"wall": wall, "peak": peak, "speed": speed}


def tidy(work: Path, keep: bool) -> None:
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def compare_portable(args: argparse.Namespace, sizes: list[int]) -> int:
    """The DirectRunner (args.workers workers) and the portable runner (one external SDK worker) on
    each corpus: wall time from process start to exit, pairs/s, and whether the vocabularies match."""
    from components.preprocess.portable import local_portable_cluster

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    print(f"load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-preprocess-portable-"))
    try:
        corpora = [c.resolve() for c in args.corpus]
        for n in [] if args.corpus else sizes:
            corpora.append(work / f"corpus-{n}.tsv")
            (generate_zipf_corpus if args.recipe == "default" else generate_corpus)(corpora[-1], n)
        started = time.time()
        with local_portable_cluster(log_dir=str(work / "cluster-logs")) as portable_args:
            print(f"portable cluster (job service + worker pool) up in {time.time() - started:.1f}s", flush=True)
            for i, corpus in enumerate(corpora):
                walls = {}
                for name, beam_args in (("direct", direct_args(args.workers)), ("portable", portable_args)):
                    wall, _, stats, _ = run_beam(corpus, work / f"{name}-{i}", beam_args, env, args.recipe)
                    walls[name] = wall
                    pairs = stats["records_read"]
                    print(f"{name:<9} {corpus.name}: {pairs:,} pairs, {wall:6.1f}s wall, {pairs / wall:8,.0f} pairs/s "
                          f"(job itself {stats['elapsed_seconds']:.1f}s, {stats['pairs_per_second']:,.0f} pairs/s)",
                          flush=True)
                same = all((work / f"direct-{i}" / name).read_bytes() == (work / f"portable-{i}" / name).read_bytes()
                           for name in ("source.vocab", "target.vocab"))
                print(f"portable/direct speed: {walls['direct'] / walls['portable']:.2f}x; "
                      f"vocabularies identical: {'yes' if same else 'NO'}", flush=True)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        tidy(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
