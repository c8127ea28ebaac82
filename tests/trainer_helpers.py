"""Helpers for the trainer tests: small corpora through the real Beam preprocessing job."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from pipeline.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SEED_TSV = REPO / "data" / "raw" / "seed.tsv"
EMBEDDED = str(REPO / "pipeline" / "embedded.yaml")


def config(*overrides: str) -> PipelineConfig:
    """pipeline/embedded.yaml (the seed's hyperparameters) plus overrides."""
    return load_config(EMBEDDED, list(overrides))


def preprocess(data: Path, out: Path, cfg: PipelineConfig) -> Path:
    from components.preprocess import run_preprocess

    run_preprocess(str(data), str(out), cfg, beam_args=["--runner=DirectRunner"], overwrite=True)
    return out


def synthetic_corpus(path: Path, pairs: int, seed: int = 0) -> Path:
    """A learnable toy translation: the target is the source reversed with each word tagged."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    lines = []
    for _ in range(pairs):
        source = rng.choices(words, k=rng.randint(2, 6))
        lines.append(" ".join(source) + "\t" + " ".join(f"t{w[1:]}" for w in reversed(source)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def seed_pairs() -> list[tuple[str, str]]:
    rows = [line.split("\t") for line in SEED_TSV.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(s, t) for s, t in rows]


def encode(vocab, sentences: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    ids = [vocab.ids(s.split()) for s in sentences]
    width = max(len(x) for x in ids)
    return [x + [0] * (width - len(x)) for x in ids], [len(x) for x in ids]
