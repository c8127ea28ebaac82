"""The built wheel is the whole project: installed into a clean venv, `seq2seq preprocess` runs.

Workers on a cluster get the project as this wheel (`--extra_package`, or the image of
deploy/Dockerfile), never as a source tree, so a module or data file (the packaged YAML configs,
the JSON schemas) missing from the wheel only shows there. Installing TensorFlow into a fresh venv
would download gigabytes, so the clean venv sees this venv's packages through a folder of links
that leaves the project itself out, and the project comes from the wheel alone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.preprocess_helpers import REPO, write_lines
from tests.test_preprocess_runner import synthetic_pairs

PROJECT = "seq2seq-pipeline"
PROJECT_PREFIX = "seq2seq_pipeline"  # its dist-info, egg-info and editable finder
PACKAGES = ("pipeline", "components", "schemas")
SOURCES = ("pyproject.toml", "README.md", *PACKAGES)
TIMEOUT_S = 120

# Run by the clean venv's python: where the project comes from, and every unmet Requires-Dist
# (without extras) of the installed distribution.
CHECK_REQUIREMENTS = """
import importlib.metadata as md, importlib.util, json
from packaging.requirements import Requirement
dist = md.distribution("seq2seq-pipeline")
missing = []
for text in dist.requires or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(f"{req}: not installed")
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{req}: {version} installed")
print(json.dumps({"missing": missing, "pipeline": importlib.util.find_spec("pipeline").origin}))
"""
PROJECT_HIDDEN = """
import importlib.metadata as md, importlib.util, json
try:
    md.distribution("seq2seq-pipeline")
    metadata = True
except md.PackageNotFoundError:
    metadata = False
print(json.dumps({"importable": [m for m in ("pipeline", "components", "schemas") if importlib.util.find_spec(m)],
                  "metadata": metadata}))
"""


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{command[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def build_wheel(tmp_path: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the sources: building in the repo would leave build/ there,
    and a stale build/lib is packaged along. No build isolation: offline, with this venv's setuptools."""
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp_path / "dist")], tmp_path, dict(os.environ))
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    return wheel


def dependencies_without_the_project(tmp_path: Path) -> Path:
    """A folder of links to this venv's installed packages, except the project's own entries (its
    editable finder and .pth, its dist-info): a path entry that shows the dependencies only."""
    site = Path(sysconfig.get_paths()["purelib"])
    links = tmp_path / "deps"
    links.mkdir()
    for entry in site.iterdir():
        if PROJECT_PREFIX in entry.name or entry.name in PACKAGES or entry.name == "__pycache__":
            continue
        (links / entry.name).symlink_to(entry)
    return links


def clean_venv(tmp_path: Path, dependencies: Path) -> Path:
    venv = tmp_path / "clean"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, dict(os.environ))
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True, timeout=30).stdout.strip())
    (site / "dependencies.pth").write_text(f"{dependencies}\n")
    return venv


@pytest.mark.slow
@pytest.mark.timeout(4 * TIMEOUT_S)
def test_the_wheel_installs_into_a_clean_venv_and_runs_the_preprocess_job(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = clean_venv(tmp_path, dependencies_without_the_project(tmp_path))
    python = str(venv / "bin" / "python")
    work = tmp_path / "work"  # cwd outside the repo: the source tree must not be importable
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    hidden = json.loads(_run([python, "-c", PROJECT_HIDDEN], work, env).stdout)
    assert hidden == {"importable": [], "metadata": False}, "the clean venv sees the project before the install"

    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", str(wheel)], work, env)
    installed = json.loads(_run([python, "-c", CHECK_REQUIREMENTS], work, env).stdout)
    assert installed["missing"] == []
    assert installed["pipeline"].startswith(str(venv)), installed["pipeline"]

    write_lines(work / "corpus" / "a.tsv", synthetic_pairs(40) + ["only one column", "%s files\t%s 파일"])
    # No --config: pipeline/default.yaml (subword tokenizer, protected spans) must come from the wheel.
    _run([str(venv / "bin" / "seq2seq"), "preprocess", "--data", "corpus", "--out", "out",
          "--set", "preprocess.eval_fraction=0"], work, env)
    stats = json.loads((work / "out" / "stats.json").read_text())
    assert stats["records_read"] == 42 and stats["records_written"]["train"] == 41
    assert stats["rejected"]["wrong_column_count"] == 1  # the reasons come from schemas/record.schema.json
    assert stats["tokenizer"] == "subword"
    source_vocab = (work / "out" / "source.vocab").read_text(encoding="utf-8").split("\n")
    assert source_vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and "school" in source_vocab
    assert "\ue000" in source_vocab  # the protected-span sentinels are reserved
    assert stats["vocabulary_size"]["source"] == len(source_vocab) - 1
