"""PanoVLM: vision tower -> resampler -> panoramic positional encoding -> projector -> view stitching -> causal LM.

The class split follows transformers' LLaVA family: `PanoVLMModel` holds `vision_tower`, `resampler`,
`multi_modal_projector` and `language_model` (the bare decoder); `PanoVLMForConditionalGeneration` adds
`lm_head` and `GenerationMixin`. Image features replace the image placeholder tokens of the prompt with one
`masked_scatter`. The input is named `pixel_values`, so `generate` sends it at the prefill step only.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.cache_utils import Cache

from configuration_panovlm.configuration_panovlm import (
    PanoVLMConfig,
    PanoVLMResamplerConfig,
)

from .outputs import PanoVLMCausalLMOutputWithPast, PanoVLMModelOutputWithPast
from .panorama import PanoramaPositionalEncoding, stitch_views, token_grid_check
from .resamplers import build_resampler


logger = logging.getLogger(__name__)


class VICRegProjector(nn.Module):
    """Token-wise head used only by the self-supervised overlap loss of the vision stage: `depth - 1` blocks of
    [Linear, LayerNorm, GELU], then a Linear to `out_dim`."""

    def __init__(self, in_dim: int, out_dim: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.GELU()]
            in_dim = out_dim
        layers.append(nn.Linear(in_dim, out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens)


class PanoVLMPreTrainedModel(PreTrainedModel):
    config: PanoVLMConfig
    config_class = PanoVLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["BiMambaBlock", "PerceiverLayer", "QFormerLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    # Mamba's state matrix and skip term lose too much in half precision (mamba-ssm keeps them fp32 as well).
    _keep_in_fp32_modules_strict = ["A_log", r"\.D$"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # Our modules with raw parameters/buffers (Mamba SSM tensors, learned queries, the PE table) say how.
        if hasattr(module, "init_weights_"):
            module.init_weights_(self.config.initializer_range)


class PanoVLMModel(PanoVLMPreTrainedModel):
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
            else nn.Identity()
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # ---- vision path ---------------------------------------------------------------------------------------
    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        config = self.config
        expected = f"(batch, {config.num_views}, 3, {config.view_size}, {config.view_size})"
        if pixel_values.ndim != 5:
            raise ValueError(f"pixel_values must be {expected} (one panorama per prompt), got {tuple(pixel_values.shape)}")
        _, views, channels, height, width = pixel_values.shape
        if views != config.num_views:
            raise ValueError(
                f"pixel_values holds {views} views per panorama, but crop_strategy={config.crop_strategy!r} with "
                f"fov_deg={config.fov_deg}, overlap_ratio={config.overlap_ratio} takes {config.num_views}: the image "
                f"processor and config.json disagree; expected {expected}"
            )
        if (channels, height, width) != (3, config.view_size, config.view_size):
            raise ValueError(f"pixel_values must be {expected}, got {tuple(pixel_values.shape)}")

    def _run_vision_tower(self, views: torch.Tensor) -> torch.Tensor:
        """`(N, 3, S, S)` views -> `(N, patch_rows * patch_cols, vision_hidden)` patch tokens, prefix tokens dropped."""
        config = self.config
        if config.vision_config.model_type == "siglip2_vision_model":
            # NaFlex towers take flattened patches (channels last within a patch) plus their grid shape.
            patch = config.vision_config.patch_size
            rows, cols = config.patch_grid
            patches = views.reshape(views.shape[0], 3, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1)
            patches = patches.reshape(views.shape[0], rows * cols, patch * patch * 3)
            spatial_shapes = torch.tensor([[rows, cols]], device=views.device).expand(views.shape[0], 2)
            mask = torch.ones(views.shape[0], rows * cols, dtype=torch.long, device=views.device)
            hidden = self.vision_tower(
                pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=spatial_shapes
            ).last_hidden_state
        else:
            hidden = self.vision_tower(pixel_values=views).last_hidden_state
        return hidden[:, config.num_vision_prefix_tokens :]

    def get_view_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Resampler output per view, before the positional encoding.

        Args:
            pixel_values: `(batch, views, 3, view_size, view_size)`.

        Returns:
            `(batch, views, rows, columns, latent_dimension)` with `(rows, columns) = config.view_token_grid`.
        """
        self._check_pixel_values(pixel_values)
        batch, views = pixel_values.shape[:2]
        tower_dtype = self.vision_tower.dtype
        patches = self._run_vision_tower(pixel_values.flatten(0, 1).to(tower_dtype))
        tokens = self.resampler(self.vision_feature_norm(patches))  # (B*V, T_view, latent)
        rows, cols = self.config.view_token_grid
        token_grid_check(tokens.shape[1], (rows, cols))
        return tokens.reshape(batch, views, rows, cols, tokens.shape[-1])

    def get_view_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the vision stage's overlap-consistency loss compares: `vicreg_projector(get_view_features(...))`,
        `(batch, views, rows, columns, vicreg_projector_dim)` (the positional encoding is not added)."""
        return self.vicreg_projector(self.get_view_features(pixel_values))

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image tokens of each panorama, ready to replace its placeholders.

        Args:
            pixel_values: `(batch, views, 3, view_size, view_size)`.

        Returns:
            `(batch, config.num_image_tokens, text_hidden)`: the global view's tokens (anyres_e2p) followed by the
            stitched strip, row-major.
        """
        view_tokens = self.get_view_features(pixel_values)
        batch, views, rows, cols, latent = view_tokens.shape
        view_tokens = self.panorama_pe(view_tokens.reshape(batch, views, rows * cols, latent))
        projected = self.multi_modal_projector(view_tokens).reshape(batch, views, rows, cols, -1)
        layout = self.config.view_layout
        parts = []
        if layout.has_global_view:
            parts.append(projected[:, 0].reshape(batch, rows * cols, -1))
            projected = projected[:, 1:]
        drop = layout.overlap_columns(cols) if self.config.stitching_mode == "drop_overlap" else 0
        parts.append(stitch_views(projected, drop))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Boolean mask `(batch, seq, 1)` of the image placeholder positions; raises, naming both counts, when the
        prompts do not hold exactly `num_image_tokens` placeholders per panorama."""
        if input_ids is None:
            placeholder = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == self.config.image_token_id
        per_prompt = mask.sum(-1).tolist()
        batch, num_tokens = image_features.shape[:2]
        if len(per_prompt) != batch or any(count != num_tokens for count in per_prompt):
            raise ValueError(
                f"Image features and image tokens do not match: the prompts hold {per_prompt} image tokens, but each "
                f"of the {batch} panorama(s) gives {num_tokens} features (config.num_image_tokens for "
                f"crop_strategy={self.config.crop_strategy!r}, stitching_mode={self.config.stitching_mode!r}). Build "
                "prompts with the PanoVLMProcessor saved with this model, and do not truncate through image tokens."
            )
        return mask.unsqueeze(-1)

    def _check_view_metadata(self, **metadata: torch.Tensor | None) -> None:
        """The image processor reports each view's direction; refuse views the config would misplace."""
        expected = {
            "view_yaw_deg": [view.yaw_deg for view in self.config.view_layout.views],
            "view_pitch_deg": [view.pitch_deg for view in self.config.view_layout.views],
            "view_fov_deg": [view.hfov_deg for view in self.config.view_layout.views],
        }
        for name, values in metadata.items():
            if values is None:
                continue
            reference = torch.tensor(expected[name], dtype=values.dtype, device=values.device).expand_as(values)
            if not torch.allclose(values, reference, atol=1e-4):
                raise ValueError(
                    f"{name} from the image processor is {values[0].tolist()}, but config.json lays views out at "
                    f"{expected[name]}: the processor and the model were built with different view settings"
                )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        view_yaw_deg: torch.Tensor | None = None,
        view_pitch_deg: torch.Tensor | None = None,
        view_fov_deg: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> PanoVLMModelOutputWithPast:
        """Decoder hidden states for prompts whose image placeholders are replaced by panorama features.

        Args:
            input_ids: `(batch, seq)` token ids holding `config.num_image_tokens` image tokens per panorama.
            pixel_values: `(batch, views, 3, view_size, view_size)` from `PanoVLMImageProcessor`. Given without
                any text, only the view embeddings of the vision training stage are computed (`view_embeddings`).
            view_yaw_deg, view_pitch_deg, view_fov_deg: `(batch, views)` view directions from the image
                processor; when given they are checked against the config's layout.
        """
        if input_ids is None and inputs_embeds is None and pixel_values is not None:
            self._check_view_metadata(
                view_yaw_deg=view_yaw_deg, view_pitch_deg=view_pitch_deg, view_fov_deg=view_fov_deg
            )
            return PanoVLMModelOutputWithPast(view_embeddings=self.get_view_embeddings(pixel_values))
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds (or pixel_values alone)")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = None
        if pixel_values is not None:
            self._check_view_metadata(
                view_yaw_deg=view_yaw_deg, view_pitch_deg=view_pitch_deg, view_fov_deg=view_fov_deg
            )
            image_features = self.get_image_features(pixel_values)
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=self.config.use_cache if use_cache is None else use_cache,
            **kwargs,
        )
        return PanoVLMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


class PanoVLMForConditionalGeneration(PanoVLMPreTrainedModel, GenerationMixin):
    """PanoVLM with a language-modelling head: training loss and `generate`."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

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

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See `PanoVLMModel.get_image_features`."""
        return self.model.get_image_features(pixel_values)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        view_yaw_deg: torch.Tensor | None = None,
        view_pitch_deg: torch.Tensor | None = None,
        view_fov_deg: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> PanoVLMCausalLMOutputWithPast:
        """Logits and, with `labels` `(batch, seq)` (-100 = ignored), the mean next-token loss. Image placeholder
        and padding positions never count as targets, whatever `labels` holds there. Under gradient accumulation
        the Trainer passes `num_items_in_batch`, and the loss is summed and divided by it instead."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            view_yaw_deg=view_yaw_deg,
            view_pitch_deg=view_pitch_deg,
            view_fov_deg=view_fov_deg,
            use_cache=use_cache,
            **kwargs,
        )
        if outputs.view_embeddings is not None:  # pixel_values alone: the vision stage's view embeddings
            return PanoVLMCausalLMOutputWithPast(view_embeddings=outputs.view_embeddings)
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.image_token_id, -100)
            if attention_mask is not None:
                labels = labels.masked_fill(attention_mask == 0, -100)
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.text_config.vocab_size,
                num_items_in_batch=num_items_in_batch,
            )
        return PanoVLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str | os.PathLike,
        text_model_name_or_path: str | os.PathLike,
        resampler_config: PanoVLMResamplerConfig | dict | None = None,
        **config_kwargs,
    ) -> PanoVLMForConditionalGeneration:
        """A new PanoVLM from a pretrained vision tower and a pretrained causal LM (local directories or Hub ids).

        The resampler, projector and SSL head are freshly initialised; the tower and LM weights are copied in
        exactly (dual-tower checkpoints such as `google/siglip-*` contribute their vision half). `config_kwargs`
        are `PanoVLMConfig` fields, e.g. `crop_strategy`, `image_token_id`.
        """
        vision_config = AutoConfig.from_pretrained(vision_model_name_or_path)
        # Dual towers (CLIP, SigLIP) contribute their vision half; its weights load by name into the vision class.
        vision_config = getattr(vision_config, "vision_config", vision_config)
        vision = AutoModel.from_pretrained(vision_model_name_or_path, config=vision_config)
        text = AutoModelForCausalLM.from_pretrained(text_model_name_or_path)
        config = PanoVLMConfig(
            vision_config=vision.config.to_dict(),
            text_config=text.config.to_dict(),
            resampler_config=resampler_config,
            **config_kwargs,
        )
        model = cls(config)
        model.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
        model.model.language_model.load_state_dict(text.get_decoder().state_dict(), strict=True)
        model.lm_head.load_state_dict(text.get_output_embeddings().state_dict(), strict=True)
        model.tie_weights()
        return model


__all__ = ["PanoVLMForConditionalGeneration", "PanoVLMModel", "PanoVLMPreTrainedModel"]
