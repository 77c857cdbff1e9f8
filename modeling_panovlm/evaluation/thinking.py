"""Removing a reasoning model's `<think>…</think>` block from its answers before they are scored.

Qwen3 language models (and VLMs built on them) may open an answer with their reasoning between `<think>` and
`</think>`; scored as a caption, that text is noise. `strip_thinking` removes it; evaluation does so by default
when the model's language model is a Qwen3 (`thinks_by_default`) and reports how many answers held a block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from transformers import PreTrainedConfig


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_BLOCK = re.compile(re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE), re.DOTALL)


def has_thinking(text: str) -> bool:
    """Whether `text` holds a `<think>` or `</think>` tag."""
    return THINK_OPEN in text or THINK_CLOSE in text


def strip_thinking(text: str) -> str:
    """`text` without its reasoning, stripped of surrounding whitespace:

    * every `<think>…</think>` block;
    * then everything up to the last `</think>` left (the block was opened by the prompt, as chat templates that
      start the assistant turn with `<think>` do);
    * then everything from a `<think>` left (generation stopped before the block closed: no answer was given).
    """
    text = _BLOCK.sub("", text)
    text = text.rpartition(THINK_CLOSE)[2]
    return text.partition(THINK_OPEN)[0].strip()


def strip_all(texts: Sequence[str]) -> tuple[list[str], int]:
    """`strip_thinking` of each text, and how many held a tag."""
    return [strip_thinking(text) for text in texts], sum(has_thinking(text) for text in texts)


def thinks_by_default(config: PreTrainedConfig) -> bool:
    """Whether the model of `config` has a Qwen3 language model (`qwen3`, `qwen3_moe`, `qwen3_vl_text`, ...), whose
    answers may open with a `<think>` block."""
    return config.get_text_config().model_type.startswith("qwen3")


__all__ = ["THINK_CLOSE", "THINK_OPEN", "has_thinking", "strip_all", "strip_thinking", "thinks_by_default"]
