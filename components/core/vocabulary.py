"""Vocabularies: one token per line (id = line number), special tokens first, counts beside.

Invariant, asserted on every load: ids 0..3 are <pad>, <bos>, <eos>, <unk>.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

from components.core.errors import UserError
from components.core.io import exists, read_text, write_text_atomic

logger = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
COUNTS_SUFFIX = ".counts.tsv"


class VocabularyError(UserError, ValueError):
    """A vocabulary file breaks the special-token invariant or is unreadable."""


def ordered_tokens(
    counts: Mapping[str, int], min_frequency: int = 1, max_size: Optional[int] = None,
    reserved: Sequence[str] = (),
) -> list[tuple[str, int]]:
    """Tokens by descending count, ties by token, cut by min_frequency and max_size (specials and
    reserved tokens count); the specials and `reserved` themselves are left out."""
    skip = set(SPECIAL_TOKENS) | set(reserved)
    kept = [(tok, n) for tok, n in counts.items() if n >= min_frequency and tok not in skip]
    kept.sort(key=lambda item: (-item[1], item[0]))
    if max_size is not None:
        kept = kept[: max(0, max_size - len(SPECIAL_TOKENS) - len(reserved))]
    return kept


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]
    counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise VocabularyError(
                f"vocabulary must start with {', '.join(SPECIAL_TOKENS)} (ids 0-3), "
                f"got {list(self.tokens[:len(SPECIAL_TOKENS)])}"
            )
        if len(set(self.tokens)) != len(self.tokens):
            raise VocabularyError("vocabulary has duplicate tokens")
        object.__setattr__(self, "_index", {tok: i for i, tok in enumerate(self.tokens)})

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], min_frequency: int = 1, max_size: Optional[int] = None,
        reserved: Sequence[str] = (),
    ) -> "Vocabulary":
        """Specials, then `reserved` (always present: the protected-span sentinels), then the counted
        tokens by descending count."""
        kept = ordered_tokens(counts, min_frequency, max_size, reserved)
        return cls(SPECIAL_TOKENS + tuple(reserved) + tuple(t for t, _ in kept),
                   (0,) * 4 + tuple(counts.get(t, 0) for t in reserved) + tuple(n for _, n in kept))

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, token: str) -> int:
        return self._index.get(token, UNK_ID)  # type: ignore[attr-defined]

    def ids(self, tokens: Iterable[str]) -> list[int]:
        index = self._index  # type: ignore[attr-defined]
        return [index.get(t, UNK_ID) for t in tokens]

    def lookup(self, ids: Sequence[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def save(self, path: str) -> None:
        """Write PATH (tokens) and PATH.counts.tsv (token<TAB>count), each via a temp file + rename."""
        write_text_atomic(path, "".join(t + "\n" for t in self.tokens))
        if self.counts:
            rows = "".join(f"{t}\t{n}\n" for t, n in zip(self.tokens, self.counts))
            write_text_atomic(path + COUNTS_SUFFIX, rows)

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        if not exists(path):
            raise VocabularyError(f"vocabulary file {path} does not exist")
        raw = read_text(path)
        # Split on "\n" only: tokens may contain other Unicode line separators.
        tokens = tuple(raw.split("\n")[:-1] if raw.endswith("\n") else raw.split("\n"))
        try:
            return cls(tokens)
        except VocabularyError as e:
            raise VocabularyError(f"{path}: {e}") from None

