"""Attention heatmaps: source tokens on one axis, output tokens on the other (the seed's own picture)."""
from __future__ import annotations

import functools
import importlib.metadata
import io
import logging
import textwrap
import warnings
from typing import Iterator, Sequence

import numpy as np

from components.core.io import write_bytes_atomic

logger = logging.getLogger(__name__)

# A Hangul font that the project's own install brings (pyproject `dependencies`), so labels show
# the script on machines without CJK system fonts. NanumGothic: SIL Open Font License 1.1.
PACKAGED_FONT_DIST = "koreanize-matplotlib"
PACKAGED_FONT_FILE = "NanumGothic.ttf"


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    """Code points that the font file at `path` has a glyph for (empty when it cannot be read)."""
    from matplotlib import ft2font

    try:
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _packaged_font_path() -> str | None:
    """Path of the packaged Hangul font, or None (with a debug log) when its package is not installed."""
    # Read the distribution's file list instead of importing it: `import koreanize_matplotlib`
    # rewrites the global rcParams (font.family, axes.unicode_minus) as a side effect.
    try:
        files = importlib.metadata.files(PACKAGED_FONT_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        logger.debug("%s is not installed; Hangul labels need an installed CJK font", PACKAGED_FONT_DIST)
        return None
    for file in files:
        if file.name == PACKAGED_FONT_FILE and file.locate().is_file():
            return str(file.locate())
    logger.debug("%s has no %s; Hangul labels need an installed CJK font", PACKAGED_FONT_DIST, PACKAGED_FONT_FILE)
    return None


@functools.cache
def _register_packaged_font() -> str | None:
    """Add the packaged font to matplotlib's font manager (once, on first need); returns its path."""
    from matplotlib import font_manager

    path = _packaged_font_path()
    if path and not any(entry.fname == path for entry in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(path)
    return path


def _fallback_candidates() -> Iterator[str]:
    """Font files to try for what DejaVu Sans lacks: the packaged font first, then installed fonts."""
    from matplotlib import font_manager

    packaged = _register_packaged_font()
    if packaged:
        yield packaged
    for entry in font_manager.fontManager.ttflist:
        # "Last Resort" has a box for every code point: it "covers" everything and shows nothing.
        if "last resort" in entry.name.lower():
            continue
        yield entry.fname


def label_fonts(text: str) -> list[str]:
    """Font files for drawing `text`, in priority order: DejaVu Sans first, then, for the characters
    it lacks (Hangul, CJK, ...), each fallback font that covers some still-uncovered character.

    Characters no font covers are left out (they render as boxes; logged at debug level).
    """
    from matplotlib import font_manager

    dejavu = str(font_manager.findfont("DejaVu Sans"))  # a plain path (3.11 returns a FontPath)
    missing = {ord(c) for c in text if not c.isspace()} - _charmap(dejavu)
    fonts = [dejavu]
    candidates = _fallback_candidates() if missing else iter(())
    for path in candidates:
        if not missing:
            break
        if path not in fonts and missing & _charmap(path):
            fonts.append(path)
            missing -= _charmap(path)
    if missing:
        logger.debug("no font covers %s; those labels render as boxes", "".join(sorted(map(chr, missing))))
    return fonts


def _family_names(paths: Sequence[str]) -> list[str]:
    """matplotlib family names of registered font files, deduplicated, order kept."""
    from matplotlib import font_manager

    names = [font_manager.FontProperties(fname=path).get_name() for path in paths]
    return list(dict.fromkeys(names))


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
    # Matplotlib falls back glyph by glyph along font.family: DejaVu Sans draws what it covers
    # (Latin, digits), the next fonts the rest (Hangul from the packaged NanumGothic).
    rc = {"font.family": _family_names(label_fonts("".join(labels)))}
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
    write_bytes_atomic(path, buffer.getvalue())
    return path

