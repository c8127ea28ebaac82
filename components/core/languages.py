"""A corpus's language pair and the name its models are served under.

The languages come from `preprocess.source_language` / `target_language`, else from the corpus's
name when it holds an `SRC-TGT` pair of ISO 639-1 codes (`dev-en-ko.tsv`, `europarl.de_en/`,
`data/en-ko/train.tsv`, aligned files `train.en` / `train.ko`), else they are unknown. The served
model's name (`pusher.model_name`) defaults to the pair, `en-ko`, or to `default` when the pair is
unknown (TF Serving's own default model name). One function decides each, and preprocessing (its
stats.json, the model card) and the runner (ARTIFACTS/serving/<name>/) both call it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional

# ISO 639-1: the two-letter codes. A corpus name's token counts as a language only when it is one,
# so that `dev-en-ko` gives en-ko and not dev-en.
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de
dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id
ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu
lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu
rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr
ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())
# What a configured language may be: a BCP 47-like tag (en, ko, pt-BR, zh-Hant, gsw).
LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
# A served model's name: a folder name and a URL path segment (/v1/models/<name>) alike.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
UNKNOWN_PAIR_NAME = "default"
_TOKENS = re.compile(r"[-_.]")


@dataclass(frozen=True)
class Languages:
    """A language pair and where it came from (`config`, `corpus name dev-en-ko.tsv`); unknown: None."""

    source: Optional[str] = None
    target: Optional[str] = None
    origin: Optional[str] = None

    @property
    def known(self) -> bool:
        return bool(self.source and self.target)

    @property
    def pair(self) -> Optional[str]:
        """`en-ko`, or None when unknown."""
        return f"{self.source}-{self.target}" if self.known else None

    def describe(self) -> str:
        """`en→ko (from the corpus name dev-en-ko.tsv)`, or `unknown (...)`, for log lines."""
        if not self.known:
            return "unknown (set preprocess.source_language and preprocess.target_language)"
        return f"{self.source}→{self.target} (from the {self.origin})"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "from": self.origin}

    @classmethod
    def from_dict(cls, record: Any) -> "Languages":
        """The inverse of to_dict; anything else (an older card's note) is unknown."""
        if not isinstance(record, dict) or not record.get("source") or not record.get("target"):
            return cls()
        return cls(str(record["source"]), str(record["target"]), record.get("from"))

    def conflicts_with(self, other: "Languages") -> bool:
        """Both pairs known and different (an unknown pair conflicts with nothing)."""
        return self.known and other.known and \
            (self.source.lower(), self.target.lower()) != (other.source.lower(), other.target.lower())


def _pair_in(name: str) -> Optional[tuple[str, str]]:
    """The last two adjacent ISO 639-1 tokens of NAME (`dev-en-ko.tsv` -> en, ko)."""
    tokens = [t.lower() for t in _TOKENS.split(name)]
    pairs = [(a, b) for a, b in zip(tokens, tokens[1:]) if a in ISO_639_1 and b in ISO_639_1 and a != b]
    return pairs[-1] if pairs else None


def _suffix_language(suffix: str) -> Optional[str]:
    code = suffix.lstrip(".").lower()
    return code if code in ISO_639_1 else None


def infer_languages(data: str, source_suffix: str = "", target_suffix: str = "") -> Languages:
    """The pair a corpus's name gives: its file or folder name, then its parent folder's, then
    aligned files' suffixes (`.en` / `.ko`); unknown when none holds one."""
    path = data.rstrip("/")
    for name in (os.path.basename(path), os.path.basename(os.path.dirname(path))):
        found = _pair_in(name) if name and not any(c in name for c in "*?[") else None
        if found:
            return Languages(found[0], found[1], f"corpus name {name}")
    source, target = _suffix_language(source_suffix), _suffix_language(target_suffix)
    if source and target and source != target:
        return Languages(source, target, f"aligned files' suffixes {source_suffix} and {target_suffix}")
    return Languages()


def resolve_languages(preprocess: Any, data: str) -> Languages:
    """PREPROCESS's languages when it names them (`preprocess.source_language` / `target_language`),
    else the corpus name's."""
    if preprocess.source_language and preprocess.target_language:
        return Languages(preprocess.source_language, preprocess.target_language, "config")
    return infer_languages(data, preprocess.source_suffix, preprocess.target_suffix)


def model_name(configured: Optional[str], languages: Languages) -> str:
    """`pusher.model_name` when set, else the pair (`en-ko`), else `default`."""
    if configured:
        return configured
    return languages.pair if languages.known and MODEL_NAME.fullmatch(languages.pair) else UNKNOWN_PAIR_NAME
