"""BiMamba resampler on CPU, forward + backward: our chunked selective scan against transformers' Mamba slow paths.

    python benchmarks/bench_bimamba.py            # d_state 64 (our default), 1 and 2 threads, 3 repeats (~8 min:
                                                  # one step of the transformers loop takes ~50 s)
    python benchmarks/bench_bimamba.py --quick    # d_state 16, 1 thread, 2 repeats (~2 min)

Workload: `BiMambaResampler` (modeling_panovlm/bimamba.py) with hidden 256, 2 blocks (each a left-to-right and a
right-to-left Mamba-1 mixer), expand 2, d_conv 4, input and latent width 256, on a batch of 2 panoramas x 9 views
x 64 tokens, i.e. 18 sequences of 64 tokens. One step = forward, mean-square loss, backward (input and parameters).

Baselines are the same module with every mixer replaced by `transformers.models.mamba.modeling_mamba.MambaMixer`
(the state dict is copied: identical parameters, names and maths; the outputs and gradients are checked):

* loop: `use_mambapy=False`, transformers' sequential slow path (one autograd step per token);
* mambapy: `use_mambapy=True`, the parallel scan of the `mambapy` package (must be installed, else transformers
  silently falls back to the loop; the script refuses to run it then).

Targets: ours >= 40x faster than the loop, ours <= 1x the mambapy time, our peak memory no higher than mambapy's.
Peak memory: each method runs in a fresh worker process (glibc told to mmap large blocks, so RSS follows the live
tensors); the figure is the rise of the RSS peak (VmHWM, reset before the step) over the RSS just before it, for the
first step and for a second one.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _timing  # noqa: E402


METHODS = ("ours", "transformers[mambapy]", "transformers[loop]")


def build_models(d_state: int, hidden: int, depth: int, seed: int = 0):
    import torch
    from torch import nn
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer

    from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig
    from modeling_panovlm.resampler_bimamba import BiMambaResampler

    config = PanoVLMResamplerConfig(
        resampler_type="bimamba", hidden_dim=hidden, depth=depth, latent_dimension=hidden, d_state=d_state,
        dropout=0.0,
    )
    torch.manual_seed(seed)
    ours = BiMambaResampler(config, hidden)
    if config.d_inner % hidden:
        raise ValueError("the transformers baseline needs an integer expand")

    def transformers_version(use_mambapy: bool) -> nn.Module:
        model = copy.deepcopy(ours)
        hf_config = MambaConfig(
            hidden_size=hidden, state_size=config.d_state, expand=config.d_inner // hidden, conv_kernel=config.d_conv,
            time_step_rank=config.dt_rank, use_bias=False, use_conv_bias=True, hidden_act="silu",
            use_mambapy=use_mambapy, num_hidden_layers=1,
        )
        for block in model.blocks:
            for name in ("forward_block", "backward_block"):
                mixer = HFMambaMixer(hf_config, layer_idx=0)
                mixer.load_state_dict(getattr(block, name).state_dict(), strict=True)
                setattr(block, name, mixer)
        return model

    models = {"ours": ours, "transformers[mambapy]": transformers_version(True), "transformers[loop]": transformers_version(False)}
    for model in models.values():
        model.train()
    return config, models


def make_step(model, inputs):
    def step():
        x = inputs.clone().requires_grad_()
        out = model(x)
        out.square().mean().backward()
        return out.detach(), x.grad

    return step


def _memory_worker(method: str, args) -> None:
    """Fresh process: build the models, then measure the RSS rise of two fwd+bwd steps of one method."""
    import torch

    torch.set_num_threads(args.threads[0])
    _, models = build_models(args.d_state, args.hidden, args.depth)
    model = models[method]
    for other in [name for name in models if name != method]:
        del models[other]
    torch.manual_seed(1)
    inputs = torch.randn(args.batch * args.views, args.tokens, args.hidden)
    step = make_step(model, inputs)
    first = _timing.measure_peak_rss(step)
    model.zero_grad(set_to_none=True)
    second = _timing.measure_peak_rss(step)
    import json

    print(json.dumps({"method": method, "first_step": first, "second_step": second}))


def check_mambapy() -> str | None:
    from transformers.utils.import_utils import is_mambapy_available

    if not is_mambapy_available():
        return "mambapy is not installed: transformers would silently run the sequential loop for use_mambapy=True"
    return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="d_state 16, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 2 (--quick: 1)")
    parser.add_argument("--d-state", type=int, default=None, help="default 64 (PanoVLMResamplerConfig's default)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--views", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--skip-loop-memory", action="store_true", help="do not measure the loop's peak memory")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.d_state = args.d_state or (16 if args.quick else 64)
    args.threads = args.threads or ([1] if args.quick else [1, 2])
    if args.memory_worker:
        args.threads = args.threads[:1]
        _memory_worker(args.memory_worker, args)
        return

    import json
    import subprocess

    import torch

    problem = check_mambapy()
    if problem:
        sys.exit(f"bench_bimamba: {problem}. Install the bench extras: pip install -c constraints.txt -e '.[bench]'")
    start = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    config, models = build_models(args.d_state, args.hidden, args.depth)
    torch.manual_seed(1)
    inputs = torch.randn(args.batch * args.views, args.tokens, args.hidden)
    log(f"BiMamba: {args.batch}x{args.views} sequences of {args.tokens} tokens, hidden {args.hidden}, depth "
        f"{args.depth}, d_inner {config.d_inner}, d_state {config.d_state}, dt_rank {config.dt_rank}")

    # Same maths: outputs and gradients of the three implementations (on 2 of the sequences: the loop is slow).
    results = {name: make_step(model, inputs[:2])() for name, model in models.items()}
    numerics = {}
    for name in METHODS[1:]:
        out_diff = (results[name][0] - results["ours"][0]).abs().max().item()
        grad_diff = (results[name][1] - results["ours"][1]).abs().max().item()
        theirs = dict(models[name].named_parameters())
        param_diff = max(
            (p.grad - theirs[key].grad).abs().max().item() for key, p in models["ours"].named_parameters()
        )
        numerics[name] = {"max_abs_diff_output": out_diff, "max_abs_diff_input_grad": grad_diff,
                          "max_abs_diff_param_grad": param_diff}
        log(f"numerics vs {name}: output {out_diff:.2e}, input grad {grad_diff:.2e}, param grads {param_diff:.2e}")
    for model in models.values():
        model.zero_grad(set_to_none=True)

    timings = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        log(f"timing with {threads} thread(s), {args.repeats} repeats after 1 warm-up")

        def case(model):
            step = make_step(model, inputs)

            def run():
                step()
                model.zero_grad(set_to_none=True)

            return run

        timings[threads] = _timing.interleaved(
            {name: case(model) for name, model in models.items()},
            repeats=args.repeats,
            # A loop step runs for tens of seconds: its first-call costs are negligible, so it gets no warm-up.
            warmup={"ours": 1, "transformers[mambapy]": 1, "transformers[loop]": 0},
            log=log,
        )

    memory = {}
    for method in METHODS:
        if method == "transformers[loop]" and args.skip_loop_memory:
            continue
        command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", method,
                   "--d-state", str(args.d_state), "--hidden", str(args.hidden), "--depth", str(args.depth),
                   "--batch", str(args.batch), "--views", str(args.views), "--tokens", str(args.tokens),
                   "--threads", str(args.threads[0])]
        env = {**__import__("os").environ, **_timing.MEMORY_WORKER_ENV}
        output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
        memory[method] = json.loads(output.strip().splitlines()[-1])
        log(f"peak RSS rise {method}: first step {memory[method]['first_step']['peak_increase_bytes'] / 2**20:.1f} MiB, "
            f"second {memory[method]['second_step']['peak_increase_bytes'] / 2**20:.1f} MiB")

    rows = []
    for threads, timing in timings.items():
        ours = timing["ours"]["median_s"]
        loop = timing["transformers[loop]"]["median_s"]
        mambapy = timing["transformers[mambapy]"]["median_s"]
        ratio = _timing.paired_ratio(timing, "ours", "transformers[loop]")
        row = _timing.ratio_row(f"fwd+bwd vs transformers loop, {threads}T", ours, loop, ">= 40x faster (<= 0.025)",
                                1 / ratio >= 40, ratio=ratio)
        row["speedup"] = 1 / ratio
        rows.append(row)
        ratio = _timing.paired_ratio(timing, "ours", "transformers[mambapy]")
        row = _timing.ratio_row(f"fwd+bwd vs transformers mambapy, {threads}T", ours, mambapy, "<= 1x", ratio <= 1,
                                ratio=ratio)
        row["speedup"] = 1 / ratio
        rows.append(row)
    if "ours" in memory and "transformers[mambapy]" in memory:
        for which in ("first_step", "second_step"):
            ours_peak = memory["ours"][which]["peak_increase_bytes"]
            base_peak = memory["transformers[mambapy]"][which]["peak_increase_bytes"]
            rows.append(_timing.ratio_row(f"peak RSS rise vs mambapy ({which.replace('_', ' ')})", ours_peak, base_peak,
                                          "<= 1x", ours_peak <= base_peak, unit="bytes"))
        if "transformers[loop]" in memory:
            loop_peak = memory["transformers[loop]"]["first_step"]["peak_increase_bytes"]
            rows.append(_timing.ratio_row("peak RSS rise vs loop (first step, information)",
                                          memory["ours"]["first_step"]["peak_increase_bytes"], loop_peak, "-", True,
                                          unit="bytes"))
    _timing.print_ratio_table(rows, f"BiMamba resampler fwd+bwd, d_state {args.d_state} (ours / baseline)")
    for row in rows:
        if "speedup" in row:
            print(f"  {row['comparison']}: ours is {row['speedup']:.1f}x faster")

    payload = {
        "benchmark": "bench_bimamba",
        "description": "BiMambaResampler forward+backward on CPU; baselines: the same module with transformers' "
        "MambaMixer (sequential loop / mambapy parallel scan)",
        "targets": {"vs_loop": ">= 40x faster", "vs_mambapy": "<= 1x time", "memory": "peak <= mambapy"},
        "settings": {k: v for k, v in vars(args).items() if k != "memory_worker"},
        "resampler_config": {k: getattr(config, k) for k in ("hidden_dim", "depth", "d_inner", "d_state", "d_conv",
                                                             "dt_rank", "expand")},
        "machine": _timing.machine_facts(("mambapy",)),
        "numerics": numerics,
        "timing": {str(k): v for k, v in timings.items()},
        "memory": memory,
        "memory_method": "fresh process per method; MALLOC_MMAP_THRESHOLD_=65536; rise of VmHWM over VmRSS around one step",
        "ratios": rows,
        "wall_time_s": time.perf_counter() - start,
    }
    _timing.write_results("bench_bimamba_quick" if args.quick else "bench_bimamba", payload)
    print(f"total {payload['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
