"""Model cards of PanoVLM checkpoints and LoRA adapters.

Cards are `huggingface_hub.ModelCard`s rendered by `ModelCard.from_template` from one Jinja template shipped with
the package (`templates/model_card.md`): the YAML metadata is a `ModelCardData` (library, pipeline, tags, base
models, licence, training datasets, `model-index` evaluation results, and a `panovlm` block with the towers,
resampler sizes, view layout and training stage); this module computes the facts, the template holds the prose.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from configuration_panovlm.configuration_panovlm import PanoVLMConfig
from configuration_panovlm.resampler_registry import resampler_spec

from .card_metrics import evaluation_section, read_metrics
from .repo_ids import hub_repo_id


PANOVLM_TAGS = ("panovlm", "panorama", "360-degree", "equirectangular", "image-text-to-text")
# The install line cards show. The distribution is `panovlm` (setup.py); the Auto classes need it imported.
INSTALL_COMMAND = "pip install panovlm"
_STAGES = {
    "vision": "`vision`: the resampler trained on overlapping views (VICReg), language model and projector untouched",
    "resampler": "`resampler`: resampler and projector trained on captions, the language model frozen",
    "finetune": "`finetune`: LoRA on the language model's decoder layers, resampler and projector trained in full",
    None: "not recorded (not trained with PanoVLM's stages)",
}
_STAGE_LIMITATIONS = {
    "vision": "Only the `vision` stage has run: the projector and language model have not learned from panoramas "
    "yet, so its answers are not meaningful.",
    None: "No PanoVLM training stage is recorded: a model built from pretrained towers has a randomly initialised "
    "resampler and projector until it is trained.",
}
# Names ending so are data files (`data/train.csv`), never Hub dataset ids, even where no such file exists here.
_DATA_FILE_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".arrow", ".txt", ".tar", ".zip", ".gz"}


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
            **{name: getattr(resampler, name) for name in resampler.spec.card_sizes},
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


def _layout_facts(config: PanoVLMConfig, meta: dict) -> dict:
    """Template values describing the architecture: resampler sizes, view count and what the views cover."""
    resampler, views = meta["resampler"], meta["view_layout"]
    strip = config.view_layout.strip_views
    strip_count = len(strip)
    return {
        "resampler": resampler,
        "views": views,
        "resampler_sizes": ", ".join(f"{name} {resampler[name]}" for name in resampler_spec(resampler["type"]).card_sizes),
        "view_count": f"{views['views']} (1 global + {strip_count} strip)" if views["global_view"] else str(strip_count),
        "coverage": {
            "view_fov": max(view.hfov_deg for view in strip),
            "degrees_per_pixel": max(view.hfov_deg for view in strip) / config.view_size,
            "top": min(90.0, max(view.pitch_deg + view.vfov_deg / 2 for view in strip)),
            "bottom": max(-90.0, min(view.pitch_deg - view.vfov_deg / 2 for view in strip)),
        },
    }


def _names(values: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    return [str(values)] if isinstance(values, (str, os.PathLike)) else [str(value) for value in values or []]


def _hub_dataset_ids(names: list[str]) -> list[str] | None:
    """The names that are Hub dataset ids (`namespace/name`, not a local path, not a data file's name)."""
    ids = [name for name in names if hub_repo_id(name) and Path(name).suffix.lower() not in _DATA_FILE_SUFFIXES]
    return ids or None


def _render(
    data: ModelCardData,
    *,
    repo_id: str,
    panovlm: dict,
    config: PanoVLMConfig | None,
    training_data: list[str],
    metrics: str | os.PathLike | dict | None,
    install_command: str,
    **values,
) -> ModelCard:
    title = repo_id.rstrip("/").split("/")[-1]
    evaluation = None
    if metrics is not None:
        evaluation, data.eval_results = evaluation_section(read_metrics(metrics))
        data.model_name = title
    stage = panovlm.get("training_stage")
    template = resources.files(__package__).joinpath("templates", "model_card.md").read_text(encoding="utf-8")
    return ModelCard.from_template(
        data,
        template_str=template,
        title=title,
        repo_id=repo_id,
        panovlm=panovlm,
        stage_text=_STAGES[stage],
        stage_limitation=_STAGE_LIMITATIONS.get(stage),
        training_data=training_data,
        datasets=data.datasets or [],
        evaluation=evaluation,
        install_command=install_command,
        **(_layout_facts(config, panovlm) if config is not None else {}),
        **values,
    )


def build_model_card(
    config: PanoVLMConfig,
    repo_id: str,
    remote_code: bool = False,
    tags: Sequence[str] = (),
    *,
    license: str | None = None,
    training_data: str | Sequence[str] | None = None,
    metrics: str | os.PathLike | dict | None = None,
    install_command: str = INSTALL_COMMAND,
) -> ModelCard:
    """The model card of a PanoVLM checkpoint pushed to `repo_id`.

    Its YAML metadata holds `library_name: transformers`, `pipeline_tag: image-text-to-text`, tags (`custom_code`
    when `remote_code`), `base_model` (the towers' Hub ids, when the config records them), `license`, `datasets`
    (the Hub dataset ids among `training_data`), `model-index` (from `metrics`) and a `panovlm` block with the
    towers' names and types, the resampler type and sizes, the view layout and the training stage. The text shows
    the install line, how to load the model (with the `import modeling_panovlm` the Auto classes need), the
    training stage and data, the evaluation, the limitations and the licence.

    Args:
        config: the model's config.
        repo_id: `namespace/name` of the repository.
        remote_code: the repository carries the remote-code export; the card shows `trust_remote_code=True`.
        tags: extra tags.
        license: a Hub licence id (`apache-2.0`, ...); without one the card says that none was chosen.
        training_data: what the model was trained on: Hub dataset ids (also listed as `datasets`) or local names.
        metrics: a `metrics.json` of `examples/evaluate.py` (path or content): its scores become the card's
            evaluation table and `model-index`.
        install_command: the install line the card shows.
    """
    meta = _card_metadata(config)
    training_data = _names(training_data)
    base_models = [hub_repo_id(tower["name"]) for tower in (meta["vision_tower"], meta["language_model"])]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license=license,
        tags=list(dict.fromkeys([*PANOVLM_TAGS, *(["custom_code"] if remote_code else []), *tags])),
        base_model=[name for name in base_models if name] or None,
        datasets=_hub_dataset_ids(training_data),
        panovlm=meta,
    )
    return _render(
        data,
        repo_id=repo_id,
        panovlm=meta,
        config=config,
        training_data=training_data,
        metrics=metrics,
        install_command=install_command,
        remote_code=remote_code,
        license=license,
        adapter=None,
    )


def build_adapter_card(
    repo_id: str,
    base_model: str,
    adapter_config: dict,
    *,
    base_config: PanoVLMConfig | None = None,
    license: str | None = None,
    training_data: str | Sequence[str] | None = None,
    metrics: str | os.PathLike | dict | None = None,
    install_command: str = INSTALL_COMMAND,
) -> ModelCard:
    """Model card of a PanoVLM LoRA adapter (the `finetune` stage's output).

    Metadata: `library_name: peft`, `pipeline_tag`, tags, `base_model` (when `base_model` is a Hub id or a Hub
    cache snapshot; a local path is named only in the text), `license`, `datasets`, `model-index` and a `panovlm`
    block: the base model's architecture facts when `base_config` is given (as in `build_model_card`), the
    training stage `finetune` and the LoRA settings. The text has the same sections as the model card.

    Args:
        repo_id: the adapter's repository (or directory name).
        base_model: what the adapter's `base_model_name_or_path` records.
        adapter_config: the content of `adapter_config.json`.
        base_config: the base model's config, when known.
        license, training_data, metrics, install_command: as in `build_model_card`.
    """
    lora = {
        "r": adapter_config.get("r"),
        "lora_alpha": adapter_config.get("lora_alpha"),
        "lora_dropout": adapter_config.get("lora_dropout"),
        "target_modules": adapter_config.get("target_modules"),
        "modules_to_save": adapter_config.get("modules_to_save"),
    }
    meta = {**(_card_metadata(base_config) if base_config is not None else {}), "training_stage": "finetune"}
    meta["lora"] = lora
    training_data = _names(training_data)
    base_repo_id = hub_repo_id(base_model)
    data = ModelCardData(
        library_name="peft",
        pipeline_tag="image-text-to-text",
        license=license,
        base_model=base_repo_id,
        tags=list(dict.fromkeys([*PANOVLM_TAGS, "lora", "peft"])),
        datasets=_hub_dataset_ids(training_data),
        panovlm=meta,
    )
    return _render(
        data,
        repo_id=repo_id,
        panovlm=meta,
        config=base_config,
        training_data=training_data,
        metrics=metrics,
        install_command=install_command,
        remote_code=False,
        license=license,
        adapter=lora,
        base_model=base_repo_id or base_model,
        base_repo_id=base_repo_id,
    )


def write_adapter_card(
    directory: str | os.PathLike,
    *,
    license: str | None = None,
    training_data: str | Sequence[str] | None = None,
    metrics: str | os.PathLike | dict | None = None,
) -> Path:
    """Write `build_adapter_card`'s card as `README.md` of an adapter directory, replacing the template PEFT saves.

    The base model's architecture facts come from its `config.json` when `base_model_name_or_path` is a local
    directory (no network access otherwise). Returns the README's path.
    """
    directory = Path(directory)
    adapter = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    base = adapter["base_model_name_or_path"]
    base_config = PanoVLMConfig.from_pretrained(base) if (Path(base) / "config.json").is_file() else None
    card = build_adapter_card(
        directory.name,
        base,
        adapter,
        base_config=base_config,
        license=license,
        training_data=training_data,
        metrics=metrics,
    )
    card.save(directory / "README.md")
    return directory / "README.md"


__all__ = [
    "INSTALL_COMMAND",
    "PANOVLM_TAGS",
    "build_adapter_card",
    "build_model_card",
    "write_adapter_card",
]
