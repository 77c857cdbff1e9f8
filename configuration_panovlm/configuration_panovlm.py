"""PanoVLM configuration: one `config.json` holds every hyperparameter the model reads.

`PanoVLMConfig` nests three configs: `vision_config` (any SigLIP, SigLIP2, CLIP or DINOv2 vision config),
`text_config` (any causal LM config; Qwen3 by default) and `resampler_config` (`PanoVLMResamplerConfig`).
Both classes are strict: a wrong type, an unknown key or an impossible combination raises at construction,
never later as a shape mismatch.
"""


import dataclasses
import math
from dataclasses import field
from types import MappingProxyType
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .config_keys import check_kwargs, complete_saved_config
from .resampler_registry import ResamplerSpec, resampler_spec
from .towers import _VISION_PREFIX_TOKENS, SIGLIP_NORMALISATION, SUPPORTED_VISION_MODEL_TYPES, TOWER_NORMALISATION
from .view_layout import (
    DEFAULT_ANYRES_MAX_PATCHES,
    DEFAULT_PITCH_LEVELS_DEG,
    ViewLayout,
    infer_token_grid,
    view_layout_of,
)


def _per_channel(values: float | list[float] | tuple[float, ...]) -> list[float]:
    """One value per RGB channel (a single number applies to all three)."""
    return [float(values)] * 3 if isinstance(values, (int, float)) else [float(value) for value in values]


# `<|image_pad|>` in every Qwen2/Qwen3 vocabulary: the default image placeholder, so no embedding is resized.
QWEN_IMAGE_PAD_ID = 151655


@strict
class PanoVLMResamplerConfig(PreTrainedConfig):
    r"""Configuration of the token resampler that sits between the vision tower and the projector.

    The resampler maps the tokens of each view, `(views, tokens, vision_hidden)`, to `latent_dimension`-wide
    tokens. `bimamba` and `mlp` keep the token count; `perceiver` returns `num_latents` tokens and `qformer`
    returns `num_query_tokens` tokens per view. Field names are the ones PanoLLaVA configs used. Which types exist,
    and the fields, token count and size rules of each, come from `configuration_panovlm.resampler_registry`; a
    type registered from outside PanoVLM adds its own fields, which this config then accepts and records.

    Args:
        resampler_type (`str`): a registered type: `"bimamba"`, `"mlp"`, `"perceiver"`, `"qformer"` built in.
        latent_dimension (`int`): width of the resampler's output tokens.
        hidden_dim (`int`): internal width of every resampler type.
        depth (`int`): number of blocks: BiMamba blocks, MLP layers (`depth - 1` hidden layers and one output
            layer) or Perceiver layers. Alias `num_layers`.
        dropout (`float`): dropout inside the blocks.
        expand, d_state, d_conv, dt_rank (BiMamba): Mamba-1 inner width factor (`d_inner = int(expand *
            hidden_dim)`, fractions such as 1.75 allowed), SSM state size, depthwise convolution width, rank of the
            step projection (`"auto"` resolves to `ceil(hidden_dim / 16)` and is stored as an integer).
        dt_min, dt_max, dt_init_floor (BiMamba): range of the initial SSM step size.
        norm_first (BiMamba): pre-norm (`True`) or post-norm residual blocks.
        use_ln (MLP): LayerNorm after each hidden layer.
        num_latents, heads, dim_head, ff_mult (Perceiver): latent tokens, attention heads, width per head,
            feed-forward expansion.
        num_query_tokens, num_hidden_layers, num_attention_heads (Q-Former): learned queries, layers, heads.
        layer_norm_eps (`float`): epsilon of every LayerNorm in the resampler.
    """

    model_type = "panovlm_resampler"
    base_config_key = "resampler_config"
    attribute_map = {"num_layers": "depth"}

    resampler_type: str = "bimamba"
    latent_dimension: int = 768
    hidden_dim: int = 1024
    depth: int = 4
    dropout: float | int = 0.05
    # BiMamba
    expand: float | int = 2.0
    d_state: int = 64
    d_conv: int = 4
    dt_rank: int | Literal["auto"] = "auto"
    dt_min: float | int = 0.001
    dt_max: float | int = 0.1
    dt_init_floor: float | int = 1e-4
    norm_first: bool = True
    # MLP
    use_ln: bool = True
    # Perceiver
    num_latents: int = 64
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    # Q-Former
    num_query_tokens: int = 64
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    layer_norm_eps: float | int = 1e-5

    def __post_init__(self, **kwargs):
        spec = resampler_spec(self.resampler_type)
        own = {f.name for f in dataclasses.fields(self)}
        extra = {name: default for name, default in spec.fields.items() if name not in own}
        check_kwargs(self, kwargs, strict_keys=True, extra_fields=tuple(extra))
        for name, default in extra.items():  # a registered type's own fields: defaults for those not given
            value = kwargs.setdefault(name, default)
            if default is not None and not isinstance(value, type(default)) and not (
                isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
            ):
                raise TypeError(
                    f"resampler_config.{name} of type {self.resampler_type!r} must be {type(default).__name__}, got "
                    f"{type(value).__name__} {value!r}"
                )
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.hidden_dim / 16)
        super().__post_init__(**kwargs)

    @property
    def d_inner(self) -> int:
        """BiMamba inner width, rounded down as mamba-ssm does."""
        return int(self.expand * self.hidden_dim)

    @property
    def spec(self) -> ResamplerSpec:
        """The registered facts of `resampler_type` (`configuration_panovlm.resampler_registry`)."""
        return resampler_spec(self.resampler_type)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        """Tokens per view after the resampler."""
        rule = self.spec.output_tokens
        return num_input_tokens if rule is None else rule(self, num_input_tokens)

    def validate_sizes(self):
        spec = self.spec
        for name in ("latent_dimension", "hidden_dim", "depth", *spec.positive):
            if getattr(self, name) < 1:
                raise ValueError(f"resampler_config.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"resampler_config.dropout must be in [0, 1), got {self.dropout}")
        if spec.validate is not None:
            spec.validate(self)


@strict
class PanoVLMConfig(PreTrainedConfig):
    r"""Configuration of a panorama vision-language model.

    Data flow: each view `(3, S, S)` of a panorama goes through the vision tower (`last_hidden_state`, optional
    LayerNorm) and the resampler; the panoramic positional encoding is added; a linear projector maps tokens to
    the LM width; the horizon views are stitched into one strip (the global view of `anyres_e2p` is projected
    and prepended, not stitched); the result replaces the image placeholder tokens of the prompt.

    The view size `S` is the vision tower's input size (`vision_config.image_size`, or `sqrt(num_patches) *
    patch_size` for SigLIP2). The number of image tokens per panorama is `num_image_tokens`, a pure function of
    this config.

    Args:
        vision_config (`dict` or `PreTrainedConfig`): config of the vision tower; `siglip_vision_model` by default.
        text_config (`dict` or `PreTrainedConfig`): config of the causal language model; `qwen3` by default.
        resampler_config (`dict` or `PanoVLMResamplerConfig`): the resampler.
        image_token_id (`int`): id of the image placeholder token; 151655 is `<|image_pad|>` in Qwen2/Qwen3
            vocabularies, so no embedding is ever resized.
        crop_strategy (`str`): `"resize"`, `"e2p"`, `"anyres_e2p"`, `"cubemap"`, `"sliding_window"`, `"anyres"`
            or `"anyres_max"`; see `configuration_panovlm.view_layout.build_view_layout`.
        fov_deg (`float`): field of view of each strip view, in degrees.
        overlap_ratio (`float`): minimum overlap of neighbouring strip views, as a fraction of a view's width.
        pitch_levels_deg (`list[float]`): pitch of each row of strip views, top row first (`e2p`, `anyres_e2p`,
            `sliding_window`); `[0.0]` is one ring on the horizon, `[45.0, 0.0, -45.0]` adds a ring looking up and
            one looking down (24 views of 90 degrees).
        vertical_crop_ratio (`float`): narrows the perspective views vertically to `2 * atan(ratio * tan(fov /
            2))` degrees (`e2p`, `anyres_e2p`); 1.0 keeps them square, 0.9 is PanoLLaVA's e2p crop.
        anyres_max_patches (`int`): patch budget of `anyres` / `anyres_max` (PanoLLaVA's field; 9 gives 4 horizon
            crops / a 4 x 2 grid).
        stitching_mode (`str`): how each pitch row of views becomes one strip of tokens: `"drop_overlap"` (every
            later view drops the token columns it shares with its left neighbour; PanoLLaVA's effective default),
            `"concat"` (keep all tokens) or `"resample"` (PanoLLaVA's: the row is resampled onto one column grid,
            overlapping views averaged).
        resample_columns (`int`, *optional*): token columns per stitched row for `"resample"`; `None` keeps as many
            as `drop_overlap` does.
        resample_interpolation (`str`): `"nearest"` or `"linear"` column interpolation of `"resample"` (only
            matters when `resample_columns` is set).
        use_panorama_pe (`bool`): add the parameter-free panoramic positional encoding to the resampler output.
        panorama_pe_type (`str`): `"direction"` (yaw harmonics and pitch sinusoids of the direction every token
            looks) or `"panollava"` (PanoLLaVA's: sinusoids of a yaw angle, the token row and a continuous strip
            column).
        pe_temperature (`float`): wavelength base of the pitch encoding (`"direction"`) or of every sinusoid
            (`"panollava"`).
        vision_feature_norm (`bool`): LayerNorm over the vision tower's output before the resampler.
        vicreg_projector_dim (`int`): output width of the head used by the self-supervised overlap loss of the
            vision training stage.
        vicreg_projector_depth (`int`): layers of that head (0: no head, the loss sees the resampler output).
        initializer_range (`float`): std of the normal initialisation of the resampler, projector and head.
        tie_word_embeddings (`bool`): tie `lm_head` to the input embeddings; taken from `text_config` when unset.
        use_cache (`bool`): whether `forward` returns the language model's key/value cache when its `use_cache`
            argument is not given (`transformers.Trainer` sets it to `False` while training).
        image_mean, image_std (`list[float]`, *optional*): the vision tower's pixel normalisation, per RGB channel (a
            single number applies to all three);
            by default its family's published values (`TOWER_NORMALISATION`); `from_vision_text_pretrained` takes
            them from the tower checkpoint's image processor config. `PanoVLMProcessor.from_model_config` uses them.
        rescale_factor (`float`): what 8-bit pixel values are multiplied by before normalisation (1/255).
        training_stage (`str`, *optional*): the PanoVLM training stage that produced these weights (`"vision"`,
            `"resampler"` or `"finetune"`; `None` when not trained with PanoVLM's stages). Metadata for model cards;
            the model does not read it.
    """

    model_type = "panovlm"
    attribute_map = {"image_token_index": "image_token_id"}  # LLaVA's name for the same field
    # Set (in config.json) only by the remote-code export; transformers' Auto classes and tools such as TRL read
    # `config.auto_map` on any config: an empty, read-only mapping unless a checkpoint sets one.
    auto_map = MappingProxyType({})
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="siglip_vision_model"),
        "text_config": SubConfigSpec(AutoConfig, model_type="qwen3"),
        "resampler_config": PanoVLMResamplerConfig,
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    resampler_config: dict | PreTrainedConfig | None = None
    image_token_id: int = QWEN_IMAGE_PAD_ID
    crop_strategy: Literal["resize", "e2p", "anyres_e2p", "cubemap", "sliding_window", "anyres", "anyres_max"] = (
        "anyres_e2p"
    )
    fov_deg: float | int = 90.0
    overlap_ratio: float | int = 0.5
    pitch_levels_deg: list[float | int] | tuple[float | int, ...] = field(default_factory=lambda: list(DEFAULT_PITCH_LEVELS_DEG))
    vertical_crop_ratio: float | int = 1.0
    anyres_max_patches: int = DEFAULT_ANYRES_MAX_PATCHES
    stitching_mode: Literal["concat", "drop_overlap", "resample"] = "drop_overlap"
    resample_columns: int | None = None
    resample_interpolation: Literal["nearest", "linear"] = "nearest"
    use_panorama_pe: bool = True
    panorama_pe_type: Literal["direction", "panollava"] = "direction"
    pe_temperature: float | int = 10000.0
    vision_feature_norm: bool = True
    vicreg_projector_dim: int = 768
    vicreg_projector_depth: int = 2
    initializer_range: float | int = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    image_mean: list[float] | tuple[float, ...] | float | int | None = None
    image_std: list[float] | tuple[float, ...] | float | int | None = None
    rescale_factor: float | int = 1 / 255
    training_stage: Literal["vision", "resampler", "finetune"] | None = None

    def __post_init__(self, **kwargs):
        check_kwargs(self, kwargs, strict_keys=False)
        if isinstance(self.pitch_levels_deg, (list, tuple)):  # a list of floats, so config.json round-trips exactly
            self.pitch_levels_deg = [float(p) if type(p) is int else p for p in self.pitch_levels_deg]
        super().__post_init__(**kwargs)
        mean, std = TOWER_NORMALISATION[self.vision_config.model_type] if (
            self.vision_config.model_type in TOWER_NORMALISATION
        ) else SIGLIP_NORMALISATION
        self.image_mean = _per_channel(mean if self.image_mean is None else self.image_mean)
        self.image_std = _per_channel(std if self.image_std is None else self.image_std)
        # PanoVLM reads every patch token and never the tower's pooling head (SigLIP's attention pooling): it is not
        # built, so no parameter goes without a gradient.
        if getattr(self.vision_config, "vision_use_head", False):
            self.vision_config.vision_use_head = False
        # Forward the LM's own choice, as LLaVA does: a tied Qwen3-0.6B must stay tied inside the composite.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "PanoVLMConfig":
        """`PreTrainedConfig.from_dict`, refusing an incomplete `config.json`: a dict written by `save_pretrained`
        (it carries `transformers_version`) must name every PanoVLM field, including the resampler's, so that no
        default silently stands in for a value the weights were trained with. Fields added after a checkpoint format
        was released are filled from `FIELDS_ADDED_LATER` (the value older files meant)."""
        if "transformers_version" in config_dict:
            config_dict = complete_saved_config(cls, dict(config_dict), PanoVLMResamplerConfig)
        return super().from_dict(config_dict, **kwargs)

    # ---- derived geometry (pure functions of the fields above) -----------------------------------------------
    @property
    def view_layout(self) -> ViewLayout:
        return view_layout_of(self)

    @property
    def num_views(self) -> int:
        return self.view_layout.num_views

    @property
    def view_size(self) -> int:
        """Side of the square views fed to the vision tower, in pixels."""
        vision = self.vision_config
        if vision.model_type == "siglip2_vision_model":
            return math.isqrt(vision.num_patches) * vision.patch_size
        return vision.image_size

    @property
    def num_vision_prefix_tokens(self) -> int:
        """Non-patch tokens (CLS, registers) at the start of the tower output; dropped before the resampler."""
        return _VISION_PREFIX_TOKENS[self.vision_config.model_type](self.vision_config)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of patch tokens the vision tower gives per view."""
        side = self.view_size // self.vision_config.patch_size
        return side, side

    @property
    def view_token_grid(self) -> tuple[int, int]:
        """(rows, columns) of resampler tokens per view: the patch grid, or a grid over the learned queries."""
        rows, cols = self.patch_grid
        num = self.resampler_config.num_output_tokens(rows * cols)
        return (rows, cols) if num == rows * cols else infer_token_grid(num)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per panorama: what the processor expands the placeholder to and the model produces."""
        return self.view_layout.num_image_tokens(self.view_token_grid, self.stitching_mode, self.resample_columns)

    # ---- strict validation (run by @strict at construction and by save_pretrained) --------------------------
    def validate_towers(self):
        vision_type = self.vision_config.model_type
        if vision_type not in _VISION_PREFIX_TOKENS:
            raise ValueError(
                f"vision_config.model_type={vision_type!r} is not supported; use one of "
                f"{list(SUPPORTED_VISION_MODEL_TYPES)} (the vision sub-config, e.g. 'siglip_vision_model' rather "
                "than 'siglip')"
            )
        if vision_type == "siglip2_vision_model" and math.isqrt(self.vision_config.num_patches) ** 2 != (
            self.vision_config.num_patches
        ):
            raise ValueError(
                f"SigLIP2 towers need square views: vision_config.num_patches={self.vision_config.num_patches} "
                "is not a perfect square"
            )
        if self.view_size % self.vision_config.patch_size:
            raise ValueError(
                f"view size {self.view_size} is not a multiple of vision_config.patch_size="
                f"{self.vision_config.patch_size}"
            )
        for name in ("hidden_size", "vocab_size"):
            if not isinstance(getattr(self.text_config, name, None), int):
                raise ValueError(
                    f"text_config ({self.text_config.model_type!r}) has no integer {name}; it must be a causal LM "
                    "config"
                )
        if not 0 <= self.image_token_id < self.text_config.vocab_size:
            raise ValueError(
                f"image_token_id={self.image_token_id} is outside the language model's vocabulary "
                f"(text_config.vocab_size={self.text_config.vocab_size})"
            )

    def validate_preprocessing(self):
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if not isinstance(values, (int, float)) and len(values) != 3:
                raise ValueError(f"{name} needs one value per RGB channel (or one for all), got {values}")
        if min(_per_channel(self.image_std)) <= 0 or self.rescale_factor <= 0:
            raise ValueError(f"image_std and rescale_factor must be positive, got {self.image_std}, {self.rescale_factor}")

    def validate_views(self):
        layout = self.view_layout  # raises ValueError for impossible crop settings
        if self.use_panorama_pe and self.panorama_pe_type == "direction" and self.resampler_config.latent_dimension % 4:
            raise ValueError(
                "use_panorama_pe splits the latent width into sine/cosine halves for yaw and pitch: "
                f"resampler_config.latent_dimension={self.resampler_config.latent_dimension} must be divisible by 4"
            )
        # Raises if stitching drops a whole view or resample_columns is invalid / set for another stitching mode.
        layout.num_image_tokens(self.view_token_grid, self.stitching_mode, self.resample_columns)
        if self.pe_temperature <= 1.0:
            raise ValueError(f"pe_temperature must be > 1, got {self.pe_temperature}")
        if self.vicreg_projector_depth < 0 or self.vicreg_projector_dim < 1:
            raise ValueError(
                "vicreg_projector_depth must be >= 0 and vicreg_projector_dim >= 1, got "
                f"{self.vicreg_projector_depth}, {self.vicreg_projector_dim}"
            )


__all__ = ["PanoVLMConfig", "PanoVLMResamplerConfig", "SUPPORTED_VISION_MODEL_TYPES"]
