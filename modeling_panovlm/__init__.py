"""PanoVLM models. Importing this package registers every PanoVLM Auto class (config, models, image processor,
processor).

The model is the flat modules of this package (`modeling_panovlm`, `panorama`, the `resampler_*` modules and the
selective scan); the tooling around it lives in sub-packages: `training`, `evaluation`, `hub`, `conversion`
(PanoLLaVA checkpoints) and `testing` (tiny checkpoints, tokenizer and synthetic panoramas).
"""

from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

import processing_panovlm  # noqa: F401  (registers the config, image processor and processor Auto classes)
from configuration_panovlm.configuration_panovlm import PanoVLMConfig

from .modeling_panovlm import (
    PanoVLMForConditionalGeneration,
    PanoVLMModel,
    PanoVLMPreTrainedModel,
)
from .resamplers import RESAMPLERS, build_resampler, register_resampler


AutoModel.register(PanoVLMConfig, PanoVLMModel, exist_ok=True)
AutoModelForImageTextToText.register(PanoVLMConfig, PanoVLMForConditionalGeneration, exist_ok=True)
# Tools that load "the causal LM" of a checkpoint (TRL's SFTTrainer given a path, for one) get the whole model: it is a
# causal LM whose prompts may hold panoramas.
AutoModelForCausalLM.register(PanoVLMConfig, PanoVLMForConditionalGeneration, exist_ok=True)

__all__ = [
    "RESAMPLERS",
    "PanoVLMForConditionalGeneration",
    "PanoVLMModel",
    "PanoVLMPreTrainedModel",
    "build_resampler",
    "register_resampler",
]
