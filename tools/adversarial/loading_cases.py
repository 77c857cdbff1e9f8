"""Strict loading and adapters: edited weights, missing config fields, adapters on the wrong base."""

from __future__ import annotations

import json
from pathlib import Path

from case_helpers import (
    Ctx,
    captured_warnings,
    copy_fixture,
    example,
    imp,
    load_model,
    names,
    refusal,
    same_tensors,
    tail,
    weights,
)
from case_registry import case


# ---- strict loading --------------------------------------------------------------------------------------------


def edited_weights(ctx: Ctx, edit: str) -> tuple[str, str]:
    import torch
    from safetensors.torch import save_file

    target = copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    tensors = weights(target)
    prefix = {"missing_resampler": "model.resampler.", "missing_vision": "model.vision_tower.",
              "missing_projector": "model.multi_modal_projector.", "missing_language": "model.language_model.",
              "reshaped": "model.resampler.", "extra": None, "extra_and_missing": "model.resampler."}[edit]
    key = next((k for k in tensors if prefix and k.startswith(prefix) and k.endswith("weight")), None)
    if prefix and key is None:
        key = next(k for k in tensors if k.startswith(prefix.split(".")[0] + "." + prefix.split(".")[1]))
    if edit.startswith("missing") or edit == "extra_and_missing":
        del tensors[key]
    if edit.startswith("extra"):
        tensors["model.extra_head.weight"] = torch.zeros(3, 3)
    if edit == "reshaped":
        tensors[key] = torch.zeros(*[s + 1 for s in tensors[key].shape])
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    needles = {"extra": ["model.extra_head.weight"], "extra_and_missing": [key, "model.extra_head.weight"]}.get(edit, [key])
    outcome, warned = captured_warnings(lambda: load_model(target))
    if isinstance(outcome, Exception):
        return refusal(outcome, *needles)
    return "silent_wrong", f"loaded without error; warning logged: {bool(warned.strip())}"


for _edit in ("missing_resampler", "missing_vision", "missing_projector", "missing_language", "extra", "extra_and_missing", "reshaped"):
    case("strict_loading", f"tensor_{_edit}", edit=_edit)(edited_weights)


def removed_config_field(ctx: Ctx, field: str) -> tuple[str, str]:
    import torch

    target = copy_fixture(ctx, "b", ctx.tmp / "ckpt")
    config = json.loads((target / "config.json").read_text())
    holder, key = (config["resampler_config"], field.split(".", 1)[1]) if "." in field else (config, field)
    saved = holder.pop(key)
    (target / "config.json").write_text(json.dumps(config))
    outcome, warned = captured_warnings(lambda: load_model(target))
    if isinstance(outcome, Exception):
        return refusal(outcome, key)
    model = outcome
    loaded_config = model.config.resampler_config if "." in field else model.config
    value = loaded_config.get(key) if isinstance(loaded_config, dict) else getattr(loaded_config, key, None)
    reference = load_model(ctx.ws / "b")
    same_weights = all(torch.equal(p, reference.state_dict()[n]) for n, p in model.state_dict().items()
                       if n in reference.state_dict() and p.shape == reference.state_dict()[n].shape)
    note = f"{field} saved {saved!r}, loaded {value!r}; same weights: {same_weights}"
    if value == saved and same_weights:
        return "good", note + " (the default is the saved value)"
    return "silent_wrong", note + f"; warning logged: {bool(warned.strip())}"


for _field in ("pe_temperature", "resampler_config.depth", "resampler_config.hidden_dim", "resampler_config.resampler_type",
               "image_token_id", "tie_word_embeddings", "vicreg_projector_dim", "initializer_range"):
    case("config_fields", f"config_without_{_field.replace('.', '_')}", field=_field)(removed_config_field)


@case("config_fields", "config_json_records_every_field")
def config_records_every_field(ctx: Ctx) -> tuple[str, str]:
    config_class = imp("configuration_panovlm.configuration_panovlm:PanoVLMConfig")
    saved = json.loads((ctx.ws / "a" / "config.json").read_text())
    generic = {"_name_or_path", "chunk_size_feed_forward", "id2label", "is_encoder_decoder", "label2id",
               "output_attentions", "output_hidden_states", "problem_type", "return_dict"}
    own = [k for k in config_class().to_dict() if k not in generic and k not in saved]
    if own:
        return "silent_wrong", f"config.json omits PanoVLM fields left at their default: {own}"
    return "good", "every PanoVLM field is in config.json"


@case("strict_loading", "control_roundtrip_is_exact")
def roundtrip(ctx: Ctx) -> tuple[str, str]:
    load_model(ctx.ws / "b").save_pretrained(ctx.tmp / "again")
    again = load_model(ctx.tmp / "again")
    if not same_tensors(weights(ctx.tmp / "again"), weights(ctx.ws / "b")) or again.config.pe_temperature != 500.0:
        return "silent_wrong", "save -> load -> save changed the weights or the config"
    return "good", "save -> load -> save is exact"


# ---- adapters ---------------------------------------------------------------------------------------------------


def _adapter(ctx: Ctx) -> Path:
    """A LoRA adapter trained by the finetune stage (one step) on fixture a; built once, shared by the cases."""
    out = ctx.ws / "adapter"
    if not (out / "adapter_model.safetensors").exists():
        result = example(ctx, "train.py", "--stage", "finetune", "--model", ctx.ws / "a", "--train-csv",
                         ctx.ws / "data" / "train.csv", "--output-dir", ctx.ws / "adapter-run", "--max-steps", "1",
                         "--batch-size", "2", "--lora-r", "4", "--lora-alpha", "8", "--logging-steps", "1")
        if result.returncode != 0:
            raise RuntimeError(f"finetune stage failed: {tail(result.stderr, 8)}")
        (ctx.ws / "adapter-run").rename(out)
    return out


def adapter_on_base(ctx: Ctx, base: str, how: str) -> tuple[str, str]:
    adapter = _adapter(ctx)

    def apply():
        if how == "load_adapter":
            model = load_model(ctx.ws / base)
            model.load_adapter(str(adapter))
        elif how == "evaluation_loader":
            loader = imp("modeling_panovlm.evaluation:load_model_and_processor")
            loader(str(ctx.ws / base), str(adapter))
        return True

    if how == "infer_cli":
        result = example(ctx, "infer.py", "--model", ctx.ws / base, "--adapter", adapter, "--image",
                         ctx.ws / "pano.png", "--prompt", "what is in front?", "--max-new-tokens", "2")
        outcome = RuntimeError(result.stderr) if result.returncode else True
        warned = result.stderr
    else:
        outcome, warned = captured_warnings(apply)
    flagged = names(warned, "base") and names(warned, "trained on|fingerprint|different|another|other")
    if base == "a":  # the adapter's own base: must load, without a false alarm
        if isinstance(outcome, Exception):
            return "unclear_error", f"refused on its own base: {str(outcome)[-300:]}"
        return ("unclear_error", f"false mismatch warning: {warned[-300:]}") if flagged else ("good", "loads quietly")
    if isinstance(outcome, Exception):
        return refusal(outcome, "base")
    if flagged:
        return "good", "warned: " + next(line for line in warned.splitlines() if "base" in line.lower())[:300]
    return "silent_wrong", f"adapter trained on a applied to {base} without a word"


for _base in ("a", "b", "c"):
    for _how in ("load_adapter", "evaluation_loader"):
        case("adapter", f"adapter_from_a_on_base_{_base}_via_{_how}", timeout=400, base=_base, how=_how)(adapter_on_base)
case("adapter", "adapter_from_a_on_base_c_via_infer_cli", timeout=400, base="c", how="infer_cli")(adapter_on_base)


