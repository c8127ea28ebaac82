"""Helpers for the preprocessing tests: write small corpora, run the real Beam job, read it back."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from pipeline.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SEED_TSV = REPO / "data" / "raw" / "seed.tsv"
EMBEDDED_CONFIG = REPO / "pipeline" / "embedded.yaml"


# The preprocessing tests exercise the Beam job's mechanics on whitespace tokens at the widths they
# were written for, without protected spans; pipeline/default.yaml's subword recipe and span
# protection have tests of their own (test_preprocess_tokenizers.py, test_quality_recipe.py,
# test_protected_spans.py). A test's overrides come after these.
MECHANICS = ("preprocess.tokenizer=whitespace", "preprocess.max_source_length=32", "preprocess.max_target_length=34",
             "preprocess.protected_spans=[]")


def config(*overrides: str, embedded: bool = False) -> PipelineConfig:
    if embedded:  # pipeline/embedded.yaml pins the seed's own settings
        return load_config(str(EMBEDDED_CONFIG), list(overrides))
    return load_config(None, [*MECHANICS, *overrides])


def write_lines(path: Path, lines: Iterable[str | bytes], compress: bool = False, newline: bytes = b"\n") -> Path:
    data = b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + newline for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def run(data: str | Path, out: Path, cfg: Optional[PipelineConfig] = None,
        beam_args: Sequence[str] = (), overwrite: bool = False) -> dict[str, Any]:
    from components.preprocess import run_preprocess

    return run_preprocess(str(data), str(out), cfg or config(), beam_args=list(beam_args), overwrite=overwrite)


def read_examples(out: Path, split: str = "train") -> list[dict[str, Any]]:
    """Every example of a split, parsed with the schema's feature spec, as plain lists."""
    import tensorflow as tf

    from components.core.artifacts import PreprocessArtifact

    artifact = PreprocessArtifact.load(str(out))
    files = artifact.split_files(split)
    if not files:
        return []
    spec = artifact.feature_spec()
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    rows = []
    for record in dataset:
        parsed = tf.io.parse_single_example(record, spec)
        row = {k: v.numpy() for k, v in parsed.items()}
        rows.append({k: (v.decode("utf-8") if isinstance(v, bytes) else v.tolist()) for k, v in row.items()})
    return rows


def serialized_examples(out: Path) -> dict[str, list[bytes]]:
    """The raw serialized examples of each split, sorted (the set the determinism test compares)."""
    import tensorflow as tf

    result = {}
    for split in ("train", "eval"):
        files = sorted(str(p) for p in out.glob(f"{split}-*-of-*.tfrecord.gz"))
        records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")] if files else []
        result[split] = sorted(records)
    return result


def quarantine(out: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((out / "quarantine").glob("rejected-*.jsonl")):
        rows.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return sorted(rows, key=lambda r: (r["file"], r["line"]))


def vocab(out: Path, side: str) -> list[str]:
    return (out / f"{side}.vocab").read_text(encoding="utf-8").split("\n")[:-1]
