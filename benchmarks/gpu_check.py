"""A prepared GPU check: the real-size figures a GPU machine can give in one short run (< 8 min on one H100).

    python benchmarks/gpu_check.py                       # on a CUDA machine: full size, bf16
    python benchmarks/gpu_check.py --cpu-reduced         # tiny widths on the CPU (what CI runs, < 1 min)
    python benchmarks/gpu_check.py --output-dir $OUT     # where gpu_check.json / gpu_check.md go

Needs only what the repository carries (torch, transformers and PanoVLM; flash-attn and mamba-ssm are used when
they import, and the report says when they do not). Sections:

1. step_and_generation: bf16 training step (AdamW, batch 1), time to first token, greedy tokens/s and peak memory,
   PanoVLM (MLP and BiMamba resamplers) against `LlavaForConditionalGeneration` with the same SigLIP-so400m-sized
   and Qwen3-0.6B-sized towers (full depth and vocabulary, random init; benchmarks/_real_sizes.py) and the same
   2304 image tokens (anyres_e2p, 9 views of 256²). Interleaved, paired ratios, as the CPU benchmarks.
2. attention: PanoVLM's (MLP) training step with `attn_implementation` sdpa, eager and flash_attention_2 (if the
   `flash_attn` package imports).
3. views: `equirect.sample_views` of a 4096x2048 uint8 panorama into anyres_e2p 9 x 384², on the device vs the CPU.
4. bimamba: the resampler's selective scan fwd+bwd on the device, torch path (`selective_scan_torch`) against
   mamba-ssm's CUDA kernel when `mamba_ssm` imports; and the BiMamba resampler fwd+bwd on 9 views x 256 tokens.
5. bimamba_share: the BiMamba resampler's fwd+bwd (on the input captured from the step) over PanoVLM's training
   step, for 1, 9 and 17 views.

Every section's error is recorded in the JSON with its traceback and makes the script exit with status 1 after
writing both files (a missing optional package is not an error: the section says "not installed"). `--cpu-reduced`
runs the same code on the CPU with widths of 64 and 1 layer per tower, so that CI keeps it from rotting; its
figures mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _real_sizes  # noqa: E402
import _timing  # noqa: E402


REDUCED = {  # --cpu-reduced: tiny towers and resampler, same code paths
    "vision_layers": 1, "text_layers": 1, "vocab_size": "tokenizer",
    "vision_overrides": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "patch_size": 8,
                         "image_size": 32},
    "text_overrides": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "head_dim": 16},
    "resampler_overrides": {"hidden_dim": 64, "latent_dimension": 64, "depth": 1, "d_state": 8},
}
FULL = {"vision_layers": None, "text_layers": None, "vocab_size": None}


class Check:
    def __init__(self, args):
        import torch

        self.args = args
        self.device = torch.device("cpu" if args.cpu_reduced else "cuda")
        self.dtype = torch.float32 if args.cpu_reduced else torch.bfloat16
        self.sizes = REDUCED if args.cpu_reduced else FULL
        self.repeats = 1 if args.cpu_reduced else args.repeats
        self.new_tokens = 2 if args.cpu_reduced else args.new_tokens

    def time_cases(self, cases: dict, repeats: int | None = None, warmup: int = 1) -> dict:
        return _timing.interleaved({n: _real_sizes.synchronized(f, self.device) for n, f in cases.items()},
                                   repeats=repeats or self.repeats, warmup=warmup)

    def peak_bytes(self, fn) -> int:
        """Peak memory of `fn` above the memory held before it: CUDA allocator on a GPU, RSS on the CPU."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        return _timing.measure_peak_rss(fn)["peak_increase_bytes"]

    def pair(self, resampler: str, attn: str | None = None, with_llava: bool = True):
        sizes = {k: v for k, v in self.sizes.items() if k != "resampler_overrides"}
        return _real_sizes.build_pair(resampler, dtype=self.dtype, device=self.device, attn_implementation=attn,
                                      with_llava=with_llava, resampler_overrides=self.sizes.get("resampler_overrides"),
                                      **sizes)

    # ---- sections ------------------------------------------------------------------------------------------------
    def step_and_generation(self) -> dict:
        import torch

        out = {}
        for resampler in ("mlp", "bimamba"):
            tokenizer, config, ours, llava = self.pair(resampler)
            inputs = _real_sizes.make_inputs(tokenizer, config, device=self.device, dtype=self.dtype)
            models = {"ours": ours, "llava": llava}
            optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-5) for n, m in models.items()}
            steps = {n: _real_sizes.train_step_fn(models[n], optimizers[n], inputs[n]) for n in models}
            step = self.time_cases(steps)
            # Resident (weights, gradients' slots none: zero_grad(set_to_none)), AdamW state after the first steps,
            # plus the peak of one more step above it.
            memory = {}
            for name in models:
                state = sum(t.numel() * t.element_size() for s in optimizers[name].state.values()
                            for t in s.values() if torch.is_tensor(t))
                rise = self.peak_bytes(steps[name])
                memory[name] = {"parameter_bytes": _real_sizes.parameter_bytes(models[name]),
                                "optimizer_state_bytes": state, "step_peak_rise_bytes": rise}
                memory[name]["total_bytes"] = sum(memory[name].values())
            gen = self.time_cases({
                **{n: _real_sizes.generate_fn(models[n], inputs["prompt_ids"], inputs[n]["pixel_values"], 1)
                   for n in models},
                **{f"{n}_gen": _real_sizes.generate_fn(models[n], inputs["prompt_ids"], inputs[n]["pixel_values"],
                                                       self.new_tokens) for n in models},
            })
            out[resampler] = {
                "image_tokens": config.num_image_tokens,
                "step_s": {n: step[n]["median_s"] for n in models},
                "step_ratio": _timing.paired_ratio(step, "ours", "llava"),
                "ttft_s": {n: gen[n]["median_s"] for n in models},
                "ttft_ratio": _timing.paired_ratio(gen, "ours", "llava"),
                "tokens_per_s": {n: self.new_tokens / gen[f"{n}_gen"]["median_s"] for n in models},
                "tokens_per_s_ratio": 1 / _timing.paired_ratio(gen, "ours_gen", "llava_gen"),
                "memory": memory,
                "memory_ratio": memory["ours"]["total_bytes"] / memory["llava"]["total_bytes"],
                "timing": {"step": step, "generation": gen},
            }
            del ours, llava, models, optimizers, steps
            self.empty_cache()
        return out

    def attention(self) -> dict:
        import torch

        implementations = ["sdpa", "eager"]
        result = {}
        if importlib.util.find_spec("flash_attn") is not None and self.device.type == "cuda":
            implementations.append("flash_attention_2")
        else:
            result["flash_attention_2"] = "not installed (no flash_attn package)" if self.device.type == "cuda" else (
                "not run: needs CUDA")
        cases = {}
        for implementation in implementations:
            tokenizer, config, ours, _ = self.pair("mlp", attn=implementation, with_llava=False)
            inputs = _real_sizes.make_inputs(tokenizer, config, device=self.device, dtype=self.dtype)
            optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-5)
            cases[implementation] = _real_sizes.train_step_fn(ours, optimizer, inputs["ours"])
        timing = self.time_cases(cases)
        for implementation in implementations:
            result[implementation] = {"step_s": timing[implementation]["median_s"],
                                      "ratio_to_sdpa": _timing.paired_ratio(timing, implementation, "sdpa")}
        del cases
        self.empty_cache()
        return result

    def views(self) -> dict:
        import torch

        from configuration_panovlm.view_layout import build_view_layout
        from processing_panovlm.equirect import sample_views

        height, size = (256, 32) if self.args.cpu_reduced else (2048, 384)
        erp = torch.randint(0, 256, (3, height, 2 * height), dtype=torch.uint8)
        layout = build_view_layout("anyres_e2p", 90.0, 0.5)
        cases = {"cpu": lambda: sample_views(erp, layout, size)}
        result = {"erp": [height, 2 * height], "views": f"{layout.num_views} x {size}^2",
                  "cpu_threads": torch.get_num_threads()}
        if self.device.type == "cuda":
            on_device = erp.to(self.device)
            cases["cuda"] = lambda: (sample_views(on_device, layout, size), torch.cuda.synchronize())
            agree = (sample_views(on_device, layout, size).cpu() - sample_views(erp, layout, size)).abs().max()
            result["max_abs_diff_cuda_vs_cpu"] = float(agree)
        else:
            result["cuda"] = "not run: no CUDA device"
        timing = _timing.interleaved(cases, repeats=3 if self.args.cpu_reduced else 10, warmup=1)
        for name in cases:
            result[f"{name}_s"] = timing[name]["median_s"]
        if "cuda" in cases:
            result["ratio_cuda_to_cpu"] = _timing.paired_ratio(timing, "cuda", "cpu")
        return result

    def bimamba(self) -> dict:
        import torch

        from modeling_panovlm import selective_scan as scan

        _, config, ours, _ = self.pair("bimamba", with_llava=False)
        resampler = ours.model.resampler
        views, tokens = config.num_views, config.view_token_grid[0] * config.view_token_grid[1]
        width = config.vision_config.hidden_size
        x = torch.randn(views, tokens, width, device=self.device, dtype=self.dtype, requires_grad=True)

        def resampler_step():
            resampler(x).float().sum().backward()

        d_inner, d_state = config.resampler_config.d_inner, config.resampler_config.d_state
        generator = torch.Generator().manual_seed(0)

        def tensor(*shape, scale=1.0):
            return (torch.randn(*shape, generator=generator) * scale).to(self.device).requires_grad_(True)

        u, delta, z = tensor(views, d_inner, tokens), tensor(views, d_inner, tokens, scale=0.5), tensor(views, d_inner,
                                                                                                         tokens)
        A = (-torch.rand(d_inner, d_state, generator=generator) - 0.5).to(self.device).requires_grad_(True)
        B, C = tensor(views, d_state, tokens), tensor(views, d_state, tokens)
        D, bias = tensor(d_inner), tensor(d_inner, scale=0.1)

        def scan_with(fn):
            def run():
                fn(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True).sum().backward()
            return run

        cases = {"resampler_fwd_bwd": resampler_step, "scan_torch": scan_with(scan.selective_scan_torch)}
        result = {"input": [views, tokens, width], "scan_shape": [views, d_inner, tokens, d_state]}
        if scan._kernel_selective_scan is not None and self.device.type == "cuda":
            cases["scan_mamba_ssm"] = scan_with(scan._kernel_selective_scan)
        else:
            result["scan_mamba_ssm"] = ("not installed (mamba_ssm does not import)" if self.device.type == "cuda"
                                        else "not run: needs CUDA")
        timing = self.time_cases(cases)
        for name in cases:
            result[f"{name}_s"] = timing[name]["median_s"]
        if "scan_mamba_ssm" in cases:
            result["ratio_torch_to_mamba_ssm"] = _timing.paired_ratio(timing, "scan_torch", "scan_mamba_ssm")
        result["backend_of_resampler"] = "mamba-ssm CUDA" if "scan_mamba_ssm" in cases else "torch"
        return result

    def bimamba_share(self) -> dict:
        """BiMamba fwd+bwd on the input captured from PanoVLM's training step, over the step, for 1, 9, 17 views."""
        import torch

        result = {}
        for views in sorted(_real_sizes.VIEW_LAYOUTS):
            sizes = {k: v for k, v in self.sizes.items() if k != "resampler_overrides"}
            tokenizer, config, ours, _ = _real_sizes.build_pair(
                "bimamba", num_views=views, dtype=self.dtype, device=self.device, with_llava=False,
                resampler_overrides=self.sizes.get("resampler_overrides"), **sizes)
            inputs = _real_sizes.make_inputs(tokenizer, config, device=self.device, dtype=self.dtype)
            step = _real_sizes.train_step_fn(ours, torch.optim.AdamW(ours.parameters(), lr=1e-5), inputs["ours"])
            resampler, captured = ours.model.resampler, {}
            handle = resampler.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0].detach()))
            step()
            handle.remove()
            x = captured["x"].clone().requires_grad_(True)

            def alone(x=x, resampler=resampler):
                resampler(x).float().sum().backward()
                resampler.zero_grad(set_to_none=True)

            timing = self.time_cases({"step": step, "resampler": alone})
            result[f"{views}_views"] = {"resampler_input": list(x.shape), "step_s": timing["step"]["median_s"],
                                        "share": _timing.paired_ratio(timing, "resampler", "step")}
            del ours, step
            self.empty_cache()
        return result

    def empty_cache(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


SECTIONS = ("step_and_generation", "attention", "views", "bimamba", "bimamba_share")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value * 1e3:.2f} ms" if value < 10 else f"{value:.3g}"
    return str(value)


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [f"# gpu_check ({report['mode']})", "",
             f"Device: {machine['gpu'] if report['mode'] == 'cuda' else machine['device_name']}; torch "
             f"{machine['torch']}, transformers {machine['transformers']}; dtype {report['dtype']}; "
             f"{report['wall_time_s']:.0f} s in all.", ""]
    step = report["sections"].get("step_and_generation", {})
    if "error" not in step and step:
        lines += ["| resampler | image tokens | step ours / LLaVA | ratio | TTFT ratio | tok/s ours / LLaVA | ratio | "
                  "memory ours / LLaVA | ratio |", "|---|---:|---|---:|---:|---|---:|---|---:|"]
        for resampler, r in step.items():
            if not isinstance(r, dict):
                continue
            m = r["memory"]
            lines.append(
                f"| {resampler} | {r['image_tokens']} | {_fmt(r['step_s']['ours'])} / {_fmt(r['step_s']['llava'])} | "
                f"{r['step_ratio']:.3f} | {r['ttft_ratio']:.3f} | {r['tokens_per_s']['ours']:.1f} / "
                f"{r['tokens_per_s']['llava']:.1f} | {r['tokens_per_s_ratio']:.3f} | "
                f"{m['ours']['total_bytes'] / 2**30:.2f} / {m['llava']['total_bytes'] / 2**30:.2f} GiB | "
                f"{r['memory_ratio']:.3f} |")
        lines.append("")
    for name in SECTIONS[1:]:
        section = report["sections"].get(name, {})
        lines += [f"**{name}**", "", "| key | value |", "|---|---|"]
        for key, value in section.items():
            if key != "traceback":
                shown = json.dumps(value) if isinstance(value, dict) else _fmt(value)
                lines.append(f"| {key} | {shown} |")
        lines.append("")
    errors = [name for name, s in report["sections"].items() if "error" in s]
    lines.append(f"Errors: {', '.join(errors) if errors else 'none'}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-reduced", action="store_true", help="tiny widths on the CPU (CI); figures meaningless")
    parser.add_argument("--output-dir", type=Path, default=_timing.RESULTS_DIR)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per case on the GPU")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    import torch

    from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer

    if not args.cpu_reduced and not torch.cuda.is_available():
        parser.error("no CUDA device: run it on a GPU machine, or pass --cpu-reduced")
    start = time.perf_counter()
    check = Check(args)
    report = {"benchmark": "gpu_check", "mode": "cpu-reduced" if args.cpu_reduced else "cuda",
              "dtype": str(check.dtype), "sizes": {k: v for k, v in check.sizes.items()},
              "config": _real_sizes.panovlm_config(
                  build_tiny_tokenizer(), "mlp", resampler_overrides=check.sizes.get("resampler_overrides"),
                  **{k: v for k, v in check.sizes.items() if k != "resampler_overrides"}).to_dict(),
              "installed": {name: importlib.util.find_spec(name) is not None for name in ("flash_attn", "mamba_ssm")},
              "sections": {}}
    for name in args.sections:
        section_start = time.perf_counter()
        print(f"gpu_check: {name}", flush=True)
        try:
            report["sections"][name] = getattr(check, name)()
        except Exception as error:  # recorded, reported, and the exit status says so
            report["sections"][name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            print(report["sections"][name]["traceback"], file=sys.stderr, flush=True)
        report["sections"][name]["seconds"] = time.perf_counter() - section_start
        check.empty_cache()
    report["machine"] = _timing.machine_facts(("flash-attn", "mamba-ssm"))
    report["wall_time_s"] = time.perf_counter() - start
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check_cpu_reduced" if args.cpu_reduced else "gpu_check"
    json_path, md_path = args.output_dir / f"{stem}.json", args.output_dir / f"{stem}.md"
    for path, text in ((json_path, json.dumps(report, indent=2, default=_timing._json_default) + "\n"),
                       (md_path, markdown(report))):
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)  # never a half-written report
    print(markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any("error" in s for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
