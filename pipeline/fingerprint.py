"""Cache-key ingredients: the corpus files, each component's own code, and the libraries it runs on."""
from __future__ import annotations

import ast
import functools
import importlib.util
import platform
from pathlib import Path
from typing import Iterable

from components.core.io import digest, file_digest

# Top-level packages of this project: a component's code is its module and every module of these
# that it imports, directly or not (lazy imports inside functions included).
PROJECT_PACKAGES = ("components", "schemas", "pipeline")
# Libraries whose upgrade may change a component's output.
KEYED_LIBRARIES = ("tensorflow", "tensorflow-text", "apache-beam", "keras", "pyarrow", "sacrebleu", "sentencepiece")


def resolve_corpus(data: str) -> list[str]:
    """The files a corpus argument names: exactly the files `seq2seq preprocess` reads for it (a
    file, the files directly inside a folder, or a glob; names starting with "." or "_" left out;
    regular files only: a FIFO, socket, device, broken symlink or symlink loop is skipped with a
    warning, and a path naming only such entries is an InputError). [] when nothing matches."""
    from components.preprocess.inputs import corpus_files

    return corpus_files(data)


def corpus_fingerprint(files: Iterable[str]) -> dict[str, str]:
    """file -> sha256 of its bytes (the names matter too: they pick the reader).

    A local path that is not a regular file is an InputError naming it, never opened: reading a
    FIFO would block forever."""
    import os
    import stat

    from components.core.errors import InputError
    from components.core.io import is_remote

    fingerprint = {}
    for path in files:
        if not is_remote(path):
            try:
                mode = os.stat(path).st_mode
            except OSError as e:
                raise InputError(f"corpus file {path}: cannot read it ({e.strerror})") from None
            if not stat.S_ISREG(mode):
                raise InputError(f"corpus file {path}: not a regular file; only regular files are read")
        fingerprint[path] = file_digest(path)
    return fingerprint


def package_versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("seq2seq-pipeline", *KEYED_LIBRARIES):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


@functools.lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
    versions = package_versions()
    return {name: versions[name] for name in ("python", *KEYED_LIBRARIES)}


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # `from module import name` where name is not a module
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _imported_project_modules(path: Path, module: str, packages: tuple[str, ...]) -> set[str]:
    """Project modules named by PATH's import statements, wherever they stand in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else (node.module or "")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in packages)
    return found


def module_closure(module: str, packages: tuple[str, ...] | None = None) -> dict[str, Path]:
    """MODULE and every project module it imports, transitively: module name -> source file."""
    packages = packages or PROJECT_PACKAGES
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:  # `from package import name` where name is not a module
            continue
        seen[name] = path
        parent = name.rpartition(".")[0]
        if parent:
            pending.append(parent)  # importing a.b runs a/__init__.py
        pending.extend(_imported_project_modules(path, name, packages) - seen.keys())
    return seen


@functools.lru_cache(maxsize=None)
def code_digest(module: str, packages: tuple[str, ...] | None = None) -> str:
    """sha256 over the source of MODULE and of the project modules it imports (plus the JSON schemas
    beside any `schemas` module): editing any of them changes the cache key of the component."""
    files = module_closure(module, packages)
    parts = []
    for name, path in sorted(files.items()):
        parts.append((name, path.read_bytes().decode("utf-8", "replace")))
        if name == "schemas":
            parts += [(p.name, p.read_text(encoding="utf-8")) for p in sorted(path.parent.glob("*.json"))]
    return digest(parts)
