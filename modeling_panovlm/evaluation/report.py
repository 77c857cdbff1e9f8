"""`metrics.json` and `report.md` of a caption evaluation."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from configuration_panovlm.atomic_files import write_text_atomically
from processing_panovlm.data.captions import RowProblem

from .metrics import PredictionRow, score_predictions, scores_to_dict


def _versions() -> dict[str, str | None]:
    versions = {}
    for package in ("panovlm", "torch", "transformers", "pycocoevalcap", "nltk", "rouge-score"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_evaluation_outputs(
    output_dir: str | os.PathLike,
    rows: Sequence[PredictionRow],
    protocols: Sequence[str] | None = None,
    metrics_style: str = "coco",
    problems: Sequence[RowProblem] = (),
    data: dict | None = None,
    generation: dict | None = None,
    tokenizer: str = "java-ptb",
    *,
    think: dict | None = None,
) -> dict:
    """Score `rows` and write `metrics.json` and `report.md` into `output_dir` (each written to a temporary file,
    then renamed). `problems` are the rows dropped before scoring, `data` / `generation` extra facts to record,
    `think` what was done about `<think>` reasoning in the predictions (`removed`, and `with_think` of `out_of`
    counted in `unit`s); `metrics_style` and `tokenizer` as in `score_predictions`, which raises before anything
    is written. Both files name the tokenizer the scores were computed with (`java-ptb`, `python` or
    `whitespace`). Returns the metrics.json content."""
    results, tokenizer = score_predictions(rows, protocols, metrics_style, tokenizer)
    reasons = Counter(problem.reason for problem in problems)
    summary = {
        "metrics_style": metrics_style,
        "tokenizer": tokenizer,
        "protocols": {name: scores_to_dict(scores) for name, scores in results.items()},
        "data": {
            **(data or {}),
            "rows_scored": len(rows),
            "rows_dropped": len(problems),
            "dropped_by_reason": dict(reasons),
            "dropped_rows": [asdict(problem) for problem in problems],
        },
        "generation": generation,
        "think": think,
        "versions": _versions(),
    }
    output_dir = Path(output_dir)
    write_text_atomically(output_dir / "metrics.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(output_dir / "report.md", render_report(summary))
    return summary


def render_report(summary: dict) -> str:
    """A short Markdown report of a metrics.json summary: one column per protocol, then the caveats."""
    protocols = summary["protocols"]
    names = list(next(iter(protocols.values()))["scores"])
    lines = [
        "# PanoVLM caption evaluation",
        "",
        f"Metrics style: {summary['metrics_style']}; tokenizer: {summary['tokenizer']}.",
        "",
        "| metric | " + " | ".join(f"{name} ({scores['units']} units)" for name, scores in protocols.items()) + " |",
        "|---|" + "---|" * len(protocols),
    ]
    for metric in names:
        values = [scores["scores"][metric] for scores in protocols.values()]
        lines.append(f"| {metric} | " + " | ".join("n/a" if v is None else f"{v:.4f}" for v in values) + " |")
    unavailable = {metric: reason for scores in protocols.values() for metric, reason in scores["unavailable"].items()}
    lines += [""] + [f"- {metric} not computed: {reason}" for metric, reason in unavailable.items()]
    if summary["tokenizer"] == "python":
        lines.append(
            "- Tokenized by the pure-Python PTB re-creation (opted in), not pycocoevalcap's Java PTBTokenizer: "
            "scores can differ from Java-tokenized ones by up to about 1%."
        )
    data = summary["data"]
    dropped = ", ".join(f"{reason}: {count}" for reason, count in data["dropped_by_reason"].items()) or "none"
    lines.append(f"- Rows scored: {data['rows_scored']}; dropped: {data['rows_dropped']} ({dropped}).")
    think = summary.get("think")
    if think and think["with_think"]:
        done = "removed before scoring" if think["removed"] else "scored as written"
        lines.append(f"- <think> reasoning in {think['with_think']} of {think['out_of']} {think['unit']}s: {done}.")
    generation = summary["generation"]
    if generation:
        settings = generation["settings"]
        lines.append(
            f"- Generations: {generation['generations']} for {generation['images_encoded']} panoramas "
            f"({settings['decoding']}, max_new_tokens {settings['max_new_tokens']}, {generation['seconds']:.1f} s)."
        )
    return "\n".join(lines) + "\n"


__all__ = ["render_report", "write_evaluation_outputs"]
