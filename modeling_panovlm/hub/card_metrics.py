"""The evaluation part of PanoVLM model cards: a `metrics.json` of `examples/evaluate.py`, checked, becomes the
card's evaluation table (template values) and its `model-index` (`huggingface_hub.EvalResult`s)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult

from .repo_ids import hub_repo_id


# The evaluation metrics that go into `model-index`, by metrics.json name.
_METRIC_TYPES = {
    "BLEU-1": "bleu",
    "BLEU-2": "bleu",
    "BLEU-3": "bleu",
    "BLEU-4": "bleu",
    "METEOR": "meteor",
    "ROUGE-L": "rouge",
    "CIDEr-D": "cider",
    "SPICE": "spice",
}


def read_metrics(metrics: str | os.PathLike | dict) -> dict:
    """The content of a `metrics.json` written by `examples/evaluate.py`, checked for what cards use.

    Raises:
        ValueError: a key is missing or a value has the wrong type (the message names the file and key).
    """
    where = "metrics" if isinstance(metrics, dict) else str(metrics)
    if isinstance(metrics, dict):
        summary = metrics
    else:
        try:
            summary = json.loads(Path(metrics).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{where} is not valid JSON ({error}); expected a metrics.json") from error
    if not isinstance(summary, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(summary).__name__}")
    for key in ("metrics_style", "tokenizer", "protocols", "data"):
        if key not in summary:
            raise ValueError(f"{where}: no {key!r}; expected the metrics.json that examples/evaluate.py writes")
    if not isinstance(summary["protocols"], dict) or not summary["protocols"]:
        raise ValueError(f"{where}: 'protocols' must map each protocol to its scores")
    for protocol, scores in summary["protocols"].items():
        for key in ("units", "scores", "unavailable"):
            if key not in scores:
                raise ValueError(f"{where}: protocols.{protocol} has no {key!r}")
        for name, value in scores["scores"].items():
            if value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"{where}: protocols.{protocol}.scores.{name} must be a number or null, got {value!r}")
    return summary


def evaluation_section(summary: dict) -> tuple[dict, list[EvalResult]]:
    """Template values of the evaluation section, and the `model-index` results of every computed score."""
    data = summary["data"]
    source = str(data.get("source") or "not recorded")
    dataset = hub_repo_id(source) or Path(source).name
    protocols = [{"name": name, **scores} for name, scores in summary["protocols"].items()]
    generation = summary.get("generation") or {}
    settings = generation.get("settings") or {}
    results = [
        EvalResult(
            task_type="image-text-to-text",
            task_name="Panorama captioning",
            dataset_type=dataset,
            dataset_name=source,
            metric_type=_METRIC_TYPES.get(metric, metric.lower()),
            metric_name=f"{metric} ({protocol['name']})",
            metric_value=value,
            metric_args={
                "protocol": protocol["name"],
                "metrics_style": summary["metrics_style"],
                "tokenizer": summary["tokenizer"],
                "units": protocol["units"],
            },
        )
        for protocol in protocols
        for metric, value in protocol["scores"].items()
        if value is not None
    ]
    facts = {
        "source": source,
        "rows": data.get("rows_scored", "n/a"),
        "dropped": data.get("rows_dropped", 0),
        "style": summary["metrics_style"],
        "tokenizer": summary["tokenizer"],
        "generation": f"{settings['decoding']} decoding, at most {settings['max_new_tokens']} new tokens"
        if {"decoding", "max_new_tokens"} <= settings.keys()
        else None,
        "protocols": protocols,
        "metrics": list(dict.fromkeys(metric for protocol in protocols for metric in protocol["scores"])),
        "unavailable": {m: r for protocol in protocols for m, r in protocol["unavailable"].items()},
    }
    return facts, results


__all__ = ["evaluation_section", "read_metrics"]
