"""Sharing PanoVLM on the Hugging Face Hub: model cards and pushes of models, processors and LoRA adapters.

`push_to_hub(repo_id, model, processor)` uploads one commit holding the saved model (weights, `config.json`,
`generation_config.json`), the processor, a model card (`README.md`) whose metadata records the towers, the
resampler, the view layout and the training stage, and, with `export_remote_code=True`, the flat remote-code
modules of `modeling_panovlm.remote_code`. `model.push_to_hub(repo_id)` and `processor.push_to_hub(repo_id)` call it.

`push_adapter_to_hub(peft_model, repo_id, base_model_repo_id)` uploads a PEFT adapter whose
`base_model_name_or_path` names the base model's Hub repository: PEFT records whatever the base was loaded from,
often an absolute local path that would make the adapter unloadable anywhere else.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData

from configuration_panovlm.configuration_panovlm import PanoVLMConfig

from . import remote_code


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


def push_to_hub(
    repo_id: str,
    model=None,
    processor=None,
    *,
    export_remote_code: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
) -> CommitInfo:
    """Upload a PanoVLM model and/or processor to `repo_id` in one commit (the repository is created if needed).

    Args:
        repo_id: `namespace/name` on the Hub (`HF_ENDPOINT` selects the server).
        model: a `PanoVLMForConditionalGeneration` / `PanoVLMModel`; saved with `save_pretrained` (weights,
            `config.json`, `generation_config.json`) and described by a model card (`README.md`, see
            `build_model_card`).
        processor: a `PanoVLMProcessor`, saved next to the model. Pushed alone, the repository's README is kept.
        export_remote_code: add the flat remote-code modules and `auto_map` entries
            (`modeling_panovlm.remote_code.export_remote_code`), so the repo loads with `trust_remote_code=True`
            without the library.
        commit_message, commit_description, private, token, revision, create_pr: as in `HfApi.upload_folder`.
        max_shard_size: largest weight file before sharding.
        tags: extra model card tags (besides PanoVLM's and the model's `model_tags`).

    Returns:
        The `CommitInfo` of the upload.
    """
    if model is None and processor is None:
        raise ValueError("push_to_hub needs a model, a processor, or both")
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as staging:
        if model is not None:
            model.save_pretrained(staging, max_shard_size=max_shard_size)
            card_tags = [*(getattr(model, "model_tags", None) or []), *(tags or [])]
            build_model_card(model.config, repo_id, export_remote_code, card_tags).save(Path(staging) / "README.md")
        if processor is not None:
            processor.save_pretrained(staging)
        if export_remote_code:
            remote_code.export_remote_code(staging)
        what = " and ".join(name for name, obj in (("model", model), ("processor", processor)) if obj is not None)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            commit_message=commit_message or f"Upload PanoVLM {what}",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


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


def push_adapter_to_hub(
    peft_model,
    repo_id: str,
    base_model_repo_id: str | None = None,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Upload the adapter(s) of a PEFT model to `repo_id`, pointing them at the base model's Hub repository.

    PEFT writes the base model's `name_or_path` into `adapter_config.json` as `base_model_name_or_path`; when the
    base was loaded from a local directory that is an absolute path, useless to anyone else and also written into
    PEFT's model card. Here every saved `adapter_config.json` gets `base_model_repo_id` instead, and the README is a
    PanoVLM adapter card, so `PeftModel.from_pretrained(base, repo_id)` and
    `AutoModelForImageTextToText.from_pretrained(repo_id)` work anywhere.

    Args:
        peft_model: a `peft.PeftModel` wrapping a PanoVLM model.
        repo_id: the adapter's repository.
        base_model_repo_id: the Hub repository of the base model. When omitted it is taken from the recorded
            `base_model_name_or_path` if that already is a Hub id (or a Hub cache snapshot directory); a local path
            raises `ValueError`.
        commit_message, private, token, revision, create_pr: as in `HfApi.upload_folder`.

    Returns:
        The `CommitInfo` of the upload.
    """
    api = HfApi()
    with tempfile.TemporaryDirectory() as staging:
        peft_model.save_pretrained(staging)
        for peft_card in Path(staging).rglob("README.md"):
            peft_card.unlink()  # PEFT's cards repeat the recorded (local) base path; ours replaces them
        config_paths = sorted(Path(staging).rglob("adapter_config.json"))
        configs = [json.loads(path.read_text(encoding="utf-8")) for path in config_paths]
        recorded = {config.get("base_model_name_or_path") for config in configs}
        base = base_model_repo_id or (hub_repo_id(*recorded) if len(recorded) == 1 else None)
        if base is None or not _HUB_ID.fullmatch(base):
            raise ValueError(
                f"the adapter's base model was loaded from {sorted(map(str, recorded))}, which is not a Hub repository; "
                "pass base_model_repo_id='namespace/name' (where the base model was pushed)"
            )
        for path, config in zip(config_paths, configs):
            config["base_model_name_or_path"] = base
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        build_adapter_card(repo_id, base, configs[0]).save(Path(staging) / "README.md")
        logger.info("Pushing the adapter to %s with base model %s", repo_id, base)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            commit_message=commit_message or f"Upload PanoVLM LoRA adapter for {base}",
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


__all__ = [
    "PANOVLM_TAGS",
    "build_adapter_card",
    "build_model_card",
    "hub_repo_id",
    "push_adapter_to_hub",
    "push_to_hub",
    "write_adapter_card",
]
