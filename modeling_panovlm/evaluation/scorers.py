"""Caption scorers the COCO way: BLEU-1..4, ROUGE-L and CIDEr-D in pure Python, METEOR 1.5 and SPICE through
pycocoevalcap's Java programs.

Every scorer takes `U` predictions and `U` non-empty reference lists, each caption one string of space-separated
tokens (`ptb_tokenizer`), and returns `(corpus_score, per_unit_scores)`. The pure-Python scorers reproduce
pycocoevalcap 1.2 to 1e-9 (tests/fixtures/caption_metrics_golden.json), so no Java is needed for them. METEOR and
SPICE raise `MetricUnavailableError`, whose message names what to install, when Java or their jars are missing.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Sequence
from importlib import util as importlib_util
from pathlib import Path


INSTALL_HINT = "pip install 'panovlm[metrics]'"
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")

# pycocoevalcap's BLEU adds these to every count so that zero matches give a tiny score instead of log(0).
_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9


class MetricUnavailableError(RuntimeError):
    """A metric's requirements (Java, a jar, a package, data) are missing; the message says what to install."""


def _ngrams(tokens: list[str], max_n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def _bleu_from_counts(matches: list[int], guesses: list[int], hyp_length: int, ref_length: float) -> list[float]:
    scores, product = [], 1.0
    for n, (match, guess) in enumerate(zip(matches, guesses)):
        product *= (match + _BLEU_TINY) / (guess + _BLEU_SMALL)
        scores.append(product ** (1.0 / (n + 1)))
    ratio = (hyp_length + _BLEU_TINY) / (ref_length + _BLEU_SMALL)
    if ratio < 1.0:  # brevity penalty
        scores = [score * math.exp(1.0 - 1.0 / ratio) for score in scores]
    return scores


def bleu(
    predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4
) -> tuple[list[float], list[list[float]]]:
    """COCO BLEU: clipped n-gram precisions summed over the corpus, brevity penalty against the reference length
    closest to each prediction (ties: the shorter).

    Args:
        predictions: `U` tokenized predictions.
        references: `U` non-empty lists of tokenized references.

    Returns:
        `([BLEU-1, ..., BLEU-max_n], per_unit)` with `per_unit[n - 1]` the `U` sentence-level BLEU-n scores.
    """
    total_matches, total_guesses, total_hyp, total_ref = [0] * max_n, [0] * max_n, 0, 0
    per_unit: list[list[float]] = [[] for _ in range(max_n)]
    for prediction, refs in zip(predictions, references, strict=True):
        hyp = prediction.split()
        clip: Counter = Counter()
        for ref in refs:
            clip |= _ngrams(ref.split(), max_n)  # | keeps the largest count of each n-gram over the references
        matches = [0] * max_n
        for gram, count in _ngrams(hyp, max_n).items():
            matches[len(gram) - 1] += min(count, clip[gram])
        guesses = [max(0, len(hyp) - n) for n in range(max_n)]
        ref_length = min((len(ref.split()) for ref in refs), key=lambda length: (abs(length - len(hyp)), length))
        for n, score in enumerate(_bleu_from_counts(matches, guesses, len(hyp), ref_length)):
            per_unit[n].append(score)
        total_matches = [a + b for a, b in zip(total_matches, matches)]
        total_guesses = [a + b for a, b in zip(total_guesses, guesses)]
        total_hyp, total_ref = total_hyp + len(hyp), total_ref + ref_length
    return _bleu_from_counts(total_matches, total_guesses, total_hyp, total_ref), per_unit


def _lcs_length(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for token in a:
        diagonal = 0
        for j, other in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if token == other else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(
    predictions: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2
) -> tuple[float, list[float]]:
    """COCO ROUGE-L: F-measure (recall weighted by `beta`) of the best LCS precision and the best LCS recall over
    a unit's references; the corpus score is the mean over units. Returns `(corpus, per_unit)`."""
    scores = []
    for prediction, refs in zip(predictions, references, strict=True):
        # Split on single spaces like the reference implementation: an empty caption is one empty token.
        hyp = prediction.split(" ")
        lcs = [(_lcs_length(ref.split(" "), hyp), len(ref.split(" "))) for ref in refs]
        precision = max(common / len(hyp) for common, _ in lcs)
        recall = max(common / length for common, length in lcs)
        if precision > 0 and recall > 0:
            scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
        else:
            scores.append(0.0)
    return math.fsum(scores) / len(scores), scores


def cider_d(
    predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D: per n, the cosine of TF-IDF n-gram vectors with the prediction's weights clipped by the
    reference's, times a Gaussian penalty on the length difference; averaged over n and references, times 10.
    IDF counts the units whose references contain an n-gram, so it depends on the evaluated set and protocol.
    Returns `(corpus, per_unit)`."""
    ref_counts = [[_ngrams(ref.split(), max_n) for ref in refs] for refs in references]
    document_frequency: Counter = Counter()
    for unit in ref_counts:
        document_frequency.update(set().union(*unit))
    log_units = math.log(len(ref_counts))

    def vectorise(counts: Counter) -> tuple[list[dict], list[float], int]:
        vectors: list[dict] = [{} for _ in range(max_n)]
        for gram, term_frequency in counts.items():
            vectors[len(gram) - 1][gram] = term_frequency * (log_units - math.log(max(1.0, document_frequency[gram])))
        norms = [math.sqrt(sum(weight * weight for weight in vector.values())) for vector in vectors]
        # The reference implementation measures length in bigrams (tokens - 1); kept for identical scores.
        bigrams = sum(count for gram, count in counts.items() if len(gram) == 2)
        return vectors, norms, bigrams

    scores = []
    for prediction, refs in zip(predictions, ref_counts, strict=True):
        hyp_vectors, hyp_norms, hyp_length = vectorise(_ngrams(prediction.split(), max_n))
        total = [0.0] * max_n
        for ref in refs:
            ref_vectors, ref_norms, ref_length = vectorise(ref)
            penalty = math.exp(-((hyp_length - ref_length) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                ref_vector = ref_vectors[n]
                overlap = sum(
                    min(w, ref_vector.get(g, 0.0)) * ref_vector.get(g, 0.0) for g, w in hyp_vectors[n].items()
                )
                if hyp_norms[n] != 0 and ref_norms[n] != 0:
                    overlap /= hyp_norms[n] * ref_norms[n]
                total[n] += overlap * penalty
        scores.append(sum(total) / max_n / len(refs) * 10.0)
    return math.fsum(scores) / len(scores), scores


# ---- Java metrics ---------------------------------------------------------------------------------------------


def _pycocoevalcap_dir() -> Path | None:
    spec = importlib_util.find_spec("pycocoevalcap")
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def meteor_unavailable_reason() -> str | None:
    """None when METEOR 1.5 can run, else what is missing."""
    if shutil.which("java") is None:
        return "METEOR 1.5 is a Java program and there is no `java` on PATH (install a Java runtime, e.g. OpenJDK 17)"
    package = _pycocoevalcap_dir()
    if package is None or not (package / "meteor" / "meteor-1.5.jar").is_file():
        return f"METEOR 1.5 needs pycocoevalcap's meteor-1.5.jar: {INSTALL_HINT}"
    return None


class Meteor15:
    """METEOR 1.5 (English, normalised) from pycocoevalcap's jar, one Java process reused across `score` calls
    (loading its paraphrase table takes seconds). Use as a context manager, or call `close()`.

    The jar's stdio protocol: one `SCORE ||| refs... ||| hypothesis` line per unit returns sufficient statistics;
    one `EVAL ||| stats...` line returns every unit's score and then the corpus score, which aggregates the
    statistics (it is not the mean of the unit scores).

    Raises (at construction): `MetricUnavailableError` when Java or the jar is missing.
    """

    def __init__(self, timeout_s: float = 1800.0):
        reason = meteor_unavailable_reason()
        if reason is not None:
            raise MetricUnavailableError(reason)
        self.timeout_s = timeout_s
        command = [
            "java",
            "-Dfile.encoding=UTF-8",
            "-jar",
            "-Xmx2G",
            "meteor-1.5.jar",
            "-",
            "-",
            "-stdio",
            "-l",
            "en",
            "-norm",
        ]
        self._process = subprocess.Popen(
            command,
            cwd=_pycocoevalcap_dir() / "meteor",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def _ask(self, line: str, answers: int = 1) -> list[str]:
        self._process.stdin.write((line + "\n").encode("utf-8"))
        self._process.stdin.flush()
        replies = [self._process.stdout.readline().decode("utf-8").strip() for _ in range(answers)]
        if not all(replies):
            raise RuntimeError(
                f"the METEOR jar stopped answering (exit code {self._process.poll()}, limit {self.timeout_s} s a call)"
            )
        return replies

    def score(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
        """METEOR of `U` tokenized predictions against their reference lists. Returns `(corpus, per_unit)`.

        Raises:
            RuntimeError: the jar failed, or took longer than `timeout_s` (it is then killed).
        """
        watchdog = threading.Timer(self.timeout_s, self._process.kill)
        watchdog.start()
        try:
            statistics = []
            for prediction, refs in zip(predictions, references, strict=True):
                fields = [text.replace("|||", "") for text in (*refs, prediction)]  # "|||" separates fields
                statistics += self._ask(" ||| ".join(["SCORE", *fields]))
            *per_unit, corpus = (float(v) for v in self._ask(" ||| ".join(["EVAL", *statistics]), len(statistics) + 1))
        except (BrokenPipeError, ValueError) as error:
            raise RuntimeError(f"the METEOR jar failed: {error}") from error
        finally:
            watchdog.cancel()
        return corpus, per_unit

    def close(self) -> None:
        """Stop the Java process."""
        self._process.kill()
        self._process.wait()

    def __enter__(self) -> Meteor15:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def meteor(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """METEOR 1.5 of tokenized predictions against reference lists with a fresh `Meteor15`. Returns
    `(corpus, per_unit)`; raises `MetricUnavailableError` without Java or the jar."""
    with Meteor15() as scorer:
        return scorer.score(predictions, references)


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run offline, else exactly what to install."""
    if shutil.which("java") is None:
        return "SPICE is a Java program and there is no `java` on PATH (install a Java runtime, e.g. OpenJDK 17)"
    package = _pycocoevalcap_dir()
    if package is None:
        return f"SPICE needs pycocoevalcap: {INSTALL_HINT}"
    lib = package / "spice" / "lib"
    missing = [jar for jar in SPICE_CORENLP_JARS if not (lib / jar).is_file()]
    if missing:
        return (
            f"SPICE needs the Stanford CoreNLP 3.6.0 jars {', '.join(missing)} in {lib} (they are in "
            "stanford-corenlp-full-2015-12-09.zip from the Stanford NLP site); pycocoevalcap would try to download "
            "them (about 384 MB) at first use, so they are required up front"
        )
    return None


def spice(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """SPICE F-score through pycocoevalcap (scene-graph parsing with CoreNLP 3.6.0; needs several GB of memory).
    Returns `(corpus, per_unit)`. Raises `MetricUnavailableError` when its jars or Java are missing."""
    reason = spice_unavailable_reason()
    if reason is not None:
        raise MetricUnavailableError(reason)
    from pycocoevalcap.spice.spice import Spice

    keys = [f"{index:08d}" for index in range(len(predictions))]  # SPICE orders units by sorted key
    corpus, unit_scores = Spice().compute_score(
        {key: list(refs) for key, refs in zip(keys, references)}, {key: [p] for key, p in zip(keys, predictions)}
    )
    return float(corpus), [float(unit["All"]["f"]) for unit in unit_scores]


__all__ = [
    "INSTALL_HINT",
    "Meteor15",
    "MetricUnavailableError",
    "bleu",
    "cider_d",
    "meteor",
    "meteor_unavailable_reason",
    "rouge_l",
    "spice",
    "spice_unavailable_reason",
]
