"""File operations of the launching process, through Beam's FileSystems (local, gs://, ...).

The launcher never imports TensorFlow: with a multi-process or remote runner only the workers
need it, and importing it in the launcher would cost seconds of CPU that the workers want.
"""
from __future__ import annotations

import os
from typing import Sequence


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def is_local(path: str) -> bool:
    return _fs().get_scheme(path) in (None, "file")


def absolute(path: str) -> str:
    """A local path made absolute against the launcher's working directory; other schemes unchanged.

    Paths go to the workers inside the job, and a worker's working directory is its own (an SDK
    worker started by a worker pool or a cluster): `data/raw` there is not the launcher's `data/raw`.
    """
    if not is_local(path) or path.startswith("file://"):
        return path
    return os.path.abspath(path)


def exists(path: str) -> bool:
    return _fs().exists(path)


def is_dir(path: str) -> bool:
    """A local directory, or (object stores) a prefix with files under it."""
    if is_local(path):
        return os.path.isdir(path)
    return bool(_fs().match([path.rstrip("/") + "/*"])[0].metadata_list)


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    # Object stores have no directories: a file's name creates its prefix.


def remove_tree(path: str) -> None:
    if is_local(path):
        if os.path.exists(path):
            _fs().delete([path])
        return
    files = list_tree(path)
    if files:
        _fs().delete(files)


def list_tree(path: str) -> list[str]:
    return sorted(m.path for m in _fs().match([path.rstrip("/") + "/**"])[0].metadata_list)


def rename_files(sources: Sequence[str], destinations: Sequence[str]) -> None:
    if sources:
        _fs().rename(list(sources), list(destinations))


def move_tree(source: str, destination: str) -> None:
    """Rename a finished folder (one rename locally; file by file on object stores)."""
    if is_local(source):
        _fs().rename([source], [destination])
        return
    files = list_tree(source)
    rename_files(files, [destination.rstrip("/") + f[len(source.rstrip("/")):] for f in files])


def read_text(path: str) -> str:
    with _fs().open(path) as f:
        return f.read().decode("utf-8")


def read_bytes(path: str) -> bytes:
    """Read bytes as they are (no decompression, whatever the extension)."""
    from apache_beam.io.filesystem import CompressionTypes

    with _fs().open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    with _fs().create(path) as f:
        f.write(text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    """Write bytes as they are (no compression, whatever the extension)."""
    from apache_beam.io.filesystem import CompressionTypes

    with _fs().create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)
