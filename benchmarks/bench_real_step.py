"""Training step, generation and peak memory at real width: PanoVLM against LLaVA with SigLIP-so400m-sized and
Qwen3-0.6B-sized towers (random init, built from configs), and the BiMamba resampler's share of the step.

    python benchmarks/bench_real_step.py            # CPU: 2 + 2 layers at full width, bf16 (~6 min on 2 cores)
    python benchmarks/bench_real_step.py --quick    # 1 + 1 layers, fewer repeats (~3 min)
    python benchmarks/bench_real_step.py --vision-layers 27 --text-layers 28 --vocab-size 151936   # full size

Models (benchmarks/_real_sizes.py): vision width 1152 (MLP 4304, 16 heads, patch 16 on 256² views: 256 tokens per
view), LM width 1024 (MLP 3072, 16 / 8 heads of 128). On the 2-core CPU the full depth (27 + 28 layers) takes
minutes per step, so the default keeps the full width but `--vision-layers 2 --text-layers 2` and the tiny
tokenizer's vocabulary: the work both models share (tower layers, LM layers, the LM head) is then smaller, which
makes PanoVLM's own modules (resampler, positional encoding, projector, stitching) a *larger* share than at full
size: the ratios are upper bounds of the full-size ones. `gpu_check.py` runs the full size on a GPU.

PanoVLM: `anyres_e2p` (global view + 8 horizon views of 256², 90 degree fov), MLP or BiMamba resampler (the
library's default widths), `stitching_mode="concat"`: 9 x 256 = 2304 image tokens. LLaVA: the same 9 views as 9
images of one prompt, the same 2304 placeholders and input ids, its 2-layer projector; tower and LM weights copied
from PanoVLM. Batch 1, `--dtype` (bf16 by default: this CPU has AVX512-BF16) for weights, activations and AdamW.

* Training step: forward with labels, backward, AdamW step, zero_grad; interleaved, paired ratio.
* Generation: greedy, time to first token (`max_new_tokens=1`) and `--new-tokens` tokens (tokens/s = new tokens /
  wall time of the call); interleaved, paired ratios.
* Peak memory: each model in a fresh process (`MALLOC_MMAP_THRESHOLD_`, see _timing.measure_peak_rss) builds the
  pair, drops the other model, then runs 2 training steps; reported: the process's peak RSS during the steps (the
  target) and its rise above the RSS before them.
* BiMamba share: for 1, 9 and 17 views (resize; anyres_e2p with overlap 0.5; with overlap 0.75), PanoVLM with the
  BiMamba resampler: its training step interleaved with fwd+bwd of the resampler alone on the same input (captured
  from the step); share = the median of the paired ratios resampler / step.

Targets: step ours / LLaVA <= 1.05, tokens/s ours / LLaVA >= 0.95, peak memory ours / LLaVA <= 1.05 (MLP
resampler; BiMamba reported against the same LLaVA for information: it is extra work LLaVA does not do).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _real_sizes  # noqa: E402
import _timing  # noqa: E402


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[name]


def _tower_kwargs(args) -> dict:
    return {"vision_layers": args.vision_layers, "text_layers": args.text_layers,
            "vocab_size": args.vocab_size or "tokenizer"}


def _tiny_tokenizer():
    from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


def memory_worker(args) -> None:
    """Fresh process: build the pair, keep `args.memory_worker`'s model, report the peak RSS of 2 training steps."""
    import gc

    import torch

    torch.set_num_threads(args.threads)
    tokenizer, config, ours, llava = _real_sizes.build_pair(args.resampler, dtype=_dtype(args.dtype),
                                                            **_tower_kwargs(args))
    model = ours if args.memory_worker == "ours" else llava
    del ours, llava
    gc.collect()
    inputs = _real_sizes.make_inputs(tokenizer, config, dtype=_dtype(args.dtype))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step = _real_sizes.train_step_fn(model, optimizer, inputs[args.memory_worker])

    seconds = []

    def two_steps():
        for _ in range(2):
            begin = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - begin)

    result = _timing.measure_peak_rss(two_steps)
    result["parameter_bytes"] = _real_sizes.parameter_bytes(model)
    result["step_seconds"] = seconds  # the first step includes allocating AdamW's state
    print(json.dumps(result), flush=True)


def measure_memory(args, name: str, log) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", name, "--resampler", args.resampler,
               "--dtype", args.dtype, "--threads", str(args.threads), "--vision-layers", str(args.vision_layers),
               "--text-layers", str(args.text_layers)]
    if args.vocab_size is not None:
        command += ["--vocab-size", str(args.vocab_size)]
    env = {**os.environ, **_timing.MEMORY_WORKER_ENV}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"  memory {name}: peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB, rise "
        f"{result['peak_increase_bytes'] / 2**20:.0f} MiB, steps {', '.join(f'{t:.1f}' for t in result['step_seconds'])} s")
    return result


def compare(args, resampler: str, log) -> tuple[list, dict]:
    import torch

    tokenizer, config, ours, llava = _real_sizes.build_pair(resampler, dtype=_dtype(args.dtype), **_tower_kwargs(args))
    inputs = _real_sizes.make_inputs(tokenizer, config, dtype=_dtype(args.dtype))
    models = {"ours": ours, "llava": llava}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    log(f"{resampler}: {config.num_views} views, {config.num_image_tokens} image tokens, sequence "
        f"{inputs['ours']['input_ids'].shape[1]}, parameters ours {params['ours']:,} / LLaVA {params['llava']:,}")
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in models.items()}
    steps = {name: _real_sizes.train_step_fn(models[name], optimizers[name], inputs[name]) for name in models}
    step = _timing.interleaved(steps, repeats=args.repeats, warmup=1, log=log)
    first = {name: _real_sizes.generate_fn(models[name], inputs["prompt_ids"], inputs[name]["pixel_values"], 1)
             for name in models}
    many = {f"{name}_gen": _real_sizes.generate_fn(models[name], inputs["prompt_ids"], inputs[name]["pixel_values"],
                                                   args.new_tokens) for name in models}
    gen = _timing.interleaved({**first, **many}, repeats=args.repeats, warmup=1, log=log)
    memory = {name: measure_memory(argparse.Namespace(**{**vars(args), "resampler": resampler}), name, log)
              for name in models}
    del ours, llava, models, optimizers, steps

    label = f"{resampler} resampler"
    step_ratio = _timing.paired_ratio(step, "ours", "llava")
    ttft_ratio = _timing.paired_ratio(gen, "ours", "llava")
    tps_ratio = 1 / _timing.paired_ratio(gen, "ours_gen", "llava_gen")
    mem_ratio = memory["ours"]["peak_rss_bytes"] / memory["llava"]["peak_rss_bytes"]
    binding = resampler == "mlp"
    rows = [
        _timing.ratio_row(f"{label}: training step", step["ours"]["median_s"], step["llava"]["median_s"],
                          "<= 1.05" if binding else "(info)", step_ratio <= 1.05, ratio=step_ratio),
        _timing.ratio_row(f"{label}: time to first token", gen["ours"]["median_s"], gen["llava"]["median_s"],
                          "(info)", ttft_ratio <= 1.05, ratio=ttft_ratio),
        _timing.ratio_row(f"{label}: generated tokens/s ({args.new_tokens} tokens)",
                          args.new_tokens / gen["ours_gen"]["median_s"], args.new_tokens / gen["llava_gen"]["median_s"],
                          ">= 0.95" if binding else "(info)", tps_ratio >= 0.95, unit="tok/s", ratio=tps_ratio),
        _timing.ratio_row(f"{label}: peak RSS of 2 training steps", memory["ours"]["peak_rss_bytes"],
                          memory["llava"]["peak_rss_bytes"], "<= 1.05" if binding else "(info)", mem_ratio <= 1.05,
                          unit="bytes"),
    ]
    details = {"resampler": resampler, "num_views": config.num_views, "num_image_tokens": config.num_image_tokens,
               "sequence_length": inputs["ours"]["input_ids"].shape[1], "parameters": params,
               "training_step": step, "generation": gen, "memory": memory}
    return rows, details


def bimamba_share(args, num_views: int, log) -> dict:
    import torch

    tokenizer, config, ours, _ = _real_sizes.build_pair("bimamba", num_views=num_views, dtype=_dtype(args.dtype),
                                                        with_llava=False, **_tower_kwargs(args))
    inputs = _real_sizes.make_inputs(tokenizer, config, dtype=_dtype(args.dtype))
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    resampler = ours.model.resampler
    captured = {}
    handle = resampler.register_forward_pre_hook(lambda module, args_: captured.setdefault("x", args_[0].detach()))
    step = _real_sizes.train_step_fn(ours, optimizer, inputs["ours"])
    step()
    handle.remove()
    x = captured["x"].clone().requires_grad_(True)

    def resampler_alone():
        out = resampler(x)
        out.float().sum().backward()
        x.grad = None
        resampler.zero_grad(set_to_none=True)

    timing = _timing.interleaved({"step": step, "resampler": resampler_alone}, repeats=args.repeats, warmup=0, log=log)
    share = _timing.paired_ratio(timing, "resampler", "step")
    log(f"  BiMamba share at {num_views} view(s), resampler input {tuple(x.shape)}: {share:.3f}")
    return {"num_views": num_views, "resampler_input_shape": list(x.shape), "share_of_step": share,
            "timing": timing}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 + 1 layers, 2 repeats, 1 and 9 views for the share")
    parser.add_argument("--vision-layers", type=int, default=None, help="default 2 (--quick: 1); real: 27")
    parser.add_argument("--text-layers", type=int, default=None, help="default 2 (--quick: 1); real: 28")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the tiny tokenizer's; real: 151936")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 2)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--resamplers", nargs="+", default=["mlp", "bimamba"], choices=("mlp", "bimamba"))
    parser.add_argument("--share-views", type=int, nargs="*", default=None, choices=sorted(_real_sizes.VIEW_LAYOUTS))
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="only the peak RSS (and the times) of 2 training steps, each model in its own process: for the full "
        "depth, where both models with their AdamW state do not fit in this machine's memory at once",
    )
    parser.add_argument("--memory-worker", choices=("ours", "llava"), help=argparse.SUPPRESS)
    parser.add_argument("--resampler", default="mlp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.vision_layers = args.vision_layers or (1 if args.quick else 2)
    args.text_layers = args.text_layers or (1 if args.quick else 2)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.share_views is None:
        args.share_views = [1, 9] if args.quick else [1, 9, 17]
    if args.memory_worker:
        memory_worker(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    load_before = _timing.load_average()
    rows, details, shares = [], [], []

    def payload() -> dict:
        return {
            "benchmark": "bench_real_step",
            "description": "PanoVLM vs LlavaForConditionalGeneration at real width (SigLIP-so400m / Qwen3-0.6B widths, "
            "depth and vocabulary as in settings), same towers, same image tokens; BiMamba share of the step",
            "targets": {"training_step": "<= 1.05", "tokens_per_s": ">= 0.95", "peak_rss": "<= 1.05"},
            "settings": vars(args),
            "towers": dict(zip(("vision", "text"), _real_sizes.tower_configs(
                tokenizer=_tiny_tokenizer(), **_tower_kwargs(args)))),
            "machine": {**_timing.machine_facts(), "load_average_before": load_before},
            "ratios": rows,
            "details": details,
            "bimamba_share": shares,
            "wall_time_s": time.perf_counter() - start,
        }

    # The results so far are written after every section: a run stopped half-way (a BiMamba step can take minutes
    # on a loaded CPU) keeps what it measured.
    name = "bench_real_step_quick" if args.quick else "bench_real_step"
    if (args.vision_layers, args.text_layers) == (27, 28):
        name = "bench_real_step_full_depth"
    if args.memory_only:
        name += "_memory"
        for resampler in args.resamplers:
            args.resampler = resampler
            memory = {model: measure_memory(args, model, log) for model in ("ours", "llava")}
            ours, llava = (memory[model]["peak_rss_bytes"] / 2**20 for model in ("ours", "llava"))
            rows.append(_timing.ratio_row(f"{resampler} resampler: peak RSS of 2 training steps", ours, llava,
                                          "<= 1.05", ours / llava <= 1.05, unit="MiB"))
            details.append({"resampler": resampler, "memory": memory})
            _timing.write_results(name, payload())
        _timing.print_ratio_table(rows, "Real width: peak memory of 2 training steps, ours / LLaVA")
        print(f"total {time.perf_counter() - start:.0f} s")
        return
    for resampler in args.resamplers:
        more_rows, more = compare(args, resampler, log)
        rows += more_rows
        details.append(more)
        _timing.write_results(name, payload())
    for views in args.share_views:
        shares.append(bimamba_share(args, views, log))
        _timing.write_results(name, payload())
    _timing.print_ratio_table(rows, "Real width: training step, generation and peak memory, ours / LLaVA")
    if shares:
        print("| views | resampler input | BiMamba fwd+bwd / training step |\n|---:|---|---:|")
        for share in shares:
            print(f"| {share['num_views']} | {share['resampler_input_shape']} | {share['share_of_step']:.3f} |")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
