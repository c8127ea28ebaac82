"""A short Markdown report: metrics, verdict, loss curve, sample translations, placeholder offenders,
one attention map."""
from __future__ import annotations

import logging
from io import BytesIO
from typing import Any, Sequence

from components.core import io
from components.core.artifacts import Evaluation

logger = logging.getLogger(__name__)


def plot_loss_curve(history: Sequence[dict[str, Any]], path: str) -> bool:
    """Train and eval loss per epoch; False when there is no history to draw."""
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("train_loss", "train"), ("eval_loss", "eval")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(epochs, [float("nan") if v is None else v for v in values], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (per target token)")
    ax.legend()
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    io.write_bytes_atomic(path, buffer.getvalue())
    return True


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(span: str) -> str:
    fence = "``" if "`" in span else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{_cell(span)}{pad}{fence}"


def _span_changes(missing: Sequence[str], extra: Sequence[str]) -> str:
    """"missing `%s`; extra `{0}`" (a span repeated as often as it is missing or extra)."""
    parts = [f"{word} {', '.join(_code(span) for span in spans)}"
             for word, spans in (("missing", missing), ("extra", extra)) if spans]
    return "; ".join(parts)


def _fidelity_cell(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return "—" if value is None else f"{value:.2f} ({metrics.get(f'{key}_count', 0)})"


def _decoder_name(entry: dict[str, Any]) -> str:
    if entry.get("decoder") == "beam":
        return f"beam search (width {entry.get('beam_width')})"
    return "greedy search"


def _decoder_line(evaluation: dict[str, Any]) -> str:
    """Which decoder translated the candidate and the served model (evaluator.decoder)."""
    line = f"Decoder: {_decoder_name(evaluation)} for the candidate"
    served = evaluation.get("baseline_decoder")
    if served:
        line += f", {_decoder_name(served)} for the served model"
        if served.get("note"):
            line += f" ({served['note']})"
    return line + "."


def _decoders_table(decoders: dict[str, dict[str, Any]]) -> list[str]:
    """The candidate under each decoder it has, the blessing's first."""
    if len(decoders) < 2:
        return []
    lines = ["", "The candidate under both decoders (the blessing judges the first):", "",
             "| decoder | bleu | chrf | exact_match |", "|---|---|---|---|"]
    for entry in sorted(decoders.values(), key=lambda e: not e.get("blessing")):
        lines.append(f"| {_decoder_name(entry)} | {entry['bleu']:.2f} | {entry['chrf']:.2f} | "
                     f"{entry['exact_match']:.2f} |")
    return lines


def _splits_table(splits: dict[str, dict[str, Any]], signatures: dict[str, str]) -> list[str]:
    """Each scored split (the blessing's first) with its hypotheses file, and sacrebleu's signatures."""
    lines = []
    if len(splits) > 1:
        lines += ["", "Every split the preprocess output has, with the blessing's decoder (the blessing judges "
                  "the first):", "", "| split | pairs | bleu | chrf | exact_match | hypotheses |", "|---|---|---|---|---|---|"]
        for name, entry in sorted(splits.items(), key=lambda item: not item[1].get("blessing")):
            lines.append(f"| {name} | {entry['count']} | {entry['bleu']:.2f} | {entry['chrf']:.2f} | "
                         f"{entry['exact_match']:.2f} | [{entry['hypotheses']}]({entry['hypotheses']}) |")
    if signatures:
        lines += ["", "sacrebleu signatures: " + "; ".join(f"{name} `{sig}`" for name, sig in signatures.items())]
    return lines


def write_report(out: str, evaluation: dict[str, Any], blessing: Any, samples: Sequence[dict[str, Any]],
                 history: Sequence[dict[str, Any]], attention: Any = None,
                 offenders: Sequence[dict[str, Any]] = ()) -> str:
    """report.md (+ loss_curve.png, attention.png); `attention` is a Translation with attention;
    `offenders` are the worst placeholder offenders (source, reference, translation, missing, extra)."""
    from components.serving.plotting import plot_attention

    lines = [
        "# Evaluation report", "",
        f"Scored the exported SavedModel on the **{evaluation['split']}** split "
        f"({evaluation['examples']} pairs)"
        + ("." if evaluation["split"] != "train" else ": there is no eval split, so these are training pairs."),
        "", _decoder_line(evaluation),
        "", "| metric | candidate | served |", "|---|---|---|",
    ]
    baseline = evaluation.get("baseline") or {}
    for key in ("bleu", "chrf", "exact_match"):
        served = baseline.get(key)
        lines.append(f"| {key} | {evaluation[key]:.2f} | {'—' if served is None else f'{served:.2f}'} |")
    for key in ("placeholder_fidelity", "copy_rate"):
        lines.append(f"| {key} (counted) | {_fidelity_cell(evaluation, key)} | {_fidelity_cell(baseline, key)} |")
    if evaluation.get("eval_loss") is not None:
        lines.append(f"| eval_loss | {evaluation['eval_loss']:.4f} | — |")
    lines += _decoders_table(evaluation.get("decoders") or {})
    lines += _splits_table(evaluation.get("splits") or {}, evaluation.get("sacrebleu") or {})
    if evaluation.get("fidelity_spans"):
        lines += ["", "Placeholder fidelity: the percentage of the sentences whose source has protected spans "
                  "and whose reference keeps them all that the translation keeps exactly too (spans: "
                  f"{', '.join(_code(span) for span in evaluation['fidelity_spans'])}). Copy rate: the "
                  "percentage of the source identifiers found in the reference that the translation has too."]
    lines += ["", f"**{'Blessed' if blessing.blessed else 'Not blessed'}**: {blessing.reason}", ""]
    if getattr(blessing, "non_finite", None):
        lines += [f"**Not finite**: {_cell(blessing.non_finite)}", ""]
    if getattr(blessing, "baseline_unloadable", None):
        lines += [f"**The served model could not be loaded**, so it was treated as absent and the candidate "
                  f"judged on evaluator.min_bleu alone: {_cell(blessing.baseline_unloadable)}", ""]
    if plot_loss_curve(history, f"{out}/loss_curve.png"):
        lines += ["## Loss", "", "![loss curve](loss_curve.png)", ""]
    lines += ["## Samples", "", "| source | reference | hypothesis |", "|---|---|---|"]
    lines += [f"| {_cell(s['source'])} | {_cell(s['reference'])} | {_cell(s['translation'])} |" for s in samples]
    if offenders:
        lines += ["", "## Placeholder offenders", "",
                  f"The {len(offenders)} worst of the counted sentences whose translation does not keep the "
                  "source's protected spans exactly (most spans missing or extra first).", "",
                  "| source | reference | hypothesis | spans |", "|---|---|---|---|"]
        lines += [f"| {_cell(o['source'])} | {_cell(o['reference'])} | {_cell(o['translation'])} | "
                  f"{_span_changes(o['missing'], o['extra'])} |" for o in offenders]
    if attention is not None and attention.tokens and attention.source_tokens:
        plot_attention(attention.source_tokens, attention.tokens, attention.attention, f"{out}/attention.png",
                       title=attention.source)
        lines += ["", "## Attention (first sample)", "", "![attention](attention.png)"]
    path = Evaluation(out).path(Evaluation.REPORT)
    io.write_text_atomic(path, "\n".join(lines) + "\n")
    return path
