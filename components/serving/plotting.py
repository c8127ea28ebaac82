"""Attention heatmaps: source tokens on one axis, output tokens on the other (the seed's own picture)."""
from __future__ import annotations

import io
import logging
import textwrap
import warnings
from typing import Sequence

import numpy as np

from components.core.io import write_bytes_atomic

logger = logging.getLogger(__name__)


def _fallback_fonts(text: str) -> list[str]:
    """Installed font families with a glyph for every character of `text` that DejaVu Sans lacks
    (Hangul, CJK, ...); empty when DejaVu covers everything or no installed font does."""
    from matplotlib import font_manager, ft2font

    def charmap(path: str) -> set[int]:
        try:
            return set(ft2font.FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):
            return set()

    needed = {ord(c) for c in text if not c.isspace()}
    needed -= charmap(font_manager.findfont("DejaVu Sans"))
    if not needed:
        return []
    families: list[str] = []
    for entry in font_manager.fontManager.ttflist:
        # "Last Resort" has a box for every code point: it "covers" everything and shows nothing.
        if entry.name in families or "last resort" in entry.name.lower():
            continue
        if needed <= charmap(entry.fname):
            families.append(entry.name)
    return families


def plot_attention(
    source_tokens: Sequence[str],
    output_tokens: Sequence[str],
    weights,
    path: str,
    title: str = "",
) -> str:
    """Draw `weights` ([len(output_tokens), len(source_tokens)], extra rows/columns are cut) to a PNG.

    Rows are output tokens (top to bottom), columns are source tokens (left to right). The PNG is
    written through tf.io.gfile, so `path` may be a gs:// URL. Returns `path`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2:
        raise ValueError(f"attention weights must be 2-D [target, source], got shape {weights.shape}")
    rows, cols = max(len(output_tokens), 1), max(len(source_tokens), 1)
    grid = np.zeros((rows, cols), np.float32)
    cut = weights[: len(output_tokens), : len(source_tokens)]
    grid[: cut.shape[0], : cut.shape[1]] = cut

    labels = list(source_tokens) + list(output_tokens) + [title]
    families = _fallback_fonts("".join(labels))
    rc = {"font.family": ["DejaVu Sans"] + families}
    with plt.rc_context(rc), warnings.catch_warnings():
        # Without a CJK font installed, matplotlib warns once per missing glyph; the cells still draw.
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * cols + 2), max(3.0, 0.45 * rows + 1.5)))
        image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(1e-6, float(grid.max())))
        ax.set_xticks(range(len(source_tokens)), labels=list(source_tokens), rotation=90)
        ax.set_yticks(range(len(output_tokens)), labels=list(output_tokens))
        ax.set_xlabel("source tokens")
        ax.set_ylabel("output tokens")
        if title:
            width = max(20, int(fig.get_figwidth() * 9))  # roughly the characters that fit
            ax.set_title(textwrap.fill(title, width), fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
    if not families:
        logger.debug("no installed font covers every token; some labels may render as boxes")
    write_bytes_atomic(path, buffer.getvalue())
    return path

