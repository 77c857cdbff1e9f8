"""Real-size towers for the benchmarks: a SigLIP-so400m-sized vision tower and a Qwen3-0.6B-sized LM, built from
configs with random weights (no download), and PanoVLM / LLaVA pairs over them.

Shared by `bench_real_loading.py`, `bench_real_step.py` and `gpu_check.py`. The sizes are the published ones of
`google/siglip-so400m-patch14-384` (width 1152, MLP 4304, 27 layers, 16 heads; here patch 16 on 256² views, as the
issue asks) and `Qwen/Qwen3-0.6B` (width 1024, MLP 3072, 28 layers, 16 query / 8 KV heads of 128, vocabulary
151,936, tied embeddings). `layers` / `vocab_size` arguments shrink depth or vocabulary (never width) where a CPU
run would take too long; every result records what it used.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable


SIGLIP_SO400M = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "patch_size": 16,
    "image_size": 256,
}
QWEN3_0_6B = {
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
# Views per panorama -> (crop_strategy, overlap_ratio) at 90 degree fov: 1 whole-panorama view, the global view + 8
# horizon views (anyres_e2p's default), the global view + 16.
VIEW_LAYOUTS = {1: ("resize", 0.5), 9: ("anyres_e2p", 0.5), 17: ("anyres_e2p", 0.75)}


def tower_configs(vision_layers: int | None = None, text_layers: int | None = None, vocab_size: int | str | None = None,
                  view_size: int | None = None, tokenizer=None, vision_overrides: dict | None = None,
                  text_overrides: dict | None = None) -> tuple[dict, dict]:
    """(vision, text) config dicts at real width; depth, vocabulary (`vocab_size="tokenizer"`: the tokenizer's) and
    view size optionally reduced (the overrides
    replace any field: only `gpu_check.py --cpu-reduced` shrinks the widths, to run in CI)."""
    vision = {**SIGLIP_SO400M, **(vision_overrides or {})}
    text = {**QWEN3_0_6B, **(text_overrides or {})}
    if vision_layers is not None:
        vision["num_hidden_layers"] = vision_layers
    if text_layers is not None:
        text["num_hidden_layers"] = text_layers
    if vocab_size == "tokenizer":
        if tokenizer is None:
            raise ValueError('vocab_size="tokenizer" needs the tokenizer')
        text["vocab_size"] = len(tokenizer)
    elif vocab_size is not None:
        text["vocab_size"] = vocab_size
    if view_size is not None:
        vision["image_size"] = view_size
    if tokenizer is not None:
        if text["vocab_size"] < len(tokenizer):
            raise ValueError(f"vocab_size {text['vocab_size']} is smaller than the tokenizer's {len(tokenizer)}")
        text.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return vision, text


def resampler_config(resampler_type: str, overrides: dict | None = None) -> dict:
    """The library's default resampler of that type (widths as shipped), without dropout (deterministic timings)."""
    return {"resampler_type": resampler_type, "dropout": 0.0, **(overrides or {})}


def panovlm_config(tokenizer, resampler_type: str = "mlp", num_views: int = 9, resampler_overrides: dict | None = None,
                   **tower_kwargs):
    from configuration_panovlm.configuration_panovlm import PanoVLMConfig

    vision, text = tower_configs(tokenizer=tokenizer, **tower_kwargs)
    crop_strategy, overlap = VIEW_LAYOUTS[num_views]
    return PanoVLMConfig(
        vision_config=vision,
        text_config=text,
        resampler_config=resampler_config(resampler_type, resampler_overrides),
        crop_strategy=crop_strategy,
        overlap_ratio=overlap,
        fov_deg=90.0,
        stitching_mode="concat",
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
    )


def build_pair(resampler_type: str = "mlp", num_views: int = 9, dtype=None, device="cpu",
               attn_implementation: str | None = None, with_llava: bool = True, seed: int = 0, **tower_kwargs):
    """(tokenizer, config, ours, llava): PanoVLM and `LlavaForConditionalGeneration` with the same tower and LM
    weights (copied from PanoVLM into LLaVA) and the same number of image tokens per prompt (the views as images of
    one prompt, `vision_feature_select_strategy="full"`); `llava` is None unless `with_llava`."""
    import torch
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration

    from modeling_panovlm import PanoVLMForConditionalGeneration
    from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = panovlm_config(tokenizer, resampler_type, num_views, **tower_kwargs)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it runs: a billion parameters initialise in seconds on a GPU
        ours = cast(PanoVLMForConditionalGeneration(config), dtype)
    llava = None
    if with_llava:
        llava_config = LlavaConfig(
            vision_config=config.vision_config.to_dict(),
            text_config=config.text_config.to_dict(),
            image_token_index=config.image_token_id,
            image_seq_length=config.view_token_grid[0] * config.view_token_grid[1],
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            projector_hidden_act="gelu",
            tie_word_embeddings=config.text_config.tie_word_embeddings,
        )
        if attn_implementation is not None:
            llava_config._attn_implementation = attn_implementation
        with torch.device("meta"):
            llava = LlavaForConditionalGeneration(llava_config)
        # The towers are copies of PanoVLM's (weights and buffers; no second random init of a billion parameters);
        # the projector gets its own random init. Copies, so that the two models train independently.
        llava.model.vision_tower = copy.deepcopy(ours.model.vision_tower)
        llava.model.language_model = copy.deepcopy(ours.model.language_model)
        projector = llava.model.multi_modal_projector.to_empty(device=device)
        for module in projector.modules():
            llava._init_weights(module)
        projector.to(dtype=dtype)
        if llava_config.tie_word_embeddings:
            llava.lm_head.weight = llava.model.language_model.embed_tokens.weight
        else:
            llava.lm_head = copy.deepcopy(ours.lm_head)
        meta = [name for name, t in list(llava.named_parameters()) + list(llava.named_buffers()) if t.is_meta]
        if meta:
            raise RuntimeError(f"LLaVA tensors left on the meta device: {meta}")
    for model in (ours, llava):
        if model is not None:
            model.generation_config = GenerationConfig(
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
            )
    return tokenizer, config, ours, llava


def cast(model, dtype):
    """`model` with its floating-point parameters and buffers in `dtype`, except those the model keeps in float32
    (`_keep_in_fp32_modules_strict`: BiMamba's `A_log` and `D`), as `from_pretrained(dtype=...)` does."""
    import re

    if dtype is None:
        return model
    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    for module in model.modules():
        keep |= set(getattr(module, "_keep_in_fp32_modules_strict", None) or [])
    pattern = re.compile("|".join(rf"(^|\.){re.escape(name)}$" for name in keep) or "$^")
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not pattern.search(name):
            tensor.data = tensor.data.to(dtype)
    return model


def make_inputs(tokenizer, config, batch: int = 1, device="cpu", dtype=None, seed: int = 0) -> dict:
    """Token ids with the image placeholders expanded, views, labels for PanoVLM and LLaVA (as bench_llava_step)."""
    from bench_llava_step import make_inputs as _make

    inputs = _make(tokenizer, config, batch, seed)
    for name in ("ours", "llava"):
        inputs[name] = {key: (value.to(device=device, dtype=dtype) if key == "pixel_values" else value.to(device))
                        for key, value in inputs[name].items()}
    inputs["prompt_ids"] = inputs["prompt_ids"].to(device)
    return inputs


def train_step_fn(model, optimizer, batch) -> Callable[[], None]:
    """Forward with labels, backward, AdamW step, zero_grad."""

    def run():
        model.train()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def generate_fn(model, prompt_ids, pixel_values, new_tokens: int) -> Callable[[], None]:
    """Greedy generation of exactly `new_tokens` tokens (EOS suppressed by `min_new_tokens`)."""
    import torch

    batch = {"input_ids": prompt_ids, "attention_mask": torch.ones_like(prompt_ids), "pixel_values": pixel_values}

    def run():
        model.eval()
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if out.shape[1] - prompt_ids.shape[1] != new_tokens:
            raise RuntimeError(f"generated {out.shape[1] - prompt_ids.shape[1]} tokens instead of {new_tokens}")

    return run


def synchronized(fn: Callable[[], None], device) -> Callable[[], None]:
    """`fn` followed by a CUDA synchronisation when `device` is a GPU (so wall time covers the kernels)."""
    import torch

    if torch.device(device).type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()

    return run


def parameter_bytes(model) -> int:
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
