"""Protected spans: placeholders and markup a translation must keep exactly.

`preprocess.protected_spans` lists what counts as a span: names from `SPAN_KINDS` or regular
expressions of one's own. The patterns are written in the syntax that RE2 (TensorFlow's regex ops,
which mask the spans in the graph, components/text/spans.py) and Python's `re` (the evaluator's
fidelity metric) read the same way, so training, serving and evaluation agree on what a span is.

Each span of a source becomes a numbered sentinel token, one character of Unicode's Private Use
Area (`sentinel(k)`), for the first `SPAN_SLOTS` spans of a text. None is lost silently past that:
the Beam job quarantines a pair whose source has more (too_many_spans), and the SavedModel counts a
sentence's spans no sentinel protects in its unprotected_spans output.
"""
from __future__ import annotations

import collections
import re
from typing import Sequence

import re2  # google-re2: the RE2 library TensorFlow's regex ops use, without TensorFlow

# Order matters where two kinds can start at the same character: the first listed alternative wins
# (`%(name)s` is Python format, not printf `%(`).
SPAN_KINDS: dict[str, str] = {
    # %(name)s, %(count)d, %(value)-8.2f
    "python_format": r"%\([A-Za-z_][A-Za-z0-9_]*\)[-+0#]*[0-9]*(?:\.[0-9]+)?[diouxXeEfFgGcrsa]",
    # %s, %d, %1$s, %-5.2f, %lld, %zu, %@, Python's %r and the escaped percent %%. No space flag:
    # "100% sure".
    "printf": r"%%|%(?:[0-9]+\$)?[-+0#']*(?:[0-9]+|\*)?(?:\.(?:[0-9]+|\*))?(?:hh|ll|[hlLqjzt])?[diouxXeEfFgGaAcsprn@]",
    # Qt's QString::arg markers %1 ... %99 and the localized %L1 (after printf: %1$s is printf's)
    "qt": r"%L?[1-9][0-9]?",
    # {0}, {name}, {count}, {0:.2f}, {user.name}, {}
    "braces": r"\{[A-Za-z0-9_]*(?:[.:!\[][^{}\s]*)?\}",
    # <strong>, </strong>, <br/>, <a href="...">: a whole tag is one span, whatever it holds
    "tags": r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s+[^<>]*)?/?>",
    # &amp; &lt; &#39; &#x2014;
    "entities": r"&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);",
    # Code a translation copies verbatim: URLs, calls (fsync(), os.path.join()), snake_case and
    # dunder names (epub_author, __init__), long options (--config) and paths with two slashes
    # (/about/contact/). Not a placeholder: fidelity does not count it, the copy rate does.
    "code": r"https?://[A-Za-z0-9._~:/?#@!$&'*+,;=%-]*[A-Za-z0-9/_~#=-]"
            r"|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\(\)"
            r"|__[A-Za-z0-9]+__|_*[A-Za-z0-9]+(?:_+[A-Za-z0-9]+)+_*"
            r"|--[A-Za-z][A-Za-z0-9-]*"
            r"|/[A-Za-z0-9_.~-]+/[A-Za-z0-9_./~-]*",
}
# What placeholder fidelity measures and the copy rate leaves to it: every kind but `code`.
PLACEHOLDER_KINDS: tuple[str, ...] = tuple(kind for kind in SPAN_KINDS if kind != "code")
ALL_SPAN_KINDS: tuple[str, ...] = PLACEHOLDER_KINDS  # the yardstick for a model that protects none


def placeholder_items(items: Sequence[str]) -> tuple[str, ...]:
    """ITEMS (preprocess.protected_spans) without the `code` kind."""
    return tuple(item for item in items if item != "code")

# The spans of a text that get their own sentinel; later ones stay ordinary text (a training pair
# with more is quarantined as too_many_spans; serving flags them in unprotected_spans).
SPAN_SLOTS = 20
# Sentinel k is U+E000 + k: a Private Use Area character no corpus text uses, that lowercasing,
# whitespace normalization and every tokenizer leave alone.
SENTINEL_BASE = 0xE000
SENTINEL_CLASS = f"[\\x{{{SENTINEL_BASE:04X}}}-\\x{{{SENTINEL_BASE + SPAN_SLOTS - 1:04X}}}]"  # RE2 syntax
_NAME = re.compile(r"[a-z_]+")


def sentinel(slot: int) -> str:
    """The sentinel token text of span slot `slot` (0-based)."""
    if not 0 <= slot < SPAN_SLOTS:
        raise ValueError(f"span slot must be in [0, {SPAN_SLOTS}), got {slot}")
    return chr(SENTINEL_BASE + slot)


def sentinels() -> list[str]:
    return [sentinel(k) for k in range(SPAN_SLOTS)]


def sentinel_tokens(continuation: bool) -> list[str]:
    """The tokens a vocabulary reserves for the sentinels: each sentinel, and with `continuation`
    (WordPiece tokenizers, where a sentinel can sit inside a word: `(%s)`) its `##` form too."""
    tokens = sentinels()
    return tokens + ["##" + t for t in tokens] if continuation else tokens


def has_sentinel(text: str) -> bool:
    return any(0 <= ord(c) - SENTINEL_BASE < SPAN_SLOTS for c in text)


def slot_of(token: str) -> int:
    """The span slot a sentinel token stands for (a `##` continuation form too), else -1."""
    core = token[2:] if token.startswith("##") else token
    if len(core) == 1 and 0 <= ord(core) - SENTINEL_BASE < SPAN_SLOTS:
        return ord(core) - SENTINEL_BASE
    return -1


def validate_patterns(items: Sequence[str]) -> None:
    """Raise ValueError naming the first item that is neither a span kind nor a usable regex: one that
    Python's `re` (the evaluator) and RE2 (the graph's masking) both compile, without capturing groups."""
    for item in items:
        if item in SPAN_KINDS:
            continue
        if _NAME.fullmatch(item):
            raise ValueError(f"unknown span kind {item!r}; kinds: {', '.join(SPAN_KINDS)} (or a regular expression)")
        try:
            compiled = re.compile(item)
        except re.error as e:
            raise ValueError(f"{item!r} is not a regular expression: {e}") from None
        _check_re2(item)
        if compiled.groups:
            raise ValueError(f"{item!r}: use non-capturing groups (?:...) in a span pattern")
        if compiled.match(""):
            raise ValueError(f"{item!r} matches the empty string")


# What Python's `re` reads and RE2 does not, named with RE2's own reason, so the user knows what to rewrite.
_RE2_HINT = "RE2 has no lookaround, atomic groups, possessive quantifiers, backreferences, or counts over 1000"


def _re2_options() -> "re2.Options":
    options = re2.Options()
    options.log_errors = False  # the ValueError below says it once; RE2 would also print to stderr
    return options


def _check_re2(item: str) -> None:
    """Raise ValueError naming the construct when RE2 (the graph's regex engine, with its default
    limits, as TensorFlow compiles it) cannot compile `item`."""
    try:
        re2.compile(item, options=_re2_options())
    except re2.error as e:
        reason = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"{item!r} is not RE2 syntax, which TensorFlow masks the spans with: {reason} "
                         f"({_RE2_HINT})") from None


def combined_pattern(items: Sequence[str]) -> str:
    """One alternation of the listed kinds and regexes, in order ('' when none)."""
    return "|".join(f"(?:{SPAN_KINDS.get(item, item)})" for item in items)


def find_spans(text: str, items: Sequence[str]) -> list[str]:
    """The spans of `text`, left to right, non-overlapping (what the graph masks)."""
    pattern = combined_pattern(items)
    return re.findall(pattern, text) if pattern else []


def span_multiset(text: str, items: Sequence[str]) -> collections.Counter:
    return collections.Counter(find_spans(text, items))
