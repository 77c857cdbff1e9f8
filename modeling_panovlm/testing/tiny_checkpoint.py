"""Tiny, randomly initialised PanoVLM checkpoints built entirely offline.

`build_tiny_checkpoint(output_dir)` writes a complete directory (config, weights, generation config, processor,
tokenizer, chat template) that `AutoModelForImageTextToText` / `AutoProcessor` load. Tests, the demo and
downstream CI use it where real weights cannot be downloaded; the real loading paths are still exercised.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from configuration_panovlm.configuration_panovlm import PanoVLMConfig
from modeling_panovlm.modeling_panovlm import PanoVLMForConditionalGeneration
from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer
from processing_panovlm.processing_panovlm import PanoVLMProcessor


def tiny_config(
    tokenizer: PreTrainedTokenizerBase,
    resampler_type: str = "mlp",
    crop_strategy: str = "anyres_e2p",
    view_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    **config_overrides,
) -> PanoVLMConfig:
    """A `PanoVLMConfig` of a few hundred thousand parameters: 2-layer SigLIP tower, 2-layer Qwen3 LM, 2-block
    resampler. `config_overrides` are `PanoVLMConfig` fields; a `resampler_config` dict is merged into the tiny
    one, a `vision_config` dict replaces the tiny SigLIP tower."""
    resampler = {
        "resampler_type": resampler_type,
        "latent_dimension": hidden_size,
        "hidden_dim": hidden_size,
        "depth": 2,
        "dropout": 0.0,
        "d_state": 8,
        "num_latents": 16,
        "heads": 4,
        "dim_head": 16,
        "num_query_tokens": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    resampler.update(config_overrides.pop("resampler_config", {}))
    vision = config_overrides.pop("vision_config", None) or {
        "model_type": "siglip_vision_model",
        "image_size": view_size,
        "patch_size": patch_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    overrides = {"fov_deg": 90.0, "overlap_ratio": 0.0} if crop_strategy == "cubemap" else {}
    overrides.update(config_overrides)
    return PanoVLMConfig(
        vision_config=vision,
        text_config={
            "model_type": "qwen3",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": hidden_size // 4,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": True,
            # Unit-norm embedding rows, as in pretrained LMs: with the default 0.02 a 64-wide tied head can only
            # produce logits of about +/-1, so the output distribution stays nearly uniform however it trains.
            "initializer_range": hidden_size**-0.5,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        resampler_config=resampler,
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        crop_strategy=crop_strategy,
        vicreg_projector_dim=hidden_size,
        # Unit-scale resampler/projector outputs, so image features are not drowned by the positional encoding
        # (N(0, 0.02) weights in 64-wide layers give features of std ~0.1 against a code of amplitude 1).
        initializer_range=hidden_size**-0.5,
        **overrides,
    )


def build_tiny_checkpoint(
    output_dir: str | os.PathLike | None = None,
    resampler_type: str = "mlp",
    crop_strategy: str = "anyres_e2p",
    seed: int = 0,
    **config_kwargs,
) -> tuple[PanoVLMForConditionalGeneration, PanoVLMProcessor]:
    """Build a tiny random PanoVLM and its processor; save both to `output_dir` when given.

    `config_kwargs` go to `tiny_config` (e.g. `view_size`, `hidden_size`, `stitching_mode`). The same `seed` gives
    the same weights.
    """
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tokenizer, resampler_type=resampler_type, crop_strategy=crop_strategy, **config_kwargs)
    torch.manual_seed(seed)
    model = PanoVLMForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=32
    )
    processor = PanoVLMProcessor.from_model_config(
        config, tokenizer
    )
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor


__all__ = ["build_tiny_checkpoint", "tiny_config"]
