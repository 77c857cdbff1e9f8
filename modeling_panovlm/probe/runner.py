"""One run of the probe: a tiny PanoVLM of one configuration, trained through its stages on one seed's probe dataset
with the stage runner (`training.plan`), then asked every held-out question of every task."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_panovlm.evaluation import generate_captions, greedy_generation_config, group_rows
from modeling_panovlm.testing.probe_tasks import ANSWERS, PROBE_TASKS, closed_answer, consistency_rate
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint, tiny_config
from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer
from modeling_panovlm.training.options import StageOptions
from modeling_panovlm.training.plan import plan_stages, run_plan
from processing_panovlm.data.captions import load_caption_table

from .spec import ProbeConfiguration, ProbeSpec


logger = logging.getLogger(__name__)

# Each stage's options where the probe file gives none (examples/probe.yaml gives these), and those of every stage.
STAGE_DEFAULTS = {
    "vision": {"max_steps": 100, "learning_rate": 2e-3, "augment": True},  # yaw roll: no single panorama layout
    "resampler": {"max_steps": 100, "learning_rate": 2e-3},
    "finetune": {"max_steps": 1600, "learning_rate": 3e-3},
}
_COMMON_STAGE_OPTIONS = {
    # Every answer names a direction or a colour, which a yaw roll or a hue shift would contradict (with them the
    # language stages learned nothing: 13 % on 8 sectors after 1,500 steps, the fixed answer's share).
    "augment": False,
    "weight_decay": 0.0,
    "lora_r": 32,
    "lora_alpha": 64,
    "lora_dropout": 0.0,
    "save_steps": 100_000,  # only the stage output is used
    "save_total_limit": 1,
    "disable_tqdm": True,
    "report_to": "none",
    # The bare question as the user turn, no system prompt: a third of the default prompt's tokens, which is most of
    # a tiny model's step time.
    "system_prompt": "",
    "user_template": "{query}",
}
# Answers are one or two words: "behind left", "ceiling", "three".
MAX_NEW_TOKENS = 6


def model_overrides(spec: ProbeSpec, configuration: ProbeConfiguration) -> dict:
    """The `tiny_config` keyword arguments of a configuration: the probe's `model`, then the configuration's own."""
    return {**spec.model, **configuration.config}


def check_configurations(spec: ProbeSpec) -> None:
    """Build every configuration's config (no weights), so a bad override fails before hours of training, with the
    configuration's name and the probe file in the error."""
    tokenizer = build_tiny_tokenizer()
    for configuration in spec.configurations:
        try:
            tiny_config(tokenizer, **model_overrides(spec, configuration))
        except (TypeError, ValueError, StrictDataclassError) as error:  # the config's validators raise the last
            raise ValueError(f"{spec.source}: configuration {configuration.name!r} is not a valid PanoVLM config: {error}") from error


def stage_options(spec: ProbeSpec, configuration: ProbeConfiguration, seed: int, start: Path, train_csv: Path, run_dir: Path) -> list[StageOptions]:
    """The options of the configuration's stages, each starting from the previous one's output."""
    stages, previous = [], start
    for name in configuration.stages:
        options = {**_COMMON_STAGE_OPTIONS, **STAGE_DEFAULTS[name], **spec.stages.get(name, {})}
        options.setdefault("logging_steps", max(1, options["max_steps"] // 10))
        stages.append(
            StageOptions(
                stage=name, model=str(previous), train_csv=str(train_csv), output_dir=str(run_dir / name),
                batch_size=spec.batch_size, seed=seed, **options,
            )
        )
        previous = run_dir / name
    return stages


def answer_tables(model, processor, data_dir: Path, manifest: dict, batch_size: int = 32) -> dict[str, list[str]]:
    """The model's answer to every held-out question, per task, in the order of the task's table."""
    generation_config = greedy_generation_config(model, MAX_NEW_TOKENS)
    answers = {}
    for task in PROBE_TASKS:
        table = load_caption_table(data_dir / manifest["tables"][task])
        groups = group_rows(table)
        captions, failures, _ = generate_captions(model, processor, groups, batch_size, generation_config, show_progress=False)
        if failures:
            raise RuntimeError(f"could not read {len(failures)} panoramas of {task}: {sorted(set(failures.values()))}")
        rows = [""] * len(table)
        for group, caption in zip(groups, captions):
            for row in group.rows:
                rows[row] = caption
        answers[task] = rows
    return answers


def score_answers(answers: dict[str, list[str]], data_dir: Path, manifest: dict) -> dict[str, float]:
    """Accuracy per task (exact closed-set answers) and the consistency rate under yaw rolls."""
    scores = {}
    for task in PROBE_TASKS:
        if task == "consistency":
            continue
        references = load_caption_table(data_dir / manifest["tables"][task])["annotation"]
        scores[task] = sum(closed_answer(p, ANSWERS[task]) == r for p, r in zip(answers[task], references)) / len(references)
    scores["consistency"] = consistency_rate(
        answers["direction8"] + answers["direction8_seam"], answers["consistency"], manifest["consistency_pairs"]
    )
    return scores


def run_configuration(
    spec: ProbeSpec, configuration: ProbeConfiguration, seed: int, data_dir: Path, manifest: dict, run_dir: Path
) -> dict:
    """Build, train and score one configuration on one seed in `run_dir` (replaced); return the run's record:
    `scores` per task, `seconds` (build to score, wall clock) and `cpu_seconds` (this process's CPU time, every
    thread: what a shared machine does not inflate as much), each stage's seconds and last loss, sample answers."""
    begin, cpu_begin = time.perf_counter(), time.process_time()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    checkpoint = run_dir / "initial"
    overrides = model_overrides(spec, configuration)
    torch.manual_seed(seed)
    build_tiny_checkpoint(checkpoint, seed=seed, **overrides)
    plan = plan_stages(stage_options(spec, configuration, seed, checkpoint, data_dir / manifest["tables"]["train"], run_dir), force=True)
    stages = {}
    for summary in run_plan(plan):
        stages[summary["stage"]] = {"seconds": summary["seconds"], "steps": summary["global_step"], "last_loss": summary["last_loss"]}
    # A finetune output is a LoRA adapter: the Auto classes load it onto its base (the previous stage's output).
    final = plan[-1].options.output_dir
    model, processor = AutoModelForImageTextToText.from_pretrained(final).eval(), AutoProcessor.from_pretrained(final)
    answers = answer_tables(model, processor, data_dir, manifest)
    scores = score_answers(answers, data_dir, manifest)
    config = model.config
    record = {
        "configuration": configuration.name,
        "seed": seed,
        "scores": scores,
        "seconds": round(time.perf_counter() - begin, 1),
        "cpu_seconds": round(time.process_time() - cpu_begin, 1),
        "stages": stages,
        "num_views": config.num_views,
        "image_tokens": config.num_image_tokens,
        "parameters": model.num_parameters(),
        "examples": {task: answers[task][:2] for task in PROBE_TASKS},
    }
    logger.info("probe %s seed %d: %s in %.0f s", configuration.name, seed, scores, record["seconds"])
    return record


__all__ = ["MAX_NEW_TOKENS", "STAGE_DEFAULTS", "answer_tables", "check_configurations", "model_overrides", "run_configuration", "score_answers", "stage_options"]
