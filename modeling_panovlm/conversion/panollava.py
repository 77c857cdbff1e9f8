"""Convert a PanoLLaVA (the predecessor research code) training run into a PanoVLM checkpoint and a PEFT adapter.

A PanoLLaVA stage run directory holds a PyTorch Lightning checkpoint (`state_dict` keys prefixed `model.`,
`hyper_parameters`, `datamodule_hyper_parameters`), `checkpoint_metadata.json` (often truncated: PanoLLaVA's
`json.dump` stopped at the first value it could not serialise, after `"resampler_config": `) and, for LoRA runs, a
`lora_weights/` PEFT folder. `load_legacy_run` reads it, `plan_conversion` resolves the PanoVLM config and places
every tensor (mapped / alias / adapter / unused / missing / mismatched), `write_conversion` writes a
`from_pretrained` directory plus `adapter/`, a standard PEFT adapter.

Resampler sizes come from the weights (hidden width from `input_proj`, BiMamba `expand` from `in_proj` rows / 2 /
hidden, depth from the block count, ...) and are compared with what the run recorded; a disagreement is reported,
and the weights' value is used, the only one the tensors load into. What cannot be recovered (PanoLLaVA's
positional encoding and global-view handling, its `<|vision|>` token, the BERT Q-Former) is listed in the README.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, PreTrainedConfig

from configuration_panovlm.atomic_files import atomic_directory
from configuration_panovlm.configuration_panovlm import QWEN_IMAGE_PAD_ID, PanoVLMConfig
from modeling_panovlm.modeling_panovlm import PanoVLMForConditionalGeneration
from modeling_panovlm.training.lora import lm_lora_target_regex

from .legacy_run import LegacyConversionError, LegacyRun, find_checkpoint, load_legacy_run


logger = logging.getLogger(__name__)

RESAMPLER_TYPES = {"bimamba": "bimamba", "bidirectional_mamba": "bimamba", "bi_mamba": "bimamba", "mlp": "mlp"}
STAGES = {
    **dict.fromkeys(("vision", "vision_pretraining", "vision_pretrain"), "vision"),
    **dict.fromkeys(("resampler", "resampler_training"), "resampler"),
    **dict.fromkeys(("finetune", "instruction_tuning", "instruction_tune"), "finetune"),
}
# Where PanoLLaVA recorded each setting, most trusted first: checkpoint_metadata.json (`meta:`), the Lightning
# module's hyper-parameters (`hp:`) and the datamodule's (`data:`).
_RESAMPLER_META = "meta:model_config.resampler_config."
RECORDED = {
    "vision_name": ("meta:model_config.vision_name", "hp:vision_name"),
    "text_name": ("meta:model_config.language_model_name", "hp:language_model_name"),
    "type": ("meta:model_config.resampler_type", "hp:resampler_type"),
    "hidden_dim": (_RESAMPLER_META + "hidden_dim", "meta:model_config.resampler_hidden_dim"),
    "depth": (_RESAMPLER_META + "depth", _RESAMPLER_META + "num_layers"),
    "latent_dimension": ("meta:model_config.latent_dimension", "hp:latent_dimension"),
    **{name: (_RESAMPLER_META + name,) for name in ("expand", "d_state", "d_conv", "dropout", "norm_first", "use_ln")},
    "crop_strategy": ("meta:training_config.crop_strategy", "data:crop_strategy"),
    "view_overlap": ("meta:training_config.overlap_ratio", "data:overlap_ratio"),
    "model_overlap": ("meta:model_config.overlap_ratio", "hp:model_overlap_ratio"),
    "fov_deg": ("meta:training_config.fov_deg", "data:fov_deg"),
    "image_size": ("meta:model_config.image_size", "data:image_size"),
    "stage": ("meta:stage_canonical", "meta:stage", "hp:stage"),
}
# Source key prefix (Lightning's `model.` removed) -> PanoVLM key prefix. PEFT-wrapped language models are first
# unwrapped (`language_model.base_model.model.` -> `language_model.`, `.base_layer.` dropped).
KEY_RULES = (
    ("vision_backbone.encoder.", "model.vision_tower."),
    ("vision_backbone.norm.", "model.vision_feature_norm."),
    ("resampler_module.resampler.", "model.resampler."),
    ("projector.linear.", "model.multi_modal_projector."),
    ("vicreg_projector.", "model.vicreg_projector."),
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
)
# PanoLLaVA registered two modules a second time under another name, so its state dicts hold each of their tensors
# twice; the copies must be equal, and one is converted.
ALIAS_RULES = (("resampler.", "resampler_module.resampler."), ("vision_to_language_projection.", "projector.linear."))
_LORA = re.compile(r"\.(lora_[AB])\.\w+\.weight$")  # in-memory PEFT keys carry the adapter name
_PEFT_LM = "language_model.base_model.model."
_ADAPTER_LM = "base_model.model.model.language_model."


@dataclass
class Row:
    """One resolved setting: what the run recorded, what the weights (or tower configs) show, and what is used."""

    name: str
    recorded: Any
    observed: Any
    used: Any

    @property
    def disagrees(self) -> bool:
        return self.recorded is not None and self.observed is not None and self.recorded != self.observed


@dataclass
class ConversionReport:
    run: LegacyRun
    rows: list[Row] = field(default_factory=list)
    mapped: Counter = field(default_factory=Counter)  # (source pattern, target pattern) -> count
    aliases: list[str] = field(default_factory=list)
    adapter: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every PanoVLM model key got a tensor of the right shape and every source tensor found a place."""
        return not (self.unused or self.missing or self.mismatched)


@dataclass
class Conversion:
    config: PanoVLMConfig
    state_dict: dict[str, torch.Tensor]
    adapter_state_dict: dict[str, torch.Tensor]
    adapter_config: dict[str, Any] | None
    report: ConversionReport


def _first(*values):
    return next((value for value in values if value is not None), None)


def _recorded(run: LegacyRun) -> dict[str, Any]:
    """Every setting of `RECORDED` as the run recorded it (None when it did not)."""
    sources = {"meta": run.metadata, "hp": run.hparams, "data": run.datamodule_hparams}

    def lookup(path: str):
        source, _, dotted = path.partition(":")
        value = sources[source]
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    return {name: _first(*map(lookup, paths)) for name, paths in RECORDED.items()}


def _tower_config(name_or_path, role: str) -> PreTrainedConfig:
    if isinstance(name_or_path, PreTrainedConfig):
        return name_or_path
    if not name_or_path:
        raise LegacyConversionError(
            f"the run records no {role} model name and none was given: pass --{role}-config (a config.json, a model "
            "directory or a Hub id)"
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise LegacyConversionError(
            f"cannot load the {role} config {name_or_path!r} ({error}); pass --{role}-config with a local config.json "
            "or model directory"
        ) from error
    # Dual towers (SigLIP, CLIP): PanoLLaVA kept only the vision half.
    return getattr(config, "vision_config", config) if role == "vision" else config


def _resolve_resampler(tensors: dict[str, torch.Tensor], recorded: dict[str, Any], rows: list[Row]) -> dict:
    """`PanoVLMResamplerConfig` kwargs from the resampler's tensors (keys relative to the resampler): every size
    the shapes show comes from them, the rest (dropout, norm_first) from the record or PanoLLaVA's preset."""
    if "input_proj.weight" in tensors:
        hidden = tensors["input_proj.weight"].shape[0]
        d_inner = tensors["blocks.0.forward_block.in_proj.weight"].shape[0] // 2
        expand = recorded["expand"]
        if expand is None or int(expand * hidden) != d_inner:  # Mamba rounds int(expand * hidden) down
            expand = d_inner / hidden
            expand = expand if int(expand * hidden) == d_inner else math.nextafter(expand, math.inf)
        mixer = {k.split(".", 3)[3]: t for k, t in tensors.items() if k.startswith("blocks.0.forward_block.")}
        kind, defaults = "bimamba", {"dropout": 0.0, "norm_first": True}
        observed = {
            "hidden_dim": hidden,
            "expand": expand,
            "depth": 1 + max(int(key.split(".")[1]) for key in tensors if key.startswith("blocks.")),
            "d_state": mixer["A_log"].shape[1],
            "d_conv": mixer["conv1d.weight"].shape[-1],
            "dt_rank": mixer["dt_proj.weight"].shape[1],
            "latent_dimension": tensors["output_proj.weight"].shape[0],
        }
    elif any(key.startswith("mlp.") for key in tensors):
        linears = sorted(int(k.split(".")[1]) for k, t in tensors.items() if k.endswith(".weight") and t.ndim == 2)
        kind, latent = "mlp", tensors[f"mlp.{linears[-1]}.weight"].shape[0]
        # PanoLLaVA's MLP has no dropout layer; a one-layer MLP has no hidden width.
        observed = {"depth": len(linears), "latent_dimension": latent, "dropout": 0.0}
        observed["use_ln"] = any(t.ndim == 1 for k, t in tensors.items() if k.endswith(".weight"))
        observed["hidden_dim"] = tensors[f"mlp.{linears[0]}.weight"].shape[0] if len(linears) > 1 else latent
        defaults = {}
    else:
        raise LegacyConversionError(
            f"the resampler's tensors ({sorted({key.split('.')[0] for key in tensors})}) are neither a bimamba nor an "
            f"mlp resampler (recorded type {recorded['type']!r}); PanoLLaVA's BERT-based qformer has no PanoVLM "
            "counterpart"
        )
    rows.append(Row("resampler.type", RESAMPLER_TYPES.get(recorded["type"], recorded["type"]), kind, kind))
    kwargs = {"resampler_type": kind}
    for name in sorted({*observed, *defaults}):
        kwargs[name] = _first(observed.get(name), recorded.get(name), defaults.get(name))
        rows.append(Row(f"resampler.{name}", recorded.get(name), observed.get(name), kwargs[name]))
    return kwargs


def plan_conversion(
    run: LegacyRun,
    vision_config: str | os.PathLike | PreTrainedConfig | None = None,
    text_config: str | os.PathLike | PreTrainedConfig | None = None,
    crop_strategy: str | None = None,
    image_token_id: int = QWEN_IMAGE_PAD_ID,
) -> Conversion:
    """Resolve the PanoVLM config of `run` and place its tensors; nothing is written.

    Args:
        run: from `load_legacy_run`.
        vision_config, text_config: the towers' configs (a config.json, a model directory, a Hub id or a config
            object); by default the model names that the metadata / hyper-parameters record.
        crop_strategy: overrides the recorded crop strategy (needed when the run records none).
        image_token_id: PanoVLM's image placeholder id (default: `<|image_pad|>` of Qwen vocabularies).

    Returns a `Conversion`; `conversion.report.complete` says whether every key found its place.
    """
    recorded, sd = _recorded(run), run.state_dict
    vision = _tower_config(_first(vision_config, recorded["vision_name"]), "vision")
    text = _tower_config(_first(text_config, recorded["text_name"]), "text")
    report = ConversionReport(run)
    rows = report.rows
    prefix = "resampler_module.resampler."
    resampler_tensors = {k.removeprefix(prefix): t for k, t in sd.items() if k.startswith(prefix)}
    resampler = _resolve_resampler(resampler_tensors, recorded, rows)

    text_dict = text.to_dict()
    embed = _first(sd.get("language_model.model.embed_tokens.weight"), sd.get(f"{_PEFT_LM}model.embed_tokens.weight"))
    head = _first(sd.get("language_model.lm_head.weight"), sd.get(f"{_PEFT_LM}lm_head.weight"))
    if embed is not None:  # PanoLLaVA resized the embeddings after adding <|vision|>
        rows.append(Row("text.vocab_size", text.vocab_size, embed.shape[0], embed.shape[0]))
        text_dict["vocab_size"] = embed.shape[0]
    tied = None if embed is None or head is None else bool(torch.equal(embed, head))
    text_dict["tie_word_embeddings"] = _first(tied, text.tie_word_embeddings)
    rows.append(Row("text.tie_word_embeddings", text.tie_word_embeddings, tied, text_dict["tie_word_embeddings"]))
    if not 0 <= image_token_id < text_dict["vocab_size"]:
        raise LegacyConversionError(
            f"image_token_id={image_token_id} is outside the language model's vocabulary ({text_dict['vocab_size']} "
            "rows): pass --image-token-id, the id of a single token of the LM's tokenizer to mark images with"
        )

    crop = _first(crop_strategy, recorded["crop_strategy"])
    if crop is None:
        raise LegacyConversionError("the run records no crop strategy: pass crop_strategy (--crop-strategy)")
    # PanoLLaVA sampled views with the image overlap but stitched with the model's; views define PanoVLM's geometry.
    overlap = _first(recorded["view_overlap"], recorded["model_overlap"], 0.5)
    rows.append(Row("overlap_ratio (views, model)", recorded["view_overlap"], recorded["model_overlap"], overlap))
    run_size = recorded["image_size"]
    run_size = run_size[0] if isinstance(run_size, (list, tuple)) else run_size
    tower_size = getattr(vision, "image_size", None)
    rows.append(Row("view size (run, tower)", run_size, tower_size, tower_size))
    head_layers = sorted(
        int(key.split(".")[2]) for key, t in sd.items() if re.fullmatch(r"vicreg_projector\.mlp\.\d+\.weight", key)
        and t.ndim == 2
    )
    head_dim = sd[f"vicreg_projector.mlp.{head_layers[-1]}.weight"].shape[0] if head_layers else 1
    config = PanoVLMConfig(
        vision_config=vision.to_dict(),
        text_config=text_dict,
        resampler_config=resampler,
        crop_strategy=crop,
        fov_deg=float(_first(recorded["fov_deg"], 90.0)),
        overlap_ratio=float(overlap),
        stitching_mode="drop_overlap",  # what PanoLLaVA's training effectively used
        vision_feature_norm="vision_backbone.norm.weight" in sd,
        vicreg_projector_depth=len(head_layers),
        vicreg_projector_dim=head_dim,
        image_token_id=image_token_id,
        tie_word_embeddings=text_dict["tie_word_embeddings"],
        training_stage=STAGES.get(recorded["stage"]),
    )
    with torch.device("meta"):  # shapes only; nothing is allocated
        expected = {k: tuple(t.shape) for k, t in PanoVLMForConditionalGeneration(config).state_dict().items()}
    state, adapter, adapter_config = _place_tensors(run, config, expected, report)
    return Conversion(config, state, adapter, adapter_config, report)


def _source_key(key: str) -> str:
    """The source key with a PEFT-wrapped language model unwrapped."""
    if key.startswith(_PEFT_LM):
        key = "language_model." + key.removeprefix(_PEFT_LM)
    return key.replace(".base_layer.", ".")


def _place_tensors(
    run: LegacyRun, config: PanoVLMConfig, expected: dict[str, tuple], report: ConversionReport
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict | None]:
    """Map every source tensor to its PanoVLM key, fill the key accounting of `report`, and read the adapter.
    Returns (model state dict, adapter state dict, adapter config or None)."""
    sources = {_source_key(key): tensor for key, tensor in run.state_dict.items()}
    for alias, canonical in ALIAS_RULES:
        for key in sorted(k for k in sources if k.startswith(alias)):
            tensor, original = sources.pop(key), canonical + key.removeprefix(alias)
            if original not in sources:  # only the alias was saved: it is the tensor
                sources[original] = tensor
            elif torch.equal(sources[original], tensor):
                report.aliases.append(key)
            else:
                report.mismatched.append(f"{key} differs from {original}, which it duplicates")
    adapter_config, adapter = _read_lora_folder(run.lora_dir, report) if run.lora_dir else (None, {})
    # PanoLLaVA's MLP blocks are [Linear, LayerNorm, GELU] (no LayerNorm without use_ln); ours add a Dropout.
    mlp_strides = (3, 4) if config.resampler_config.use_ln else (2, 3)
    mlp = config.resampler_config.resampler_type == "mlp"
    state = {}
    for source, tensor in sorted(sources.items()):
        lora = _LORA.search(source)
        if lora and source.startswith("language_model.model."):
            # The checkpoint's copy of a LoRA tensor: the adapter comes from lora_weights/ and must agree with it.
            key = f"{_ADAPTER_LM}{source[len('language_model.model.') : lora.start()]}.{lora.group(1)}.weight"
            if key not in adapter:
                report.unused.append(source)
            elif torch.equal(adapter[key], tensor):
                report.aliases.append(source)
            else:
                report.mismatched.append(f"{source} differs from lora_weights/ ({key})")
            continue
        rule = next(((src, dst) for src, dst in KEY_RULES if source.startswith(src)), None)
        key = None if rule is None else rule[1] + source.removeprefix(rule[0])
        if mlp and key is not None and key.startswith("model.resampler.mlp."):
            _, _, _, index, name = key.split(".", 4)
            block, offset = divmod(int(index), mlp_strides[0])
            key = f"model.resampler.mlp.{block * mlp_strides[1] + offset}.{name}"
        if key not in expected:
            report.unused.append(source)
        elif tuple(tensor.shape) != expected[key]:
            report.mismatched.append(f"{source} {tuple(tensor.shape)} -> {key} {expected[key]}")
        else:
            state[key] = tensor
            report.mapped[(rule[0] + "*", rule[1] + "*")] += 1
    # A tied lm_head is the embedding matrix; PanoLLaVA's state dicts may or may not list it.
    tied_head = {"lm_head.weight"} if config.tie_word_embeddings else set()
    report.missing = sorted(set(expected) - set(state) - tied_head)
    report.adapter = sorted(adapter)
    return state, adapter, adapter_config


def _read_lora_folder(lora_dir: Path, report: ConversionReport) -> tuple[dict, dict[str, torch.Tensor]]:
    """PanoLLaVA's `lora_weights/` (PEFT on the bare causal LM) -> PanoVLM adapter config and tensors."""
    config = json.loads((lora_dir / "adapter_config.json").read_text(encoding="utf-8"))
    weights = lora_dir / "adapter_model.safetensors"
    tensors = load_file(weights) if weights.exists() else torch.load(lora_dir / "adapter_model.bin", weights_only=True)
    targets = config.get("target_modules")
    if not isinstance(targets, list) or config.get("modules_to_save"):
        raise LegacyConversionError(
            f"{lora_dir}: only LoRA on a list of module names, without modules_to_save, converts (target_modules="
            f"{targets!r}, modules_to_save={config.get('modules_to_save')!r})"
        )
    # Anchored on PanoVLM's language model, so the adapter cannot touch the vision tower or resampler.
    config.update(target_modules=lm_lora_target_regex(targets), task_type="CAUSAL_LM")
    converted = {}
    for key, tensor in tensors.items():
        if key.startswith("base_model.model.model."):
            converted[_ADAPTER_LM + key.removeprefix("base_model.model.model.")] = tensor
        else:
            report.unused.append(f"lora_weights/{key}")
    return config, converted


def write_conversion(conversion: Conversion, output_dir: str | os.PathLike) -> Path:
    """Write the PanoVLM directory (config, weights, generation config) and `adapter/` when the run had LoRA.

    The directory is written as a whole or not at all (`configuration_panovlm.atomic_files`), so an interrupted
    conversion leaves nothing half-written. Raises `LegacyConversionError` if keys are unmapped and
    `FileExistsError` if `output_dir` exists and is not empty.
    """
    if not conversion.report.complete:
        raise LegacyConversionError("keys are left unmapped; see conversion.report (unused, missing, mismatched)")
    output = Path(output_dir).resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} exists and is not empty; choose a new output directory")
    with atomic_directory(output) as staging:
        model = PanoVLMForConditionalGeneration(conversion.config)
        # Not strict: a tied lm_head may be absent from the source; the report has accounted for every other key.
        model.load_state_dict(conversion.state_dict, strict=False)
        model.save_pretrained(staging)
        if conversion.adapter_config is not None:
            (staging / "adapter").mkdir()
            adapter_config = {**conversion.adapter_config, "base_model_name_or_path": str(output)}
            (staging / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
            tensors = {key: tensor.contiguous() for key, tensor in conversion.adapter_state_dict.items()}
            save_file(tensors, staging / "adapter" / "adapter_model.safetensors", metadata={"format": "pt"})
    logger.info("Wrote the converted PanoVLM checkpoint to %s", output)
    return output


__all__ = ["Conversion", "ConversionReport", "LegacyConversionError", "LegacyRun", "find_checkpoint"]
__all__ += ["load_legacy_run", "plan_conversion", "write_conversion"]
