"""Caption metrics for QuIC-360-style evaluation: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and SPICE, computed the
COCO-caption way, under an explicit protocol, plus the predecessor's recipe for comparing with old numbers.

Protocols (an evaluation *unit* is one prediction scored against its references):

* `grouped`: one unit per (url, query); its references are all the annotations of that image and query. This is
  how COCO-style multi-reference benchmarks are scored.
* `per-row`: one unit per table row, scored against that row's single annotation (what CORA reported). On QuIC-360
  test BLEU-4 is about 3x lower than under `grouped`, and CIDEr-D about 8% higher (CIDEr-D's IDF comes from the
  evaluated units, so the grouping changes it too).

Metric styles:

* `coco`: captions are PTB-tokenized (`ptb_tokenizer`: Stanford's Java PTBTokenizer as pycocoevalcap runs it, or,
  only when asked for with `tokenizer="python"`, the pure-Python re-creation); BLEU-1..4, ROUGE-L (beta 1.2) and
  CIDEr-D (sigma 6, x10, IDF from the evaluated references) are pycocoevalcap's scorers; METEOR 1.5 runs
  pycocoevalcap's jar through Java; SPICE runs pycocoevalcap's SPICE when the Stanford CoreNLP 3.6.0 jars are
  installed.
* `panollava`: how PanoLLaVA scored its recorded runs. Per-row only, strings verbatim (no cleanup, no
  tokenization): BLEU-4 = NLTK `corpus_bleu` on whitespace tokens (uniform weights, smoothing method1), METEOR =
  mean NLTK `meteor_score` (needs WordNet data), ROUGE-L = mean rouge-score `rougeL` F-measure with stemming,
  pycocoevalcap CIDEr-D on the raw strings. Its "spice" was an embedding similarity, so SPICE is not reported in
  this style.

Scoring needs the `metrics` extra (pycocoevalcap, nltk, rouge-score) and raises `ImportError` naming
`pip install "panovlm[metrics]"` without it; this module imports without it. A metric whose runtime is missing
(Java for METEOR, the CoreNLP jars for SPICE, NLTK's WordNet data for the panollava METEOR) is `None` with the
reason; no other value is ever stored under its name.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from configuration_panovlm.atomic_files import write_text_atomically

from .ptb_tokenizer import (
    java_ptb_tokenize,
    java_ptb_unavailable_reason,
    python_ptb_tokenize,
)
from .scorers import (
    Meteor15,
    MetricUnavailableError,
    bleu,
    cider_d,
    meteor_unavailable_reason,
    require_metric_packages,
    rouge_l,
    spice,
    spice_unavailable_reason,
)


logger = logging.getLogger(__name__)

PROTOCOLS = ("grouped", "per-row")
METRIC_STYLES = ("coco", "panollava")
TOKENIZERS = ("java-ptb", "python")
# The packages of the `metrics` extra each style's scorers import.
STYLE_PACKAGES = {"coco": ("pycocoevalcap",), "panollava": ("pycocoevalcap", "nltk", "rouge_score")}
COCO_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")
PANOLLAVA_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")
PREDICTION_COLUMNS = ("url", "query", "prediction", "annotation")


@dataclass(frozen=True)
class PredictionRow:
    """One row of predictions.csv: QuIC-360's `url,query,annotation` plus the model's `prediction`."""

    url: str
    query: str
    prediction: str
    annotation: str


@dataclass
class ProtocolScores:
    """Corpus scores of one protocol: `scores[name]` is a float or None (then `unavailable[name]` says why);
    `per_unit[name]` holds the score of every unit, in unit order, for the metrics that have one."""

    protocol: str
    units: int
    rows: int
    scores: dict[str, float | None]
    unavailable: dict[str, str] = field(default_factory=dict)
    per_unit: dict[str, list[float]] = field(default_factory=dict)


def evaluation_units(rows: Sequence[PredictionRow], protocol: str) -> tuple[list[str], list[list[str]]]:
    """Predictions and reference lists of the units of `protocol` (`grouped` or `per-row`), in row order.

    Raises:
        ValueError: under `grouped`, when rows of one (url, query) hold different predictions.
    """
    if protocol == "per-row":
        return [row.prediction for row in rows], [[row.annotation] for row in rows]
    if protocol != "grouped":
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    groups: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for index, row in enumerate(rows):
        first, refs = groups.setdefault((row.url, row.query), (index, []))
        if rows[first].prediction != row.prediction:
            raise ValueError(
                f"rows {first + 1} and {index + 1} share url {row.url!r} and query {row.query!r} but hold different "
                "predictions; the grouped protocol scores one prediction per (url, query) (use per-row)"
            )
        refs.append(row.annotation)
    return [rows[first].prediction for first, _ in groups.values()], [refs for _, refs in groups.values()]


def check_scoring_requirements(metrics_style: str = "coco", tokenizer: str = "java-ptb") -> None:
    """Raise now what scoring `metrics_style` with `tokenizer` would raise later (call it before a long
    generation): an unknown style or tokenizer (`ValueError`), a missing package of the `metrics` extra
    (`ImportError`), or, for the `coco` style with `tokenizer="java-ptb"`, a missing Java runtime
    (`MetricUnavailableError`, naming both fixes). Metrics that are `None` with a reason (METEOR without Java,
    SPICE without its jars) do not raise."""
    if metrics_style not in METRIC_STYLES:
        raise ValueError(f"metrics_style must be one of {METRIC_STYLES}, got {metrics_style!r}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    require_metric_packages(*STYLE_PACKAGES[metrics_style], purpose=f"the {metrics_style} metrics style")
    if metrics_style == "coco" and tokenizer == "java-ptb":
        reason = java_ptb_unavailable_reason()
        if reason is not None:
            raise MetricUnavailableError(
                f"COCO caption metrics tokenize with Stanford's Java PTBTokenizer (as pycocoevalcap does), which "
                f"cannot run: {reason}. Fix that, or opt in to the pure-Python re-creation with tokenizer='python' "
                "(examples/evaluate.py: --tokenizer python), whose scores can differ from the Java tokenizer's by "
                "up to about 1% and are recorded as such"
            )


def _score_coco(
    predictions: list[str], references: list[list[str]], meteor_jar: Meteor15 | None, unavailable: dict[str, str]
) -> tuple[dict, dict, dict]:
    """All COCO metrics of tokenized units. `unavailable` names the Java metrics known not to run (and why);
    `meteor_jar` is the running METEOR process, if any."""
    scores: dict[str, float | None] = dict.fromkeys(COCO_METRICS)
    unavailable = dict(unavailable)
    per_unit: dict[str, list[float]] = {}
    corpus_bleu, unit_bleu = bleu(predictions, references)
    for n in range(4):
        scores[f"BLEU-{n + 1}"], per_unit[f"BLEU-{n + 1}"] = corpus_bleu[n], unit_bleu[n]
    scores["ROUGE-L"], per_unit["ROUGE-L"] = rouge_l(predictions, references)
    scores["CIDEr-D"], per_unit["CIDEr-D"] = cider_d(predictions, references)
    # The Java metrics depend on programs outside Python: a failure is recorded with its reason, not raised.
    for name, scorer in {"METEOR": meteor_jar.score if meteor_jar else None, "SPICE": spice}.items():
        if name in unavailable:
            continue
        try:
            scores[name], per_unit[name] = scorer(predictions, references)
        except (MetricUnavailableError, RuntimeError, subprocess.SubprocessError, OSError) as error:
            logger.warning("%s not computed: %s", name, error)
            unavailable[name] = str(error)
    return scores, unavailable, per_unit


def _score_panollava(predictions: list[str], references: list[str]) -> tuple[dict, dict, dict]:
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score.rouge_scorer import RougeScorer

    scores: dict[str, float | None] = dict.fromkeys(PANOLLAVA_METRICS)
    unavailable: dict[str, str] = {}
    per_unit: dict[str, list[float]] = {}
    hyps, refs = [p.split() for p in predictions], [r.split() for r in references]
    scores["BLEU-4"] = float(corpus_bleu([[r] for r in refs], hyps, smoothing_function=SmoothingFunction().method1))
    try:
        per_unit["METEOR"] = [float(meteor_score([r], h)) for r, h in zip(refs, hyps)]
        scores["METEOR"] = math.fsum(per_unit["METEOR"]) / len(hyps)
    except LookupError:
        unavailable["METEOR"] = (
            "NLTK's meteor_score needs the WordNet corpus, which is not installed: run nltk.download('wordnet') "
            "or put WordNet 3.0 under $NLTK_DATA/corpora/wordnet"
        )
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    per_unit["ROUGE-L"] = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]
    scores["ROUGE-L"] = math.fsum(per_unit["ROUGE-L"]) / len(predictions)
    scores["CIDEr-D"], per_unit["CIDEr-D"] = cider_d(predictions, [[r] for r in references])
    unavailable["SPICE"] = (
        "not part of the panollava style: PanoLLaVA's recorded 'spice' was an embedding similarity "
        "(all-MiniLM-L6-v2 cosine), not SPICE; use --metrics-style coco for SPICE"
    )
    return scores, unavailable, per_unit


def score_predictions(
    rows: Sequence[PredictionRow],
    protocols: Sequence[str] | None = None,
    metrics_style: str = "coco",
    tokenizer: str = "java-ptb",
) -> tuple[dict[str, ProtocolScores], str]:
    """Score prediction rows under each protocol.

    Args:
        rows: one per reference; rows sharing (url, query) share a prediction under `grouped`.
        protocols: any of `PROTOCOLS`; default both for `coco`, and `("per-row",)`, the only choice, for
            `panollava`.
        metrics_style: `coco` or `panollava` (see the module docstring).
        tokenizer: for the `coco` style, `java-ptb` (Stanford's PTBTokenizer, as pycocoevalcap; needs Java) or
            `python` (the pure-Python re-creation, an explicit opt-in); the `panollava` style splits on whitespace.

    Returns:
        `({protocol: ProtocolScores}, tokenizer_used)`, `tokenizer_used` in `java-ptb`, `python`, `whitespace`.

    Raises:
        ImportError: a package of the `metrics` extra is missing (the message names the install command).
        MetricUnavailableError: `tokenizer="java-ptb"` without Java (the message names the fixes).
    """
    if not rows:
        raise ValueError("there are no prediction rows to score")
    check_scoring_requirements(metrics_style, tokenizer)
    if protocols is None:
        protocols = ("per-row",) if metrics_style == "panollava" else PROTOCOLS
    if metrics_style == "panollava":
        if tuple(protocols) != ("per-row",):
            raise ValueError(
                "the panollava metrics style scores each row against its one reference: use protocol per-row"
            )
        scores = _score_panollava([row.prediction for row in rows], [row.annotation for row in rows])
        return {"per-row": ProtocolScores("per-row", len(rows), len(rows), *scores)}, "whitespace"
    units = {protocol: evaluation_units(rows, protocol) for protocol in protocols}
    texts = sorted({row.prediction for row in rows} | {row.annotation for row in rows})
    tokenize = java_ptb_tokenize if tokenizer == "java-ptb" else python_ptb_tokenize
    tokens = dict(zip(texts, tokenize(texts)))
    unavailable = {"METEOR": meteor_unavailable_reason(), "SPICE": spice_unavailable_reason()}
    unavailable = {name: reason for name, reason in unavailable.items() if reason is not None}
    for name, reason in unavailable.items():
        logger.warning("%s not computed: %s", name, reason)
    meteor_jar = None
    results = {}
    try:
        if "METEOR" not in unavailable:
            try:
                meteor_jar = Meteor15()  # one Java process for every protocol: loading METEOR takes seconds
            except OSError as error:
                unavailable["METEOR"] = f"the METEOR jar did not start: {error}"
        for protocol, (predictions, references) in units.items():
            scores = _score_coco(
                [tokens[p] for p in predictions],
                [[tokens[r] for r in refs] for refs in references],
                meteor_jar,
                unavailable,
            )
            results[protocol] = ProtocolScores(protocol, len(predictions), len(rows), *scores)
    finally:
        if meteor_jar is not None:
            meteor_jar.close()
    return results, tokenizer


def read_predictions(path: str | os.PathLike) -> list[PredictionRow]:
    """Read predictions.csv (`url,query,prediction,annotation`), every value kept verbatim as a string. A UTF-8 BOM
    is allowed; a file that is not UTF-8, or a row with fewer or more fields than the header (an unquoted comma),
    raises `ValueError` naming the file and the line."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            missing = [column for column in PREDICTION_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; expected {','.join(PREDICTION_COLUMNS)}")
            for record in reader:
                if None in record or None in record.values():
                    given = [value for key, value in record.items() if key is not None and value is not None]
                    fields = len(given) + len(record.get(None, []))
                    hint = "quote values that hold a comma" if None in record else "a value is missing"
                    raise ValueError(
                        f"{path}, line {reader.line_num}: {fields} fields where the header has "
                        f"{len(reader.fieldnames)} ({hint})"
                    )
                rows.append(PredictionRow(*(record[column] for column in PREDICTION_COLUMNS)))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text ({error})") from error
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return rows


def write_predictions(path: str | os.PathLike, rows: Sequence[PredictionRow]) -> Path:
    """Write predictions.csv atomically (`configuration_panovlm.atomic_files.write_text_atomically`). Returns the
    path."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(PREDICTION_COLUMNS)
    writer.writerows([row.url, row.query, row.prediction, row.annotation] for row in rows)
    return write_text_atomically(path, buffer.getvalue())


def scores_to_dict(scores: ProtocolScores, per_unit: bool = False) -> dict:
    """JSON-ready form of `ProtocolScores` (per-unit scores only when asked)."""
    result = asdict(scores)
    if not per_unit:
        result.pop("per_unit")
    return result


__all__ = [
    "COCO_METRICS",
    "METRIC_STYLES",
    "PANOLLAVA_METRICS",
    "PREDICTION_COLUMNS",
    "PROTOCOLS",
    "TOKENIZERS",
    "PredictionRow",
    "ProtocolScores",
    "check_scoring_requirements",
    "evaluation_units",
    "read_predictions",
    "score_predictions",
    "scores_to_dict",
    "write_predictions",
]
