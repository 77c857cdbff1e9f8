"""`PanoVLMProcessor`: panoramas -> views (image processor) + prompts -> token ids (tokenizer + chat template).

The image placeholder in a prompt is expanded to exactly the number of image tokens the model produces per
panorama. That number comes from `ViewLayout.num_image_tokens` (configuration_panovlm.view_layout), the one place
it is computed; the model checks it again and names both counts if they ever differ.

The prompt format a model is trained with (a system prompt and the template that wraps a question about a panorama)
is part of the processor: saved in `processor_config.json` and baked into the chat template, so training,
evaluation, inference, `pipeline("image-text-to-text")`, TRL and `transformers serve` all render the same prompt.
"""


import json
import logging
from pathlib import Path

from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessingKwargs, Unpack
from transformers.tokenization_utils_base import TextInput

from configuration_panovlm.atomic_files import atomic_directory
from configuration_panovlm.configuration_panovlm import PanoVLMConfig
from configuration_panovlm.local_paths import check_local_path
from configuration_panovlm.view_layout import STITCHING_MODES

from .image_processing_panovlm import PanoVLMImageProcessor, PanoVLMImageProcessorKwargs, flatten_panoramas


logger = logging.getLogger(__name__)

DEFAULT_IMAGE_TOKEN = "<|image_pad|>"
# PanoLLaVA's prompts (its `system_messages` default and QuIC-360 query template).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Describe the panorama image."
DEFAULT_USER_TEMPLATE = 'In this panoramic image, please provide a concise but detailed description of "{query}".'
QUERY_FIELD = "{query}"
# Views of a patch-16 tower (SigLIP's) through a token-preserving resampler: the token grid a processor built from
# its components alone assumes. `from_model_config` always takes the model's own grid.
_DEFAULT_PATCH_SIZE = 16


def build_chat_template(
    image_token: str = DEFAULT_IMAGE_TOKEN,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    user_template: str = DEFAULT_USER_TEMPLATE,
) -> str:
    """A ChatML template (`<|im_start|>role\\n...<|im_end|>\\n`) holding PanoVLM's prompt format.

    Message contents may be a string or a list of parts `{"type": "image"}` / `{"type": "text", "text": ...}`. An
    image part renders as the placeholder and a newline. In a user turn that holds an image, each text part is
    wrapped in `user_template` (its `{query}` replaced by the text) unless the part says `"template": false`
    (instruction-style data, used verbatim). A conversation that does not start with a system turn gets
    `system_prompt` (none when it is `None`).
    """
    system = "none" if system_prompt is None else json.dumps(system_prompt, ensure_ascii=False)
    return (
        "{%- set default_system = " + system + " -%}"
        "{%- set user_template = " + json.dumps(user_template, ensure_ascii=False) + " -%}"
        "{%- if default_system is not none and messages[0]['role'] != 'system' -%}"
        "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
        "{%- endif -%}"
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}"
        "{%- set has_image = message['content'] | selectattr('type', 'equalto', 'image') | list | length > 0 -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ " + json.dumps(image_token) + " + '\\n' }}"
        "{%- elif part['type'] == 'text' -%}"
        "{%- if message['role'] == 'user' and has_image and part.get('template', true) -%}"
        "{{ user_template.replace('" + QUERY_FIELD + "', part['text']) }}"
        "{%- else -%}{{ part['text'] }}{%- endif -%}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


class PanoVLMProcessorKwargs(ProcessingKwargs, total=False):
    """Keyword arguments of `PanoVLMProcessor.__call__`, routed to the tokenizer and the image processor."""

    images_kwargs: PanoVLMImageProcessorKwargs
    _defaults = {"text_kwargs": {"padding": False}}


class PanoVLMProcessor(ProcessorMixin):
    r"""Turns equirectangular panoramas and prompts into PanoVLM inputs.

    Args:
        image_processor (`PanoVLMImageProcessor`): panorama -> views.
        tokenizer (`PreTrainedTokenizerBase`): must know `image_token` as a single token.
        chat_template (`str`, *optional*): Jinja chat template; by default `build_chat_template(image_token,
            system_prompt, user_template)`.
        image_token (`str`): the placeholder; `<|image_pad|>` reuses a token every Qwen2/Qwen3 vocabulary already
            has, so no embedding is resized.
        view_token_grid (`list[int]`, *optional*): `(rows, columns)` of resampler tokens per view
            (`config.view_token_grid`); by default that of a patch-16 tower with a token-preserving resampler.
        stitching_mode (`str`): `config.stitching_mode`.
        resample_columns (`int`, *optional*): `config.resample_columns`.
        system_prompt (`str`, *optional*): the system turn of the training prompt format; `None` for none.
        user_template (`str`): the training prompt's user text around a question about the panorama, holding
            `{query}` once.

    `PanoVLMProcessor.from_model_config(config, tokenizer)` fills the view settings from a `PanoVLMConfig`.

    Calling the processor with `images` and `text` returns `input_ids`, `attention_mask`, `pixel_values`
    `(num_panoramas, views, 3, S, S)` and the views' `view_yaw_deg`, `view_pitch_deg`, `view_fov_deg`, `view_vfov_deg`
    `(num_panoramas, views)`. `images` is one panorama, a list (one per placeholder, in order) or a nested list (one
    list per prompt, as chat templates, pipelines and TRL pass them; a prompt may hold none). Prompts of different
    lengths are padded on the tokenizer's `padding_side`; for batched generation use left padding (tiny checkpoints
    and `from_model_config` set it). Truncating through image tokens raises instead of silently breaking the prompt.
    """

    valid_processor_kwargs = PanoVLMProcessorKwargs

    def __init__(
        self,
        image_processor: PanoVLMImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        view_token_grid: list[int] | tuple[int, int] | None = None,
        stitching_mode: str = "drop_overlap",
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        user_template: str = DEFAULT_USER_TEMPLATE,
        resample_columns: int | None = None,
        **kwargs,
    ):
        if view_token_grid is None:
            side = image_processor.image_size // _DEFAULT_PATCH_SIZE
            view_token_grid = (side, side)
        if len(view_token_grid) != 2 or min(view_token_grid) < 1:
            raise ValueError(f"view_token_grid must be (rows, columns) of resampler tokens per view, got {view_token_grid!r}")
        if stitching_mode not in STITCHING_MODES:
            raise ValueError(f"stitching_mode must be one of {STITCHING_MODES}, got {stitching_mode!r}")
        _check_prompts(system_prompt, user_template)
        token_ids = tokenizer.encode(image_token, add_special_tokens=False)
        if len(token_ids) != 1:
            raise ValueError(
                f"image_token {image_token!r} must be a single token of the tokenizer, but encodes to {token_ids}"
            )
        self.image_token = image_token
        self.image_token_id = token_ids[0]
        self.view_token_grid = [int(v) for v in view_token_grid]
        self.stitching_mode = stitching_mode
        self.resample_columns = resample_columns
        # Raises for a resample width that is invalid or set for another stitching mode.
        image_processor.view_layout.stitched_columns(self.view_token_grid[1], stitching_mode, resample_columns)
        self.system_prompt = system_prompt
        self.user_template = user_template
        generated = build_chat_template(image_token, system_prompt, user_template)
        if chat_template is not None and chat_template != generated:
            logger.info("PanoVLMProcessor uses a custom chat template; system_prompt/user_template are not applied by it")
        super().__init__(image_processor, tokenizer, chat_template=chat_template or generated, **kwargs)

    @classmethod
    def from_model_config(
        cls,
        config: PanoVLMConfig,
        tokenizer: PreTrainedTokenizerBase,
        chat_template: str | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        user_template: str = DEFAULT_USER_TEMPLATE,
        **image_processor_kwargs,
    ) -> "PanoVLMProcessor":
        """The processor matching `config`: its view layout and size, token grid, stitching, image token and the
        tower's pixel normalisation (`config.image_mean`, `image_std`, `rescale_factor`).

        `image_processor_kwargs` go to `PanoVLMImageProcessor` and override what the config says. Sets the tokenizer
        to left padding, which batched generation needs.
        """
        image_token = tokenizer.convert_ids_to_tokens(config.image_token_id)
        if image_token is None:
            raise ValueError(f"config.image_token_id={config.image_token_id} is not in the tokenizer's vocabulary")
        image_processor = PanoVLMImageProcessor(
            crop_strategy=config.crop_strategy,
            image_size=config.view_size,
            fov_deg=config.fov_deg,
            overlap_ratio=config.overlap_ratio,
            pitch_levels_deg=config.pitch_levels_deg,
            vertical_crop_ratio=config.vertical_crop_ratio,
            anyres_max_patches=config.anyres_max_patches,
            **{
                "image_mean": config.image_mean,
                "image_std": config.image_std,
                "rescale_factor": config.rescale_factor,
                **image_processor_kwargs,
            },
        )
        tokenizer.padding_side = "left"
        return cls(
            image_processor,
            tokenizer,
            chat_template=chat_template,
            image_token=image_token,
            view_token_grid=config.view_token_grid,
            stitching_mode=config.stitching_mode,
            resample_columns=config.resample_columns,
            system_prompt=system_prompt,
            user_template=user_template,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "PanoVLMProcessor":
        """`ProcessorMixin.from_pretrained`; a local path that does not exist raises `FileNotFoundError` saying so
        (instead of the Hub client's "Repo id must be in the form ...")."""
        check_local_path(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`ProcessorMixin.save_pretrained`, writing `save_directory` as a whole or not at all
        (`configuration_panovlm.atomic_files`). Files the processor does not write (the model's) are kept."""
        if push_to_hub:
            kwargs.setdefault("repo_id", Path(save_directory).name)
        with atomic_directory(save_directory, replaces=_is_processor_file) as staging:
            saved = super().save_pretrained(staging, push_to_hub=push_to_hub, **kwargs)
        # The files' final paths, as transformers returns them.
        return [str(Path(save_directory) / Path(path).relative_to(staging)) for path in saved]

    # ---- prompt format ---------------------------------------------------------------------------------------
    def set_prompts(self, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, user_template: str = DEFAULT_USER_TEMPLATE) -> None:
        """Change the prompt format (and with it the chat template); what training runs with, `save_pretrained`
        records."""
        _check_prompts(system_prompt, user_template)
        self.system_prompt, self.user_template = system_prompt, user_template
        self.chat_template = build_chat_template(self.image_token, system_prompt, user_template)

    def build_messages(self, text: str, answer: str | None = None, *, verbatim: bool = False) -> list[dict]:
        """Chat messages asking `text` about one panorama, in the training layout: a user turn holding the image
        then the text (wrapped in `user_template` by the chat template unless `verbatim`), and, for training, the
        assistant's `answer`. The chat template adds the system prompt."""
        if not text.strip():
            raise ValueError("the question / instruction is empty")
        part = {"type": "text", "text": text, **({"template": False} if verbatim else {})}
        messages = [{"role": "user", "content": [{"type": "image"}, part]}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    # ---- image tokens ----------------------------------------------------------------------------------------
    @property
    def num_image_tokens(self) -> int:
        """Image tokens each panorama's placeholder expands to."""
        return self.image_processor.view_layout.num_image_tokens(
            tuple(self.view_token_grid), self.stitching_mode, self.resample_columns
        )

    def expand_image_tokens(self, prompt: str) -> str:
        """`prompt` with each image placeholder expanded to `num_image_tokens` tokens, as `__call__` does: for
        callers that encode panoramas themselves (and pass `image_features` to the model)."""
        return prompt.replace(self.image_token, self.image_token * self.num_image_tokens)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens

    def _get_num_multimodal_tokens(self, image_sizes: list[list[int]] | None = None, **kwargs) -> MultiModalData:
        """Placeholder tokens and views per panorama for panoramas of the given `(height, width)` sizes (serving
        engines size their buffers with it); both are fixed by the view layout, whatever the size."""
        vision_data = {}
        if image_sizes is not None:
            vision_data["num_image_tokens"] = [self.num_image_tokens] * len(image_sizes)
            vision_data["num_image_patches"] = [self.image_processor.view_layout.num_views] * len(image_sizes)
        return MultiModalData(**vision_data)

    # ---- ProcessorMixin hooks ----------------------------------------------------------------------------------
    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        **kwargs: Unpack[PanoVLMProcessorKwargs],
    ) -> BatchFeature:
        """Panoramas (see the class docstring for the accepted layouts) and prompts -> model inputs. Keyword
        arguments go to the tokenizer (`padding`, `truncation`, `max_length`, `return_tensors`) and the image
        processor (`do_rescale`, `do_normalize`, `image_mean`, `image_std`, ...)."""
        # The fast tokenizer keeps a call's truncation/padding on its Rust backend, and `save_pretrained` would
        # write them into tokenizer.json as defaults; restore the backend so per-call options stay per call.
        backend = self.tokenizer.backend_tokenizer
        truncation, padding = backend.truncation, backend.padding
        try:
            return super().__call__(images=images, text=text, **kwargs)
        finally:
            if truncation is None:
                backend.no_truncation()
            else:
                backend.enable_truncation(**truncation)
            if padding is None:
                backend.no_padding()
            else:
                backend.enable_padding(**padding)

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        # Panoramas stay as given (paths, URLs, arrays...): the image processor loads them with `load_panorama`, the
        # one loader of the library, instead of transformers' generic `load_image` (which mangles 16-bit files).
        _, text, videos, audio = super().prepare_inputs_layout(None, text, videos, audio, **kwargs)
        if images is None:
            return None, text, videos, audio
        images, per_prompt = flatten_panoramas(images)
        prompts = [text] if isinstance(text, str) else text
        if per_prompt is not None and prompts is not None:
            placeholders = [sample.count(self.image_token) for sample in prompts]
            if per_prompt != placeholders:
                raise ValueError(
                    f"The number of {self.image_token} tokens in the prompts should be the same as the number of "
                    f"images passed for each prompt: images were given per prompt as {per_prompt} panoramas, but the "
                    f"prompts hold {placeholders} image placeholders"
                )
        # A batch of text-only chats arrives as empty per-prompt lists.
        return images or None, text, videos, audio

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs) -> None:
        if images is None and text is None:
            raise ValueError("PanoVLMProcessor needs images, text or both")
        if videos is not None or audio is not None:
            raise ValueError("PanoVLMProcessor takes panoramas and text only")
        if text is None:
            return
        if not (isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))):
            raise ValueError("`text` must be a string or a list of strings")
        prompts = [text] if isinstance(text, str) else text
        for index, sample in enumerate(prompts):
            if not sample.strip():
                raise ValueError(f"text[{index}] is empty: every prompt needs content")
        placeholders = [sample.count(self.image_token) for sample in prompts]
        given = len(images) if images is not None else 0
        if sum(placeholders) != given:
            raise ValueError(
                f"The total number of {self.image_token} tokens in the prompts should be the same as the number of "
                f"images passed: the prompts hold {placeholders} image placeholders, {sum(placeholders)} in all, but "
                f"{given} panorama(s) were passed; give one panorama per placeholder"
            )

    def _process_images(self, images, **kwargs):
        processed = self.image_processor(images, **kwargs)
        return processed, [self.replace_image_token(processed, index) for index in range(len(images))]


# Files a processor save writes (earlier versions of them are replaced, not carried over).
_PROCESSOR_FILES = {
    "processor_config.json",
    "preprocessor_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
}


def _is_processor_file(name: str) -> bool:
    return name in _PROCESSOR_FILES or name.startswith("additional_chat_templates/")


def _check_prompts(system_prompt: str | None, user_template: str) -> None:
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise TypeError(f"system_prompt must be a string or None, got {type(system_prompt).__name__}")
    if not isinstance(user_template, str) or user_template.count(QUERY_FIELD) != 1:
        raise ValueError(f"user_template must hold {QUERY_FIELD} exactly once, got {user_template!r}")


__all__ = [
    "DEFAULT_IMAGE_TOKEN",
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_USER_TEMPLATE",
    "PanoVLMProcessor",
    "PanoVLMProcessorKwargs",
    "build_chat_template",
]
