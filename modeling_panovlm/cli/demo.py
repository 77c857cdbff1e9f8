"""`panovlm demo`: PanoVLM end to end on CPU, offline; a tiny random model learns to answer questions about
synthetic panoramas."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from configuration_panovlm.atomic_files import write_text_atomically
from modeling_panovlm import RESAMPLERS
from modeling_panovlm.evaluation import generate_captions, greedy_generation_config, group_rows
from modeling_panovlm.testing.synthetic_panoramas import (
    TASK_CHANCE,
    TASKS,
    synthetic_accuracy,
    synthetic_answer_key,
    write_synthetic_dataset,
)
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training.options import StageOptions
from modeling_panovlm.training.plan import format_stage_line, plan_stages, plot_run, run_plan
from processing_panovlm.data.captions import load_caption_table

from .console import LEVELS, attach_log_file, configure_logging, library_warnings_logged


logger = logging.getLogger(__name__)

DESCRIPTION = """\
PanoVLM end to end on CPU, offline: a tiny random model learns to answer questions about synthetic panoramas.

  1. builds a tiny randomly initialised checkpoint and checks that save -> load reproduces it bit for bit;
  2. writes a synthetic panorama dataset (coloured shapes at known directions, some across the +/-180 degree seam);
  3. measures held-out accuracy: "where is the red object?" -> direction, "what is on the left?" -> colour
     (chance 25%);
  4. trains the three stages with transformers.Trainer, each starting from the previous stage's output: vision
     (overlap consistency between neighbouring views), resampler (LM frozen), finetune (LoRA via PEFT);
  5. measures the same accuracy again, loading the finetune adapter with AutoModelForImageTextToText.

--task ceiling_floor asks instead about one shape on the ceiling and one on the floor, which the horizon views never
see ("ceiling" -> colour, "red object" -> ceiling or floor); --pitch-levels-deg 30 0 -30 adds a ring of views looking
up and one looking down (12 views instead of 4), so running both measures what they add.

Figures go to <output-dir>/demo_results.json, the details to <output-dir>/demo.log; each stage directory holds its
training_curves.png, <output-dir>/training_curves.png shows all three.

examples:
  panovlm demo                       # about 6 minutes on 2 CPU cores
  panovlm demo --quick               # a few steps per stage: checks the pipeline, learns nothing
  panovlm demo --resampler perceiver --output-dir out/demo-perceiver
  panovlm demo --task ceiling_floor --pitch-levels-deg 30 0 -30 --output-dir out/demo-pitch
"""

# Four 120-degree views a quarter turn apart (30 degrees shared with each neighbour, for the vision stage), 3x3
# tokens each; `drop_overlap` stitching keeps 27 image tokens, few enough for a two-layer LM to learn where to look
# within minutes on a CPU.
TINY_MODEL = dict(crop_strategy="e2p", fov_deg=120.0, overlap_ratio=0.25, view_size=48, patch_size=16)
# (stage, optimizer steps, learning rate, steps with --quick)
STAGE_PLAN = (("vision", 150, 2e-3, 4), ("resampler", 300, 2e-3, 4), ("finetune", 3000, 3e-3, 4))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panovlm demo", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="out/demo", help="where everything is written (default: out/demo)")
    parser.add_argument(
        "--resampler", choices=sorted(RESAMPLERS), default="mlp", help="resampler of the tiny model (default: mlp)"
    )
    parser.add_argument(
        "--num-panoramas", type=int, default=600, help="synthetic panoramas to write, 15%% held out (default: 600)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="panoramas per training step (default: 16)")
    parser.add_argument("--quick", action="store_true", help="4 steps per stage: checks the pipeline only")
    parser.add_argument(
        "--task", choices=TASKS, default="directions", help="what the panoramas and questions are about"
    )
    parser.add_argument(
        "--pitch-levels-deg",
        type=float,
        nargs="+",
        default=[0.0],
        help="pitch of each ring of views in degrees, top first (default: 0, the horizon only)",
    )
    parser.add_argument(
        "--log-level", choices=LEVELS, help="what the terminal shows besides the results (default: warnings)"
    )
    parser.add_argument("--quiet", action="store_true", help="results and errors only, no progress bars")
    return parser


def accuracy(model_dir: Path, test_csv: Path, batch_size: int = 16) -> tuple[float, int, list[dict[str, str]]]:
    """Held-out accuracy of the checkpoint (or adapter) in `model_dir` on the colour and direction questions, their
    number, and the first three questions with the model's answers."""
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    groups = [g for g in group_rows(load_caption_table(test_csv)) if synthetic_answer_key(g.query, g.references[0])]
    config = greedy_generation_config(model, max_new_tokens=8)
    captions, failures, _ = generate_captions(model, processor, groups, batch_size, config, show_progress=False)
    if failures:
        raise RuntimeError(f"could not read {len(failures)} test panoramas: {sorted(set(failures.values()))}")
    score, questions = synthetic_accuracy([g.query for g in groups], [g.references[0] for g in groups], captions)
    examples = [
        {"image": Path(g.url).name, "query": g.query, "answer": caption, "reference": g.references[0]}
        for g, caption in zip(groups[:3], captions)
    ]
    return score, questions, examples


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_panoramas < 2 or args.batch_size < 1:
        parser.error("--num-panoramas must be at least 2 and --batch-size at least 1")
    configure_logging(args.log_level, args.quiet)
    out = Path(args.output_dir)
    log_file = attach_log_file(out / "demo.log")
    torch.manual_seed(0)
    begin = time.perf_counter()

    checkpoint = out / "tiny-panovlm"
    built, _ = build_tiny_checkpoint(
        checkpoint, resampler_type=args.resampler, pitch_levels_deg=args.pitch_levels_deg, **TINY_MODEL
    )
    objects = {"num_objects": 4, "min_objects": 1} if args.task == "directions" else {}
    train_csv, test_csv = write_synthetic_dataset(
        out / "data", args.num_panoramas, seed=0, height=64, test_fraction=0.15, task=args.task, **objects
    )
    model, info = AutoModelForImageTextToText.from_pretrained(checkpoint, output_loading_info=True)
    processor = AutoProcessor.from_pretrained(checkpoint)
    sample = load_caption_table(test_csv)[0]
    prompt = processor.apply_chat_template(processor.build_messages(sample["query"]), add_generation_prompt=True)
    inputs = processor(images=sample["image"], text=prompt, return_tensors="pt")
    with torch.no_grad():
        identical = torch.equal(built(**inputs).logits, model.eval()(**inputs).logits)
    config = model.config
    print(
        f"1. tiny random {type(model).__name__} ({model.num_parameters():,} parameters) saved to {checkpoint}: "
        f"{config.resampler_config.resampler_type} resampler, {config.crop_strategy} with {config.num_views} views "
        f"of {config.view_size} px -> {config.num_image_tokens} image tokens. Reloaded with the Auto classes: "
        f"{sum(len(v) for v in info.values())} missing/unexpected/mismatched keys, bit-identical logits: {identical}"
    )
    rows = len(load_caption_table(train_csv))
    print(f"2. synthetic panoramas in {out / 'data'}: {rows} training rows, held-out {test_csv.name}")
    before, questions, _ = accuracy(checkpoint, test_csv)
    chance = f"{TASK_CHANCE[args.task] * 100:g}%"
    print(f"3. held-out accuracy before training: {before:.1%} of {questions} questions (chance {chance})", flush=True)

    stages, previous = [], checkpoint
    for stage, steps, learning_rate, quick_steps in STAGE_PLAN:
        stages.append(
            StageOptions(
                stage=stage,
                model=str(previous),
                train_csv=str(train_csv),
                output_dir=str(out / stage),
                max_steps=quick_steps if args.quick else steps,
                learning_rate=learning_rate,
                batch_size=args.batch_size,
                weight_decay=0.0,
                logging_steps=1 if args.quick else 50,
                save_steps=100_000,  # the stage output is the checkpoint that matters here
                lora_r=32,
                lora_alpha=64,
                lora_dropout=0.0,
                augment=stage == "vision",  # yaw roll keeps the vision stage from fitting one panorama layout
                seed=0,
                disable_tqdm=args.quiet,
            )
        )
        previous = out / stage
    results = {
        "task": args.task,
        "pitch_levels_deg": config.pitch_levels_deg,
        "image_tokens": config.num_image_tokens,
        "reload_bit_identical": identical,
        "accuracy_before": before,
    }
    plan = plan_stages(stages, force=True)  # a demo run always trains
    for summary in run_plan(plan):
        keys = ("global_step", "seconds", "first_loss", "last_loss")
        results[summary["stage"]] = dict(zip(("steps", "seconds", "first_loss", "last_loss"), map(summary.get, keys)))
        print(f"4. {format_stage_line(summary)}", flush=True)
    curves = plot_run(plan, out / "training_curves.png")

    after, questions, examples = accuracy(previous, test_csv)
    total = round(time.perf_counter() - begin, 1)
    results.update(accuracy_after=after, questions=questions, examples_after=examples, total_seconds=total)
    print(f"5. held-out accuracy on {questions} questions (chance {chance}):")
    print(f"   | before training | {before:6.1%} |\n   | after training  | {after:6.1%} |")
    for example in examples:
        print(f"   {example['image']} {example['query']!r}: {example['answer']!r} (reference {example['reference']!r})")
    write_text_atomically(out / "demo_results.json", json.dumps(results, indent=2))
    print(f"   total {total:.0f} s; figures in {out / 'demo_results.json'}, curves in {curves}, details in {log_file}")
    dropped = library_warnings_logged()
    if dropped:
        print(f"   {dropped} warning(s) from libraries were written to {log_file}")
    return 0


__all__ = ["STAGE_PLAN", "TINY_MODEL", "accuracy", "build_parser", "main"]
