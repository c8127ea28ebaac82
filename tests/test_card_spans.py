"""The model card's and README's `protected_spans` entry (components/exporter/card.py): the configured
kinds and regexes with how the exported model enforces them, or null when protection is off.
Built from a minimal preprocess folder (vocabularies, config) in tmp_path; no model, no Beam job."""
import json
from pathlib import Path

import pytest

from components.core.artifacts import PreprocessArtifact
from components.core.config import PipelineConfig, apply_overrides, write_config
from components.core.spans import SPAN_KINDS, SPAN_SLOTS, combined_pattern
from components.core.vocabulary import SPECIAL_TOKENS
from components.exporter.card import build_card, render_readme
from components.text.spans import reserved_tokens

REGEX = "ID-[0-9]+"


def _artifact(tmp_path: Path, overrides: list[str]) -> PreprocessArtifact:
    """A preprocess folder as the job lays it out: config.yaml, SIDE.vocab with the side's reserved
    sentinels right after the specials (as `build_vocabularies`), SIDE.wordpiece.vocab where learned."""
    config = apply_overrides(PipelineConfig(), overrides)
    p = config.preprocess
    write_config(config, str(tmp_path))
    for side in ("source", "target"):
        tokens = list(SPECIAL_TOKENS) + reserved_tokens(p, side) + ["hello", "world"]
        (tmp_path / f"{side}.vocab").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        if side in p.wordpiece_sides:
            (tmp_path / f"{side}.wordpiece.vocab").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return PreprocessArtifact.load(str(tmp_path))


def _card(artifact: PreprocessArtifact) -> dict:
    card = build_card(artifact.config, artifact, {"source": 6, "target": 6}, 10, None, None)
    return json.loads(json.dumps(card))  # what model_card.json holds


def test_off_is_null_and_the_readme_says_so(tmp_path):
    card = _card(_artifact(tmp_path, ["preprocess.protected_spans=[]"]))
    assert "protected_spans" in card and card["protected_spans"] is None
    readme = render_readme(card)
    assert "## Protected spans" in readme
    assert "Off (`preprocess.protected_spans: []`)" in readme
    assert "How it is enforced" not in readme


def test_kinds_and_a_regex_are_listed_with_their_sentinel_ids(tmp_path):
    items = ["printf", "braces", REGEX]
    card = _card(_artifact(tmp_path, [f"preprocess.protected_spans=[printf, braces, '{REGEX}']"]))
    spans = card["protected_spans"]
    assert spans["items"] == items
    assert spans["kinds"] == ["printf", "braces"]
    assert spans["regexes"] == [REGEX]
    assert spans["pattern"] == combined_pattern(items)
    assert spans["max_spans_per_text"] == SPAN_SLOTS == 20
    assert spans["sentinels"] == "U+E000..U+E013"
    # whitespace sides: one sentinel per slot, right after the 4 special tokens
    assert spans["sentinel_ids"] == {"source": list(range(4, 24)), "target": list(range(4, 24))}
    assert "exactly once" in spans["enforcement"] and "<eos> is forbidden" in spans["enforcement"]
    assert "appended" in spans["enforcement"] and "max_length" in spans["enforcement"]
    assert "restored spans" in spans["outputs"] and "sentinels" in spans["outputs"]
    assert card["config"]["preprocess"]["protected_spans"] == items

    readme = render_readme(card)
    assert "Kept exactly: `printf`, `braces`, regex `ID-[0-9]+` (at most 20 spans a sentence" in readme
    assert f"How it is enforced: {spans['enforcement']}" in readme
    assert f"Outputs: {spans['outputs']}" in readme
    # the section sits between the tokenizer line and the signatures
    assert readme.index("Tokenizer: ") < readme.index("## Protected spans") < readme.index("## Signatures")


@pytest.mark.parametrize("tokenizer", ["subword", "wordpiece"])
def test_a_wordpiece_side_lists_both_sentinel_forms(tmp_path, tokenizer):
    card = _card(_artifact(tmp_path, [f"preprocess.tokenizer={tokenizer}",
                                      "preprocess.target_tokenizer=whitespace",
                                      f"preprocess.protected_spans=[{', '.join(SPAN_KINDS)}]"]))
    spans = card["protected_spans"]
    assert spans["kinds"] == list(SPAN_KINDS) and spans["regexes"] == []
    assert spans["sentinel_ids"] == {"source": list(range(4, 44)), "target": list(range(4, 24))}
    readme = render_readme(card)
    assert "Kept exactly: `python_format`, `printf`, `qt`, `braces`, `tags`, `entities`, `code` (" in readme
