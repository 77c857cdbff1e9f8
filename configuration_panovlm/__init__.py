"""PanoVLM configuration classes and panorama view geometry."""

from transformers import AutoConfig

from .configuration_panovlm import SUPPORTED_VISION_MODEL_TYPES, PanoVLMConfig, PanoVLMResamplerConfig
from .view_layout import CROP_STRATEGIES, STITCHING_MODES, ViewLayout, ViewSpec, build_view_layout, infer_token_grid


AutoConfig.register(PanoVLMConfig.model_type, PanoVLMConfig, exist_ok=True)
AutoConfig.register(PanoVLMResamplerConfig.model_type, PanoVLMResamplerConfig, exist_ok=True)

__all__ = [
    "CROP_STRATEGIES",
    "STITCHING_MODES",
    "SUPPORTED_VISION_MODEL_TYPES",
    "PanoVLMConfig",
    "PanoVLMResamplerConfig",
    "ViewLayout",
    "ViewSpec",
    "build_view_layout",
    "infer_token_grid",
]

# Importing any PanoVLM package registers every Auto class (config, models, image processor, processor). The two
# packages below import only the submodules defined above, which are complete at this point.
import modeling_panovlm  # noqa: E402, F401
import processing_panovlm  # noqa: E402, F401
