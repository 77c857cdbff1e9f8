"""PanoVLM: vision tower -> resampler -> panoramic positional encoding -> projector -> view stitching -> causal LM.

The class split follows transformers' LLaVA family: `PanoVLMModel` holds `vision_tower`, `resampler`,
`multi_modal_projector` and `language_model` (the bare decoder); `PanoVLMForConditionalGeneration` adds
`lm_head` and `GenerationMixin`. Image features replace the image placeholder tokens of the prompt with one
`masked_scatter`. The input is named `pixel_values`, so `generate` encodes it once, before the prefill step.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from configuration_panovlm.configuration_panovlm import PanoVLMConfig, PanoVLMResamplerConfig

from .checkpointing import PanoVLMCheckpointMixin
from .image_features import PanoVLMImageFeaturesMixin, VICRegProjector
from .outputs import PanoVLMCausalLMOutputWithPast, PanoVLMModelOutputWithPast
from .panorama import PanoramaPositionalEncoding
from .resamplers import build_resampler


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class PanoVLMPreTrainedModel(PanoVLMCheckpointMixin, PreTrainedModel):
    config: PanoVLMConfig
    config_class = PanoVLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache"]
    # Every attention of the model goes through transformers' attention interface (towers, LM and the attention
    # resamplers), so each implementation the towers support is supported end to end.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # SigLIP's pooling head, which PanoVLM never reads (it uses every patch token): not built (the config sets
    # `vision_use_head=False`), so no parameter goes without a gradient; tower checkpoints that carry it load
    # without it.
    _keys_to_ignore_on_load_unexpected = [r"vision_tower\.head\."]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # Our modules with raw parameters/buffers (Mamba SSM tensors, learned queries, the PE table) say how.
        if hasattr(module, "init_weights_"):
            module.init_weights_(self.config.initializer_range)


def _drop_unused_tower_head(model: PanoVLMModel) -> None:
    """CLIP towers apply `post_layernorm` to the CLS token only (their pooled output); PanoVLM reads the patch
    tokens, so that norm would be a parameter without gradient: it is replaced by an identity, and checkpoints that
    carry it load without it. (SigLIP's `post_layernorm` normalises every token and stays; its attention-pooling
    head is off through `vision_use_head`.)"""
    if model.config.vision_config.model_type == "clip_vision_model":
        model.vision_tower.post_layernorm = nn.Identity()
        model._keys_to_ignore_on_load_unexpected.add(r"vision_tower\.post_layernorm\.")


class PanoVLMModel(PanoVLMImageFeaturesMixin, PanoVLMPreTrainedModel):
    """Vision tower, resampler, projector and bare decoder; returns the decoder's hidden states."""

    def __init__(self, config: PanoVLMConfig):
        super().__init__(config)
        vision_dim = config.vision_config.hidden_size
        latent = config.resampler_config.latent_dimension
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.vision_feature_norm = nn.LayerNorm(vision_dim) if config.vision_feature_norm else nn.Identity()
        self.resampler = build_resampler(config.resampler_config, vision_dim)
        self.panorama_pe = PanoramaPositionalEncoding(config) if config.use_panorama_pe else nn.Identity()
        self.multi_modal_projector = nn.Linear(latent, config.text_config.hidden_size)
        self.vicreg_projector = (
            VICRegProjector(latent, config.vicreg_projector_dim, config.vicreg_projector_depth)
            if config.vicreg_projector_depth > 0
            else None
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()
        _drop_unused_tower_head(self)
        if self.vicreg_projector is None:
            # A vision-stage checkpoint loads into a config without the training-only head.
            self._keys_to_ignore_on_load_unexpected.add(r"vicreg_projector\.")

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Boolean mask `(batch, seq, 1)` of the image placeholder positions, for `image_features` `(rows, hidden)`;
        raises, naming the counts, when the prompts do not hold one placeholder per feature row."""
        if input_ids is None:
            placeholder = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == self.config.image_token_id
        if torch.compiler.is_compiling():
            return mask.unsqueeze(-1)  # the count is checked eagerly; a compiled graph cannot raise on data
        if int(mask.sum()) != image_features.shape[0]:
            per_prompt = mask.sum(-1).tolist()
            tokens = self.config.num_image_tokens
            raise ValueError(
                f"Image features and image tokens do not match: the prompts hold {per_prompt} image tokens, "
                f"{sum(per_prompt)} in all, but the {image_features.shape[0] // tokens} panorama(s) give "
                f"{image_features.shape[0]} features ({tokens} each: config.num_image_tokens for "
                f"crop_strategy={self.config.crop_strategy!r}, stitching_mode={self.config.stitching_mode!r}). Build "
                "prompts with the PanoVLMProcessor saved with this model, and do not truncate through image tokens."
            )
        return mask.unsqueeze(-1)

    def _return_dict(self, return_dict: bool | None) -> bool:
        return self.config.return_dict if return_dict is None else return_dict

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        view_yaw_deg: torch.Tensor | None = None,
        view_pitch_deg: torch.Tensor | None = None,
        view_fov_deg: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        output_view_embeddings: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PanoVLMModelOutputWithPast | tuple:
        """Decoder hidden states for prompts whose image placeholders are replaced by panorama features.

        Args:
            input_ids: `(batch, seq)` token ids holding `config.num_image_tokens` image tokens per panorama (a
                prompt may hold several panoramas, or none).
            pixel_values: `(panoramas, views, 3, view_size, view_size)` from `PanoVLMImageProcessor`, panoramas in
                the order their placeholders appear in the batch.
            view_yaw_deg, view_pitch_deg, view_fov_deg: `(panoramas, views)` view directions from the image
                processor; when given they are checked against the config's layout.
            mm_encoder_outputs: `{"image": get_image_features(...)}` computed beforehand (e.g. once per panorama for
                several prompts); instead of `pixel_values`.
            output_view_embeddings: compute only the vision stage's view embeddings of `pixel_values` (no text):
                `view_embeddings` `(panoramas, views, rows, columns, vicreg_projector_dim)`.
            kwargs: go to the language model (`use_cache`, `output_attentions`, `output_hidden_states`, ...).
        """
        return_dict = self._return_dict(return_dict)
        if "past_key_values" in kwargs:
            warnings.warn(
                "`past_key_values` is deprecated for PanoVLM's forward, as for transformers' models since 5.25: pass the "
                "cache as `cache`",
                FutureWarning,
                stacklevel=2,
            )
            legacy = kwargs.pop("past_key_values")
            cache = legacy if cache is None else cache
        if output_view_embeddings:
            if pixel_values is None or input_ids is not None or inputs_embeds is not None:
                raise ValueError("output_view_embeddings=True takes pixel_values alone (the vision training stage)")
            self.check_view_metadata(view_yaw_deg=view_yaw_deg, view_pitch_deg=view_pitch_deg, view_fov_deg=view_fov_deg)
            output = PanoVLMModelOutputWithPast(view_embeddings=self.get_view_embeddings(pixel_values))
            return output if return_dict else output.to_tuple()
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and (mm_encoder_outputs or {}).get("image") is not None:
            raise ValueError("Give pixel_values or pre-computed mm_encoder_outputs['image'], not both")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_outputs = (mm_encoder_outputs or {}).get("image")
        if image_outputs is None and pixel_values is not None:
            image_outputs = self.get_image_features(
                pixel_values, view_yaw_deg, view_pitch_deg, view_fov_deg, return_dict=True
            )
        if image_outputs is not None:
            features = image_outputs.pooler_output
            features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features]) if len(features) else features
            features = features.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, features)

        kwargs.setdefault("use_cache", self.config.use_cache)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            return_dict=True,
            **kwargs,
        )
        output = PanoVLMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )
        return output if return_dict else output.to_tuple()


class PanoVLMForConditionalGeneration(PanoVLMPreTrainedModel, GenerationMixin):
    """PanoVLM with a language-modelling head: training loss and `generate`."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: PanoVLMConfig):
        super().__init__(config)
        self.model = PanoVLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling | tuple:
        """See `PanoVLMModel.get_image_features`."""
        return self.model.get_image_features(pixel_values, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        view_yaw_deg: torch.Tensor | None = None,
        view_pitch_deg: torch.Tensor | None = None,
        view_fov_deg: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        output_view_embeddings: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PanoVLMCausalLMOutputWithPast | tuple:
        """Logits and, with `labels` `(batch, seq)` (-100 = ignored), the next-token loss. Image placeholder and
        padding positions never count as targets, whatever `labels` (or `shift_labels`) hold there. Loss keyword
        arguments the Trainer passes (`num_items_in_batch`, `shift_labels`, ...) reach `loss_function`; the other
        arguments are those of `PanoVLMModel.forward`."""
        return_dict = self.model._return_dict(return_dict)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            view_yaw_deg=view_yaw_deg,
            view_pitch_deg=view_pitch_deg,
            view_fov_deg=view_fov_deg,
            mm_encoder_outputs=mm_encoder_outputs,
            output_view_embeddings=output_view_embeddings,
            return_dict=True,
            **{key: value for key, value in kwargs.items() if key not in _LOSS_KWARGS},
        )
        if output_view_embeddings:
            output = PanoVLMCausalLMOutputWithPast(view_embeddings=outputs.view_embeddings)
            return output if return_dict else output.to_tuple()
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        shift_labels = kwargs.get("shift_labels")
        if labels is not None or shift_labels is not None:
            loss_kwargs = {key: value for key, value in kwargs.items() if key in _LOSS_KWARGS}
            if labels is not None:
                labels = self._mask_non_targets(labels, input_ids, attention_mask)
            if shift_labels is not None:
                loss_kwargs["shift_labels"] = self._mask_non_targets(shift_labels, input_ids, attention_mask, shift=1)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **loss_kwargs
            )
        output = PanoVLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )
        return output if return_dict else output.to_tuple()

    def _mask_non_targets(
        self, labels: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, shift: int = 0
    ) -> torch.Tensor:
        """`labels` with image placeholder and padding positions set to -100. `shift=1` for `shift_labels`, whose
        position `i` is the target of input `i + 1`."""
        for ignored in (
            None if input_ids is None else input_ids == self.config.image_token_id,
            None if attention_mask is None else attention_mask == 0,
        ):
            if ignored is not None:
                if shift:
                    ignored = torch.nn.functional.pad(ignored[:, shift:], (0, shift), value=True)
                labels = labels.masked_fill(ignored, IGNORE_INDEX)
        return labels

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str | os.PathLike,
        text_model_name_or_path: str | os.PathLike,
        resampler_config: PanoVLMResamplerConfig | dict | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | torch.device | None = None,
        **config_kwargs,
    ) -> PanoVLMForConditionalGeneration:
        """A new PanoVLM from a pretrained vision tower and a pretrained causal LM (local directories or Hub ids).

        The tower and the LM are loaded with their own `from_pretrained` (`dtype` and `device_map` are passed to
        both) and become the model's modules as they are, without a copy: peak memory stays close to the model's
        size. The resampler, projector and SSL head are freshly initialised, in `dtype`, on the tower's device.
        Dual-tower checkpoints such as `google/siglip-*` contribute their vision half; the towers' pooling heads,
        which PanoVLM does not use, are left out. The tower's pixel normalisation (`image_mean`, `image_std`,
        `rescale_factor`) is read from its checkpoint's image processor config and recorded in the config, so
        `PanoVLMProcessor.from_model_config` normalises as the tower was trained; a checkpoint without one gets its
        family's published values (`TOWER_NORMALISATION`) and a warning. `config_kwargs` are `PanoVLMConfig`
        fields, e.g. `crop_strategy`, `image_token_id`.
        """
        config_kwargs = {**_tower_normalisation(vision_model_name_or_path), **config_kwargs}
        vision_config = AutoConfig.from_pretrained(vision_model_name_or_path)
        # Dual towers (CLIP, SigLIP) contribute their vision half; its weights load by name into the vision class.
        vision_config = getattr(vision_config, "vision_config", vision_config)
        if getattr(vision_config, "vision_use_head", False):
            vision_config.vision_use_head = False  # PanoVLM reads every patch token, never the pooling head
        loading = {"dtype": dtype, "device_map": device_map}
        vision = AutoModel.from_pretrained(vision_model_name_or_path, config=vision_config, **loading)
        text = AutoModelForCausalLM.from_pretrained(text_model_name_or_path, **loading)
        config = PanoVLMConfig(
            vision_config=vision.config.to_dict(),
            text_config=text.config.to_dict(),
            resampler_config=resampler_config,
            **config_kwargs,
        )
        with torch.device("meta"):
            model = cls(config)
        model.model.vision_tower = vision
        _drop_unused_tower_head(model.model)
        model.model.language_model = text.get_decoder()
        model.lm_head = text.get_output_embeddings()
        _materialise_new_modules(model, device=next(vision.parameters()).device, dtype=vision.dtype)
        model.tie_weights()
        return model


def _materialise_new_modules(model: PanoVLMForConditionalGeneration, device: torch.device, dtype: torch.dtype) -> None:
    """Allocate and initialise the modules `from_vision_text_pretrained` built on the meta device (all but the
    pretrained tower and LM), in `dtype` (Mamba's state tensors stay fp32, as `_keep_in_fp32_modules_strict` says)."""
    keep_fp32 = re.compile("|".join(rf"(^|\.){re.escape(name)}$" for name in model._keep_in_fp32_modules_strict) or "$^")
    for module in (model.model.vision_feature_norm, model.model.resampler, model.model.panorama_pe,
                   model.model.multi_modal_projector, model.model.vicreg_projector):
        if module is None:
            continue
        module.to_empty(device=device)
        for submodule in module.modules():
            model._init_weights(submodule)
        for name, parameter in module.named_parameters():
            if parameter.is_floating_point() and not keep_fp32.search(name):
                parameter.data = parameter.data.to(dtype)


def _tower_normalisation(vision_model_name_or_path: str | os.PathLike) -> dict:
    """`image_mean`, `image_std`, `rescale_factor` of a tower checkpoint's image processor config; `{}` (the family's
    published values then apply) with a warning when it has none."""
    try:
        processor = AutoImageProcessor.from_pretrained(vision_model_name_or_path)
    except (OSError, ValueError) as error:
        logger.warning(
            "%s has no image processor config (%s): using the published normalisation of its tower family "
            "(configuration_panovlm.TOWER_NORMALISATION); pass image_mean/image_std if it was trained otherwise",
            vision_model_name_or_path, str(error).splitlines()[0],
        )
        return {}
    settings = {"image_mean": list(processor.image_mean), "image_std": list(processor.image_std)}
    if getattr(processor, "rescale_factor", None) is not None:
        settings["rescale_factor"] = float(processor.rescale_factor)
    return settings


# Keyword arguments only the loss reads (the Trainer passes them with the inputs); the language model never sees them.
_LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")


__all__ = ["PanoVLMForConditionalGeneration", "PanoVLMModel", "PanoVLMPreTrainedModel"]
