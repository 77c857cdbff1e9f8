"""PTB-style caption tokenisation: the first step of COCO caption evaluation.

COCO-caption scoring (pycocoevalcap) runs Stanford CoreNLP 3.4.1's `PTBTokenizer` (`-preserveLines -lowerCase`)
over every caption and then drops the tokens in its punctuation list. Two implementations of that step live here:

* `java_ptb_tokenize`: the same jar (shipped inside pycocoevalcap's wheel), driven through stdin/stdout with a line
  count check, so nothing is written into site-packages and a lost line raises instead of shifting captions.
* `python_ptb_tokenize`: a pure-Python re-creation of the PTB rules that occur in captions (lower-casing,
  contractions `do n't` / `it 's`, brackets as `-lrb-`, quotes and dashes dropped, hyphenated words and decimal
  numbers kept whole, abbreviations keeping their period). Its metric scores stay within 1% of the Java path on
  QuIC-360-like text (identical tokens on tests/fixtures/caption_metrics_golden.json), but it is not the reference
  tokenizer, so it is used only when asked for (`tokenizer="python"`) and the choice is recorded with the scores.

Both return, per caption, one string of space-separated tokens, the form every COCO scorer consumes, with
pycocoevalcap's punctuation list removed (so both need pycocoevalcap, like the scorers).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .scorers import INSTALL_HINT, pycocoevalcap_dir, require_metric_packages


PTB_JAR = "stanford-corenlp-3.4.1.jar"
JAVA_TIMEOUT_S = 600.0

# Characters Java's PTBLexer treats as line ends; one inside a caption would split it into two lines.
_LINE_BREAKS = re.compile("[\r\n\u000b\u000c\u001c\u001d\u001e\u0085\u2028\u2029]")

_CHARACTER_MAP = str.maketrans(
    {
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
        **dict.fromkeys("\u2012\u2013\u2014\u2015", " -- "),
        "\u2026": " ... ",
        "\u00a0": " ",
        "\u00bd": "1/2",
        "\u00bc": "1/4",
        "\u00be": "3/4",
    }
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Words PTB splits into two tokens.
_SPLIT_WORDS = {
    "cannot": "can not",
    "gonna": "gon na",
    "gotta": "got ta",
    "wanna": "wan na",
    "lemme": "lem me",
    "gimme": "gim me",
}
# Abbreviations that keep their period (a subset of PTBLexer's lists: the ones that occur in captions).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st mt ft ave rd blvd prof gen sen rep gov capt col lt sgt cf al bros etc vs inc corp ltd co jr sr "
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri".split()
)
_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_ALNUM = r"[^\W_]"
_LETTERS = r"[^\W\d_]"
_TOKEN = re.compile(
    rf"""
    (?P<url>(?:https?://|www\.)\S+?)(?=[.,;:!?)\]'"]*(?:\s|$))
  | (?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
  | (?P<tag>[#@]{_ALNUM}+|'(?:em|n'|\d0s)(?!\w))
  | (?P<smiley>[:;]-?[()dp])(?!\w)
  | (?P<number>\d+(?:[.,:/]\d+)+|\.\d+)
  | (?P<dotted>{_LETTERS}+(?:[.!?]{_LETTERS}+)+(?:'{_LETTERS}+)?)
  | (?P<word>{_ALNUM}+(?:[-/&']{_ALNUM}+)*)
  | (?P<dots>\.{{2,}})
  | (?P<marks>[!?]{{2,}})
  | (?P<dashes>-{{2,}})
  | (?P<other>\S)
    """,
    re.VERBOSE,
)


def coco_punctuation() -> frozenset[str]:
    """pycocoevalcap's punctuation tokens, dropped after tokenization. Its bracket names are upper case but the
    tokenizer runs with -lowerCase, so "-lrb-" & co. survive as tokens in every COCO score; both paths keep that."""
    require_metric_packages("pycocoevalcap", purpose="COCO caption tokenization")
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    return frozenset(PUNCTUATIONS)


def clean_caption(text: str) -> str:
    """Replace line-break characters by spaces, so one caption stays one line for the line-based Java tools."""
    return _LINE_BREAKS.sub(" ", text)


def _word_tokens(word: str, next_char: str, at_line_end: bool, following: str) -> tuple[list[str], bool]:
    """Tokens of one word, and whether it absorbs the period that follows it (`next_char == "."`)."""
    takes_period = next_char == "." and (
        (word in _ABBREVIATIONS)
        or (word == "no" and following[:1].isdigit())
        # Acronyms (u.s., e.g., ph.d.) keep theirs anywhere; a lone letter only inside a line (PTB reads "b." at
        # the end of a line as a sentence end).
        or ("." in word and all(len(part) <= 2 for part in word.split(".")))
        or (len(word) == 1 and word.isalpha() and not at_line_end)
    )
    if takes_period:
        return [word + "."], True
    if word in _SPLIT_WORDS:
        return _SPLIT_WORDS[word].split(), False
    suffixes = []
    while (match := _CONTRACTION.match(word)) is not None:
        word, suffix = match.groups()
        suffixes.insert(0, suffix)
    return [word, *suffixes], False


def _tokenize_line(line: str) -> list[str]:
    line = html.unescape(clean_caption(line)).translate(_CHARACTER_MAP).lower()
    # PTB cannot tokenize characters outside the Basic Multilingual Plane (emoji) and drops them.
    line = "".join(char for char in line if ord(char) <= 0xFFFF)
    tokens: list[str] = []
    position = 0
    for match in _TOKEN.finditer(line):
        if match.start() < position:  # the period was absorbed by the previous word
            continue
        kind, text = match.lastgroup, match.group()
        position = match.end()
        if kind in ("word", "dotted"):
            rest = line[position:]
            after_period = rest[1:].lstrip()
            word_tokens, took_period = _word_tokens(text, rest[:1], not after_period, after_period)
            tokens += word_tokens
            position += int(took_period)
        elif kind == "smiley":  # PTB keeps emoticons whole, with the bracket spelled out
            tokens.append(text[:-1] + _BRACKETS.get(text[-1], text[-1]))
        elif kind == "dots":
            tokens.append("...")
        elif kind == "dashes":
            tokens.append("--")
        elif kind == "other" and text in _BRACKETS:
            tokens.append(_BRACKETS[text])
        elif kind == "other" and text == '"':
            tokens.append("''")
        else:
            tokens.append(text)
    return tokens


def python_ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenize captions the COCO way without Java.

    Args:
        captions: raw caption strings.

    Returns:
        One string per caption: lower-cased PTB-style tokens without `coco_punctuation()`, joined by single
        spaces (`""` for a caption with no tokens).
    """
    punctuation = coco_punctuation()
    return [" ".join(t for t in _tokenize_line(caption) if t not in punctuation) for caption in captions]


def ptb_jar_path() -> Path | None:
    """Path of the CoreNLP 3.4.1 jar inside an installed pycocoevalcap, or None when pycocoevalcap is absent."""
    package = pycocoevalcap_dir()
    jar = package / "tokenizer" / PTB_JAR if package is not None else None
    return jar if jar is not None and jar.is_file() else None


def java_ptb_unavailable_reason() -> str | None:
    """None when the Java PTB tokenizer can run, else what is missing."""
    if shutil.which("java") is None:
        return "no `java` on PATH (install a Java runtime, e.g. OpenJDK 17)"
    if ptb_jar_path() is None:
        return f"pycocoevalcap with {PTB_JAR} is not installed ({INSTALL_HINT})"
    return None


def java_ptb_tokenize(captions: Sequence[str], timeout_s: float = JAVA_TIMEOUT_S) -> list[str]:
    """Tokenize captions with Stanford PTBTokenizer exactly as pycocoevalcap does (same jar and options).

    Args:
        captions: raw caption strings; line breaks inside a caption become spaces.
        timeout_s: limit for the Java process.

    Returns:
        One string per caption, as in `python_ptb_tokenize`.

    Raises:
        RuntimeError: Java or the jar is missing, the process fails, or it returns a different number of lines.
    """
    reason = java_ptb_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"the Java PTB tokenizer cannot run: {reason}")
    if not captions:
        return []
    command = [
        "java",
        "-cp",
        str(ptb_jar_path()),
        "edu.stanford.nlp.process.PTBTokenizer",
        "-preserveLines",
        "-lowerCase",
    ]
    text = "\n".join(clean_caption(caption) for caption in captions) + "\n"
    result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"PTBTokenizer exited with {result.returncode}: {result.stderr.decode(errors='replace')[-2000:]}"
        )
    lines = result.stdout.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(captions):
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(captions)} captions")
    punctuation = coco_punctuation()
    return [" ".join(t for t in line.split(" ") if t and t not in punctuation) for line in lines]


__all__ = [
    "clean_caption",
    "coco_punctuation",
    "java_ptb_tokenize",
    "java_ptb_unavailable_reason",
    "ptb_jar_path",
    "python_ptb_tokenize",
]
