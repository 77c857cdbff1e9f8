"""Memory per process when training on two processes: FSDP2 against DDP, through `PanoVLMTrainer`.

    python benchmarks/bench_fsdp_memory.py            # 12-layer LM (~300 MB of fp32 weights), 4 steps (~80 s)
    python benchmarks/bench_fsdp_memory.py --quick    # 4-layer LM (~100 MB), 2 steps (~45 s)

The model is a PanoVLM whose language model is large enough for sharding to matter: a Qwen3 decoder of 768 wide
layers (2048 MLP, 12 heads, 4 KV heads) with random weights, behind the tiny SigLIP tower and MLP resampler of the
test checkpoints. Every case trains it with AdamW (fp32) on two CPU processes (gloo, `torchrun`), one panorama and
caption per process and step, with the language model, resampler and projector trainable (the vision tower frozen,
as in the stages): a case where parameters, gradients and optimizer state all scale with the LM.

* DDP: `Trainer`'s data parallelism (each process holds the whole model, its gradients and optimizer state).
* FSDP2: `fsdp=True, fsdp_config={"version": 2}`: decoder layers, tower layers (what `_no_split_modules`
  names) and the root each sharded over the two processes.

Each process reports, at its last optimizer step, the bytes of the parameters, gradients and AdamW state it holds
(exact: the local shards under FSDP2), and the peak of its resident set size from the first training step to the
end (the kernel's VmHWM, reset once the model is wrapped; the loading of the full checkpoint that precedes it is not
counted), also less the RSS the process had before loading the model (the Python/torch runtime). The ratio
FSDP2 / DDP of the tensors is expected at about 1/2 (one over the number of processes); the RSS ratios are higher:
both cases hold the same runtime and activations, and FSDP2 gathers one sharded unit at a time in full. Memory figures do not depend on
the load of the (shared) machine the way timings do; step times are printed for information only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _timing  # noqa: E402


PROCESSES = 2
FSDP2 = {"fsdp": True, "fsdp_config": {"version": 2}}


def build(root: Path, layers: int) -> tuple[Path, Path]:
    """A PanoVLM checkpoint with a `layers`-deep 768-wide Qwen3 LM of random weights, and a caption table."""
    import torch

    from configuration_panovlm.configuration_panovlm import PanoVLMConfig
    from modeling_panovlm.modeling_panovlm import PanoVLMForConditionalGeneration
    from modeling_panovlm.testing.synthetic_panoramas import write_synthetic_dataset
    from modeling_panovlm.testing.tiny_checkpoint import tiny_config
    from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer
    from processing_panovlm.processing_panovlm import PanoVLMProcessor

    tokenizer = build_tiny_tokenizer()
    tiny = tiny_config(tokenizer).to_dict()
    text = {k: v for k, v in tiny["text_config"].items() if k != "layer_types"}  # derived from the layer count
    text = {**text, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": layers,
            "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 64, "initializer_range": 0.02}
    config = PanoVLMConfig(**{**tiny, "text_config": text})
    torch.manual_seed(0)
    model = PanoVLMForConditionalGeneration(config)
    model.save_pretrained(root / "model")
    PanoVLMProcessor.from_model_config(config, tokenizer).save_pretrained(
        root / "model"
    )
    train, _ = write_synthetic_dataset(root / "data", num=4, height=64, test_fraction=0.25, num_objects=1)
    return root / "model", train


# ---- worker (one rank of a torchrun launch) ------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback, TrainingArguments

    import modeling_panovlm  # noqa: F401  (registers the Auto classes)
    from modeling_panovlm.training import PanoVLMStageCallback, PanoVLMTrainer, StageSpec
    from modeling_panovlm.training.runner import prepare_table
    from processing_panovlm.data.collator import PanoVLMDataCollator

    def local_bytes(tensor: torch.Tensor) -> int:
        tensor = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        return tensor.numel() * tensor.element_size()

    class Measure(TrainerCallback):
        def __init__(self):
            self.report: dict = {}
            self.step_started = 0.0
            self.step_times: list[float] = []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.report["rss_at_train_begin_bytes"] = _timing.rss_bytes()
            self.report["peak_rss_reset"] = _timing.reset_peak_rss()

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_started = time.perf_counter()

        def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
            # After `optimizer.step()`, before the gradients are zeroed: everything training holds.
            self.report["parameter_bytes"] = sum(local_bytes(p) for p in model.parameters())
            self.report["gradient_bytes"] = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
            self.report["optimizer_state_bytes"] = sum(
                local_bytes(value) for group in optimizer.state.values() for value in group.values()
                if isinstance(value, torch.Tensor)
            )

        def on_step_end(self, args, state, control, **kwargs):
            self.step_times.append(time.perf_counter() - self.step_started)

        def on_train_end(self, args, state, control, **kwargs):
            self.report["peak_rss_bytes"] = _timing.peak_rss_bytes()
            self.report["step_times_s"] = self.step_times

    torch.set_num_threads(1)
    output = Path(args.output)
    rss_before_model = _timing.rss_bytes()
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(args.checkpoint)
    table = prepare_table(args.train_csv, output / "data_report", "train", needs_text=True, augment=False)
    # The finetune stage as a full fine-tune (no LoRA): the whole LM trains, with the resampler and projector.
    spec = StageSpec("finetune", ("model.language_model.", "model.resampler.", "model.multi_modal_projector."), "lm")
    training = TrainingArguments(
        output_dir=str(output / "run"), max_steps=args.steps, per_device_train_batch_size=1, learning_rate=1e-5,
        warmup_steps=0, logging_steps=args.steps, save_strategy="no", report_to="none", use_cpu=True,
        remove_unused_columns=False, ddp_find_unused_parameters=False, disable_tqdm=True,
        **(FSDP2 if args.parallelism == "fsdp2" else {}),
    )
    measure = Measure()
    trainer = PanoVLMTrainer(
        model=model, args=training, data_collator=PanoVLMDataCollator(processor), train_dataset=table,
        callbacks=[PanoVLMStageCallback(spec), measure], stage=spec,
    )
    trainer.train()
    rank = dist.get_rank()
    (output / f"rank{rank}.json").write_text(json.dumps({
        **measure.report,
        "rss_before_model_bytes": rss_before_model,
        "peak_rss_rise_bytes": measure.report["peak_rss_bytes"] - rss_before_model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # gloo's teardown can abort a finished process (environment note)


# ---- driver --------------------------------------------------------------------------------------------------------
def launch(parallelism: str, checkpoint: Path, train_csv: Path, output: Path, steps: int) -> list[dict]:
    output.mkdir(parents=True)
    env = {**os.environ, **_timing.MEMORY_WORKER_ENV, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES),
               __file__, "--worker", "--parallelism", parallelism, "--checkpoint", str(checkpoint),
               "--train-csv", str(train_csv), "--output", str(output), "--steps", str(steps)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    reports = [output / f"rank{rank}.json" for rank in range(PROCESSES)]
    if not all(path.exists() for path in reports):  # judged from the ranks' own reports, not torchrun's exit code
        raise RuntimeError(f"{parallelism} run failed (exit code {result.returncode}):\n{result.stderr[-4000:]}")
    print(f"  {parallelism}: {time.perf_counter() - started:.0f} s")
    return [json.loads(path.read_text()) for path in reports]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parallelism", choices=("ddp", "fsdp2"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--train-csv", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    layers, steps = (4, 2) if args.quick else (12, 4)
    load_before = _timing.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint, train_csv = build(root, layers)
        size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
        print(f"checkpoint: {size / 2**20:.0f} MiB of weights; training {steps} steps on {PROCESSES} processes")
        results = {p: launch(p, checkpoint, train_csv, root / p, steps) for p in ("ddp", "fsdp2")}

    def per_process(parallelism: str, key: str) -> float:
        return max(report[key] for report in results[parallelism])  # the larger of the two processes

    rows = []
    for key, label in (("parameter_bytes", "parameters held per process"),
                       ("gradient_bytes", "gradients held per process"),
                       ("optimizer_state_bytes", "AdamW state per process")):
        ours, baseline = per_process("fsdp2", key), per_process("ddp", key)
        rows.append(_timing.ratio_row(f"{label} (FSDP2 / DDP)", ours, baseline, "~ 1/2 (0.45-0.55)",
                                      0.45 <= ours / baseline <= 0.55, unit="bytes"))
    held = {p: sum(per_process(p, k) for k in ("parameter_bytes", "gradient_bytes", "optimizer_state_bytes"))
            for p in results}
    rows.append(_timing.ratio_row("parameters + gradients + AdamW state", held["fsdp2"], held["ddp"],
                                  "~ 1/2 (0.45-0.55)", 0.45 <= held["fsdp2"] / held["ddp"] <= 0.55, unit="bytes"))
    ours, baseline = per_process("fsdp2", "peak_rss_bytes"), per_process("ddp", "peak_rss_bytes")
    rows.append(_timing.ratio_row("peak RSS of a process while training", ours, baseline, "< 1", ours < baseline,
                                  unit="bytes"))
    ours, baseline = per_process("fsdp2", "peak_rss_rise_bytes"), per_process("ddp", "peak_rss_rise_bytes")
    rows.append(_timing.ratio_row("that peak, above the RSS before the model was loaded", ours, baseline, "< 1",
                                  ours < baseline, unit="bytes"))
    _timing.print_ratio_table(rows, f"Memory per process, FSDP2 / DDP, {PROCESSES} CPU processes, {layers}-layer LM")
    for parallelism in results:
        times = sorted(t for report in results[parallelism] for t in report["step_times_s"][1:])
        if times:
            print(f"{parallelism}: median step {times[len(times) // 2]:.2f} s (information; the machine is shared)")

    _timing.write_results("bench_fsdp_memory_quick" if args.quick else "bench_fsdp_memory", {
        "settings": {"layers": layers, "steps": steps, "processes": PROCESSES, "weights_bytes": size,
                     "launcher": "torchrun --standalone", "backend": "gloo", "optimizer": "adamw_torch (fp32)"},
        "machine": {**_timing.machine_facts(("accelerate",)), "load_average_before": load_before,
                    "load_average_after": _timing.load_average()},
        "ranks": results,
        "ratios": rows,
    })


if __name__ == "__main__":
    main()
