"""Peak memory of `PanoVLMForConditionalGeneration.from_vision_text_pretrained` with real-size towers.

    python benchmarks/bench_real_loading.py            # 3 fresh loads per case (~4 min on 2 cores)
    python benchmarks/bench_real_loading.py --quick    # 1 load per case

A SigLIP-so400m-sized vision tower (width 1152, 27 layers, patch 16, 256² images) and a Qwen3-0.6B-sized LM
(width 1024, 28 layers, vocabulary 151,936, tied embeddings) are built from configs with random weights and saved
locally in bfloat16 (`save_pretrained`, safetensors) into a temporary directory: no download. Each load runs in a
fresh process (with `MALLOC_MMAP_THRESHOLD_`, so RSS follows live memory) that imports torch, transformers and
PanoVLM first, then measures the peak RSS (VmHWM, reset just before) of the load followed by one read of every
parameter (the weights are memory-mapped from the safetensors files, and pages nobody has read are not resident; a
reduction per tensor, no copy, makes the whole model resident as a first forward would):

* ours: `from_vision_text_pretrained(vision_dir, text_dir, dtype=torch.bfloat16, device_map="cpu")` (MLP
  resampler, anyres_e2p), and the same with `dtype` and `device_map` left out (the checkpoints' bf16 is kept);
* towers alone (the floor): `AutoModel.from_pretrained(vision_dir)` + `AutoModelForCausalLM.from_pretrained(text_dir)`
  with the same arguments, kept alive together.

Reported: the peak RSS, its rise above the RSS after the imports, and both divided by the loaded model's bytes
(parameters + buffers, tied weights once). The worker also checks that `dtype` and `device_map` reached the loaded
model (every tower and LM parameter bf16 on the CPU; `hf_device_map` when a map was given). Target: peak RSS <= 1.3x
the model's bytes.

`--checkpoint-dir DIR` keeps the saved towers in DIR and reuses them on the next run (they take minutes to build).
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

import _real_sizes  # noqa: E402
import _timing  # noqa: E402


CASES = ("ours[dtype=bf16,device_map=cpu]", "ours[defaults]", "towers[dtype=bf16,device_map=cpu]")


def save_towers(root: Path) -> dict:
    """Random SigLIP-so400m-sized tower and Qwen3-0.6B-sized LM, saved in bf16 under `root`."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer

    vision, text = _real_sizes.tower_configs(tokenizer=build_tiny_tokenizer(), vocab_size=_real_sizes.QWEN3_0_6B["vocab_size"])
    paths = {"vision": root / "siglip-so400m-sized", "text": root / "qwen3-0.6b-sized"}
    torch.manual_seed(0)
    for key, config_dict, cls in (("vision", vision, AutoModel), ("text", text, AutoModelForCausalLM)):
        config_dict = dict(config_dict)
        config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        model = cls.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(paths[key])
        del model
    sizes = {key: sum(f.stat().st_size for f in path.glob("*.safetensors")) for key, path in paths.items()}
    return {"paths": {k: str(v) for k, v in paths.items()}, "safetensors_bytes": sizes}


def load_or_save_towers(root: Path) -> dict:
    """`save_towers(root)`, unless `root` already holds both towers from an earlier run (`config.json` written last
    by `save_pretrained`, so a directory with it is complete)."""
    paths = {"vision": root / "siglip-so400m-sized", "text": root / "qwen3-0.6b-sized"}
    if all((path / "config.json").exists() and list(path.glob("*.safetensors")) for path in paths.values()):
        sizes = {key: sum(f.stat().st_size for f in path.glob("*.safetensors")) for key, path in paths.items()}
        return {"paths": {k: str(v) for k, v in paths.items()}, "safetensors_bytes": sizes, "reused": True}
    return save_towers(root)


def load_worker(case: str, vision_dir: str, text_dir: str) -> None:
    """Fresh process: imports, then one load measured with `_timing.measure_peak_rss`; prints one JSON line."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    import modeling_panovlm.modeling_panovlm as modeling
    from modeling_panovlm import PanoVLMForConditionalGeneration

    kwargs = {} if case == "ours[defaults]" else {"dtype": torch.bfloat16, "device_map": "cpu"}
    held = {}
    # What the towers' own from_pretrained receive: on the CPU, device_map="cpu" leaves no trace on the loaded model
    # (transformers sets no hf_device_map), so pass-through is checked at the call. Recording only: the calls go on.
    received = []

    def recording(auto_class):
        original = auto_class.from_pretrained

        def from_pretrained(*args, **call_kwargs):
            received.append({"class": auto_class.__name__, "dtype": str(call_kwargs.get("dtype")),
                             "device_map": call_kwargs.get("device_map")})
            return original(*args, **call_kwargs)

        return from_pretrained

    if case.startswith("ours"):  # subclasses: from_config (used on the meta device) stays the real one
        modeling.AutoModel = type("AutoModel", (AutoModel,), {"from_pretrained": staticmethod(recording(AutoModel))})
        modeling.AutoModelForCausalLM = type("AutoModelForCausalLM", (AutoModelForCausalLM,), {
            "from_pretrained": staticmethod(recording(AutoModelForCausalLM))})

    def load():
        start = time.perf_counter()
        if case.startswith("ours"):
            held["models"] = [PanoVLMForConditionalGeneration.from_vision_text_pretrained(
                vision_dir, text_dir, resampler_config={"resampler_type": "mlp"}, crop_strategy="anyres_e2p",
                **kwargs)]
        else:
            held["models"] = [AutoModel.from_pretrained(vision_dir, **kwargs),
                              AutoModelForCausalLM.from_pretrained(text_dir, **kwargs)]
        held["seconds"] = time.perf_counter() - start
        # safetensors files are memory-mapped: a weight that nothing has read yet is not resident. Read every
        # parameter once (a reduction, no copy) so that the peak counts the whole model, as the first forward would.
        with torch.no_grad():
            for model in held["models"]:
                for tensor in list(model.parameters()) + list(model.buffers()):
                    if tensor.numel():
                        tensor.max()

    result = _timing.measure_peak_rss(load)
    models = held["models"]
    result["seconds"] = held["seconds"]
    result["model_bytes"] = sum(_real_sizes.parameter_bytes(m) for m in models)
    towers = [models[0].model.vision_tower, models[0].model.language_model] if case.startswith("ours") else models
    dtypes = sorted({str(p.dtype) for m in towers for p in m.parameters()})
    devices = sorted({str(p.device) for m in models for p in m.parameters()})
    result.update(tower_dtypes=dtypes, devices=devices, towers_from_pretrained_received=received)
    print(json.dumps(result), flush=True)


def run_case(case: str, paths: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", case, paths["vision"], paths["text"]]
    env = {**os.environ, **_timing.MEMORY_WORKER_ENV}
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{case} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 load per case")
    parser.add_argument("--loads", type=int, default=None, help="fresh loads per case (default 3; --quick 1)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="keep / reuse the saved towers here")
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "VISION_DIR", "TEXT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        load_worker(*args.worker)
        return
    args.loads = args.loads or (1 if args.quick else 3)
    start = time.perf_counter()
    load_before = _timing.load_average()
    with tempfile.TemporaryDirectory(prefix="bench_real_loading_") as tmp:
        root = args.checkpoint_dir or Path(tmp)
        saved = load_or_save_towers(root)
        print(f"saved towers: {saved['safetensors_bytes']}", flush=True)
        for path in root.rglob("*.safetensors"):  # into the page cache before the first load
            path.read_bytes()
        runs = {case: [] for case in CASES}
        for repeat in range(args.loads):
            for case in CASES[repeat % len(CASES):] + CASES[: repeat % len(CASES)]:
                result = run_case(case, saved["paths"])
                runs[case].append(result)
                print(f"  {case}: peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB, rise "
                      f"{result['peak_increase_bytes'] / 2**30:.2f} GiB, model {result['model_bytes'] / 2**30:.2f} "
                      f"GiB, {result['seconds']:.1f} s, tower dtypes {result['tower_dtypes']}", flush=True)

    def median(case, key):
        values = sorted(r[key] for r in runs[case])
        return values[len(values) // 2]

    rows = []
    for case in CASES:
        model_bytes = median(case, "model_bytes")
        peak = median(case, "peak_rss_bytes")
        rows.append(_timing.ratio_row(f"{case}: peak RSS / model bytes", peak, model_bytes,
                                      "<= 1.3" if case.startswith("ours") else "(floor)", peak / model_bytes <= 1.3,
                                      unit="bytes"))
        rise = median(case, "peak_increase_bytes")
        rows.append(_timing.ratio_row(f"{case}: peak RSS rise over the imports / model bytes", rise, model_bytes,
                                      "(info)", rise / model_bytes <= 1.3, unit="bytes"))
    ours, towers = CASES[0], CASES[2]
    rows.append(_timing.ratio_row("ours / towers alone: peak RSS", median(ours, "peak_rss_bytes"),
                                  median(towers, "peak_rss_bytes"), "(info)", True, unit="bytes"))
    checks = {case: {key: runs[case][0][key] for key in ("tower_dtypes", "devices", "towers_from_pretrained_received")}
              for case in CASES}
    expected = {"tower_dtypes": ["torch.bfloat16"], "devices": ["cpu"]}
    for case in CASES:
        for key, value in expected.items():
            if checks[case][key] != value:
                raise RuntimeError(f"{case}: {key} {checks[case][key]}, expected {value}")
    calls = checks[ours]["towers_from_pretrained_received"]
    if len(calls) != 2 or any(c["dtype"] != "torch.bfloat16" or c["device_map"] != "cpu" for c in calls):
        raise RuntimeError(f"{ours}: dtype / device_map did not reach the towers' from_pretrained: {calls}")
    _timing.print_ratio_table(rows, "from_vision_text_pretrained, real-size towers (bf16)")
    payload = {
        "benchmark": "bench_real_loading",
        "description": "peak RSS of from_vision_text_pretrained (SigLIP-so400m-sized + Qwen3-0.6B-sized towers, "
        "bf16 safetensors) in a fresh process, against the loaded model's bytes",
        "targets": {"peak_rss_over_model_bytes": "<= 1.3"},
        "settings": vars(args),
        "checkpoints": saved,
        "machine": {**_timing.machine_facts(("safetensors", "accelerate")), "load_average_before": load_before},
        "ratios": rows,
        "passed_through": checks,
        "loads": runs,
        "wall_time_s": time.perf_counter() - start,
    }
    _timing.write_results("bench_real_loading_quick" if args.quick else "bench_real_loading", payload)


if __name__ == "__main__":
    main()
