"""PanoVLM configuration classes and panorama view geometry: the lowest layer, importing nothing else of PanoVLM.

Importing it registers the PanoVLM configs with `AutoConfig`; `import processing_panovlm` adds the image processor
and processor, `import modeling_panovlm` adds the models (and imports the other two).
"""

from transformers import AutoConfig

from .configuration_panovlm import PanoVLMConfig, PanoVLMResamplerConfig
from .resampler_registry import RESAMPLER_SPECS, ResamplerSpec
from .towers import SUPPORTED_VISION_MODEL_TYPES, TOWER_NORMALISATION
from .view_layout import (
    CROP_STRATEGIES,
    STITCHING_MODES,
    ViewLayout,
    ViewSpec,
    build_view_layout,
    infer_token_grid,
)


AutoConfig.register(PanoVLMConfig.model_type, PanoVLMConfig, exist_ok=True)
AutoConfig.register(PanoVLMResamplerConfig.model_type, PanoVLMResamplerConfig, exist_ok=True)

__all__ = [
    "CROP_STRATEGIES",
    "RESAMPLER_SPECS",
    "TOWER_NORMALISATION",
    "ResamplerSpec",
    "STITCHING_MODES",
    "SUPPORTED_VISION_MODEL_TYPES",
    "PanoVLMConfig",
    "PanoVLMResamplerConfig",
    "ViewLayout",
    "ViewSpec",
    "build_view_layout",
    "infer_token_grid",
]
