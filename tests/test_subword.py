"""WordPiece in core TF ops: the same pieces as tensorflow-text's WordpieceTokenizer, no tf-text to load."""
import random
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from components.text.subword import CompiledWordpiece, CoreWordpiece
from components.text.tokenizers import make_tokenizer, normalize

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PIECES = SPECIALS + ["a", "b", "c", "ab", "abc", "##a", "##b", "##c", "##bc", "##ca", "한", "##국", "한국", "##어", "x",
                     "%", "##s", "##%", "{", "##}", "##count", "<", "##b>", "##/"]


def _reference(pieces):
    import tensorflow_text as text

    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(pieces), tf.range(len(pieces), dtype=tf.int64)), 1)
    return text.WordpieceTokenizer(table, suffix_indicator="##", unknown_token="<unk>", token_out_type=tf.string,
                                   max_bytes_per_word=100)


def test_exact_pieces_on_a_small_vocabulary():
    core = CoreWordpiece(PIECES)
    got = core.tokenize(tf.constant(["abcab", "abca", "한국어", "xz", "%s", "{count}", "c"])).to_list()
    assert got == [[b"abc", b"##a", b"##b"], [b"abc", b"##a"], ["한국".encode(), "##어".encode()],
                   [b"<unk>"], [b"%", b"##s"], [b"{", b"##count", b"##}"], [b"c"]]


def test_same_pieces_as_tensorflow_text_on_random_words():
    rng = random.Random(7)
    alphabet = list("abcxz%{}s/<>") + ["한", "국", "어"]
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    words += ["a" * 101, "한" * 34, "한" * 33]  # over and at the 100-byte limit
    got = CoreWordpiece(PIECES).tokenize(tf.constant(words)).to_list()
    want = _reference(PIECES).tokenize(tf.constant(words)).to_list()
    assert [w for w, g, r in zip(words, got, want) if g != r] == []


def test_compiled_segmenter_gives_the_core_pieces_on_random_words_and_a_bpe_vocabulary():
    """The Beam job's compiled FastWordpieceTokenizer against the SavedModel's core ops."""
    from components.preprocess.learners import learn_wordpiece_bpe

    rng = random.Random(11)
    alphabet = list("abcxz%{}s/<>#") + ["한", "국", "어", "é"]
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    words += ["a" * 101, "한" * 34, "한" * 33, "##", "#", "<unk>", "##a"]
    for pieces in (PIECES, learn_wordpiece_bpe([(w, 1 + i % 7) for i, w in enumerate(sorted(set(words[:2000])))],
                                               200, SPECIALS)):
        got = CompiledWordpiece(pieces).tokenize(tf.constant(words)).to_list()
        want = CoreWordpiece(pieces).tokenize(tf.constant(words)).to_list()
        assert [w for w, g, r in zip(words, got, want) if g != r] == []


def test_bpe_learner_spells_every_word_and_keeps_only_pieces_the_segmentation_uses():
    from components.preprocess.learners import learn_wordpiece_bpe

    words = sorted({"translation": 50, "translated": 40, "translating": 30, "transfer": 20, "relation": 9,
                    "한국어": 12, "한국": 7, "국어": 3}.items())
    pieces = learn_wordpiece_bpe(words, 60, SPECIALS)
    assert pieces[:4] == SPECIALS and len(pieces) <= 60 and len(set(pieces)) == len(pieces)
    chars = sorted({c for w, _ in words for c in w})
    assert pieces[4:4 + 2 * len(chars)] == [form for c in chars for form in (c, "##" + c)]  # the alphabet first
    assert learn_wordpiece_bpe(words, 60, SPECIALS) == pieces  # deterministic
    segmented = CoreWordpiece(pieces).tokenize(tf.constant([w for w, _ in words])).to_list()
    used = {p.decode() for row in segmented for p in row}
    assert b"<unk>" not in {p for row in segmented for p in row}
    merges = pieces[4 + 2 * len(chars):]
    assert merges and set(merges) <= used  # no merge the greedy segmentation never picks
    assert "translat" in pieces or "translation" in pieces  # frequent stems become whole pieces


def test_same_pieces_as_tensorflow_text_with_a_learned_vocabulary():
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

    rng = random.Random(3)
    stems = ["connect", "translat", "보내", "받", "fichier", "Datei", "user", "error"]
    endings = ["", "ion", "ed", "ing", "s", "습니다", "었다", "en", "er", "ungen"]
    counts = {}
    for _ in range(5000):
        word = rng.choice(stems) + rng.choice(endings)
        counts[word] = counts.get(word, 0) + 1
    pieces = learner.learn(list(counts.items()), vocab_size=120, reserved_tokens=SPECIALS, lower_thresh=1)
    words = [rng.choice(stems) + rng.choice(endings) + rng.choice(["", "z", "ß", "!"]) for _ in range(2000)]
    got = CoreWordpiece(pieces).tokenize(tf.constant(words)).to_list()
    want = _reference(pieces).tokenize(tf.constant(words)).to_list()
    assert [w for w, g, r in zip(words, got, want) if g != r] == []


@pytest.mark.parametrize("text", [
    "나는 배가 고프다", "Die Datei konnte nicht geöffnet werden.", "hello, world!",
    "%s: cannot open %(name)s {count} <b>files</b> &amp;", "  spaced   out\ttext  ",
])
def test_detokenize_inverts_tokenize_up_to_whitespace_normalization(text):
    chars = sorted(set(text.replace(" ", "").replace("\t", "")))
    pieces = SPECIALS + chars + ["##" + c for c in chars]  # every word splits, none is unknown
    tokenizer = make_tokenizer("subword", wordpiece_vocab=pieces)
    tokens = tokenizer.tokenize(tf.constant([text]))
    assert tokens.flat_values.shape[0] > len(text.split())  # really split into pieces
    assert tokenizer.detokenize(tokens).numpy()[0] == normalize(tf.constant([text]), False).numpy()[0]


def test_a_saved_subword_tokenizer_loads_and_runs_without_tensorflow_text(tmp_path):
    vocab = tmp_path / "pieces.vocab"
    vocab.write_text("\n".join(PIECES) + "\n", encoding="utf-8")
    tokenizer = make_tokenizer("subword", wordpiece_vocab=str(vocab))

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def tokenize(self, texts):
            return {"pieces": self.tokenizer.tokenize(texts).to_tensor("")}

    module = Module()
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures={"serving_default": module.tokenize})
    script = textwrap.dedent(f"""
        import sys
        import tensorflow as tf
        out = tf.saved_model.load({str(tmp_path / 'saved')!r}).signatures["serving_default"](
            texts=tf.constant(["abcab 한국어", "%s"]))
        assert "tensorflow_text" not in sys.modules
        print(out["pieces"].numpy().tolist())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str([[b"abc", b"##a", b"##b", "한국".encode(), "##어".encode()],
                                                         [b"%", b"##s", b"", b"", b""]])
