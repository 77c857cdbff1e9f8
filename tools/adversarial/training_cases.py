"""The training CLI: seeds, out-of-range values, short runs, missing directories."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from case_helpers import Ctx, example, imp, load_model, load_processor, names, refusal, tail
from case_registry import case


# ---- training CLI: seeds, ranges, short runs, missing directories ------------------------------------------------


def _train(ctx: Ctx, output: Path, *flags, model: Path | None = None, stage: str = "vision") -> subprocess.CompletedProcess:
    return example(ctx, "train.py", "--stage", stage, "--model", model or ctx.ws / "a", "--train-csv",
                   ctx.ws / "data" / "train.csv", "--output-dir", output, "--batch-size", "2", *flags)


def seeded(ctx: Ctx, stage: str) -> tuple[str, str]:
    outputs = []
    for run in (1, 2):
        out = ctx.tmp / f"run{run}"
        result = _train(ctx, out, "--max-steps", "2", "--seed", "7", "--logging-steps", "1", "--warmup-steps", "0",
                        "--learning-rate", "1e-3", "--lora-r", "4", "--lora-alpha", "8", "--save-steps", "100",
                        stage=stage)
        if result.returncode != 0:
            return "unclear_error", f"run {run} failed: {tail(result.stderr)}"
        name = "adapter_model.safetensors" if stage == "finetune" else "model.safetensors"
        from safetensors.torch import load_file

        outputs.append(load_file(out / name))
    import torch

    differ = [k for k in outputs[0] if not torch.equal(outputs[0][k], outputs[1][k])]
    if outputs[0].keys() != outputs[1].keys() or differ:
        return "silent_wrong", f"two runs with --seed 7: {len(differ)}/{len(outputs[0])} tensors differ (e.g. {differ[:2]})"
    return "good", f"two runs with --seed 7 are bit-identical ({len(outputs[0])} tensors)"


for _stage in ("vision", "resampler", "finetune"):
    case("seeds", f"seed_reproducible_{_stage}", timeout=600, stage=_stage)(seeded)


def out_of_range(ctx: Ctx, flag: str, value: str, stage: str) -> tuple[str, str]:
    out = ctx.tmp / "out"
    result = _train(ctx, out, flag, value, *([] if flag == "--max-steps" else ["--max-steps", "2"]), stage=stage)
    trained = [p.name for p in (out.iterdir() if out.exists() else []) if p.name in ("model.safetensors", "adapter_model.safetensors")]
    state = out / "trainer_state.json"
    steps = json.loads(state.read_text()).get("global_step") if state.exists() else "?"
    if result.returncode == 0:
        return "silent_wrong", f"{flag} {value} accepted: trained {steps} steps"
    if trained:  # it trained with the value, then failed for another reason
        return "silent_wrong", f"{flag} {value} accepted: trained {steps} steps, then exit {result.returncode}: {tail(result.stderr, 1)}"
    # The error is the last lines of stderr; earlier lines (logs that repeat the options) do not count.
    message = tail(result.stderr, 2)
    bare = flag.lstrip("-")
    if names(message, f"{bare}|{bare.replace('-', '_')}|{bare.replace('-', ' ')}"):
        return "good", message
    return "unclear_error", message


for _flag, _value, _stage in [("--max-steps", "0", "vision"), ("--max-steps", "-5", "vision"),
                              ("--vision-trainable-blocks", "-1", "vision"), ("--vision-trainable-blocks", "99", "vision"),
                              ("--batch-size", "0", "vision"), ("--learning-rate", "-0.001", "vision"),
                              ("--num-train-epochs", "0", "vision"), ("--logging-steps", "0", "vision"),
                              ("--gradient-accumulation-steps", "0", "vision"), ("--lora-r", "0", "finetune"),
                              ("--lora-dropout", "1.5", "finetune"), ("--warmup-steps", "-1", "vision")]:
    case("cli_ranges", f"train{_flag.replace('-', '_')}_{_value}", timeout=400, flag=_flag, value=_value, stage=_stage)(out_of_range)


def view_range(ctx: Ctx, where: str, field: str, value: float) -> tuple[str, str]:
    kwargs = {field: value, "crop_strategy": "e2p"}
    try:
        if where == "image_processor":
            made = imp("processing_panovlm:PanoVLMImageProcessor")(**kwargs)
        else:
            made = imp("configuration_panovlm.configuration_panovlm:PanoVLMConfig")(**kwargs)
    except Exception as error:  # noqa: BLE001
        return refusal(error, field, str(value).rstrip("0").rstrip(".") if "." in str(value) else str(value))
    layout = getattr(made, "view_layout", None)
    views = len(layout.views) if layout is not None else getattr(made, "num_views", None)
    return "silent_wrong", f"{field}={value} accepted by {where} (num_views {views})"


for _where in ("image_processor", "config"):
    for _field, _value in (("fov_deg", 0.01), ("fov_deg", 0.0), ("fov_deg", -30.0), ("overlap_ratio", 1.0)):
        case("cli_ranges", f"{_where}_{_field}_{_value}", where=_where, field=_field, value=_value)(view_range)


def short_run(ctx: Ctx, stage: str) -> tuple[str, str]:
    out = ctx.tmp / "short"
    result = _train(ctx, out, "--max-steps", "2", "--logging-steps", "50", stage=stage)
    if result.returncode != 0:
        return "unclear_error", f"exit {result.returncode} after a 2-step run with --logging-steps 50: {tail(result.stderr)}"
    try:
        load_model(out)
    except Exception as error:  # noqa: BLE001
        return "data_loss", f"exit 0 but the output does not load: {error}"
    return "good", "exit 0; the output loads"


for _stage in ("vision", "resampler"):
    case("short_run", f"run_shorter_than_logging_steps_{_stage}", timeout=400, stage=_stage)(short_run)


def missing_directory(ctx: Ctx, entry: str) -> tuple[str, str]:
    missing = "out/no/such/run"
    if entry in ("train_cli", "evaluate_cli", "infer_cli"):
        if entry == "train_cli":
            result = example(ctx, "train.py", "--stage", "vision", "--model", missing, "--train-csv",
                             ctx.ws / "data" / "train.csv", "--output-dir", ctx.tmp / "o", "--max-steps", "1")
        elif entry == "evaluate_cli":
            result = example(ctx, "evaluate.py", "--model", missing, "--csv", ctx.ws / "data" / "test.csv",
                             "--output-dir", ctx.tmp / "o")
        else:
            result = example(ctx, "infer.py", "--model", missing, "--image", ctx.ws / "pano.png", "--prompt", "x")
        if result.returncode == 0:
            return "silent_wrong", "exit 0 with a missing model directory"
        message = result.stderr[-2000:]
        return ("good" if names(message, missing, "does not exist|not found|no such") else "unclear_error"), tail(message, 2)
    try:
        if entry == "model_class":
            imp("modeling_panovlm:PanoVLMForConditionalGeneration").from_pretrained(missing)
        elif entry == "auto_model":
            load_model(missing)
        elif entry == "auto_processor":
            load_processor(missing)
        elif entry == "processor_class":
            imp("processing_panovlm:PanoVLMProcessor").from_pretrained(missing)
    except Exception as error:  # noqa: BLE001
        return refusal(error, missing, "does not exist|not found|no such")
    return "silent_wrong", "loaded something from a missing directory"


for _entry in ("train_cli", "evaluate_cli", "infer_cli", "model_class", "auto_model", "auto_processor", "processor_class"):
    case("missing_dirs", f"missing_model_directory_via_{_entry}", timeout=300, entry=_entry)(missing_directory)


