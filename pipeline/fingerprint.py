"""Content fingerprints: the cache keys of the pipeline runner."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

CHUNK = 1 << 20


def digest(*parts: Any) -> str:
    """A stable sha256 over JSON-able parts (dicts are key-sorted)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def file_digest(path: str) -> str:
    import tensorflow as tf

    h = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def resolve_corpus(data: str) -> list[str]:
    """The files a corpus argument names: a file, every file under a folder, or a glob."""
    import tensorflow as tf

    if tf.io.gfile.isdir(data):
        files = [f"{d.rstrip('/')}/{name}" for d, _, names in tf.io.gfile.walk(data)
                 for name in names if not name.startswith(".")]
    elif any(ch in data for ch in "*?["):
        files = [f for f in tf.io.gfile.glob(data) if not tf.io.gfile.isdir(f)]
    else:
        files = [data] if tf.io.gfile.exists(data) else []
    return sorted(files)


def corpus_fingerprint(files: Iterable[str]) -> dict[str, str]:
    """file -> sha256 of its bytes (the names matter too: they pick the reader)."""
    return {path: file_digest(path) for path in files}
