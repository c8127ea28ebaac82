"""Protected spans (preprocess.protected_spans): placeholders and markup become numbered sentinels in
the shared encoder, decoding keeps each of the source's spans exactly once, and the graph puts the
original spans back. Inline fixtures, exact expected values, real TensorFlow and a real (tiny) model.
"""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.core.spans import ALL_SPAN_KINDS, SPAN_SLOTS, find_spans, sentinel, sentinel_tokens
from components.core.vocabulary import EOS_ID, SPECIAL_TOKENS
from components.model import Seq2Seq
from components.model.translation import TextTables, translate_text
from components.text.encoding import SequenceEncoder, decode_ids, id_to_token_table
from components.text.spans import SpanMasker, token_slots
from components.text.tokenizers import SubwordTokenizer, WhitespaceTokenizer

S = sentinel

# (source, its spans in order): every kind, nested, adjacent, at the start and the end, %%, 10 spans.
CASES = [
    ("Delete %s?", ["%s"]),
    ("%1$s of %2$s files", ["%1$s", "%2$s"]),
    ("Hello %(name)s, you have {count} new <b>messages</b>", ["%(name)s", "{count}", "<b>", "</b>"]),
    ('<a href="{url}">link</a>', ['<a href="{url}">', "</a>"]),  # a tag holding a placeholder: one span
    ("%s%d{0}", ["%s", "%d", "{0}"]),
    ("%s at both ends %-5.2f", ["%s", "%-5.2f"]),
    ("100%% done", ["%%"]),
    ("Fish &amp; chips &#39;x&#x27; <br/>", ["&amp;", "&#39;", "&#x27;", "<br/>"]),
    ("{0} {1} {2} {3} {4} {5} {6} {7} {8} {9}", [f"{{{i}}}" for i in range(10)]),
    ("100% sure, no placeholder", []),
]


def assert_python_and_the_graph_find(kinds: tuple[str, ...], cases: list[tuple[str, list[str]]]) -> None:
    masker = SpanMasker(kinds, separate=False)
    _, spans = masker.mask(tf.constant([source for source, _ in cases]))
    for (source, expected), found in zip(cases, spans.to_list()):
        assert [s.decode() for s in found] == expected == find_spans(source, kinds), source


def test_every_kind_is_found_as_python_and_the_graph_agree():
    assert_python_and_the_graph_find(ALL_SPAN_KINDS, CASES)


# The kinds in pipeline/default.yaml's order, `qt` and `code` included.
DEFAULT_KINDS = ("python_format", "printf", "qt", "braces", "tags", "entities", "code")
CODE_CASES = [
    ("Unknown configure key: latex_elements[%r], ignored.", ["latex_elements", "%r"]),
    ('Update "%1" to "%2", %L1 files, %1$s', ["%1", "%2", "%L1", "%1$s"]),
    ("%(ct_name)s objects don't have a get_absolute_url() method", ["%(ct_name)s", "get_absolute_url()"]),
    ("see https://example.org/a/b?x=1&y=%20. Then", ["https://example.org/a/b?x=1&y=%20"]),
    ("The --config argument, os.path.join() and __init__", ["--config", "os.path.join()", "__init__"]),
    ("Example: “/about/contact/”. %(class_name)s.allow_future", ["/about/contact/", "%(class_name)s",
                                                                   "allow_future"]),
    ("and/or read/write e.g. make-mode 100% sure", []),
]


def test_qt_markers_python_repr_and_code_are_found_as_python_and_the_graph_agree():
    assert_python_and_the_graph_find(DEFAULT_KINDS, CODE_CASES)
    assert find_spans("fsync() and epub_author", ALL_SPAN_KINDS) == []  # code is not a placeholder kind


def test_masked_text_numbers_the_spans_left_to_right():
    masker = SpanMasker(ALL_SPAN_KINDS, separate=False)
    masked, _ = masker.mask(tf.constant(["%s%d{0}", "100%% done", "Delete %s?"]))
    assert [m.decode() for m in masked.numpy()] == [S(0) + S(1) + S(2), "100" + S(0) + " done", f"Delete {S(0)}?"]
    separate = SpanMasker(ALL_SPAN_KINDS, separate=True)
    masked, _ = separate.mask(tf.constant(["%s%d{0}", "Delete %s?"]))
    assert [m.decode() for m in masked.numpy()] == [f"{S(0)} {S(1)} {S(2)}", f"Delete {S(0)} ?"]


def test_target_spans_take_the_number_of_the_same_source_span():
    masker = SpanMasker(ALL_SPAN_KINDS, separate=False)
    sources = ["%1$s of %2$s", "%s and %s", "Delete %s?", "{count} files", "no spans"]
    targets = ["%2$s / %1$s", "%s 와 %s", "%d 삭제?", "{count}개 {count}", "{0} here"]
    _, spans = masker.mask(tf.constant(sources))
    masked = [t.decode() for t in masker.mask_like(tf.constant(targets), spans).numpy()]
    # Reordered keeps numbers; duplicates pair by occurrence; a span the source lacks stays text.
    assert masked == [f"{S(1)} / {S(0)}", f"{S(0)} 와 {S(1)}", "%d 삭제?", f"{S(0)}개 {{count}}", "{0} here"]


def _char_vocabulary(texts: list[str]) -> list[str]:
    """Specials, the reserved sentinels (both WordPiece forms), and every character in both forms."""
    chars = sorted({c for text in texts for c in text if not c.isspace()})
    return list(SPECIAL_TOKENS) + sentinel_tokens(continuation=True) + chars + ["##" + c for c in chars]


def _encoder(pieces: list[str], width: int = 64) -> SequenceEncoder:
    masker = SpanMasker(ALL_SPAN_KINDS, separate=False)
    return SequenceEncoder(SubwordTokenizer(pieces), pieces, width, masker=masker)


def _write_vocab(tmp_path: Path, tokens: list[str]) -> str:
    path = tmp_path / "target.vocab"
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return str(path)


def test_masking_and_restoring_in_the_graph_gives_every_span_back_exactly(tmp_path):
    """Encode each source, read its ids back as if a model had emitted them, restore: the text is
    the source itself, spans and their glue to the neighbouring characters included."""
    sources = [source for source, _ in CASES]
    pieces = _char_vocabulary(sources)
    encoder = _encoder(pieces)
    masked, spans = encoder.protect(tf.constant(sources))
    encoded = encoder.encode_masked_source(masked)
    ids, length = encoded["source_ids"], encoded["source_length"]
    table = id_to_token_table(_write_vocab(tmp_path, pieces))
    _, texts = decode_ids(table, encoder.tokenizer, ids, length, spans, token_slots(pieces))
    assert [t.decode() for t in texts.numpy()] == sources
    slots = token_slots(pieces).numpy()[ids.numpy()]
    assert [sorted(row[row >= 0].tolist()) for row in slots] == [list(range(len(s))) for _, s in CASES]


def test_missing_spans_are_appended_in_source_order(tmp_path):
    pieces = _char_vocabulary(["Hello %(name)s {count} <b>x</b>"])
    encoder = _encoder(pieces)
    _, spans = encoder.protect(tf.constant(["Hello %(name)s {count} <b>x</b>"]))
    ids = tf.constant([[pieces.index("H"), pieces.index(S(2)), pieces.index("##x"), EOS_ID]], tf.int64)
    table = id_to_token_table(_write_vocab(tmp_path, pieces))
    tokens, texts = decode_ids(table, encoder.tokenizer, ids, tf.constant([4], tf.int64), spans,
                               token_slots(pieces))
    assert [t.decode() for t in tokens.numpy()[0]] == ["H", "<b>", "##x", "<eos>"]
    assert texts.numpy()[0].decode() == "H <b>x %(name)s {count} </b>"  # a word-start sentinel: a space before


SOURCES = ["Delete %s?", "%1$s of %2$s files", "Hello %(name)s, {count} <b>new</b>", "no spans here",
           "{0} {1} {2} {3} {4} {5} {6} {7} {8} {9}", ""]


def _translate(model: Seq2Seq, pieces: list[str], tmp_path: Path, max_length: int) -> list[str]:
    encoder = _encoder(pieces)
    tables = TextTables.build(encoder, encoder.tokenizer, _write_vocab(tmp_path, pieces))
    out = translate_text(model, tables, tf.constant(SOURCES), tf.constant(max_length))
    return [t.decode() for t in out["translation"].numpy()]


def _tiny_model(vocab_size: int, seed: int) -> Seq2Seq:
    return Seq2Seq(vocab_size, vocab_size, 8, 8, "bahdanau", seed=seed)


def _spans(text: str) -> list[str]:
    return sorted(find_spans(text, ALL_SPAN_KINDS))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_untrained_model_keeps_every_span_exactly_once(tmp_path, seed):
    pieces = _char_vocabulary(SOURCES)
    for max_length in (3, 40):  # cut short, the missing spans are appended
        translations = _translate(_tiny_model(len(pieces), seed), pieces, tmp_path, max_length)
        assert [_spans(t) for t in translations] == [_spans(s) for s in SOURCES], max_length
    assert translations[-1] == ""


def test_a_model_that_would_stop_at_once_emits_the_spans_first(tmp_path):
    pieces = _char_vocabulary(SOURCES)
    model = _tiny_model(len(pieces), 0)
    model.output_bias.assign(tf.tensor_scatter_nd_update(model.output_bias, [[EOS_ID]], [100.0]))
    translations = _translate(model, pieces, tmp_path, 40)
    # Where the model would end, the likeliest missing span comes instead; then it ends.
    assert [_spans(t) for t in translations] == [_spans(s) for s in SOURCES]
    # No spans: one token (the likeliest after <eos>, which may not come first), then <eos>.
    assert len(translations[3]) == 1 and not _spans(translations[3])
    # Nothing but the spans: the model itself never got past <eos>.
    assert translations[:3] == ["%s", "%1$s%2$s", "%(name)s{count}<b> </b>"]
    assert all(not "".join(t.split()).replace("".join(find_spans(t, ALL_SPAN_KINDS)), "")
               for t in translations[:3] + translations[4:])


def test_a_model_that_loves_one_sentinel_emits_it_once(tmp_path):
    pieces = _char_vocabulary(SOURCES)
    model = _tiny_model(len(pieces), 0)
    favourite = pieces.index(S(0))
    model.output_bias.assign(tf.tensor_scatter_nd_update(model.output_bias, [[favourite]], [100.0]))
    translations = _translate(model, pieces, tmp_path, 40)
    assert [_spans(t) for t in translations] == [_spans(s) for s in SOURCES]


def test_the_constraint_forbids_sentinels_the_source_lacks_and_redirects_eos():
    from components.model.decoding import FORBIDDEN, SpanConstraint

    slots = tf.constant([-1, -1, -1, -1, 0, 1, 2, 0], tf.int32)  # token 7: slot 0's ## form
    required = tf.constant([[True, True, False]])
    constraint = SpanConstraint(slots, required)
    logits = tf.math.log(tf.constant([[0.05, 0.05, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1]]))
    emitted = tf.constant([[False, True, False]])
    adjusted = constraint.adjust(logits, emitted).numpy()[0]
    probs = tf.nn.softmax(adjusted).numpy()
    # slot 1 emitted and slot 2 absent: forbidden, the rest renormalized (/0.8); <eos> forbidden while
    # slot 0 is missing, its 0.5 shared by slot 0's two tokens in proportion (0.125 each): 0.125 + 0.25.
    assert adjusted[EOS_ID] == FORBIDDEN and adjusted[5] == FORBIDDEN and adjusted[6] == FORBIDDEN
    np.testing.assert_allclose(probs, [0.0625, 0.0625, 0.0, 0.125, 0.375, 0.0, 0.0, 0.375], atol=1e-6)
    after = constraint.update(emitted, tf.constant([7], tf.int64)).numpy()
    assert after.tolist() == [[True, True, False]]
    np.testing.assert_array_equal(constraint.adjust(logits, after).numpy()[0][:4], logits.numpy()[0][:4])


def test_slots_cover_the_reserved_tokens_only():
    tokens = list(SPECIAL_TOKENS) + sentinel_tokens(continuation=True) + ["a", "##a", "\ue000x"]
    slots = token_slots(tokens).numpy().tolist()
    assert slots == [-1] * 4 + list(range(SPAN_SLOTS)) * 2 + [-1, -1, -1]
    assert sentinel_tokens(continuation=False) == [S(k) for k in range(SPAN_SLOTS)]


def test_whitespace_tokenizer_gets_each_sentinel_as_its_own_token():
    masker = SpanMasker(ALL_SPAN_KINDS, separate=True)
    masked, _ = masker.mask(tf.constant(["File %s: not found (%d)"]))
    tokens = WhitespaceTokenizer().tokenize(masked).to_list()[0]
    assert [t.decode() for t in tokens] == ["File", S(0), ":", "not", "found", "(", S(1), ")"]
