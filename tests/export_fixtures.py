"""Shared, expensive artifacts for the export and translate tests: built once per test session.

Every artifact is real: the Beam job on the DirectRunner, the trainer, `run_export`. Test modules
import the fixtures they use; the builders memoize in this module, so the export tests and the
translate tests share one trained seed model even though each module registers its own fixture.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, TypeVar

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SEED_TSV = REPO / "data" / "raw" / "seed.tsv"
EMBEDDED_YAML = REPO / "pipeline" / "embedded.yaml"
BEAM_ARGS = ["--runner=DirectRunner"]

T = TypeVar("T")
_BUILT: dict[str, object] = {}


def _once(key: str, build: Callable[[], T]) -> T:
    if key not in _BUILT:
        _BUILT[key] = build()
    return _BUILT[key]  # type: ignore[return-value]


def seed_pairs() -> list[tuple[str, str]]:
    rows = [line.rstrip("\n").split("\t") for line in SEED_TSV.read_text(encoding="utf-8").splitlines() if line]
    return [(source, target) for source, target in rows]


# Source words -> target words; targets are the mapped words in reverse order, so attention matters.
_SOURCE_WORDS = [f"w{i}" for i in range(40)] + ["Tensor", "flow", "ünï", "déjà", "naïve"]


def synthetic_pairs(count: int, seed: int = 11) -> list[tuple[str, str]]:
    """A small deterministic corpus; raw sources vary spacing and length, some exceed the widths."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        words = [rng.choice(_SOURCE_WORDS) for _ in range(rng.randint(1, 14 if i % 10 else 20))]
        if i % 13 == 0:  # a word seen once: out of vocabulary when its pair lands in the eval split
            words.insert(rng.randint(0, len(words)), f"rare{i}")
        target = " ".join(f"x{w.lower()}" for w in reversed(words))
        source = " ".join(words)
        if i % 7 == 0:  # messy raw spacing: the normalizer must agree between Beam and serving
            source = "  " + source.replace(" ", "   ", 1) + " \u00a0"
        pairs.append((source, target))
    return pairs


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


def _preprocess(data: Path, out: Path, overrides: list[str], config_file: Path | None = None) -> str:
    from components.preprocess import run_preprocess
    from pipeline.config import load_config

    config = load_config(str(config_file) if config_file else None, overrides)
    run_preprocess(str(data), str(out), config, beam_args=BEAM_ARGS)
    return str(out)


def _train(examples: str, out: Path, overrides: list[str], config_file: Path | None = None) -> str:
    from components.trainer import run_training
    from pipeline.config import load_config

    run_training(examples, str(out), load_config(str(config_file) if config_file else None, overrides))
    return str(out)


# ---------------------------------------------------------------- the seed corpus, embedded config

@pytest.fixture(scope="session")
def seed_run(tmp_path_factory) -> dict[str, str]:
    """preprocess -> train -> export of data/raw/seed.tsv with pipeline/embedded.yaml (as `make run`)."""
    def build() -> dict[str, str]:
        from components.exporter import run_export

        root = tmp_path_factory.mktemp("seed")
        examples = _preprocess(SEED_TSV, root / "preprocess", [], EMBEDDED_YAML)
        train = _train(examples, root / "train", [], EMBEDDED_YAML)
        export = run_export(train, str(root / "export"))
        return {"examples": examples, "train": train, "export": export}

    return _once("seed_run", build)


# ---------------------------------------------------------------- a synthetic corpus with an eval split

SYNTHETIC_CONFIG = [
    "preprocess.max_source_length=12", "preprocess.max_target_length=14", "preprocess.eval_fraction=0.25",
    "model.embedding_dim=16", "model.units=32", "model.attention=bahdanau",
    "trainer.epochs=3", "trainer.batch_size=32", "trainer.learning_rate=0.01",
]


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> list[tuple[str, str]]:
    return _once("synthetic_corpus", lambda: synthetic_pairs(320))


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory, synthetic_corpus) -> dict[str, str]:
    """A briefly trained tiny model on 320 synthetic pairs (eval split, truncation, OOV in eval)."""
    def build() -> dict[str, str]:
        from components.exporter import run_export

        root = tmp_path_factory.mktemp("synthetic")
        data = write_tsv(root / "corpus.tsv", synthetic_corpus)
        examples = _preprocess(data, root / "preprocess", SYNTHETIC_CONFIG)
        train = _train(examples, root / "train", SYNTHETIC_CONFIG)
        export = run_export(train, str(root / "export"))
        return {"data": str(data), "examples": examples, "train": train, "export": export}

    return _once("synthetic_run", build)
