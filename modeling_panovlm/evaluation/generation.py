"""Caption generation for evaluation: one generation per unique (panorama, query), features computed once.

QuIC-360 test has 6,246 rows but only 1,211 distinct (image, query) pairs, and about three queries per panorama.
`generate_captions` therefore generates once per group of rows sharing an image and a query, and runs the vision
tower once per panorama: its image features are kept while its groups are generated and handed to `generate` as
`mm_encoder_outputs`, which gives the same greedy tokens as `model.generate(**processor(images, prompts))`. Groups
are generated in left-padded batches. Models other than PanoVLM are scored as baselines through
`baseline.OneImageCaptioner` (the panorama as one resized image), by the same loop.

`evaluate_caption_table` runs the whole evaluation of a QuIC-360-style table and writes `predictions.csv`,
`metrics.json` and `report.md`; `write_evaluation_outputs` is also used to score an existing predictions file.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import datasets
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_panovlm.modeling_panovlm import PanoVLMForConditionalGeneration
from processing_panovlm.image_loading import PanoramaImageError
from processing_panovlm.processing_panovlm import PanoVLMProcessor

from .baseline import OneImageCaptioner, OneImagePrompting
from .loading import is_panovlm
from .thinking import has_thinking, strip_thinking, thinks_by_default


logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128
GENERATION_KEYS = (
    "do_sample",
    "num_beams",
    "max_new_tokens",
    "min_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
)


@dataclass
class CaptionGroup:
    """Rows of a table that share one panorama and one query, hence one generation. `rows` are indices into the
    table and `references` their annotations; `image` is what `load_panorama` reads: the resolved path or URL, or
    the bytes of an embedded image."""

    image: str | bytes
    url: str
    query: str
    prompt_style: str
    rows: list[int] = field(default_factory=list)
    references: list[str] = field(default_factory=list)


def greedy_generation_config(
    model: PreTrainedModel, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, **overrides
) -> GenerationConfig:
    """The model's generation config made deterministic: greedy, one beam, `max_new_tokens`, the checkpoint's
    sampling settings cleared (checkpoints such as Qwen3 ship sampling defaults, which would make scores
    irreproducible if left on). `overrides` are `GenerationConfig` fields (`num_beams=4`, `repetition_penalty=1.1`,
    `do_sample=True, temperature=0.7, top_p=0.9, top_k=20`, ...); with `do_sample=True` the sampling settings not
    overridden are the checkpoint's own, as `model.generate(do_sample=True)` would use them."""
    config = copy.deepcopy(model.generation_config)
    settings = {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens}
    if not overrides.get("do_sample"):
        settings.update(temperature=None, top_p=None, top_k=None)
    settings.update(overrides)
    config.update(**settings)
    config.validate()
    return config


def generation_settings(config: GenerationConfig, seed: int | None = None) -> dict:
    """The settings that decide what `generate` produces, for metrics.json."""
    settings = {key: getattr(config, key, None) for key in GENERATION_KEYS}
    settings["decoding"] = "sampling" if config.do_sample else ("beam search" if config.num_beams > 1 else "greedy")
    settings["seed"] = seed
    return settings


def group_rows(table: datasets.Dataset | Mapping[str, list]) -> list[CaptionGroup]:
    """Groups of rows sharing (image, query, prompt style), ordered by panorama (first appearance), then by query,
    so that each panorama's groups are generated one after the other.

    `table` is a caption table (`processing_panovlm.data.load_caption_table`) or a batch of its rows (a dict of
    columns, as `IterableDataset.iter` yields). Its rows must be usable (`check_rows` drops the others): a row with
    a `problem` raises. Only one image value per distinct panorama is read, so a table of embedded images is not
    loaded into memory whole.
    """
    names = ["image_id", "url", "query", "prompt_style", "annotation", "problem", "row", "source"]
    if isinstance(table, Mapping):
        columns = table
    else:
        columns = table.select_columns([name for name in names if name in table.column_names]).to_dict()
    image_ids = columns["image_id"] if "image_id" in columns else columns["image"]
    for index, problem in enumerate(columns.get("problem") or ()):
        if problem:
            raise ValueError(
                f"row {columns['row'][index]} of {columns['source'][index]} cannot be used ({problem}): drop such "
                "rows first (processing_panovlm.data.check_rows or prepare_caption_table)"
            )
    groups: dict[tuple[str, str, str], CaptionGroup] = {}
    first_row: dict[str, int] = {}
    keys = zip(image_ids, columns["url"], columns["query"], columns["prompt_style"], columns["annotation"])
    for index, (image_id, url, query, style, annotation) in enumerate(keys):
        first_row.setdefault(image_id, index)
        group = groups.setdefault((image_id, query, style), CaptionGroup(image_id, url, query, style))
        group.rows.append(index)
        group.references.append(annotation)
    # The loadable image of each panorama, read once: its path or URL, or the bytes of an embedded image.
    if isinstance(table, Mapping):
        values = [columns["image"][index] for index in first_row.values()]
    else:
        values = table.select(list(first_row.values()))["image"]
    loadable = {
        image_id: value if isinstance(value, str) else (value["bytes"] or value["path"])
        for image_id, value in zip(first_row, values)
    }
    order = {image_id: position for position, image_id in enumerate(first_row)}
    ordered = sorted(groups.values(), key=lambda group: order[group.image])
    for group in ordered:
        group.image = loadable[group.image]
    return ordered


def override_prompts(
    processor: PanoVLMProcessor, system_prompt: str | None = None, user_template: str | None = None
) -> None:
    """Replace parts of the prompt format saved with `processor` (as the command lines' `--system-prompt` and
    `--user-template` do): `None` keeps the saved value, a `system_prompt` of `""` means no system prompt."""
    if system_prompt is None and user_template is None:
        return
    processor.set_prompts(
        processor.system_prompt if system_prompt is None else (system_prompt or None),
        processor.user_template if user_template is None else user_template,
    )


def expanded_prompt(processor: PanoVLMProcessor, query: str, verbatim: bool = False) -> str:
    """The chat-templated prompt asking `query` about one panorama in the processor's prompt format (the user
    template applied unless `verbatim`), its image placeholder expanded to `processor.num_image_tokens` tokens: what
    `generate_from_features` takes."""
    messages = processor.build_messages(query, verbatim=verbatim)
    return processor.expand_image_tokens(processor.apply_chat_template(messages, add_generation_prompt=True))


@torch.no_grad()
def encode_panoramas(
    model: PanoVLMForConditionalGeneration, processor: PanoVLMProcessor, images: Sequence
) -> tuple[dict, dict]:
    """Run the vision side once per panorama.

    Args:
        images: panoramas as the image processor takes them (paths, URLs, ...), used as the keys of the results.

    Returns:
        `(features, errors)`: image features `(num_image_tokens, text_hidden)` per loadable image, and the
        `PanoramaImageError` message of each other image.
    """
    inputs, errors, loaded = [], {}, []
    for image in images:
        try:
            inputs.append(processor.image_processor(image, return_tensors="pt"))
        except PanoramaImageError as error:
            errors[image] = str(error)
            continue
        loaded.append(image)
    if not loaded:
        return {}, errors
    batch = {key: torch.cat([item[key] for item in inputs]).to(model.device) for key in inputs[0]}
    # The view directions go with the pixels: the model checks them against config.json.
    batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    features = model.get_image_features(**batch, return_dict=True).pooler_output
    return dict(zip(loaded, features)), errors


@torch.no_grad()
def generate_from_features(
    model: PanoVLMForConditionalGeneration,
    processor: PanoVLMProcessor,
    prompts: list[str],
    image_features: torch.Tensor,
    generation_config: GenerationConfig,
    streamer: BaseStreamer | None = None,
) -> list[str]:
    """Captions for prompts whose panoramas are already encoded.

    Args:
        prompts: chat-templated prompts, each with its image placeholder already expanded to
            `processor.num_image_tokens` tokens (`expanded_prompt`).
        image_features: `(len(prompts), num_image_tokens, text_hidden)`, the `pooler_output` of
            `model.get_image_features`.
        generation_config: decoding settings.
        streamer: passed to `generate` (one prompt at a time, as transformers' streamers take batch size 1).

    Returns:
        The decoded new text of each prompt, stripped; with greedy decoding the same tokens as
        `model.generate(**processor(images, prompts, padding=True))` for the same batch.
    """
    text = processor.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt").to(model.device)
    encoded = {"image": BaseModelOutputWithPooling(pooler_output=image_features)}
    output = model.generate(
        **text, mm_encoder_outputs=encoded, generation_config=generation_config, streamer=streamer
    )
    new_tokens = output[:, text["input_ids"].shape[1] :]
    return [caption.strip() for caption in processor.batch_decode(new_tokens, skip_special_tokens=True)]


class PanoramaCaptioner:
    """Generation for a PanoVLM over caption groups: `prepare` encodes each panorama once, `generate` scatters the
    features into the prompts of a batch (the counterpart of `baseline.OneImageCaptioner`)."""

    def __init__(self, model: PanoVLMForConditionalGeneration, processor: PanoVLMProcessor):
        self.model, self.processor = model, processor

    def describe(self) -> dict:
        """What metrics.json records about how the model was asked."""
        views = self.processor.image_processor.view_layout.num_views
        return {
            "input": f"{views} views per panorama through the PanoVLM processor",
            "system_prompt": self.processor.system_prompt,
            "user_template": self.processor.user_template,
        }

    def prepare(self, images: Sequence[str | bytes]) -> tuple[dict, dict]:
        return encode_panoramas(self.model, self.processor, images)

    def generate(
        self, queries: Sequence[tuple[str, bool]], features: Sequence[torch.Tensor], generation_config: GenerationConfig
    ) -> list[str]:
        prompts = [expanded_prompt(self.processor, query, verbatim) for query, verbatim in queries]
        return generate_from_features(self.model, self.processor, prompts, torch.stack(list(features)), generation_config)


@torch.no_grad()
def generate_captions(
    model: PreTrainedModel,
    processor,
    groups: Sequence[CaptionGroup],
    batch_size: int = 8,
    generation_config: GenerationConfig | None = None,
    show_progress: bool = True,
    log_interval: int | None = None,
    *,
    strip_think: bool | None = None,
    one_image: OneImagePrompting | None = None,
) -> tuple[list[str | None], dict[int, str], dict]:
    """Generate one caption per group.

    A PanoVLM is asked through its processor (its saved prompt format; each panorama's views encoded once for all
    its groups); any other `AutoModelForImageTextToText` model is a baseline, asked through its own processor and
    chat template about the panorama as one resized image (`baseline.OneImagePrompting`).

    Args:
        model, processor: a PanoVLM or another image-text-to-text model, and its processor.
        groups: from `group_rows`; a panorama's groups should be consecutive so its features are freed early.
        batch_size: groups per `generate` call (prompts left-padded).
        generation_config: `greedy_generation_config(model)` by default.
        show_progress: draw a tqdm progress bar.
        log_interval: log every `log_interval`-th caption (INFO) when set.
        strip_think: remove `<think>…</think>` reasoning from the captions (`thinking.strip_thinking`); by default
            when the model's language model is a Qwen3.
        one_image: how a baseline is asked (default `OneImagePrompting()`); refused for a PanoVLM, whose prompt
            format is its processor's.

    Returns:
        `(captions, failures, stats)`: `captions[i]` for `groups[i]` (None when its panorama could not be read),
        `failures[i]` the reason, and `stats` with `generations`, `images_encoded`, `seconds`, `prompting` (how the
        model was asked) and `think` (`removed`: whether reasoning was stripped; `with_think`: how many of the
        `out_of` generated captions held a `<think>` or `</think>` tag).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if is_panovlm(model):
        if one_image is not None:
            raise ValueError("one_image is for general VLMs; a PanoVLM is asked in its processor's prompt format")
        captioner = PanoramaCaptioner(model, processor)
    else:
        captioner = OneImageCaptioner(model, processor, one_image)
    strip = thinks_by_default(model.config) if strip_think is None else strip_think
    config = generation_config or greedy_generation_config(model)
    remaining = Counter(group.image for group in groups)
    prepared: dict = {}
    image_errors: dict[str, str] = {}
    captions: list[str | None] = [None] * len(groups)
    failures: dict[int, str] = {}
    encoded = thinking = 0
    start = time.perf_counter()
    progress = tqdm(total=len(groups), unit="caption", desc="generating", disable=not show_progress)
    for first in range(0, len(groups), batch_size):
        indices = list(range(first, min(first + batch_size, len(groups))))
        known = prepared.keys() | image_errors.keys()
        new_images = list(dict.fromkeys(groups[i].image for i in indices if groups[i].image not in known))
        new_prepared, new_errors = captioner.prepare(new_images)
        prepared.update(new_prepared)
        image_errors.update(new_errors)
        encoded += len(new_prepared)
        ready = [i for i in indices if groups[i].image in prepared]
        for i in indices:
            if groups[i].image in image_errors:
                failures[i] = image_errors[groups[i].image]
        if ready:
            queries = [(groups[i].query, groups[i].prompt_style == "instruction") for i in ready]
            answers = captioner.generate(queries, [prepared[groups[i].image] for i in ready], config)
            for i, caption in zip(ready, answers):
                thinking += has_thinking(caption)
                captions[i] = strip_thinking(caption) if strip else caption
                if log_interval and (i + 1) % log_interval == 0:
                    group = groups[i]
                    logger.info(
                        "[%d/%d] %s | %s\n  prediction: %s\n  reference:  %s",
                        *(i + 1, len(groups), group.url, group.query, captions[i], group.references[0]),
                    )
        for i in indices:
            remaining[groups[i].image] -= 1
            if remaining[groups[i].image] == 0:
                prepared.pop(groups[i].image, None)
        progress.update(len(indices))
    progress.close()
    if thinking and not strip:
        logger.warning("%d captions hold <think> reasoning, which is scored as it is (strip_think=False)", thinking)
    stats = {
        "generations": len(groups) - len(failures),
        "images_encoded": encoded,
        "seconds": time.perf_counter() - start,
        "prompting": captioner.describe(),
        "think": {"removed": strip, "with_think": thinking, "out_of": len(groups) - len(failures), "unit": "caption"},
    }
    return captions, failures, stats


__all__ = [
    "CaptionGroup",
    "DEFAULT_MAX_NEW_TOKENS",
    "PanoramaCaptioner",
    "encode_panoramas",
    "expanded_prompt",
    "generate_captions",
    "generate_from_features",
    "generation_settings",
    "greedy_generation_config",
    "group_rows",
    "override_prompts",
]
