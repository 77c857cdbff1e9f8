"""PanoVLM models. Importing this package registers the PanoVLM Auto classes."""

from transformers import AutoModel, AutoModelForImageTextToText

from configuration_panovlm.configuration_panovlm import PanoVLMConfig

from .modeling_panovlm import PanoVLMForConditionalGeneration, PanoVLMModel, PanoVLMPreTrainedModel
from .resamplers import RESAMPLERS, build_resampler


AutoModel.register(PanoVLMConfig, PanoVLMModel, exist_ok=True)
AutoModelForImageTextToText.register(PanoVLMConfig, PanoVLMForConditionalGeneration, exist_ok=True)

__all__ = [
    "RESAMPLERS",
    "PanoVLMForConditionalGeneration",
    "PanoVLMModel",
    "PanoVLMPreTrainedModel",
    "build_resampler",
]
