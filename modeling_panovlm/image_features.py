"""The vision path of `PanoVLMModel`: panorama views -> vision tower -> resampler -> panoramic positional encoding
-> projector -> view stitching -> image features, one row per image placeholder token.

`PanoVLMImageFeaturesMixin` holds the methods; `PanoVLMModel` (modeling_panovlm) owns the modules they use
(`vision_tower`, `vision_feature_norm`, `resampler`, `panorama_pe`, `multi_modal_projector`, `vicreg_projector`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .panorama import stitch_panorama, token_grid_check


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


class PanoVLMImageFeaturesMixin:
    """Image features of panoramas for `PanoVLMModel`."""

    # ---- vision path ---------------------------------------------------------------------------------------
    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        config = self.config
        expected = f"(panoramas, {config.num_views}, 3, {config.view_size}, {config.view_size})"
        if pixel_values.ndim != 5:
            raise ValueError(f"pixel_values must be {expected}, got {tuple(pixel_values.shape)}")
        _, views, channels, height, width = pixel_values.shape
        if views != config.num_views:
            raise ValueError(
                f"pixel_values holds {views} views per panorama, but crop_strategy={config.crop_strategy!r} with "
                f"fov_deg={config.fov_deg}, overlap_ratio={config.overlap_ratio} takes {config.num_views}: the image "
                f"processor and config.json disagree; expected {expected}"
            )
        if (channels, height, width) != (3, config.view_size, config.view_size):
            raise ValueError(f"pixel_values must be {expected}, got {tuple(pixel_values.shape)}")

    def check_view_metadata(self, **metadata: torch.Tensor | None) -> None:
        """Refuse views the config would misplace: `view_yaw_deg`, `view_pitch_deg`, `view_fov_deg`,
        `view_vfov_deg` `(panoramas, views)` as the image processor reports them must be the config's layout."""
        views = self.config.view_layout.views
        expected = {
            "view_yaw_deg": [view.yaw_deg for view in views],
            "view_pitch_deg": [view.pitch_deg for view in views],
            "view_fov_deg": [view.hfov_deg for view in views],
            "view_vfov_deg": [view.vfov_deg for view in views],
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

    def _run_vision_tower(self, views: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """`(N, 3, S, S)` views -> the tower's output (`last_hidden_state` `(N, prefix + patches, vision_hidden)`)."""
        config = self.config
        if config.vision_config.model_type == "siglip2_vision_model":
            # NaFlex towers take flattened patches (channels last within a patch) plus their grid shape.
            patch = config.vision_config.patch_size
            rows, cols = config.patch_grid
            patches = views.reshape(views.shape[0], 3, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1)
            patches = patches.reshape(views.shape[0], rows * cols, patch * patch * 3)
            spatial_shapes = torch.tensor([[rows, cols]], device=views.device).expand(views.shape[0], 2)
            mask = torch.ones(views.shape[0], rows * cols, dtype=torch.long, device=views.device)
            return self.vision_tower(
                pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=spatial_shapes, return_dict=True, **kwargs
            )
        return self.vision_tower(pixel_values=views, return_dict=True, **kwargs)

    def get_view_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        """Resampler output per view, before the positional encoding, and the tower's output.

        Args:
            pixel_values: `(panoramas, views, 3, view_size, view_size)`.
            kwargs: `output_hidden_states` / `output_attentions` for the vision tower.

        Returns:
            `(view_tokens, tower_outputs)`: `(panoramas, views, rows, columns, latent_dimension)` with `(rows,
            columns) = config.view_token_grid`, and the vision tower's `BaseModelOutputWithPooling`.
        """
        self._check_pixel_values(pixel_values)
        panoramas, views = pixel_values.shape[:2]
        tower = self._run_vision_tower(pixel_values.flatten(0, 1).to(self.vision_tower.dtype), **kwargs)
        patches = tower.last_hidden_state[:, self.config.num_vision_prefix_tokens :]
        tokens = self.resampler(self.vision_feature_norm(patches))  # (P*V, T_view, latent)
        rows, cols = self.config.view_token_grid
        token_grid_check(tokens.shape[1], (rows, cols))
        return tokens.reshape(panoramas, views, rows, cols, tokens.shape[-1]), tower

    def get_view_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the vision stage's overlap-consistency loss compares: `vicreg_projector(view features)`,
        `(panoramas, views, rows, columns, vicreg_projector_dim)` (the positional encoding is not added)."""
        if self.vicreg_projector is None:
            raise ValueError(
                "this model has no VICReg head (vicreg_projector_depth=0): the vision stage needs one; load the "
                "checkpoint with vicreg_projector_depth=2 (or another depth) to add a fresh head"
            )
        return self.vicreg_projector(self.get_view_features(pixel_values)[0])

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        view_yaw_deg: torch.Tensor | None = None,
        view_pitch_deg: torch.Tensor | None = None,
        view_fov_deg: torch.Tensor | None = None,
        view_vfov_deg: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """Image tokens of each panorama, ready to replace its placeholders.

        Args:
            pixel_values: `(panoramas, views, 3, view_size, view_size)`.
            view_yaw_deg, view_pitch_deg, view_fov_deg, view_vfov_deg: `(panoramas, views)` from the image
                processor; checked against the config's layout when given.
            kwargs: `output_hidden_states` / `output_attentions` for the vision tower.

        Returns:
            `BaseModelOutputWithPooling` whose `pooler_output` is `(panoramas, config.num_image_tokens,
            text_hidden)` (the global view's tokens, if any, then each stitched pitch row, row-major) and whose
            `last_hidden_state` / `hidden_states` / `attentions` are the vision tower's, `(panoramas, views,
            tokens, ...)`.
        """
        self.check_view_metadata(
            view_yaw_deg=view_yaw_deg, view_pitch_deg=view_pitch_deg, view_fov_deg=view_fov_deg, view_vfov_deg=view_vfov_deg
        )
        view_tokens, tower = self.get_view_features(pixel_values, **kwargs)
        panoramas, views, rows, cols, latent = view_tokens.shape
        view_tokens = self.panorama_pe(view_tokens.reshape(panoramas, views, rows * cols, latent))
        projected = self.multi_modal_projector(view_tokens).reshape(panoramas, views, rows, cols, -1)
        features = stitch_panorama(projected, self.config)

        def per_panorama(states: torch.Tensor) -> torch.Tensor:
            return states.unflatten(0, (panoramas, views))

        output = BaseModelOutputWithPooling(
            last_hidden_state=per_panorama(tower.last_hidden_state),
            pooler_output=features,
            hidden_states=None if tower.hidden_states is None else tuple(map(per_panorama, tower.hidden_states)),
            attentions=None if tower.attentions is None else tuple(map(per_panorama, tower.attentions)),
        )
        return output if self._return_dict(return_dict) else output.to_tuple()


__all__ = ["PanoVLMImageFeaturesMixin", "VICRegProjector"]
