"""PanoVLM configuration: one `config.json` holds every hyperparameter the model reads.

`PanoVLMConfig` nests three configs: `vision_config` (any SigLIP, SigLIP2, CLIP or DINOv2 vision config),
`text_config` (any causal LM config; Qwen3 by default) and `resampler_config` (`PanoVLMResamplerConfig`).
Both classes are strict: a wrong type, an unknown key or an impossible combination raises at construction,
never later as a shape mismatch.
"""


import dataclasses
import difflib
import math
from types import MappingProxyType
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlavaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .view_layout import ViewLayout, build_view_layout, infer_token_grid


# Keyword arguments that `PreTrainedConfig.__post_init__` consumes or that `from_pretrained` passes along; every
# other key that is not a declared field is an error.
_BASE_CONFIG_KWARGS = frozenset(
    {
        "model_type",
        "name_or_path",
        "_name_or_path",
        "_commit_hash",
        "torch_dtype",
        "attn_implementation",
        "experts_implementation",
        "output_attentions",
        "num_labels",
        "auto_map",
    }
)

# Vision towers we support, with the number of non-patch tokens at the start of `last_hidden_state`
# (CLS, registers) that are dropped so that each view's tokens form a (rows, columns) grid.
_VISION_PREFIX_TOKENS = {
    "siglip_vision_model": lambda c: 0,
    "siglip2_vision_model": lambda c: 0,
    "clip_vision_model": lambda c: 1,
    "dinov2": lambda c: 1,
    "dinov2_with_registers": lambda c: 1 + c.num_register_tokens,
}
SUPPORTED_VISION_MODEL_TYPES = tuple(_VISION_PREFIX_TOKENS)

_FLOAT_FIELDS = {
    "PanoVLMResamplerConfig": ("expand", "dropout", "dt_min", "dt_max", "dt_init_floor", "layer_norm_eps"),
    "PanoVLMConfig": ("fov_deg", "overlap_ratio", "pe_temperature", "initializer_range"),
}


def _words(name: str) -> set[str]:
    return set(name.strip("_").split("_"))


def _suggestion(key: str, fields: list[str]) -> str | None:
    """The own field `key` looks like a misspelling of: a close match, or a field whose words include all of
    `key`'s (`fov` -> `fov_deg`, `overlap` -> `overlap_ratio`, `vicreg_dim` -> `vicreg_projector_dim`)."""
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.8)
    if close:
        return close[0]
    return next((field for field in fields if field != key and _words(key) <= _words(field)), None)


def _known_to_transformers(config: PreTrainedConfig, key: str) -> bool:
    """Whether transformers itself names a config attribute `key`: on the base class, the towers' config classes or
    LLaVA's (the reference composite VLM), which is what its tests, quantizers and tooling write onto configs."""
    classes = [PreTrainedConfig, LlavaConfig]
    classes += [type(sub) for sub in (getattr(config, "vision_config", None), getattr(config, "text_config", None)) if sub]
    return any(
        key in vars(cls) or (dataclasses.is_dataclass(cls) and key in {f.name for f in dataclasses.fields(cls)})
        for cls in classes
    )


def _check_kwargs(config: PreTrainedConfig, kwargs: dict[str, Any], strict_keys: bool) -> None:
    """Refuse a foreign `model_type` and misspelt keys; coerce integer values of float fields to float.

    With `strict_keys`, every key must be a field (the resampler config: PanoVLM's own, written by nobody else).
    Otherwise keys that are not fields are kept as attributes and round-trip through `config.json` (what
    transformers, PEFT, quantizers and test helpers set on a model config), unless they look like a misspelling of
    one of PanoVLM's fields and transformers does not know them.
    """
    fields = sorted(f.name for f in dataclasses.fields(config) if not f.name.startswith("_"))
    unknown = sorted(set(kwargs) - _BASE_CONFIG_KWARGS - set(config.attribute_map) - set(fields))
    for key in unknown:
        suggestion = _suggestion(key, fields)
        if strict_keys or (suggestion is not None and not _known_to_transformers(config, key)):
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            raise ValueError(f"{type(config).__name__} got unknown key {key!r}{hint} Valid keys are {fields}")
    model_type = kwargs.get("model_type", config.model_type)
    if model_type != config.model_type:
        raise ValueError(f"{type(config).__name__} expects model_type={config.model_type!r}, got {model_type!r}")
    for name in _FLOAT_FIELDS[type(config).__name__]:
        value = getattr(config, name)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(config, name, float(value))


@strict
class PanoVLMResamplerConfig(PreTrainedConfig):
    r"""Configuration of the token resampler that sits between the vision tower and the projector.

    The resampler maps the tokens of each view, `(views, tokens, vision_hidden)`, to `latent_dimension`-wide
    tokens. `bimamba` and `mlp` keep the token count; `perceiver` returns `num_latents` tokens and `qformer`
    returns `num_query_tokens` tokens per view. Field names are the ones PanoLLaVA configs used.

    Args:
        resampler_type (`str`): `"bimamba"`, `"mlp"`, `"perceiver"` or `"qformer"`.
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

    resampler_type: Literal["bimamba", "mlp", "perceiver", "qformer"] = "bimamba"
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
        _check_kwargs(self, kwargs, strict_keys=True)
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.hidden_dim / 16)
        super().__post_init__(**kwargs)

    @property
    def d_inner(self) -> int:
        """BiMamba inner width, rounded down as mamba-ssm does."""
        return int(self.expand * self.hidden_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        """Tokens per view after the resampler."""
        if self.resampler_type == "perceiver":
            return self.num_latents
        if self.resampler_type == "qformer":
            return self.num_query_tokens
        return num_input_tokens

    def validate_sizes(self):
        positive = ["latent_dimension", "hidden_dim", "depth", "d_state", "d_conv", "dt_rank", "num_latents", "heads"]
        positive += ["dim_head", "ff_mult", "num_query_tokens", "num_hidden_layers", "num_attention_heads"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"resampler_config.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"resampler_config.dropout must be in [0, 1), got {self.dropout}")
        if self.expand <= 0 or self.d_inner < 1:
            raise ValueError(
                f"resampler_config.expand={self.expand} with hidden_dim={self.hidden_dim} gives an empty Mamba "
                "inner width; expand must be > 0"
            )
        if not 0.0 < self.dt_min <= self.dt_max:
            raise ValueError(f"resampler_config needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.resampler_type == "qformer" and self.hidden_dim % self.num_attention_heads:
            raise ValueError(
                f"Q-Former hidden_dim={self.hidden_dim} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )


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
        crop_strategy (`str`): `"resize"`, `"e2p"`, `"anyres_e2p"`, `"cubemap"` or `"sliding_window"`; see
            `configuration_panovlm.view_layout.build_view_layout`.
        fov_deg (`float`): field of view of each strip view, in degrees.
        overlap_ratio (`float`): minimum overlap of neighbouring strip views, as a fraction of a view's width.
        stitching_mode (`str`): `"drop_overlap"` (every later strip view drops the token columns it shares with
            its left neighbour; PanoLLaVA's effective default) or `"concat"` (keep all tokens).
        use_panorama_pe (`bool`): add the parameter-free panoramic positional encoding (yaw and pitch of every
            token) to the resampler output.
        pe_temperature (`float`): wavelength base of the pitch encoding.
        vision_feature_norm (`bool`): LayerNorm over the vision tower's output before the resampler.
        vicreg_projector_dim (`int`): output width of the head used by the self-supervised overlap loss of the
            vision training stage.
        vicreg_projector_depth (`int`): layers of that head (0: no head, the loss sees the resampler output).
        initializer_range (`float`): std of the normal initialisation of the resampler, projector and head.
        tie_word_embeddings (`bool`): tie `lm_head` to the input embeddings; taken from `text_config` when unset.
        use_cache (`bool`): whether `forward` returns the language model's key/value cache when its `use_cache`
            argument is not given (`transformers.Trainer` sets it to `False` while training).
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
    image_token_id: int = 151655
    crop_strategy: Literal["resize", "e2p", "anyres_e2p", "cubemap", "sliding_window"] = "anyres_e2p"
    fov_deg: float | int = 90.0
    overlap_ratio: float | int = 0.5
    stitching_mode: Literal["concat", "drop_overlap"] = "drop_overlap"
    use_panorama_pe: bool = True
    pe_temperature: float | int = 10000.0
    vision_feature_norm: bool = True
    vicreg_projector_dim: int = 768
    vicreg_projector_depth: int = 2
    initializer_range: float | int = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    training_stage: Literal["vision", "resampler", "finetune"] | None = None

    def __post_init__(self, **kwargs):
        _check_kwargs(self, kwargs, strict_keys=False)
        super().__post_init__(**kwargs)
        # PanoVLM reads every patch token and never the tower's pooling head (SigLIP's attention pooling): it is not
        # built, so no parameter goes without a gradient.
        if getattr(self.vision_config, "vision_use_head", False):
            self.vision_config.vision_use_head = False
        # Forward the LM's own choice, as LLaVA does: a tied Qwen3-0.6B must stay tied inside the composite.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    # ---- derived geometry (pure functions of the fields above) -----------------------------------------------
    @property
    def view_layout(self) -> ViewLayout:
        return build_view_layout(self.crop_strategy, self.fov_deg, self.overlap_ratio)

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
        return self.view_layout.num_image_tokens(self.view_token_grid, self.stitching_mode)

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

    def validate_views(self):
        layout = self.view_layout  # raises ValueError for impossible crop settings
        if self.use_panorama_pe and self.resampler_config.latent_dimension % 4:
            raise ValueError(
                "use_panorama_pe splits the latent width into sine/cosine halves for yaw and pitch: "
                f"resampler_config.latent_dimension={self.resampler_config.latent_dimension} must be divisible by 4"
            )
        layout.num_image_tokens(self.view_token_grid, self.stitching_mode)  # raises if stitching drops a whole view
        if self.pe_temperature <= 1.0:
            raise ValueError(f"pe_temperature must be > 1, got {self.pe_temperature}")
        if self.vicreg_projector_depth < 0 or self.vicreg_projector_dim < 1:
            raise ValueError(
                "vicreg_projector_depth must be >= 0 and vicreg_projector_dim >= 1, got "
                f"{self.vicreg_projector_depth}, {self.vicreg_projector_dim}"
            )


__all__ = ["PanoVLMConfig", "PanoVLMResamplerConfig", "SUPPORTED_VISION_MODEL_TYPES"]
