"""General vision-language models as baselines: the panorama as one resized image, through the model's own processor.

Any `AutoModelForImageTextToText` checkpoint (LLaVA, Qwen2-VL, Gemma 3, ...) is scored by the same evaluation code
and on the same table as PanoVLM models. Each panorama is read by the library's one loader (`load_panorama`, so the
same pixels as PanoVLM's views come from) and resized, whole, to `OneImagePrompting.image_size`; a square size (the
default) is never center-cropped by the baseline's image processor, so the model sees the entire panorama (squashed
horizontally), which its processor then resizes to its own input size. The question is asked through the model's
own chat template: an optional system turn, then a user turn holding the image and the query wrapped in the
user template (instruction-style rows verbatim), the same words a PanoVLM gets by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jinja2 import TemplateError
from PIL import Image
from transformers import GenerationConfig, PreTrainedModel, ProcessorMixin
from transformers.generation.streamers import BaseStreamer

from processing_panovlm.image_loading import PanoramaImageError, load_panorama
from processing_panovlm.processing_panovlm import DEFAULT_SYSTEM_PROMPT, DEFAULT_USER_TEMPLATE, QUERY_FIELD


DEFAULT_BASELINE_IMAGE_SIZE = (448, 448)


@dataclass(frozen=True)
class OneImagePrompting:
    """How a general VLM is asked about a panorama.

    Args:
        system_prompt: the system turn; `None` for none. PanoVLM's default by default.
        user_template: the user text around a query, holding `{query}` once; PanoVLM's default by default.
        image_size: `(width, height)` the whole panorama is resized to before the model's processor sees it.
        aspect_ratio_tolerance: largest relative deviation of a panorama's width / height from 2 that is accepted
            (the loader's default; a PanoVLM's is its image processor's).
    """

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    user_template: str = DEFAULT_USER_TEMPLATE
    image_size: tuple[int, int] = DEFAULT_BASELINE_IMAGE_SIZE
    aspect_ratio_tolerance: float = 0.01

    def __post_init__(self):
        if self.user_template.count(QUERY_FIELD) != 1:
            raise ValueError(f"user_template must hold {QUERY_FIELD} exactly once, got {self.user_template!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (width, height) of at least 1 pixel, got {self.image_size!r}")

    def messages(self, query: str, verbatim: bool = False) -> list[dict]:
        """Chat messages asking `query` about one image (the user template applied unless `verbatim`)."""
        text = query if verbatim else self.user_template.replace(QUERY_FIELD, query)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return messages


def panorama_as_one_image(image, size: tuple[int, int], aspect_ratio_tolerance: float = 0.01) -> Image.Image:
    """The panorama at `image` (anything `load_panorama` reads), whole, as an RGB image of `size` (width, height)."""
    pixels = load_panorama(image, aspect_ratio_tolerance, keep_uint8=True)
    if pixels.dtype != torch.uint8:  # 16-bit sources come back as float on the 0..255 range
        pixels = pixels.round().clamp(0, 255).to(torch.uint8)
    picture = Image.fromarray(pixels.permute(1, 2, 0).contiguous().cpu().numpy(), mode="RGB")
    return picture.resize(size, Image.Resampling.BICUBIC)


def check_one_image_model(model: PreTrainedModel, processor: ProcessorMixin) -> None:
    """Raise `ValueError` if a general VLM cannot be asked the one-image way: its processor has no chat template."""
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(
            f"the processor of this {model.config.model_type} model has no chat template: a baseline is asked "
            "through its own chat template (save the processor with one)"
        )


class OneImageCaptioner:
    """Generation for a general VLM over caption groups, used by `generate_captions` for any model that is not a
    PanoVLM: `prepare` loads and resizes panoramas, `generate` answers a batch of groups."""

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, prompting: OneImagePrompting | None = None):
        check_one_image_model(model, processor)
        self.model, self.processor = model, processor
        self.prompting = prompting or OneImagePrompting()

    def describe(self) -> dict:
        """What metrics.json records about how the model was asked."""
        width, height = self.prompting.image_size
        return {
            "input": f"the panorama as one {width}x{height} image, through the model's own processor",
            "system_prompt": self.prompting.system_prompt,
            "user_template": self.prompting.user_template,
        }

    def prepare(self, images: Sequence[str | bytes]) -> tuple[dict, dict[str, str]]:
        """Each loadable image resized, and the error of each other one."""
        prepared, errors = {}, {}
        for image in images:
            try:
                prepared[image] = panorama_as_one_image(
                    image, self.prompting.image_size, self.prompting.aspect_ratio_tolerance
                )
            except PanoramaImageError as error:
                errors[image] = str(error)
        return prepared, errors

    def prompt(self, query: str, verbatim: bool = False) -> str:
        try:
            return self.processor.apply_chat_template(
                self.prompting.messages(query, verbatim), add_generation_prompt=True, tokenize=False
            )
        except TemplateError as error:
            hint = ' (pass --system-prompt "" if it takes no system turn)' if self.prompting.system_prompt else ""
            raise ValueError(
                f"the chat template of this {self.model.config.model_type} model refused the prompt: {error}{hint}"
            ) from error

    @torch.no_grad()
    def generate(
        self,
        queries: Sequence[tuple[str, bool]],
        images: Sequence[Image.Image],
        generation_config: GenerationConfig,
        streamer: BaseStreamer | None = None,
    ) -> list[str]:
        """Answers to `(query, verbatim)` pairs, one image each, in one left-padded batch (`streamer`, passed to
        `generate`, takes one pair)."""
        prompts = [self.prompt(query, verbatim) for query, verbatim in queries]
        inputs = self.processor(
            images=[[image] for image in images], text=prompts, padding=True, padding_side="left", return_tensors="pt"
        ).to(self.model.device)
        for key, value in inputs.items():
            if key.startswith("pixel_values") and value.is_floating_point():
                inputs[key] = value.to(self.model.dtype)
        output = self.model.generate(**inputs, generation_config=generation_config, streamer=streamer)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [answer.strip() for answer in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


__all__ = [
    "DEFAULT_BASELINE_IMAGE_SIZE",
    "OneImageCaptioner",
    "OneImagePrompting",
    "check_one_image_model",
    "panorama_as_one_image",
]
