"""Copy attention (model.copy_attention, a pointer-generator) and <unk> replacement: the extended
ids, the loss and its gradients, decoding over the extended vocabulary, and a model that learns to
copy identifiers it has never seen, exported and served by plain TensorFlow."""
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from export_fixtures import BEAM_ARGS, write_tsv
from test_export import VENV_BIN, clean_env, plain_tensorflow_translations

from components.core.vocabulary import EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID
from components.model import FAST, REFERENCE, Seq2Seq
from components.text.copying import source_copy_ids, source_surface, target_copy_output
from components.text.encoding import SequenceEncoder, decode_ids, id_to_token_table
from components.text.tokenizers import SubwordTokenizer, WhitespaceTokenizer
from pipeline.config import load_config


def test_copy_ids_and_labels_point_at_the_first_source_token_with_the_same_text():
    target_tokens = list(SPECIAL_TOKENS) + ["open", "now", "열기"]  # V = 7
    source = SequenceEncoder(WhitespaceTokenizer(), list(SPECIAL_TOKENS) + ["open"], 5)
    target = SequenceEncoder(WhitespaceTokenizer(), target_tokens, 6)
    sources = tf.constant(["open foo.txt now", "foo foo bar", ""])
    surface, valid = source_surface(source, sources)
    assert surface.numpy().tolist()[1] == [b"foo", b"foo", b"bar", b"", b""]
    copy_ids = source_copy_ids(surface, valid, target.table).numpy().tolist()
    # In the target vocabulary: its id; else V + the first position of the same text.
    assert copy_ids == [[4, 8, 5, PAD_ID, PAD_ID], [7, 7, 9, PAD_ID, PAD_ID], [PAD_ID] * 5]
    labels = target_copy_output(target, tf.constant(["foo.txt 열기 now", "bar foo baz", "x"]), surface, valid)
    # Only <unk> labels a source token spells become copies; baz and x stay <unk>.
    assert labels.numpy().tolist() == [[8, 6, 5, EOS_ID, PAD_ID, PAD_ID], [9, 7, UNK_ID, EOS_ID, PAD_ID, PAD_ID],
                                       [UNK_ID, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]]


def test_an_unknown_wordpiece_word_copies_as_the_whole_word():
    pieces = list(SPECIAL_TOKENS) + ["a", "##b", "c"]
    tokenizer = SubwordTokenizer(pieces)
    tokens, surface = tokenizer.tokenize_with_surface(tf.constant(["ab fsync() c"]))
    assert tokens.to_list() == [[b"a", b"##b", b"<unk>", b"c"]]
    assert surface.to_list() == [[b"a", b"##b", b"fsync()", b"c"]]


def _batch() -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(0)
    return {"source_ids": tf.constant(rng.integers(4, 10, (3, 5))), "source_length": tf.constant([5, 3, 1], tf.int64),
            "source_copy_ids": tf.constant([[5, 12, 13, 5, 12], [4, 12, 6, 0, 0], [12, 0, 0, 0, 0]], tf.int64),
            "target_input": tf.constant(rng.integers(4, 12, (3, 6))),
            "target_output": tf.constant(rng.integers(4, 12, (3, 6))),
            "target_copy_output": tf.constant([[5, 12, 13, 2, 0, 0], [12, 7, 2, 0, 0, 0], [12, 2, 0, 0, 0, 0]],
                                              tf.int64),
            "target_length": tf.constant([4, 3, 2], tf.int64)}


def _copy_model(seed: int = 1) -> Seq2Seq:
    return Seq2Seq(10, 12, 8, 8, "bahdanau", seed=seed, copy_attention=True, bidirectional=True)


def test_the_copy_loss_and_its_gradients_are_the_same_with_both_kernels():
    model, batch = _copy_model(), _batch()
    results = {}
    for kernels in (FAST, REFERENCE):
        with tf.GradientTape() as tape:
            sums = model.compute_loss(batch, kernels=kernels, label_smoothing=0.1)
        results[kernels] = (sums, tape.gradient(sums.loss, model.trainable_variables))
    (fast, fast_grads), (reference, reference_grads) = results[FAST], results[REFERENCE]
    np.testing.assert_allclose(fast.loss.numpy(), reference.loss.numpy(), rtol=1e-6)
    assert fast.tokens.numpy() == reference.tokens.numpy() == 9.0
    for variable, a, b in zip(model.trainable_variables, fast_grads, reference_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(),
                                   rtol=1e-4, atol=1e-6, err_msg=variable.name)
    assert sum("copy_gate" in v.name for v in model.trainable_variables) == 2


def test_the_copy_loss_is_the_mixture_probability_of_each_label():
    model, batch = _copy_model(), _batch()
    sums = model.compute_loss(batch, kernels=REFERENCE)
    encoded = model.encode(batch["source_ids"], batch["source_length"], copy_ids=batch["source_copy_ids"])
    state, expected = model.initial_state(encoded), 0.0
    for t in range(6):  # the decoding step's extended log-probabilities, under teacher forcing
        log_probs, state, _ = model.step(batch["target_input"][:, t], state)
        for row in range(3):
            if t < batch["target_length"][row]:
                expected -= float(log_probs[row, batch["target_copy_output"][row, t]])
    np.testing.assert_allclose(sums.loss.numpy(), expected, rtol=1e-5)


def test_a_step_is_a_distribution_over_the_extended_vocabulary():
    model, batch = _copy_model(), _batch()
    encoded = model.encode(batch["source_ids"], batch["source_length"], copy_ids=batch["source_copy_ids"])
    log_probs, _, attention = model.step(tf.constant([1, 1, 1], tf.int64), model.initial_state(encoded))
    assert log_probs.shape == (3, 12 + 5)
    np.testing.assert_allclose(tf.reduce_sum(tf.exp(log_probs), axis=1).numpy(), [1.0] * 3, rtol=1e-5)
    # An extended id that no source token holds (row 2 has one token) cannot be produced.
    assert np.all(log_probs.numpy()[2, 13:] < -1e8)
    # An extended id as the previous token reads as <unk>: same step as feeding <unk>.
    state = model.initial_state(encoded)
    np.testing.assert_array_equal(model.step(tf.constant([14, 13, 12], tf.int64), state)[0].numpy(),
                                  model.step(tf.constant([UNK_ID] * 3, tf.int64), state)[0].numpy())


def test_unknown_and_copied_ids_come_out_as_the_source_spells_them(tmp_path):
    vocab = list(SPECIAL_TOKENS) + ["삭제"]
    path = tmp_path / "target.vocab"
    path.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    source = tf.constant([[b"delete", b"fsync()", b"now"]])
    ids = tf.constant([[5 + 1, 4, UNK_ID, EOS_ID]], tf.int64)  # copy of position 1, 삭제, <unk>, <eos>
    attention = tf.constant([[[0, 1, 0], [1, 0, 0], [0.1, 0.2, 0.7], [0, 0, 0]]], tf.float32)
    table, tokenizer = id_to_token_table(str(path)), WhitespaceTokenizer()
    tokens, text = decode_ids(table, tokenizer, ids, tf.constant([4], tf.int64), source=source, attention=attention)
    assert [t.decode() for t in tokens.numpy()[0]] == ["fsync()", "삭제", "now", "<eos>"]
    assert text.numpy()[0].decode() == "fsync() 삭제 now"
    _, text = decode_ids(table, tokenizer, ids, tf.constant([4], tf.int64), source=source)
    assert text.numpy()[0].decode() == "fsync() 삭제"  # no attention given: <unk> is dropped


# ---------------------------------------------------------------- learning to copy

VERBS = {"delete": "삭제", "open": "열기", "close": "닫기", "save": "저장", "rename": "이름 바꾸기"}
COPY_CONFIG = ["preprocess.tokenizer=whitespace", "preprocess.protected_spans=[]", "preprocess.min_frequency=2",
               "preprocess.eval_fraction=0", "preprocess.max_source_length=8", "preprocess.max_target_length=10",
               "model.embedding_dim=16", "model.units=32", "model.bidirectional=false", "model.dropout=0",
               "trainer.epochs=25", "trainer.max_minutes=null", "trainer.batch_size=16", "trainer.learning_rate=0.01",
               "trainer.lr_schedule=constant", "trainer.warmup_steps=0", "trainer.label_smoothing=0",
               "trainer.select_by=loss", "trainer.log_every_steps=1000", "export.replace_unknown=false"]


def identifier(rng: random.Random) -> str:
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
    return letters + rng.choice(["", "_", "."]) + str(rng.randint(0, 99)) + rng.choice(["", "()", ".txt"])


def copy_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """Every target must copy the source's identifier, which appears in no other pair."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        verb, name = rng.choice(sorted(VERBS)), identifier(rng)
        if rng.random() < 0.5:
            pairs.append((f"{verb} {name}", f"{name} {VERBS[verb]}"))
        else:
            pairs.append((f"{verb} {name} now", f"지금 {name} {VERBS[verb]}"))
    return pairs


@pytest.fixture(scope="module")
def copy_runs(tmp_path_factory) -> dict[str, str]:
    from components.exporter import run_export
    from components.preprocess import run_preprocess
    from components.trainer import run_training

    root = tmp_path_factory.mktemp("copy")
    data = write_tsv(root / "corpus.tsv", copy_pairs(240, seed=1))
    exports = {}
    for copy in (True, False):
        config = load_config(None, [*COPY_CONFIG, f"model.copy_attention={str(copy).lower()}"])
        examples, train = str(root / f"preprocess-{copy}"), str(root / f"train-{copy}")
        run_preprocess(str(data), examples, config, beam_args=BEAM_ARGS)
        run_training(examples, train, config)
        exports[copy] = run_export(train, str(root / f"export-{copy}"))
    return {"copy": exports[True], "plain": exports[False]}


def _accuracy(export: str, pairs: list[tuple[str, str]]) -> float:
    served = tf.saved_model.load(export).signatures["serving_default"]
    got = served(text=tf.constant([s for s, _ in pairs]))["translation"].numpy()
    return sum(g.decode() == t for g, (_, t) in zip(got, pairs)) / len(pairs)


@pytest.mark.slow
def test_a_copy_attention_model_copies_identifiers_it_never_saw(copy_runs):
    held_out = copy_pairs(40, seed=2)
    assert _accuracy(copy_runs["copy"], held_out) >= 0.9
    # Without copy attention (and without <unk> replacement) the identifier is an <unk>, never output.
    assert _accuracy(copy_runs["plain"], held_out) == 0.0


@pytest.mark.slow
def test_a_copy_attention_model_serves_with_plain_tensorflow_and_saved_model_cli(copy_runs, tmp_path):
    texts = [s for s, _ in copy_pairs(6, seed=3)]
    served = tf.saved_model.load(copy_runs["copy"]).signatures["serving_default"]
    expected = [t.decode("utf-8") for t in served(text=tf.constant(texts))["translation"].numpy()]
    out = plain_tensorflow_translations(copy_runs["copy"], texts, tmp_path)
    assert out == {"translations": expected, "tensorflow_text_loaded": False}
    run = subprocess.run([str(VENV_BIN / "saved_model_cli"), "run", "--dir", copy_runs["copy"], "--tag_set", "serve",
                          "--signature_def", "serving_default", "--input_exprs", f'text=["{texts[0]}"]'],
                         capture_output=True, text=True, env=clean_env(), timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert texts[0].split()[1] in run.stdout


def test_the_encode_signature_gives_the_copy_ids_of_the_tfrecords(copy_runs):
    from components.core.artifacts import PreprocessArtifact

    examples = str(Path(copy_runs["copy"]).parent / "preprocess-True")
    artifact = PreprocessArtifact.load(examples)
    spec = {k: artifact.feature_spec()[k] for k in ("source_text", "source_copy_ids", "source_ids")}
    records = [tf.io.parse_single_example(r, spec)
               for r in tf.data.TFRecordDataset(artifact.split_files("train"), compression_type="GZIP").take(50)]
    encode = tf.saved_model.load(copy_runs["copy"]).signatures["encode"]
    got = encode(text=tf.constant([r["source_text"].numpy() for r in records]))
    np.testing.assert_array_equal(got["source_copy_ids"].numpy(), np.stack([r["source_copy_ids"] for r in records]))
    np.testing.assert_array_equal(got["source_ids"].numpy(), np.stack([r["source_ids"] for r in records]))
    assert (got["source_copy_ids"].numpy() >= len(lookup_vocab(artifact))).any()


def lookup_vocab(artifact) -> list[str]:
    return artifact.vocabulary("target").tokens


def test_shared_pieces_split_a_word_of_both_sides_the_same_way(tmp_path):
    from components.core.artifacts import PreprocessArtifact
    from components.preprocess import run_preprocess
    from components.text.artifacts import tokenizer_for

    pairs = [(f"{verb} {name}", f"{name} {VERBS[verb]}") for verb, name in
             zip(sorted(VERBS) * 20, (identifier(random.Random(i)) for i in range(100)))]
    data = write_tsv(tmp_path / "c.tsv", pairs)
    # Spans off: `code` would take the snake_case identifiers out of the piece learner's words.
    config = load_config(None, ["preprocess.tokenizer=subword", "preprocess.vocab_pieces=120",
                                "preprocess.eval_fraction=0", "preprocess.shared_pieces=true",
                                "preprocess.protected_spans=[]"])
    run_preprocess(str(data), str(tmp_path / "out"), config, beam_args=BEAM_ARGS)
    shared = PreprocessArtifact.load(str(tmp_path / "out"))
    source_pieces = Path(shared.wordpiece_vocab_path("source")).read_text(encoding="utf-8").split()
    assert source_pieces == Path(shared.wordpiece_vocab_path("target")).read_text(encoding="utf-8").split()
    assert {"삭", "##제", "d", "##l"} <= set(source_pieces)  # learned from both sides' words (the alphabet)
    assert any(len(p.lstrip("#")) > 1 and "\uac00" <= p[-1] <= "\ud7a3" for p in source_pieces)  # and a Korean merge
    words = tf.constant([name for _, name in (p[0].split(" ", 1) for p in pairs)])
    split = {side: tokenizer_for(shared, side).tokenize(words).to_list() for side in ("source", "target")}
    assert split["source"] == split["target"]


@pytest.mark.slow
def test_beam_search_serves_a_copy_attention_model(copy_runs):
    """Beam search decodes over the extended vocabulary too: width 1 is greedy, and width 4 copies."""
    loaded = tf.saved_model.load(copy_runs["copy"])
    held_out = copy_pairs(12, seed=4)
    texts = tf.constant([s for s, _ in held_out])
    greedy = loaded.signatures["serving_default"](text=texts)
    options = {"beam_width": 1, "length_penalty": 0.0, "max_length": 0, "n_best": 1, "no_repeat_ngram_size": 0}
    beam = loaded.signatures["beam_search_with_options"](
        text=texts, **{k: tf.constant(v, tf.float32 if k == "length_penalty" else tf.int32) for k, v in options.items()})
    np.testing.assert_array_equal(beam["token_ids"].numpy(), greedy["token_ids"].numpy())
    np.testing.assert_array_equal(beam["translation"].numpy(), greedy["translation"].numpy())
    wide = loaded.signatures["beam_search"](text=texts)["translation"].numpy()
    assert sum(w.decode() == t for w, (_, t) in zip(wide, held_out)) >= 10
