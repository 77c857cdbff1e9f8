"""Model cards of PanoVLM checkpoints and LoRA adapters, and the Hub repository a local path refers to."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from configuration_panovlm.configuration_panovlm import PanoVLMConfig


logger = logging.getLogger(__name__)

PANOVLM_TAGS = ("panovlm", "panorama", "360-degree", "equirectangular", "image-text-to-text")
# What a Hub repository id looks like (`namespace/name`); anything else recorded as a model name is a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# The cache layout of `huggingface_hub` (`.../models--namespace--name/snapshots/<commit>`), which still names the repo.
_HUB_CACHE_DIR = re.compile(r"models--(?P<namespace>[\w.-]+?)--(?P<name>[\w.-]+)/snapshots/[0-9a-f]{40}/?$")
_RESAMPLER_SIZES = {
    "bimamba": ("hidden_dim", "depth", "expand", "d_state", "d_conv", "dt_rank", "norm_first"),
    "mlp": ("hidden_dim", "depth", "use_ln"),
    "perceiver": ("hidden_dim", "depth", "num_latents", "heads", "dim_head", "ff_mult"),
    "qformer": ("hidden_dim", "num_query_tokens", "num_hidden_layers", "num_attention_heads"),
}


def hub_repo_id(name_or_path: str | os.PathLike | None) -> str | None:
    """The Hub repository `name_or_path` refers to: itself when it is a repo id that is not a local directory, the
    repo of a `huggingface_hub` cache snapshot directory, else `None` (a plain local path, or nothing recorded)."""
    if not name_or_path:
        return None
    text = str(name_or_path)
    cached = _HUB_CACHE_DIR.search(text.replace(os.sep, "/"))
    if cached:
        return f"{cached['namespace']}/{cached['name']}"
    return text if _HUB_ID.fullmatch(text) and not Path(text).exists() else None


def _tower(config) -> dict:
    name = config._name_or_path or None
    return {"name": hub_repo_id(name) or name, "model_type": config.model_type}


def _card_metadata(config: PanoVLMConfig) -> dict:
    """The `panovlm` block of the card's YAML metadata."""
    resampler = config.resampler_config
    layout = config.view_layout
    return {
        "vision_tower": _tower(config.vision_config),
        "language_model": _tower(config.text_config),
        "resampler": {
            "type": resampler.resampler_type,
            "latent_dimension": resampler.latent_dimension,
            **{name: getattr(resampler, name) for name in _RESAMPLER_SIZES[resampler.resampler_type]},
        },
        "view_layout": {
            "crop_strategy": config.crop_strategy,
            "views": config.num_views,
            "global_view": layout.has_global_view,
            "fov_deg": config.fov_deg,
            "overlap_ratio": config.overlap_ratio,
            "realised_overlap": round(layout.overlap, 4),
            "view_size": config.view_size,
            "stitching_mode": config.stitching_mode,
            "image_tokens": config.num_image_tokens,
        },
        "training_stage": config.training_stage,
    }


def build_model_card(
    config: PanoVLMConfig, repo_id: str, remote_code: bool = False, tags: tuple[str, ...] | list[str] = ()
) -> ModelCard:
    """The model card of a PanoVLM checkpoint pushed to `repo_id`.

    Its YAML metadata holds `library_name`, `pipeline_tag: image-text-to-text`, tags (`custom_code` when
    `remote_code`), `base_model` (the towers' Hub ids, when the config records them) and a `panovlm` block with
    the towers' names and types, the resampler type and sizes, the view layout and the training stage; the text
    repeats them in tables and shows how to load the model, with and without the library installed.
    """
    meta = _card_metadata(config)
    base_models = [hub_repo_id(tower["name"]) for tower in (meta["vision_tower"], meta["language_model"])]
    card_tags = list(dict.fromkeys([*PANOVLM_TAGS, *(["custom_code"] if remote_code else []), *tags]))
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=card_tags,
        base_model=[name for name in base_models if name] or None,
        panovlm=meta,
    )
    resampler, views = meta["resampler"], meta["view_layout"]
    sizes = ", ".join(f"{name} {resampler[name]}" for name in _RESAMPLER_SIZES[resampler["type"]])
    stage = f"`{config.training_stage}`" if config.training_stage else "not recorded (not trained with PanoVLM's stages)"
    strip_views = views["views"] - (1 if views["global_view"] else 0)
    view_count = f"{views['views']} (1 global + {strip_views} strip)" if views["global_view"] else str(views["views"])
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        "A PanoVLM vision-language model for 360° equirectangular panoramas: the panorama is cut into views, each "
        "view is encoded by the vision tower, a resampler maps its tokens, a parameter-free panoramic positional "
        "encoding marks where every token looks, a linear projector maps tokens to the language model's width, and "
        "the horizon views are stitched into one strip of image tokens in the prompt.",
        "",
        "| component | |",
        "|---|---|",
        f"| vision tower | `{meta['vision_tower']['name'] or 'not recorded'}` (`{meta['vision_tower']['model_type']}`, "
        f"views of {views['view_size']} px) |",
        f"| language model | `{meta['language_model']['name'] or 'not recorded'}` "
        f"(`{meta['language_model']['model_type']}`) |",
        f"| resampler | `{resampler['type']}`: {sizes}; latent dimension {resampler['latent_dimension']} |",
        f"| training stage | {stage} |",
        "",
        "| crop strategy | views | field of view | overlap (realised) | stitching | image tokens per panorama |",
        "|---|---|---|---|---|---|",
        f"| `{views['crop_strategy']}` | {view_count} | {views['fov_deg']:g}° | "
        f"{views['overlap_ratio']:g} ({views['realised_overlap']:g}) | `{views['stitching_mode']}` | "
        f"{views['image_tokens']} |",
        "",
        "## How to load",
        "",
        "With the PanoVLM library installed (importing it registers the Auto classes):",
        "",
        "```python",
        "import modeling_panovlm",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}")',
        f'processor = AutoProcessor.from_pretrained("{repo_id}")',
        "```",
        "",
    ]
    if remote_code:
        lines += [
            "Without the library (the repository carries its code; transformers, torch, numpy and pillow suffice):",
            "",
            "```python",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)',
            f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)',
            "```",
            "",
        ]
    lines += [
        "Then, for an equirectangular (2:1) image:",
        "",
        "```python",
        "from PIL import Image",
        "",
        'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the panorama."}]}]',
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
        'inputs = processor(images=Image.open("panorama.jpg"), text=prompt, return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def build_adapter_card(repo_id: str, base_model_repo_id: str, adapter_config: dict) -> ModelCard:
    """Model card of a PanoVLM LoRA adapter: `library_name: peft`, `base_model`, and how to load it."""
    data = ModelCardData(
        library_name="peft",
        pipeline_tag="image-text-to-text",
        base_model=base_model_repo_id,
        tags=list(dict.fromkeys([*PANOVLM_TAGS, "lora", "peft"])),
    )
    targets = adapter_config.get("target_modules")
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A LoRA adapter (PEFT) for the PanoVLM model [`{base_model_repo_id}`]: rank {adapter_config.get('r')}, "
        f"alpha {adapter_config.get('lora_alpha')}, dropout {adapter_config.get('lora_dropout')}, on the modules "
        f"matching `{targets}`.",
        "",
        "```python",
        "import modeling_panovlm  # registers the PanoVLM Auto classes",
        "from peft import PeftModel",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'base = AutoModelForImageTextToText.from_pretrained("{base_model_repo_id}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}")',
        f'processor = AutoProcessor.from_pretrained("{base_model_repo_id}")',
        "# or in one step: AutoModelForImageTextToText.from_pretrained(" + f'"{repo_id}")',
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_adapter_card(directory: str | os.PathLike) -> None:
    """Replace the template README that PEFT saves next to an adapter by `build_adapter_card`'s card."""
    directory = Path(directory)
    adapter = json.loads((directory / "adapter_config.json").read_text())
    build_adapter_card(directory.name, adapter["base_model_name_or_path"], adapter).save(directory / "README.md")


__all__ = [
    "PANOVLM_TAGS",
    "build_adapter_card",
    "build_model_card",
    "hub_repo_id",
    "write_adapter_card",
]
