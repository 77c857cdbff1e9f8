"""Sharing PanoVLM on the Hugging Face Hub: model cards and pushes of models, processors and LoRA adapters.

`push_to_hub(repo_id, model, processor)` uploads one commit holding the saved model (weights, `config.json`,
`generation_config.json`), the processor, the model card (`README.md`, see `cards.build_model_card`: licence,
install line, how to load, training stage and data, evaluation, limitations; metadata with the towers, resampler,
view layout, training stage and `model-index`), and, with `export_remote_code=True`, the flat remote-code modules
of `modeling_panovlm.hub.remote_code`. transformers' own `processor.push_to_hub(repo_id)` updates the processor and
keeps the card.

`push_adapter_to_hub(peft_model, repo_id, base_model_repo_id)` uploads a PEFT adapter whose
`base_model_name_or_path` names the base model's Hub repository: PEFT records whatever the base was loaded from,
often an absolute local path that would make the adapter unloadable anywhere else.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi

from . import remote_code
from .card_metrics import read_metrics
from .cards import build_adapter_card, build_model_card
from .repo_ids import HUB_ID, hub_repo_id


logger = logging.getLogger(__name__)


def _warn_without_license(license: str | None, repo_id: str) -> None:
    if license is None:
        logger.warning(
            "pushing %s without a licence: its card says none was chosen (pass license=, e.g. the towers' licence)",
            repo_id,
        )


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
    license: str | None = None,
    training_data: str | Sequence[str] | None = None,
    metrics: str | os.PathLike | dict | None = None,
) -> CommitInfo:
    """Upload a PanoVLM model and/or processor to `repo_id` in one commit (the repository is created if needed).

    Args:
        repo_id: `namespace/name` on the Hub (`HF_ENDPOINT` selects the server).
        model: a `PanoVLMForConditionalGeneration` / `PanoVLMModel`; saved with `save_pretrained` (weights,
            `config.json`, `generation_config.json`) and described by a model card (`README.md`, see
            `build_model_card`).
        processor: a `PanoVLMProcessor`, saved next to the model. Pushed alone, the repository's README is kept.
        export_remote_code: add the flat remote-code modules and `auto_map` entries
            (`modeling_panovlm.hub.remote_code.export_remote_code`), so the repo loads with `trust_remote_code=True`
            without the library.
        commit_message, commit_description, private, token, revision, create_pr: as in `HfApi.upload_folder`.
        max_shard_size: largest weight file before sharding.
        tags: extra model card tags (besides PanoVLM's and the model's `model_tags`).
        license, training_data, metrics: the card's licence (a Hub licence id), training data (Hub dataset ids or
            names) and evaluation (a `metrics.json` of `examples/evaluate.py`); see `build_model_card`.

    Returns:
        The `CommitInfo` of the upload.
    """
    if model is None and processor is None:
        raise ValueError("push_to_hub needs a model, a processor, or both")
    if metrics is not None:
        read_metrics(metrics)  # a bad metrics.json fails before anything is uploaded
    if model is not None:
        _warn_without_license(license, repo_id)
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as staging:
        if model is not None:
            model.save_pretrained(staging, max_shard_size=max_shard_size)
            card_tags = [*(getattr(model, "model_tags", None) or []), *(tags or [])]
            card = build_model_card(
                model.config,
                repo_id,
                export_remote_code,
                card_tags,
                license=license,
                training_data=training_data,
                metrics=metrics,
            )
            card.save(Path(staging) / "README.md")
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
    license: str | None = None,
    training_data: str | Sequence[str] | None = None,
    metrics: str | os.PathLike | dict | None = None,
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
        license, training_data, metrics: for the adapter card, as in `push_to_hub`.

    Returns:
        The `CommitInfo` of the upload.
    """
    if metrics is not None:
        read_metrics(metrics)  # a bad metrics.json fails before anything is uploaded
    _warn_without_license(license, repo_id)
    api = HfApi()
    with tempfile.TemporaryDirectory() as staging:
        peft_model.save_pretrained(staging)
        for peft_card in Path(staging).rglob("README.md"):
            peft_card.unlink()  # PEFT's cards repeat the recorded (local) base path; ours replaces them
        config_paths = sorted(Path(staging).rglob("adapter_config.json"))
        configs = [json.loads(path.read_text(encoding="utf-8")) for path in config_paths]
        recorded = {config.get("base_model_name_or_path") for config in configs}
        base = base_model_repo_id or (hub_repo_id(*recorded) if len(recorded) == 1 else None)
        if base is None or not HUB_ID.fullmatch(base):
            raise ValueError(
                f"the adapter's base model was loaded from {sorted(map(str, recorded))}, which is not a Hub repository; "
                "pass base_model_repo_id='namespace/name' (where the base model was pushed)"
            )
        for path, config in zip(config_paths, configs):
            config["base_model_name_or_path"] = base
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        card = build_adapter_card(
            repo_id,
            base,
            configs[0],
            base_config=peft_model.get_base_model().config,
            license=license,
            training_data=training_data,
            metrics=metrics,
        )
        card.save(Path(staging) / "README.md")
        logger.info("Pushing the adapter to %s with base model %s", repo_id, base)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            commit_message=commit_message or f"Upload PanoVLM LoRA adapter for {base}",
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


__all__ = ["push_adapter_to_hub", "push_to_hub"]
