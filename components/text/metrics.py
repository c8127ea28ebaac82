"""Corpus-level translation metrics (sacrebleu): the evaluator scores the exported model with them,
and the trainer chooses its checkpoint with them (trainer.select_by). Also, pure Python, what the
evaluator measures of fidelity: protected spans kept exactly, identifiers copied."""
from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import sacrebleu

from components.core.spans import ALL_SPAN_KINDS, find_spans, span_multiset


@dataclass(frozen=True)
class Scores:
    bleu: float
    chrf: float
    exact_match: float
    count: int

    def to_dict(self) -> dict:
        return asdict(self)


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    """Corpus BLEU and chrF (sacrebleu defaults) and the exact-match rate, in percent."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        return Scores(bleu=0.0, chrf=0.0, exact_match=0.0, count=0)
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)])
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)])
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(references)
    return Scores(bleu=round(bleu.score, 4), chrf=round(chrf.score, 4),
                  exact_match=round(100.0 * exact, 4), count=len(references))


def sacrebleu_signatures() -> dict[str, str]:
    """sacrebleu's signatures of the BLEU and chrF that `score` computes (its defaults, one
    reference): what makes a reported score comparable, as papers cite it."""
    from sacrebleu.metrics import BLEU, CHRF

    signatures = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        metric.corpus_score(["x"], [["x"]])  # the signature names the reference count once it has seen one
        signatures[name] = metric.get_signature().format()
    return signatures


# ---------------------------------------------------------------- fidelity: protected spans, identifiers


def placeholder_fidelity(sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str],
                         items: Sequence[str], unprotected: Optional[Sequence[int]] = None
                         ) -> tuple[Optional[float], int, list[int]]:
    """(percent, counted, offenders): how often the output keeps the source's protected spans exactly.

    A sentence counts when its source has at least one span (components/core/spans.py, of the kinds
    or regexes `items`) and its reference keeps exactly the source's multiset of spans (a reference
    that drops or adds one is not a fair yardstick). Of those, the percentage whose hypothesis keeps
    exactly that multiset too: each span as many times as in the source, in any order (`%2$s %1$s`
    may swap), nothing missing, nothing extra. `percent` is None when no sentence counts;
    `offenders` are the indices of the counted sentences that fail, in order.

    `unprotected` (the SavedModel's unprotected_spans output, one per sentence): a counted sentence
    with spans no sentinel protected fails whatever its output holds. Its spans were ordinary text
    to the model, and the ones whose sentinel the vocabularies lack are appended by the graph's
    fallback after any output, so keeping them says nothing of the model (a model with no
    sentinels at all would otherwise score 100%).
    """
    _check_lengths(sources, hypotheses, references)
    if unprotected is not None and len(unprotected) != len(sources):
        raise ValueError(f"{len(unprotected)} unprotected-span counts for {len(sources)} sources")
    counted, offenders = 0, []
    for index, (source, hypothesis, reference) in enumerate(zip(sources, hypotheses, references)):
        spans = span_multiset(source, items)
        if not spans or span_multiset(reference, items) != spans:
            continue
        counted += 1
        if span_multiset(hypothesis, items) != spans or (unprotected is not None and unprotected[index] > 0):
            offenders.append(index)
    if not counted:
        return None, 0, []
    return round(100.0 * (counted - len(offenders)) / counted, 4), counted, offenders


def span_difference(source: str, hypothesis: str, items: Sequence[str]) -> tuple[list[str], list[str]]:
    """(missing, extra): the spans of `source` the hypothesis lacks, and those it has beyond them
    (each repeated as often as it is missing or extra), in order of first appearance."""
    wanted, got = span_multiset(source, items), span_multiset(hypothesis, items)
    return list((wanted - got).elements()), list((got - wanted).elements())


# Surrounding punctuation that is not part of an identifier: quotes, backticks, sentence punctuation.
_STRIP = "\"'`\u2018\u2019\u201a\u201c\u201d\u201e\u00ab\u00bb\u2039\u203a\u300c\u300d,.;:!?\u3001\u3002"
_PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}
_CLOSING = {close: open_ for open_, close in _PAIRS.items()}
_ALNUM = re.compile(r"[A-Za-z0-9]")
# What may not touch an identifier where it occurs: ASCII word characters and Latin letters with
# diacritics. Hangul, kana and CJK may: Korean and Japanese attach particles to a word ("fsync()를").
_WORD = r"[0-9A-Za-z_\u00C0-\u024F]"


def _strip_token(token: str) -> str:
    """`token` without surrounding quotes, backticks and sentence punctuation, nor a bracket that
    has no partner inside it ("(see" -> "see", "fsync()," -> "fsync()", "`foo.txt`." -> "foo.txt")."""
    while True:
        before = token
        token = token.strip(_STRIP)
        if token and token[0] in _PAIRS and token.count(token[0]) > token.count(_PAIRS[token[0]]):
            token = token[1:]
        if token and token[-1] in _CLOSING and token.count(token[-1]) > token.count(_CLOSING[token[-1]]):
            token = token[:-1]
        if token == before:
            return token


def identifiers(source: str, items: Sequence[str] = ALL_SPAN_KINDS) -> list[str]:
    """The distinct candidate identifiers of `source`, in order: whitespace tokens stripped of
    surrounding punctuation (`_strip_token`), at least 2 characters, with an ASCII letter or digit,
    holding no protected span of `items`."""
    seen: dict[str, None] = {}
    for raw in source.split():
        token = _strip_token(raw)  # spans are looked for before stripping: "&amp;" is one, "&amp" is not
        if len(token) >= 2 and _ALNUM.search(token) and not find_spans(raw, items):
            seen.setdefault(token, None)
    return list(seen)


@functools.lru_cache(maxsize=65536)
def _token_pattern(token: str) -> re.Pattern:
    return re.compile(f"(?<!{_WORD}){re.escape(token)}(?!{_WORD})")


def occurs_as_token(token: str, text: str) -> bool:
    """Whether `token` occurs in `text` as a whole: no letter, digit or underscore right before or
    after it (`foo` is in "call foo()" and "foo를", not in "food" or "_foo")."""
    return _token_pattern(token).search(text) is not None


def copy_rate(sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str],
              items: Sequence[str] = ALL_SPAN_KINDS) -> tuple[Optional[float], int]:
    """(percent, counted): the share of source identifiers that appear in the reference and also
    appear in the output.

    An identifier of a source is a whitespace-separated token of it, stripped of surrounding quotes,
    backticks, commas, periods, colons (and of a bracket with no partner inside the token), that
    keeps inner punctuation (`pidfd_open()`, `foo.txt`, `a_b-c/d`), is at least 2 characters long,
    has an ASCII letter or digit and holds no protected span of `items` (those are measured by
    `placeholder_fidelity`). It is counted when it occurs in the reference as a whole token
    (`occurs_as_token`: no Latin letter, digit or underscore touching it; case-sensitive), and
    copied when it occurs in the hypothesis by the same rule. Micro-averaged over every (sentence,
    distinct identifier) pair counted, so a sentence with many identifiers weighs more; None when
    none is counted. In a pair of languages that share words ("in", "Tensor") those count too.
    """
    _check_lengths(sources, hypotheses, references)
    counted = copied = 0
    for source, hypothesis, reference in zip(sources, hypotheses, references):
        for token in identifiers(source, items):
            if occurs_as_token(token, reference):
                counted += 1
                copied += occurs_as_token(token, hypothesis)
    if not counted:
        return None, 0
    return round(100.0 * copied / counted, 4), counted


def _check_lengths(sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if not len(sources) == len(hypotheses) == len(references):
        raise ValueError(f"{len(sources)} sources, {len(hypotheses)} hypotheses, {len(references)} references")
