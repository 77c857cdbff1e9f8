"""The training half of the config migration: PanoLLaVA's `experiment, paths, training, data, system_messages, lora,
generation` blocks -> the run file (top level and one entry per stage), the prompt format and generation settings
of the start checkpoint. See `config_migration` for the model half and the row bookkeeping."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from processing_panovlm.processing_panovlm import DEFAULT_USER_TEMPLATE

from .legacy_run import LegacyConversionError
from .migration_tables import (
    ADAM_BETA2,
    DEFAULT_ACCUMULATION,
    EARLY_STOPPING_PATIENCE,
    EVAL_GENERATION_DEFAULTS,
    STAGE_ALIASES,
)


# PanoLLaVA's dataset class used this system message when `system_messages.default` was absent.
DATASET_SYSTEM_FALLBACK = (
    "You are an expert assistant specialized in analyzing panoramic images. Please provide detailed, accurate, and "
    "helpful responses about what you observe in the panoramic view shortly."
)
MODEL_MAX_TEXT_LENGTH = 512  # PanoLLaVA's ModelConfig.max_text_length: its fusion trimmed every sequence to it
START = "start"  # <output_dir>/start: the checkpoint built from the towers, where the first stage starts


def _tables(value: Any) -> str | list[str] | None:
    """One table as a string, several as a list (as PanoLLaVA normalised them)."""
    if value is None or value == []:
        return None
    values = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return values[0] if len(values) == 1 else values


def _first_key(t, keys: tuple[str, ...]) -> str | None:
    return next((key for key in keys if _tables(t.get(key)) is not None), None)


def _experiment_name(t, model_args: dict) -> str:
    name = t.get("experiment.name")
    if name and name != "auto":
        t.take("experiment.name", "run:output_dir", name, "the run directory's name")
        t.drop("training.prefix", "PanoLLaVA named the run after experiment.name")
        return str(name)
    if t.get("training.prefix"):
        t.drop("experiment.name", f"{name!r}: PanoLLaVA named the run after training.prefix instead")
        t.take("training.prefix", "run:output_dir", t.get("training.prefix"), "the run directory's name")
        return str(t.get("training.prefix"))
    vision = PurePosixPath(str(model_args["vision_model_name_or_path"])).name
    text = PurePosixPath(str(model_args["text_model_name_or_path"])).name
    config = model_args["config"]
    auto = f"{vision}_{text}_{model_args['resampler_config']['resampler_type']}_{config['crop_strategy']}"
    auto += "_PE" if config.get("use_panorama_pe") else ""
    t.take("experiment.name", "run:output_dir", auto, "PanoLLaVA's automatic name from the towers, resampler and crop")
    return auto


def _stage_entry(t, name: str, key: str, top: dict, model_max: int) -> dict:
    """The run-file entry of one stage from `training.stage_configs.<key>`."""
    base = f"training.stage_configs.{key}"
    entry: dict[str, Any] = {"stage": name}
    for field in ("epochs", "lr", "batch_size"):
        if not t.has(f"{base}.{field}"):
            raise LegacyConversionError(f"{base} has no {field}; PanoLLaVA required epochs, lr and batch_size per stage")
    where = f"run:stages.{name}."
    entry["num_train_epochs"] = t.number(f"{base}.epochs")
    t.take(f"{base}.epochs", where + "num_train_epochs", entry["num_train_epochs"])
    entry["learning_rate"] = t.number(f"{base}.lr")
    t.take(f"{base}.lr", where + "learning_rate", entry["learning_rate"],
           "a string in the YAML; PanoLLaVA converted it to a number" if isinstance(t.get(f"{base}.lr"), str) else "")
    entry["batch_size"] = t.number(f"{base}.batch_size", kind=int)
    t.take(f"{base}.batch_size", where + "batch_size", entry["batch_size"])
    accumulation = t.number(f"{base}.accumulate_grad_batches", DEFAULT_ACCUMULATION, int)
    entry["gradient_accumulation_steps"] = accumulation
    t.take(f"{base}.accumulate_grad_batches", where + "gradient_accumulation_steps", accumulation,
           "" if t.has(f"{base}.accumulate_grad_batches") else "PanoLLaVA's trainer default")
    # PanoLLaVA's warm-up was 10 % of the *batches*, counted as optimizer steps: with accumulation A it lasted
    # 10*A % of training. Reproduced while that stays below the whole run.
    warmup = 0.1 * accumulation
    if warmup < 1.0:
        entry["warmup_steps"] = round(warmup, 6)
        t.note(f"(behaviour) {name} warm-up", "10% of batches", where + "warmup_steps", entry["warmup_steps"],
               f"PanoLLaVA counted batches as optimizer steps: with accumulation {accumulation} its warm-up covered "
               f"{warmup:.0%} of the optimizer steps (its linear decay also stopped short of 0; PanoVLM's reaches 0)")
    if t.has(f"{base}.max_text_length"):
        length = min(t.number(f"{base}.max_text_length", kind=int), model_max)
        entry["max_length"] = length
        t.take(f"{base}.max_text_length", where + "max_length", length,
               "" if length == t.number(f"{base}.max_text_length", kind=int) else
               f"PanoLLaVA's model trimmed sequences to models.max_text_length ({model_max})")
    if t.get(f"{base}.vision_trainable_blocks") is not None:
        blocks = t.number(f"{base}.vision_trainable_blocks", kind=int)
        if name == "vision" and blocks >= 0:
            entry["vision_trainable_blocks"] = blocks
            t.take(f"{base}.vision_trainable_blocks", where + "vision_trainable_blocks", blocks)
        elif name == "vision":
            t.drop(f"{base}.vision_trainable_blocks", "NOT REPRODUCED: -1 (every block): give the tower's block count")
        elif blocks == 0:
            t.drop(f"{base}.vision_trainable_blocks", "0: the tower stays frozen, as in every PanoVLM caption stage")
        else:
            t.drop(f"{base}.vision_trainable_blocks", "NOT REPRODUCED: PanoVLM trains tower blocks in the vision stage only")
    model_weights = {"vicreg_similarity_weight": 25.0, "vicreg_variance_weight": 25.0, "vicreg_covariance_weight": 1.0}
    for field in (*model_weights, "vicreg_mode", "vicreg_loss_weight"):
        if t.has(f"{base}.{field}") and name != "vision":
            t.drop(f"{base}.{field}", f"the {name} stage has no VICReg loss (and PanoLLaVA's model never read this key)")
        elif t.has(f"{base}.{field}"):
            effective = t.get(f"models.{field}", {**model_weights, "vicreg_mode": "pairwise", "vicreg_loss_weight": 1.0}[field])
            same = "the same value" if effective == t.get(f"{base}.{field}") else "a DIFFERENT value"
            t.drop(f"{base}.{field}", f"never read by PanoLLaVA's model: models.{field} ({effective}) applied, {same}")
    t.drop(f"{base}.debug_vicreg_loss", "debug logging only")
    if name == "vision":
        scale = t.number("models.vicreg_loss_weight", 1.0)
        for source, option in (("vicreg_similarity_weight", "vicreg_invariance"), ("vicreg_variance_weight", "vicreg_variance"),
                               ("vicreg_covariance_weight", "vicreg_covariance")):
            entry[option] = t.number(f"models.{source}", model_weights[source]) * scale
            t.take(f"models.{source}", where + option, entry[option],
                   "PanoLLaVA's ModelConfig value" + (f", times models.vicreg_loss_weight {scale}" if scale != 1.0 else ""))
        entry["vicreg_mode"] = t.get("models.vicreg_mode", "pairwise")
        t.take("models.vicreg_mode", where + "vicreg_mode", entry["vicreg_mode"])
        t.take("models.vicreg_loss_weight", where + "vicreg_*", scale, "scales the three VICReg weights")
    for field, fallbacks in (("train_csv", ("csv_train", "train")), ("eval_csv", ("csv_val", "val"))):
        source = _first_key(t, tuple(f"{base}.data.{k}" for k in fallbacks))
        if source is not None:
            entry[field] = _tables(t.get(source))
            t.take(source, where + field, entry[field], "this stage's tables")
            if field == "eval_csv" and "eval_csv" not in top:
                entry.update(eval_strategy="epoch", early_stopping_patience=EARLY_STOPPING_PATIENCE)
    return entry


def translate_training(t, model_args: dict, output_dir: str | None) -> tuple[dict, str | list[str] | None]:
    """The run file and the test table(s); fills `model_args` with the prompt format and generation settings."""
    name = _experiment_name(t, model_args)
    runs_dir = t.get("paths.runs_dir", "runs")
    t.take("paths.runs_dir", "run:output_dir", runs_dir, "" if t.has("paths.runs_dir") else "PanoLLaVA's default")
    run_dir = output_dir or str(PurePosixPath(str(runs_dir)) / name)
    top: dict[str, Any] = {"model": str(PurePosixPath(run_dir) / START), "output_dir": run_dir}
    t.drop("paths.pretrained_dir", "a PanoLLaVA run: convert it (`panovlm convert --checkpoint-dir DIR --output-dir "
           "OUT`) and set `model: OUT` in the run file instead of building from the towers")
    for field, keys in (("train_csv", ("paths.csv_train", "data.csv_train", "data.train")),
                        ("eval_csv", ("paths.csv_val", "data.csv_val", "data.val"))):
        source = _first_key(t, keys)
        for key in keys:
            if key != source:
                t.drop(key, f"PanoLLaVA read {source} first" if source else "empty")
        if source is not None:
            top[field] = _tables(t.get(source))
            t.take(source, f"run:{field}", top[field], "validation loss every epoch" if field == "eval_csv" else "")
    if "eval_csv" in top:
        # PanoLLaVA validated every epoch and stopped after two without improvement, keeping the best checkpoint.
        top.update(eval_strategy="epoch", early_stopping_patience=EARLY_STOPPING_PATIENCE)
        t.note("(behaviour) early stopping", "EarlyStopping(val_loss, patience 2)", "run:early_stopping_patience",
               EARLY_STOPPING_PATIENCE, "evaluated every epoch; the best checkpoint is the stage's output")
    top["adam_beta2"] = ADAM_BETA2
    t.note("(behaviour) AdamW betas", "(0.9, 0.98)", "run:adam_beta2", ADAM_BETA2, "PanoLLaVA's optimizer")
    test_csv = _first_key(t, ("paths.csv_test", "data.csv_test"))
    for key in ("paths.csv_test", "data.csv_test"):
        if key == test_csv:
            t.take(key, "evaluate:--csv", _tables(t.get(key)), "the table of the printed `panovlm evaluate` command")
        else:
            t.drop(key, f"PanoLLaVA read {test_csv} first" if test_csv else "empty")
    if t.has("training.num_workers"):
        top["dataloader_num_workers"] = t.number("training.num_workers", kind=int)
        t.take("training.num_workers", "run:dataloader_num_workers", top["dataloader_num_workers"])
    if t.has("training.eval_batch_size"):
        top["eval_batch_size"] = t.number("training.eval_batch_size", kind=int)
        t.take("training.eval_batch_size", "run:eval_batch_size", top["eval_batch_size"])

    system = t.get("system_messages.default", DATASET_SYSTEM_FALLBACK)
    top["system_prompt"] = model_args["system_prompt"] = system
    t.take("system_messages.default", "run:system_prompt", system,
           "saved with the processor; evaluation and inference use it" if t.has("system_messages.default")
           else "PanoLLaVA's dataset fallback")
    if t.has("training.system_msg"):
        same = t.get("training.system_msg") == system
        t.drop("training.system_msg", "PanoLLaVA's eval.py prompt: the same as training's, which PanoVLM saves with the "
               "processor" if same else "PanoLLaVA evaluated with this prompt but trained with system_messages.default; "
               "PanoVLM evaluates with the training prompt (pass --system-prompt to `panovlm evaluate` for this one)")
    top["user_template"] = model_args["user_template"] = DEFAULT_USER_TEMPLATE
    t.note("(behaviour) user turn", "In this panoramic image, ...", "run:user_template", DEFAULT_USER_TEMPLATE,
           "PanoLLaVA's dataset wrapped every query this way")

    stages = t.get("training.stages", ["vision", "resampler", "finetune"])
    stages = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else [str(s) for s in stages]
    unknown = [s for s in stages if s not in STAGE_ALIASES]
    if unknown:
        raise LegacyConversionError(f"training.stages: unknown stage(s) {unknown}; PanoLLaVA's stages are vision, "
                                    "resampler and finetune")
    canonical = [STAGE_ALIASES[s] for s in stages]
    t.take("training.stages", "run:stages", canonical, "" if t.has("training.stages") else "PanoLLaVA's default")
    configs = t.get("training.stage_configs", {}) or {}
    model_max = t.number("models.max_text_length", MODEL_MAX_TEXT_LENGTH, int)
    entries = []
    for original, stage in zip(stages, canonical):
        key = next((k for k in (original, stage) if k in configs), None)
        if key is None:
            raise LegacyConversionError(f"training.stage_configs has no {original!r} block; PanoLLaVA required one")
        entries.append(_stage_entry(t, stage, key, top, model_max))
    if t.has("models.max_text_length"):
        t.take("models.max_text_length", "run:stages.*.max_length", model_max, "caps every stage's max_length")
    for key in configs:
        if key not in stages and key not in canonical:
            t.drop(f"training.stage_configs.{key}", "stage not in training.stages: PanoLLaVA did not run it")

    if "finetune" in canonical:
        lora = {"rank": ("lora_r", 32), "alpha": ("lora_alpha", 64), "dropout": ("lora_dropout", 0.1)}
        for key, (option, default) in lora.items():
            top[option] = type(default)(t.get(f"lora.{key}", default))
            t.take(f"lora.{key}", f"run:{option}", top[option], "" if t.has(f"lora.{key}") else "PanoLLaVA's YAML default")
        if t.has("lora.target_modules"):
            top["lora_modules"] = [str(m) for m in t.get("lora.target_modules")]
            t.take("lora.target_modules", "run:lora_modules", top["lora_modules"])
        t.take("lora.use_lora", "run:stages.finetune", "LoRA trains",
               "CHANGED ON PURPOSE: PanoLLaVA froze the adapters it attached (they stayed identity), so its finetune "
               "trained only resampler + projector; PanoVLM trains the adapters, and the resampler and projector in "
               "full (lora_modules_to_save)" if t.get("lora.use_lora", True) else
               "NOT REPRODUCED: PanoVLM's finetune stage always trains LoRA adapters")
    else:
        for key in ("lora.rank", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.use_lora"):
            t.drop(key, "no finetune stage in training.stages")

    generation = {}
    for key, default in EVAL_GENERATION_DEFAULTS.items():
        generation[key] = t.get(f"generation.{key}", default)
        t.take(f"generation.{key}", f"model:generation.{key}", generation[key],
               "" if t.has(f"generation.{key}") else "PanoLLaVA's eval.py default")
    # PanoLLaVA clamped the temperature to [0.1, 1] and sampled whenever it was above 0.1.
    generation["temperature"] = min(max(t.number("generation.temperature", generation["temperature"]), 0.1), 1.0)
    generation["do_sample"] = generation["temperature"] > 0.1
    if generation["do_sample"]:
        t.note("(behaviour) sampling", "temperature > 0.1", "model:generation.do_sample", True,
               "PanoLLaVA's eval sampled; `panovlm evaluate` decodes greedily unless --do-sample, which then uses these")
    else:
        for key in ("temperature", "top_p", "top_k"):  # meaningless (and refused by GenerationConfig) when greedy
            del generation[key]
        t.note("(behaviour) sampling", "temperature <= 0.1", "model:generation.do_sample", False,
               "PanoLLaVA decoded greedily at this temperature; its sampling settings are left out")
    model_args["generation"] = generation
    top["evaluation_max_new_tokens"] = t.number("generation.max_new_tokens", generation["max_new_tokens"], int)
    top["evaluate_after_training"] = False
    t.note("(behaviour) evaluation", "scripts/eval.py run by hand", "run:evaluate_after_training", False,
           "run the printed `panovlm evaluate` command on the test table")
    return {**top, "stages": entries}, _tables(t.get(test_csv)) if test_csv else None


__all__ = ["DATASET_SYSTEM_FALLBACK", "START", "translate_training"]
