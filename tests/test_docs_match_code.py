"""The docs' configuration tables and stated defaults against the code (issue 23, item 10).

Every `| key | default | meaning |` table in README.md and docs/*.md is parsed; the keys of each
config section it covers must be exactly the fields of that section's frozen dataclass
(components/core/config.py, read at test time, so a renamed key shows here), and each default must
be `pipeline/default.yaml`'s value where it sets the key, else the dataclass default. Fast: no
TensorFlow, no Beam.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.core.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DEFAULT_YAML = REPO / "pipeline" / "default.yaml"
# Sections whose every key a docs table must list (preprocess.*: docs/preprocess.md has no table yet).
TABLED_SECTIONS = {"model", "trainer", "export", "evaluator", "pusher"}
CONFIG_TABLE_HEADER = re.compile(r"^\|\s*key\s*\|\s*default\s*\|\s*meaning\s*\|\s*$")
ROW = re.compile(r"^\|\s*`([a-z_]+)\.([a-z_]+)`\s*\|\s*([^|]*?)\s*\|")


def config_fields() -> dict[str, dict[str, Any]]:
    """section -> {key: dataclass default}, from PipelineConfig's section dataclasses."""
    sections = {}
    for section in dataclasses.fields(PipelineConfig):
        cls = section.default_factory()  # type: ignore[misc]
        sections[section.name] = {f.name: getattr(cls, f.name) for f in dataclasses.fields(cls)}
    return sections


def documented_defaults() -> dict[str, dict[str, Any]]:
    """The merged defaults `seq2seq run` uses without --config: default.yaml over the dataclasses."""
    shipped = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    return {section: {**keys, **(shipped.get(section) or {})} for section, keys in config_fields().items()}


def config_tables() -> list[tuple[str, int, str, str, str]]:
    """(file, line, section, key, default text) of every row of every config table in the docs."""
    rows = []
    for path in DOCS:
        in_table = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if CONFIG_TABLE_HEADER.match(line):
                in_table = True
                continue
            if not line.startswith("|"):
                in_table = False
            match = ROW.match(line) if in_table else None
            if match:
                rows.append((path.name, number, *match.groups()))
    return rows


def parse_default(text: str) -> Any:
    """A table cell's default as YAML: `bahdanau` -> 'bahdanau', true -> True, null -> None."""
    return yaml.safe_load(text.replace("`", ""))


def same(documented: Any, actual: Any) -> bool:
    if isinstance(actual, tuple):
        actual = list(actual)
    if isinstance(actual, bool) or isinstance(documented, bool):
        return documented is actual
    return documented == actual


def test_the_docs_have_config_tables_for_every_tabled_section():
    covered = {section for _, _, section, _, _ in config_tables()}
    assert TABLED_SECTIONS <= covered, f"no docs table lists {sorted(TABLED_SECTIONS - covered)}"
    assert covered <= set(config_fields()), f"tables name unknown sections {sorted(covered - set(config_fields()))}"


@pytest.mark.parametrize("section", sorted(TABLED_SECTIONS))
def test_a_config_table_lists_exactly_the_sections_keys(section):
    rows = [(f"{name}:{line}", key) for name, line, s, key, _ in config_tables() if s == section]
    listed = [key for _, key in rows]
    fields = set(config_fields()[section])
    assert sorted(set(listed) - fields) == [], f"{section}: the docs list keys the config lacks: {rows}"
    assert sorted(fields - set(listed)) == [], f"{section}: keys no docs table lists"
    assert len(listed) == len(set(listed)), f"{section}: a key listed twice: {rows}"


def test_every_documented_default_is_the_shipped_default():
    defaults = documented_defaults()
    wrong = []
    for name, line, section, key, text in config_tables():
        expected = defaults[section][key]
        if not same(parse_default(text), expected):
            wrong.append(f"{name}:{line} {section}.{key}: docs {text!r}, code {expected!r}")
    assert wrong == []


# Defaults stated in prose: "`export.max_decode_length` (default `null` ...", "the default
# `max_target_length` of 66" (a bare key: whichever section has it).
PROSE_DEFAULTS = [
    re.compile(r"`([a-z_]+)\.([a-z_]+)` \(default `?([\w.-]+)`?"),
    re.compile(r"default `()([a-z_]+)` of `?([\w.-]+)`?"),
    re.compile(r"`pipeline/default\.yaml`'s `()([a-z_]+)` of `?([\w.-]+)`?"),
]


def test_defaults_stated_in_prose_are_the_shipped_defaults():
    defaults = documented_defaults()
    checked, wrong = 0, []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for pattern in PROSE_DEFAULTS:
            for match in pattern.finditer(text):
                section, key, value = match.groups()
                sections = [section] if section else [s for s in defaults if key in defaults[s]]
                for s in sections:
                    if s in defaults and key in defaults[s]:
                        checked += 1
                        if not same(parse_default(value), defaults[s][key]):
                            wrong.append(f"{path.name}: {match.group(0)!r}: code {defaults[s][key]!r}")
    assert checked >= 2, "the prose patterns found nothing to check"
    assert wrong == []


def test_export_help_names_both_decoders():
    from pipeline.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    help_text = next(c.help for c in subparsers._choices_actions if c.dest == "export")
    assert "beam" in help_text and "greedy" in help_text, help_text
