"""The one file layer: every component reads and writes through these helpers, on `tf.io.gfile`.

So a local folder and `gs://...` behave the same, and a partial output is never mistaken for a
complete one: files and folders are written to a temporary name and renamed into place. (The
Beam job's launcher is the one exception: it stays TensorFlow-free and uses Beam's FileSystems,
in `components/preprocess/fs.py`.)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import posixpath
import uuid
from typing import Any, Iterable, Iterator

from components.core.errors import ArtifactError

CHUNK = 1 << 20


def gfile():
    """`tf.io.gfile`, imported on first use so that importing this module stays cheap."""
    import tensorflow as tf

    return tf.io.gfile


def is_remote(path: str) -> bool:
    return "://" in path


def parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) or "."


def exists(path: str) -> bool:
    return gfile().exists(path)


def isdir(path: str) -> bool:
    return gfile().isdir(path)


def glob(pattern: str) -> list[str]:
    return sorted(gfile().glob(pattern))


def read_bytes(path: str) -> bytes:
    with gfile().GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    """The JSON value in PATH; a missing or malformed file is an ArtifactError naming it."""
    if not exists(path):
        raise ArtifactError(f"{path} does not exist")
    try:
        return json.loads(read_bytes(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None


def read_json_object(path: str) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write PATH.tmp-*, then rename it over PATH, so readers never see a partial file."""
    fs = gfile()
    fs.makedirs(parent(path))
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.GFile(tmp, "wb") as f:
            f.write(data)
        fs.rename(tmp, path, overwrite=True)
    except BaseException:
        if fs.exists(tmp):
            fs.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def without_non_finite(value: Any) -> Any:
    """VALUE with NaN and infinite floats, at any depth, replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: without_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_non_finite(v) for v in value]
    return value


def dumps_json(data: Any) -> str:
    """Strict JSON (a NaN or infinity raises instead of writing `NaN`), indented, UTF-8 as is."""
    return json.dumps(data, indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n"


def json_line(data: Any) -> str:
    """One line of strict JSON, for stdout contracts (`--json`)."""
    return json.dumps(data, ensure_ascii=False, default=str, allow_nan=False) + "\n"


def write_json_atomic(path: str, data: Any) -> None:
    write_text_atomic(path, dumps_json(data))


@contextlib.contextmanager
def atomic_dir(out: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside OUT; on success it is renamed to OUT, on failure removed.

    An existing OUT is an error unless `overwrite`, in which case it is moved aside first and deleted
    only after the new folder is in place.
    """
    fs = gfile()
    out = out.rstrip("/")
    if fs.exists(out) and not overwrite:
        raise ArtifactError(f"{out} already exists; remove it or choose another output folder")
    fs.makedirs(parent(out))
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:12]}"
    fs.makedirs(tmp)
    try:
        yield tmp
        publish_dir(tmp, out, overwrite)
    except BaseException:
        if fs.exists(tmp):
            fs.rmtree(tmp)
        raise


def publish_dir(tmp: str, out: str, overwrite: bool) -> None:
    """Rename the finished TMP folder to OUT; an old OUT is moved aside first, then deleted."""
    fs = gfile()
    old = None
    if fs.exists(out):
        if not overwrite:
            raise ArtifactError(f"{out} appeared while it was being written; not replacing it")
        old = f"{out}.old-{uuid.uuid4().hex[:12]}"
        fs.rename(out, old)
    fs.rename(tmp, out)
    if old:
        fs.rmtree(old)


def digest(*parts: Any) -> str:
    """A stable sha256 over JSON-able parts (dicts are key-sorted)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _update_with_file(h: "hashlib._Hash", path: str) -> None:
    with gfile().GFile(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)


def file_digest(path: str) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    _update_with_file(h, path)
    return h.hexdigest()


def files_digest(paths: Iterable[str]) -> str:
    """One sha256 over the files' bytes in the given order (names excluded: copies hash equal)."""
    h = hashlib.sha256()
    for path in paths:
        _update_with_file(h, path)
        h.update(b"\0")
    return h.hexdigest()
