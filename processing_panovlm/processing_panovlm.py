"""`PanoVLMProcessor`: panorama -> views (image processor) + prompt -> token ids (tokenizer + chat template).

The image placeholder in a prompt is expanded to exactly the number of image tokens the model produces per
panorama. That number comes from `ViewLayout.num_image_tokens` (configuration_panovlm.view_layout), the one place
it is computed; the model checks it again and names both counts if they ever differ.
"""

from __future__ import annotations

from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from configuration_panovlm.configuration_panovlm import PanoVLMConfig
from configuration_panovlm.view_layout import STITCHING_MODES

from .image_processing_panovlm import PanoVLMImageProcessor


DEFAULT_IMAGE_TOKEN = "<|image_pad|>"


def build_chat_template(image_token: str = DEFAULT_IMAGE_TOKEN) -> str:
    """A ChatML template (`<|im_start|>role\\n...<|im_end|>\\n`) whose message contents may be a string or a list
    of parts `{"type": "image"}` / `{"type": "text", "text": ...}`. An image part renders as the placeholder
    followed by a newline, inside the message that holds it (the user turn), in training and generation alike."""
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ '" + image_token + "\\n' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


class PanoVLMProcessor(ProcessorMixin):
    r"""Turns equirectangular panoramas and prompts into PanoVLM inputs.

    Args:
        image_processor (`PanoVLMImageProcessor`): panorama -> views.
        tokenizer (`PreTrainedTokenizerBase`): must know `image_token` as a single token.
        chat_template (`str`, *optional*): Jinja chat template; `build_chat_template(image_token)` by default.
        image_token (`str`): the placeholder; `<|image_pad|>` reuses a token every Qwen2/Qwen3 vocabulary already
            has, so no embedding is resized.
        view_token_grid (`list[int]`): `(rows, columns)` of resampler tokens per view (`config.view_token_grid`).
        stitching_mode (`str`): `config.stitching_mode`.

    `PanoVLMProcessor.from_model_config(config, tokenizer)` fills the last three from a `PanoVLMConfig`.

    Calling the processor returns `input_ids`, `attention_mask`, `pixel_values` `(batch, views, 3, S, S)` and the
    views' `view_yaw_deg`, `view_pitch_deg`, `view_fov_deg` `(batch, views)`. Prompts of different lengths are
    padded on the tokenizer's `padding_side`; for batched generation use left padding (tiny checkpoints and
    `from_model_config` set it). Truncating through image tokens raises instead of silently breaking the prompt.
    """

    def __init__(
        self,
        image_processor: PanoVLMImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        view_token_grid: list[int] | tuple[int, int] | None = None,
        stitching_mode: str = "drop_overlap",
        **kwargs,
    ):
        if view_token_grid is None or len(view_token_grid) != 2 or min(view_token_grid) < 1:
            raise ValueError(
                f"view_token_grid must be (rows, columns) of resampler tokens per view, got {view_token_grid!r}; "
                "build the processor with PanoVLMProcessor.from_model_config(config, tokenizer)"
            )
        if stitching_mode not in STITCHING_MODES:
            raise ValueError(f"stitching_mode must be one of {STITCHING_MODES}, got {stitching_mode!r}")
        token_ids = tokenizer.encode(image_token, add_special_tokens=False)
        if len(token_ids) != 1:
            raise ValueError(
                f"image_token {image_token!r} must be a single token of the tokenizer, but encodes to {token_ids}"
            )
        self.image_token = image_token
        self.image_token_id = token_ids[0]
        self.view_token_grid = [int(v) for v in view_token_grid]
        self.stitching_mode = stitching_mode
        if chat_template is None:
            chat_template = build_chat_template(image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def from_model_config(
        cls,
        config: PanoVLMConfig,
        tokenizer: PreTrainedTokenizerBase,
        chat_template: str | None = None,
        **image_processor_kwargs,
    ) -> PanoVLMProcessor:
        """The processor matching `config`: its view layout and size, token grid, stitching and image token.

        `image_processor_kwargs` go to `PanoVLMImageProcessor` (e.g. `image_mean`, `image_std` of the tower).
        Sets the tokenizer to left padding, which batched generation needs.
        """
        image_token = tokenizer.convert_ids_to_tokens(config.image_token_id)
        if image_token is None:
            raise ValueError(f"config.image_token_id={config.image_token_id} is not in the tokenizer's vocabulary")
        image_processor = PanoVLMImageProcessor(
            crop_strategy=config.crop_strategy,
            image_size=config.view_size,
            fov_deg=config.fov_deg,
            overlap_ratio=config.overlap_ratio,
            **image_processor_kwargs,
        )
        tokenizer.padding_side = "left"
        return cls(
            image_processor,
            tokenizer,
            chat_template=chat_template,
            image_token=image_token,
            view_token_grid=config.view_token_grid,
            stitching_mode=config.stitching_mode,
        )

    @property
    def num_image_tokens(self) -> int:
        """Image tokens each panorama's placeholder expands to."""
        return self.image_processor.view_layout.num_image_tokens(tuple(self.view_token_grid), self.stitching_mode)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs) -> None:
        for index, sample in enumerate([text] if isinstance(text, str) else text or []):
            if isinstance(sample, str) and not sample.strip():
                raise ValueError(f"text[{index}] is empty: every prompt needs content")
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        """`images`: one panorama or a list (PIL, numpy, torch or file paths); `text`: one prompt or a list, each
        holding the image placeholder once per panorama (use `apply_chat_template`). Other kwargs go to the
        tokenizer (`padding`, `truncation`, `max_length`, `return_tensors`) and the image processor."""
        if text is None:
            raise ValueError("PanoVLMProcessor needs text: a prompt with one image placeholder per panorama")
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


__all__ = ["PanoVLMProcessor", "build_chat_template", "DEFAULT_IMAGE_TOKEN"]
