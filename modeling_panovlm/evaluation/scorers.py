"""Caption scorers the COCO way, from pycocoevalcap: BLEU-1..4, ROUGE-L and CIDEr-D (its pure-Python scorers),
METEOR 1.5 and SPICE (its Java programs).

Every scorer takes `U` predictions and `U` non-empty reference lists, each caption one string of space-separated
tokens (`ptb_tokenizer`), and returns `(corpus_score, per_unit_scores)` as Python floats, units in input order.

pycocoevalcap is an optional dependency (`panovlm[metrics]`): this module imports without it, and every scorer
raises `ImportError` naming the install command when it is missing. METEOR and SPICE also need Java (and SPICE the
Stanford CoreNLP 3.6.0 jars); `meteor_unavailable_reason` / `spice_unavailable_reason` say what is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Sequence
from importlib import util as importlib_util
from pathlib import Path


INSTALL_HINT = 'pip install "panovlm[metrics]"'
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class MetricUnavailableError(RuntimeError):
    """A metric's runtime requirements (Java, a jar, data) are missing; the message says what to install."""


def require_metric_packages(*modules: str, purpose: str = "caption scoring") -> None:
    """Raise `ImportError` naming `pip install "panovlm[metrics]"` when one of `modules` (import names of the
    `metrics` extra: `pycocoevalcap`, `nltk`, `rouge_score`) is not installed."""
    missing = [module for module in modules if importlib_util.find_spec(module) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ImportError(f"{purpose} needs {', '.join(missing)}, which {verb} not installed: {INSTALL_HINT}")


def pycocoevalcap_dir() -> Path | None:
    """The directory of the installed pycocoevalcap (a namespace package), or None when it is absent."""
    spec = importlib_util.find_spec("pycocoevalcap")
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def _coco_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """pycocoevalcap's `(gts, res)` dictionaries; integer keys in unit order, which its scorers keep."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    empty = [unit for unit, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"units {empty[:5]} have no reference")
    return {unit: list(refs) for unit, refs in enumerate(references)}, {unit: [p] for unit, p in enumerate(predictions)}


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[list[float], list[list[float]]]:
    """pycocoevalcap's BLEU-1..4: clipped n-gram counts summed over the corpus, brevity penalty against the
    reference length closest to each prediction.

    Returns:
        `([BLEU-1, ..., BLEU-4], per_unit)` with `per_unit[n - 1]` the `U` sentence-level BLEU-n scores.
    """
    require_metric_packages("pycocoevalcap", purpose="BLEU")
    from pycocoevalcap.bleu.bleu import Bleu

    corpus, per_unit = Bleu(4).compute_score(*_coco_inputs(predictions, references), verbose=0)
    return [float(score) for score in corpus], [[float(score) for score in scores] for scores in per_unit]


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap's ROUGE-L: F-measure (beta 1.2) of the best LCS precision and recall over a unit's references;
    the corpus score is the mean over units. Returns `(corpus, per_unit)`."""
    require_metric_packages("pycocoevalcap", purpose="ROUGE-L")
    from pycocoevalcap.rouge.rouge import Rouge

    corpus, per_unit = Rouge().compute_score(*_coco_inputs(predictions, references))
    return float(corpus), [float(score) for score in per_unit]


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap's CIDEr (which is CIDEr-D: clipped TF-IDF n-gram cosines, Gaussian length penalty sigma 6,
    x10). IDF counts the units whose references contain an n-gram, so it depends on the evaluated set and protocol.
    Returns `(corpus, per_unit)`."""
    require_metric_packages("pycocoevalcap", purpose="CIDEr-D")
    from pycocoevalcap.cider.cider import Cider

    corpus, per_unit = Cider().compute_score(*_coco_inputs(predictions, references))
    return float(corpus), [float(score) for score in per_unit]


# ---- Java metrics ---------------------------------------------------------------------------------------------


def meteor_unavailable_reason() -> str | None:
    """None when METEOR 1.5 can run, else what is missing."""
    if shutil.which("java") is None:
        return "METEOR 1.5 is a Java program and there is no `java` on PATH (install a Java runtime, e.g. OpenJDK 17)"
    package = pycocoevalcap_dir()
    if package is None or not (package / "meteor" / "meteor-1.5.jar").is_file():
        return f"METEOR 1.5 needs pycocoevalcap's meteor-1.5.jar: {INSTALL_HINT}"
    return None


class Meteor15:
    """METEOR 1.5 (English, normalised) from pycocoevalcap's jar and options, one Java process reused across
    `score` calls (loading its paraphrase table takes seconds). Use as a context manager, or call `close()`.

    Same jar, options and stdio protocol as pycocoevalcap's `Meteor` wrapper, whose process handling is not usable
    here: an exception inside its `compute_score` leaves its lock held, so its `__del__` (the only way it stops
    Java) then blocks forever; a hung jar blocks its `readline` with no time limit; it pipes Java's stderr without
    reading it; and it leaves `|||` (the jar's field separator) inside references. The protocol: one
    `SCORE ||| refs... ||| hypothesis` line per unit returns sufficient statistics; one `EVAL ||| stats...` line
    returns every unit's score and then the corpus score, which aggregates the statistics (it is not the mean of
    the unit scores).

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
            cwd=pycocoevalcap_dir() / "meteor",
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


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run offline, else exactly what to install."""
    if shutil.which("java") is None:
        return "SPICE is a Java program and there is no `java` on PATH (install a Java runtime, e.g. OpenJDK 17)"
    package = pycocoevalcap_dir()
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

    # SPICE orders its per-unit results by sorted key: zero-padded keys keep them in unit order.
    keys = [f"{index:08d}" for index in range(len(predictions))]
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
    "meteor_unavailable_reason",
    "pycocoevalcap_dir",
    "require_metric_packages",
    "rouge_l",
    "spice",
    "spice_unavailable_reason",
]
