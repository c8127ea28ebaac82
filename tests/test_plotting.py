"""Attention plots draw Hangul labels with a font that has the glyphs (issue 13, part 4).

Real matplotlib and real font files: the check opens each font the plot uses with fontTools and
asserts that every drawn character is in one of their character maps.
"""
from __future__ import annotations

import numpy as np
from fontTools.ttLib import TTFont
from matplotlib import font_manager

from components.serving.plotting import PACKAGED_FONT_FILE, label_fonts, plot_attention

SOURCE = ["Delete", "%s", "?"]
TARGET = ["삭제", "하시겠습니까", "?"]
TITLE = "Delete %s? → 삭제하시겠습니까?"


def _cmap_union(paths: list[str]) -> set[int]:
    """Every code point that at least one of the font files maps to a glyph."""
    covered: set[int] = set()
    for path in paths:
        covered |= set(TTFont(path, fontNumber=0).getBestCmap())
    return covered


def test_hangul_and_latin_labels_are_covered_by_the_fonts_used(tmp_path):
    text = "".join(SOURCE + TARGET + [TITLE])
    fonts = label_fonts(text)

    path = plot_attention(SOURCE, TARGET, np.full((3, 3), 1 / 3, np.float32), str(tmp_path / "a.png"), title=TITLE)

    with open(path, "rb") as png:
        assert png.read(4) == b"\x89PNG"
    assert (tmp_path / "a.png").stat().st_size > 0
    assert fonts[0] == font_manager.findfont("DejaVu Sans")
    # The packaged font, not a system one, draws the Hangul: the test machines have no CJK fonts.
    assert any(font.endswith(PACKAGED_FONT_FILE) for font in fonts[1:]), fonts
    missing = {c for c in text if not c.isspace() and ord(c) not in _cmap_union(fonts)}
    assert not missing, f"no selected font covers {sorted(missing)}: {fonts}"


def test_selected_fonts_resolve_to_the_checked_files():
    # plot_attention hands matplotlib family names; each must lead back to the file checked above.
    for path in label_fonts("".join(TARGET)):
        family = font_manager.FontProperties(fname=path).get_name()
        resolved = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
        assert resolved == path, (family, resolved, path)


def test_ascii_labels_use_dejavu_only():
    assert label_fonts("Delete %s? <eos> 123") == [font_manager.findfont("DejaVu Sans")]
