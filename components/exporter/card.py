"""The model card (JSON) and README that travel inside the SavedModel's assets/ folder."""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from typing import Any, Optional

from components.core import io
from components.core.languages import Languages

logger = logging.getLogger(__name__)

CARD_FORMAT = "seq2seq-pipeline/saved-model"
CARD_VERSION = 1

SIGNATURES: dict[str, Any] = {
    "serving_default": {
        "description": "Greedy translation of raw sentences, decoded in the graph.",
        "inputs": {"text": {"dtype": "string", "shape": [None],
                            "meaning": "raw source sentences (UTF-8); empty or whitespace-only gives an empty translation"}},
        "outputs": {
            "translation": {"dtype": "string", "shape": [None],
                            "meaning": "detokenized translation, special tokens (<pad> <bos> <eos> <unk>) removed"},
            "tokens": {"dtype": "string", "shape": [None, None],
                       "meaning": "output tokens aligned with token_ids, including <eos> when emitted, padded with ''"},
            "token_ids": {"dtype": "int64", "shape": [None, None],
                          "meaning": "target vocabulary ids, padded with 0 (<pad>) after <eos>"},
            "length": {"dtype": "int64", "shape": [None],
                       "meaning": "number of decoded tokens up to and including <eos> (0 for empty input)"},
            "score": {"dtype": "float32", "shape": [None],
                      "meaning": "sum of the log-probabilities of the decoded tokens"},
            "unprotected_spans": {"dtype": "int64", "shape": [None],
                                  "meaning": "protected spans of the source that no sentinel protects: those "
                                             "past the first protected_spans.max_spans_per_text, and those whose "
                                             "sentinel the vocabularies lack; they are ordinary text the model "
                                             "may drop or change (0 when protection is off)"},
        },
    },
    "translate_with_max_length": {
        "description": "As serving_default, with the maximum decode length chosen per call.",
        "inputs": {
            "text": {"dtype": "string", "shape": [None], "meaning": "raw source sentences"},
            "max_length": {"dtype": "int32", "shape": [],
                           "meaning": "maximum decoded tokens (<eos> included), at most "
                                      "decoding.max_decode_length_limit (above it: InvalidArgumentError); "
                                      "<= 0 means the exported default"},
        },
        "outputs": "as serving_default",
    },
    "translate_with_attention": {
        "description": "As translate_with_max_length, plus each output step's attention over the source: "
                       "kept out of serving_default, whose every REST reply would otherwise carry a "
                       "[target_steps, max_source_length] matrix per sentence.",
        "inputs": {
            "text": {"dtype": "string", "shape": [None], "meaning": "raw source sentences"},
            "max_length": {"dtype": "int32", "shape": [], "meaning": "as translate_with_max_length's"},
        },
        "outputs": None,  # serving_default's plus ATTENTION (below)
    },
    "beam_search": {
        "description": "Beam search translation with the exported defaults (decoding.beam); serving_default "
                       "stays greedy. TF2 signatures have no optional inputs: beam_search_with_options takes "
                       "each setting per call.",
        "inputs": {"text": {"dtype": "string", "shape": [None], "meaning": "raw source sentences"}},
        "outputs": {
            "translations": {"dtype": "string", "shape": [None, "n_best"],
                             "meaning": "every hypothesis as text, best first; translations[:, 0] is translation. "
                                        "Only the best keeps its attention, so in the others an <unk> is dropped "
                                        "instead of replaced by a source token; '' for a missing hypothesis"},
            "scores": {"dtype": "float32", "shape": [None, "n_best"],
                       "meaning": "the ranking (descending): score / ((5 + length) / 6)^length_penalty, length "
                                  "counting <eos>; -inf for a missing hypothesis, 0 for empty input"},
        },
    },
    "beam_search_with_options": {
        "description": "As beam_search, with the settings chosen per call (each has a value meaning the "
                       "exported default); bad requests fail with InvalidArgumentError before decoding.",
        "inputs": {
            "text": {"dtype": "string", "shape": [None], "meaning": "raw source sentences"},
            "beam_width": {"dtype": "int32", "shape": [], "meaning": "hypotheses kept per sentence, at least 1; -1: default"},
            "length_penalty": {"dtype": "float32", "shape": [],
                               "meaning": "GNMT alpha (0: rank by raw log-probability); < 0: default"},
            "max_length": {"dtype": "int32", "shape": [],
                           "meaning": "maximum decoded tokens, at most decoding.max_decode_length_limit; "
                                      "0: default; negative: an error"},
            "n_best": {"dtype": "int32", "shape": [],
                       "meaning": "hypotheses returned, 1 to beam_width; -1: default (capped at beam_width)"},
            "no_repeat_ngram_size": {"dtype": "int32", "shape": [],
                                     "meaning": "no n-gram of this size twice in a hypothesis (0: off); "
                                                "< 0: default"},
        },
        "outputs": None,  # beam_search's plus ATTENTION of the best hypothesis (below)
    },
    "encode": {
        "description": "The preprocessing of a source sentence, exactly as written to the training TFRecords.",
        "inputs": {"text": {"dtype": "string", "shape": [None], "meaning": "raw source sentences"}},
        "outputs": {
            "source_ids": {"dtype": "int64", "shape": [None, "max_source_length"],
                           "meaning": "source vocabulary ids, truncated and padded with 0 (<pad>); <unk>=3 for unknown tokens"},
            "source_length": {"dtype": "int64", "shape": [None], "meaning": "number of real source tokens"},
            "source_copy_ids": {"dtype": "int64", "shape": [None, "max_source_length"],
                                "meaning": "each source token's id in the extended target vocabulary "
                                           "(model.copy_attention): its target id, else target vocabulary "
                                           "size + the first source position of the same token; 0 (<pad>) "
                                           "after the tokens; computed whatever model.copy_attention says"},
        },
    },
    "source_tokens": {
        "description": "The source tokens the model sees (truncated; unknown tokens as <unk>), for display.",
        "inputs": {"text": {"dtype": "string", "shape": [None], "meaning": "raw source sentences"}},
        "outputs": {"source_tokens": {"dtype": "string", "shape": [None, "max_source_length"],
                                      "meaning": "source tokens padded with ''"}},
    },
}

ATTENTION = {"dtype": "float32", "shape": [None, "target_steps", "max_source_length"],
             "meaning": "attention weights of each output step over source positions (padding gets 0; all "
                        "zeros for model.attention: none)"}
SIGNATURES["translate_with_attention"]["outputs"] = {**SIGNATURES["serving_default"]["outputs"],
                                                     "attention": ATTENTION}
# beam_search's outputs: serving_default's, for the best hypothesis, then the n-best lists.
SIGNATURES["beam_search"]["outputs"] = {
    **{key: dict(spec, meaning=f"{spec['meaning']} (of the best hypothesis)")
       for key, spec in SIGNATURES["serving_default"]["outputs"].items()},
    **SIGNATURES["beam_search"]["outputs"],
}
SIGNATURES["beam_search_with_options"]["outputs"] = {
    **SIGNATURES["beam_search"]["outputs"],
    "attention": dict(ATTENTION, meaning=f"{ATTENTION['meaning']} (of the best hypothesis)")}

# What the card and README say about protected spans (components/text/spans.py,
# components/model/decoding.py SpanConstraint); docs/export.md, "Protected spans in the exported model".
SPAN_ENFORCEMENT = (
    "Each protected span of the source (the first {slots} of a sentence, left to right) becomes a numbered "
    "sentinel token (span k: U+E000 + k) before tokenizing, in encode and in translation alike. Decoding (greedy and beam search "
    "alike) emits the sentinel of every span of the source exactly once: the sentinel of a span the source does not "
    "have, or of one "
    "already emitted, is forbidden; while any span is missing, <eos> is forbidden and its probability goes to "
    "the missing spans' sentinels in proportion to theirs. The sentinels of the output become the source's "
    "spans again, character for character; spans still missing when decoding stops at max_length are "
    "appended to the translation, space-separated, in source order. Spans past the first {slots} (and spans "
    "whose sentinel the vocabularies lack) get no sentinel: they stay ordinary text, and the unprotected_spans "
    "output counts them. Core TensorFlow ops only."
)
SPAN_OUTPUTS = (
    "translation and tokens hold the restored spans (a sentinel token of tokens becomes its span, a ## prefix "
    "kept; spans appended after max_length are in translation only, not in tokens, token_ids or length); "
    "token_ids, encode's source_ids and source_tokens show the sentinels themselves."
)


# The card's `intended_use` (Hugging Face model card: "Uses", "Bias, Risks, and Limitations"; Model
# Card Toolkit: considerations.use_cases / limitations). What this pipeline's models are and are not.
INTENDED_USE: dict[str, Any] = {
    "primary_uses": "Translating short sentences of the training corpus's domain and language pair, from raw "
                    "text, in a TensorFlow or TF Serving process; the quality is the evaluation's, on that corpus.",
    "out_of_scope": "Other language pairs or domains than the corpus's; decisions that need a correct translation "
                    "without a human check; documents (each input is one sentence, cut at max_source_length).",
    "limitations": [
        "A small GRU encoder-decoder with attention, trained on one corpus: expect dropped, repeated or invented "
        "words, above all on long or out-of-domain sentences.",
        "Sources longer than preprocess.max_source_length tokens are truncated; translations stop at "
        "decoding.max_decode_length tokens.",
        "Words outside the vocabularies become <unk> (export.replace_unknown copies the most attended source "
        "token instead).",
        "Protected spans are kept exactly only when preprocess.protected_spans names their kind, and only the "
        "first max_spans_per_text of a sentence (see protected_spans).",
        "The training data's biases are the model's: nothing here measures or removes them.",
    ],
}


CORPUS_NOTE = ("the corpus files are not recorded in the preprocess output; for `seq2seq run`, run.json's "
               "inputs.corpus maps each corpus file to its sha256. train_records_sha256 identifies the "
               "examples this model was trained on")

# The card's `evaluation` at export: the pipeline evaluates the exported model afterwards, and the
# pusher writes the completed card into the pushed version (components/pusher/executor.py).
NOT_EVALUATED = {
    "status": "not evaluated at export",
    "where": "the evaluator scores this exported model after export (evaluation.json, blessing.json); a version "
             "pushed by `seq2seq run` holds the card with this section filled in at assets.extra/model_card.json",
}

def beam_entry(export) -> dict[str, Any]:
    """The card's decoding.beam: the beam_search signatures' defaults (export.*) and how they rank."""
    return {"beam_width": export.beam_width, "length_penalty": export.length_penalty, "n_best": export.n_best,
            "no_repeat_ngram_size": export.no_repeat_ngram_size,
            "ranking": "score / ((5 + length) / 6)^length_penalty (GNMT), length counting <eos>",
            "stops_when": "no sentence's n-best can change any more, or max_decode_length steps"}


def protected_spans_entry(config, artifact) -> Optional[dict[str, Any]]:
    """The card's `protected_spans`: what `preprocess.protected_spans` protects and how (None when off)."""
    from components.core.spans import SENTINEL_BASE, SPAN_KINDS, SPAN_SLOTS, combined_pattern, slot_of
    from components.text.subword import read_pieces

    items = list(config.preprocess.protected_spans)
    if not items:
        return None
    return {
        "items": items,
        "kinds": [item for item in items if item in SPAN_KINDS],
        "regexes": [item for item in items if item not in SPAN_KINDS],
        "pattern": combined_pattern(items),
        "max_spans_per_text": SPAN_SLOTS,
        "sentinels": f"U+{SENTINEL_BASE:04X}..U+{SENTINEL_BASE + SPAN_SLOTS - 1:04X}",
        # The vocabulary ids of the sentinel tokens (a WordPiece side has a `##` form of each too).
        "sentinel_ids": {side: [i for i, token in enumerate(read_pieces(artifact.vocab_path(side)))
                                if slot_of(token) >= 0]
                         for side in ("source", "target")},
        "enforcement": SPAN_ENFORCEMENT.format(slots=SPAN_SLOTS),
        "outputs": SPAN_OUTPUTS,
    }


def sha256_files(paths: list[str]) -> str:
    """One digest over the named files' bytes, in the given order (names excluded: copies hash equal)."""
    return "sha256:" + io.files_digest(paths)


def training_data_fingerprint(artifact) -> dict[str, Any]:
    """Digest of the vocabularies (with the learned tokenizers' files) and training TFRecords, plus
    the counts from stats.json if present."""
    files = [artifact.vocab_path("source"), artifact.vocab_path("target")]
    files += [p for p in (artifact.learned_tokenizer_path(side) for side in ("source", "target")) if p]
    records = artifact.split_files("train")
    logger.info("export: fingerprinting the vocabularies and %d train shard(s)", len(records))
    fingerprint: dict[str, Any] = {
        "preprocess_dir": artifact.directory,
        "vocabulary_sha256": sha256_files(files),
        "train_records_sha256": sha256_files(records) if records else None,
        "train_shards": len(records),
    }
    if io.exists(artifact.path(artifact.STATS)):
        try:
            stats = artifact.stats()
        except (ValueError, OSError) as e:
            logger.warning("could not read %s/stats.json: %s", artifact.directory, e)
            stats = {}
        for key in ("records_read", "records_written", "rejected_total", "vocabulary_size", "tokenizer",
                    "vocabularies_from", "languages"):
            if key in stats:
                fingerprint[key] = stats[key]
        if isinstance(stats.get("records_written"), dict):  # the pair counts, by split
            fingerprint["pairs"] = dict(stats["records_written"])
    # preprocess.source_language / target_language, or the corpus name's pair (components/core/languages.py);
    # source and target null: unknown (an older preprocess output records none).
    fingerprint["languages"] = Languages.from_dict(fingerprint.get("languages")).to_dict()
    # The preprocess output does not name its corpus files; a pipeline run's run.json does.
    fingerprint["corpus"] = CORPUS_NOTE
    return fingerprint


def build_card(
    config,
    artifact,
    vocab_sizes: dict[str, int],
    max_decode_length: int,
    checkpoint: Optional[str],
    metrics: Optional[dict[str, Any]],
) -> dict[str, Any]:
    from components.core.vocabulary import SPECIAL_TOKENS
    from components.serving.client import MAX_DECODE_LENGTH_LIMIT
    from components.text.tokenizers import needs_tensorflow_text

    p = config.preprocess
    names = {side: p.tokenizer_of(side) for side in ("source", "target")}
    needs_text = any(needs_tensorflow_text(name) for name in names.values())
    load = ("import tensorflow as tf\nimport tensorflow_text  # registers the tokenizer ops\n" if needs_text
            else "import tensorflow as tf\n")
    load += "model = tf.saved_model.load(SAVED_MODEL_DIR)\n" \
            "out = model.signatures['serving_default'](text=tf.constant(['I feel hungry']))\n" \
            "print(out['translation'].numpy()[0].decode('utf-8'))"
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "created": created,
        "model_details": model_details(config, created),
        "intended_use": INTENDED_USE,
        "signatures": SIGNATURES,
        "tokenizer": {
            "name": p.tokenizer,
            "source": names["source"],
            "target": names["target"],
            "lowercase": p.lowercase,
            "needs_tensorflow_text": needs_text,
            "tensorflow_text_requirement": "tensorflow-text with the same minor version as tensorflow" if needs_text else None,
        },
        "load_example": load,
        "special_tokens": {tok: i for i, tok in enumerate(SPECIAL_TOKENS)},
        "vocabulary_sizes": vocab_sizes,
        "preprocess": {"max_source_length": p.max_source_length, "max_target_length": p.max_target_length,
                       "length_policy": p.length_policy, "tokenizer": p.tokenizer, "lowercase": p.lowercase},
        "protected_spans": protected_spans_entry(config, artifact),
        "model": dataclasses.asdict(config.model),
        "decoding": {"algorithm": "greedy", "max_decode_length": max_decode_length,
                     "max_decode_length_limit": MAX_DECODE_LENGTH_LIMIT,
                     "stops_when": "every sentence has emitted <eos>, or max_decode_length steps",
                     "signatures": {"greedy": ["serving_default", "translate_with_max_length"],
                                    "beam": ["beam_search", "beam_search_with_options"]},
                     "beam": beam_entry(config.export)},
        "checkpoint": checkpoint,
        "training_data": training_data_fingerprint(artifact),
        "eval_metrics": metrics,
        "evaluation": dict(NOT_EVALUATED),
        "config": config.to_dict(),
    }


def model_details(config, created: str) -> dict[str, Any]:
    """The card's `model_details` (Model Card Toolkit's model_details; Hugging Face's "Model Details")."""
    m = config.model
    encoder = "bidirectional GRU" if m.bidirectional else "GRU"
    attention = "no attention" if m.attention == "none" else f"{m.attention} attention"
    copy = ", copy attention" if m.copy_attention else ""
    return {
        "name": "seq2seq-pipeline translator",
        "architecture": f"{encoder} encoder, GRU decoder, {attention}{copy}; embedding {m.embedding_dim}, "
                        f"{m.units} units",
        "created": created,
        "framework": "TensorFlow SavedModel (TF2 signatures; TF Serving layout once pushed)",
        "selected_by": f"trainer.select_by: {config.trainer.select_by} (the best/ checkpoint, unless "
                       f"trainer.average_last averages the last checkpoints)",
    }


def render_readme(card: dict[str, Any]) -> str:
    """A short human-readable summary of the card."""
    tok = card["tokenizer"]
    lines = [
        "# seq2seq-pipeline SavedModel",
        "",
        "Attention seq2seq translator. Raw strings in, translations out: tokenizer, vocabularies,",
        "encoder, decoder and the decoding loop are all inside the graph.",
        "",
        "Two decoders: greedy (`serving_default`, `translate_with_max_length`) and beam search",
        "(`beam_search` with the exported defaults, `beam_search_with_options` with per-call settings;",
        "a TF2 signature has no optional inputs, hence two).",
        "",
        "## Load",
        "",
        "```python",
        card["load_example"],
        "```",
        "",
        f"Tokenizer: `{tok['name']}` (lowercase: {tok['lowercase']}). "
        + ("Loading needs `import tensorflow_text` first." if tok["needs_tensorflow_text"]
           else "Loading needs only `import tensorflow`."),
        "",
    ]
    lines += _render_spans(card.get("protected_spans"))
    lines += [
        "## Signatures",
        "",
    ]
    for name, sig in card["signatures"].items():
        lines.append(f"### `{name}`: {sig['description']}")
        lines.append("")
        for kind in ("inputs", "outputs"):
            entries = sig[kind]
            if isinstance(entries, str):
                lines.append(f"- {kind}: {entries}")
                continue
            for key, spec in entries.items():
                lines.append(f"- {kind[:-1]} `{key}` ({spec['dtype']} {spec['shape']}): {spec['meaning']}")
        lines.append("")
    lines += [
        "## Data and metrics",
        "",
        f"- vocabulary sizes: {json.dumps(card['vocabulary_sizes'])}",
        f"- max decode length: {card['decoding']['max_decode_length']}",
        f"- beam search defaults: {json.dumps(_beam_defaults(card))}",
        f"- training data: {card['training_data'].get('vocabulary_sha256')} (vocabularies), "
        f"{card['training_data'].get('train_records_sha256')} (train records)",
        f"- pairs: {json.dumps(card['training_data'].get('pairs'))}; languages: "
        f"{Languages.from_dict(card['training_data'].get('languages')).describe()}",
        f"- training metrics (metrics.json): "
        f"{json.dumps(card['eval_metrics']) if card['eval_metrics'] else 'none recorded'}",
        f"- evaluation: {card['evaluation']['status']} ({card['evaluation'].get('where', '')})",
        "",
        "## Intended use and limitations",
        "",
        f"- uses: {card['intended_use']['primary_uses']}",
        f"- out of scope: {card['intended_use']['out_of_scope']}",
        *[f"- limitation: {text}" for text in card["intended_use"]["limitations"]],
        "",
        "The full details are in model_card.json beside this file.",
        "",
    ]
    return "\n".join(lines)


def _beam_defaults(card: dict[str, Any]) -> dict[str, Any]:
    beam = card["decoding"].get("beam") or {}
    return {key: beam[key] for key in ("beam_width", "length_penalty", "n_best", "no_repeat_ngram_size")
            if key in beam}


def _render_spans(spans: Optional[dict[str, Any]]) -> list[str]:
    """The README's "Protected spans" section."""
    lines = ["## Protected spans", ""]
    if not spans:
        return lines + ["Off (`preprocess.protected_spans: []`): placeholders and markup are ordinary text.", ""]
    protected = [f"`{kind}`" for kind in spans["kinds"]] + [f"regex `{regex}`" for regex in spans["regexes"]]
    return lines + [
        f"Kept exactly: {', '.join(protected)} (at most {spans['max_spans_per_text']} spans a sentence; "
        f"sentinels {spans['sentinels']}).",
        "",
        f"How it is enforced: {spans['enforcement']}",
        "",
        f"Outputs: {spans['outputs']}",
        "",
    ]
