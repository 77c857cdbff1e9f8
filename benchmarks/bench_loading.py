"""`from_pretrained` wall time and peak memory: a PanoVLM checkpoint against a LLaVA checkpoint of the same size.

    python benchmarks/bench_loading.py            # ~370 MB checkpoints, 5 loads each (~70 s)
    python benchmarks/bench_loading.py --quick    # ~100 MB checkpoints, 3 loads each (~1 min)

Both checkpoints hold the same randomly initialised towers, bigger than the tiny ones: a SigLIP vision tower and a
Qwen3 language model (float32, safetensors, written with `save_pretrained` into a temporary directory). PanoVLM adds
its MLP resampler, positional encoding and projector; LLaVA its 2-layer projector (a few hundred kB either way).

Each load runs in a fresh Python process (`AutoModelForImageTextToText.from_pretrained(dir)`), alternating PanoVLM
and LLaVA. Before the clock for `from_pretrained` starts, the process imports torch, transformers and the modelling
modules of both towers (SigLIP, Qwen3), and then `modeling_panovlm` (which registers the PanoVLM Auto classes) or
transformers' `modeling_llava`: transformers would otherwise import these lazily inside `from_pretrained` and charge
LLaVA for imports that PanoVLM does up front. Reported per load: the wall time of `from_pretrained` alone, the time
of the imports before it (and the sum: a fresh process's time to a loaded model), and the peak RSS of the process
(VmHWM) and its rise over the RSS after the imports. The checkpoint files are read once before the
first load, so every load finds them in the page cache.

Target: ours / LLaVA <= 1.1 (wall time of from_pretrained; peak RSS reported alongside).
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


PRESETS = {
    # vision: SigLIP hidden / layers / MLP; text: Qwen3 hidden / layers / MLP
    "default": {"vision": (512, 12, 2048), "text": (768, 8, 2048)},
    "quick": {"vision": (256, 8, 1024), "text": (512, 6, 1536)},
}


def build_checkpoints(preset: str, root: Path) -> dict[str, Path]:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from configuration_panovlm.configuration_panovlm import PanoVLMConfig
    from modeling_panovlm import PanoVLMForConditionalGeneration
    from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    (v_hidden, v_layers, v_mlp), (t_hidden, t_layers, t_mlp) = PRESETS[preset]["vision"], PRESETS[preset]["text"]
    vision = {"model_type": "siglip_vision_model", "image_size": 224, "patch_size": 16, "hidden_size": v_hidden,
              "intermediate_size": v_mlp, "num_hidden_layers": v_layers, "num_attention_heads": v_hidden // 64}
    text = {"model_type": "qwen3", "vocab_size": len(tokenizer), "hidden_size": t_hidden, "intermediate_size": t_mlp,
            "num_hidden_layers": t_layers, "num_attention_heads": t_hidden // 64, "num_key_value_heads": t_hidden // 128,
            "head_dim": 64, "max_position_embeddings": 4096, "tie_word_embeddings": True,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = PanoVLMConfig(
        vision_config=vision, text_config=text,
        resampler_config={"resampler_type": "mlp", "hidden_dim": v_hidden, "depth": 2, "latent_dimension": v_hidden},
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token), crop_strategy="anyres_e2p",
    )
    torch.manual_seed(0)
    ours = PanoVLMForConditionalGeneration(config)
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id, vision_feature_select_strategy="full", vision_feature_layer=-1,
        tie_word_embeddings=True,
    ))
    llava.model.vision_tower.load_state_dict(ours.model.vision_tower.state_dict())
    llava.model.language_model.load_state_dict(ours.model.language_model.state_dict())
    paths = {}
    for name, model in (("ours", ours), ("llava", llava)):
        paths[name] = root / name
        model.save_pretrained(paths[name])
    return paths


def checkpoint_facts(path: Path) -> dict:
    files = sorted(p for p in path.iterdir() if p.is_file())
    return {"bytes": sum(p.stat().st_size for p in files), "files": [p.name for p in files]}


LOADER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
t0 = time.perf_counter()
import _timing
import torch
from transformers import AutoModelForImageTextToText
# The towers' modelling modules, which transformers otherwise imports lazily inside from_pretrained.
import transformers.models.qwen3.modeling_qwen3
import transformers.models.siglip.modeling_siglip
if sys.argv[1] == "ours":
    import modeling_panovlm  # registers the PanoVLM Auto classes
else:
    import transformers.models.llava.modeling_llava
t1 = time.perf_counter()
rss_before = _timing.rss_bytes()
model = AutoModelForImageTextToText.from_pretrained(sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({
    "class": type(model).__name__,
    "parameters": sum(p.numel() for p in model.parameters()),
    "dtype": str(model.dtype),
    "import_s": t1 - t0,
    "from_pretrained_s": t2 - t1,
    "rss_after_imports_bytes": rss_before,
    "peak_rss_bytes": _timing.peak_rss_bytes(),
    "peak_rss_rise_bytes": _timing.peak_rss_bytes() - rss_before,
}))
"""


def load_once(name: str, path: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, "-c", LOADER, name, str(path), str(HERE)], capture_output=True, text=True,
                            env=env, cwd=str(HERE.parent))
    if result.returncode:
        raise RuntimeError(f"loading {name} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~100 MB checkpoints, 3 loads each")
    parser.add_argument("--repeats", type=int, default=None, help="loads per model (default 5)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 5)
    preset = "quick" if args.quick else "default"

    start = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="panovlm_bench_loading_") as tmp:
        paths = build_checkpoints(preset, Path(tmp))
        facts = {name: checkpoint_facts(path) for name, path in paths.items()}
        for name, fact in facts.items():
            log(f"{name}: {fact['bytes'] / 2**20:.1f} MiB in {fact['files']}")
        for path in paths.values():  # into the page cache
            for file in path.iterdir():
                file.read_bytes()
        # One discarded load each (imports compiled, caches warm), then interleaved loads.
        loads = {name: [] for name in paths}
        for name in paths:
            load_once(name, paths[name])
        for repeat in range(args.repeats):
            order = list(paths) if repeat % 2 == 0 else list(paths)[::-1]
            for name in order:
                loads[name].append(load_once(name, paths[name]))
                log(f"  {name}: from_pretrained {loads[name][-1]['from_pretrained_s']:.3f} s, peak RSS "
                    f"{loads[name][-1]['peak_rss_bytes'] / 2**20:.0f} MiB")

    import statistics

    def median(name, key):
        return statistics.median(load[key] for load in loads[name])

    def paired(key):
        # Loads i of ours and of LLaVA ran back to back: median of their ratios.
        return statistics.median(a[key] / b[key] for a, b in zip(loads["ours"], loads["llava"]))

    for load in loads["ours"] + loads["llava"]:
        load["total_s"] = load["import_s"] + load["from_pretrained_s"]
    rows = [
        _timing.ratio_row("from_pretrained wall time", median("ours", "from_pretrained_s"),
                          median("llava", "from_pretrained_s"), "<= 1.1", False, ratio=paired("from_pretrained_s")),
        _timing.ratio_row("imports + from_pretrained", median("ours", "total_s"), median("llava", "total_s"), "<= 1.1",
                          False, ratio=paired("total_s")),
        _timing.ratio_row("imports alone", median("ours", "import_s"), median("llava", "import_s"), "(information)", True,
                          ratio=paired("import_s")),
        _timing.ratio_row("peak RSS of the process", median("ours", "peak_rss_bytes"), median("llava", "peak_rss_bytes"),
                          "<= 1.1", False, unit="bytes"),
        _timing.ratio_row("peak RSS rise during from_pretrained", median("ours", "peak_rss_rise_bytes"),
                          median("llava", "peak_rss_rise_bytes"), "(information)", True, unit="bytes"),
    ]
    for row in rows:
        if row["target"] == "<= 1.1":
            row["met"] = row["ratio"] <= 1.1
    _timing.print_ratio_table(rows, f"from_pretrained of a {facts['ours']['bytes'] / 2**20:.0f} MiB checkpoint, ours / LLaVA")
    payload = {
        "benchmark": "bench_loading",
        "description": "AutoModelForImageTextToText.from_pretrained in fresh processes, PanoVLM vs LLaVA with the "
        "same SigLIP + Qwen3 towers",
        "target": "from_pretrained wall time ours/LLaVA <= 1.1",
        "settings": {**vars(args), "preset": PRESETS[preset]},
        "machine": _timing.machine_facts(("safetensors", "accelerate")),
        "checkpoints": facts,
        "loads": loads,
        "ratios": rows,
        "wall_time_s": time.perf_counter() - start,
    }
    _timing.write_results("bench_loading_quick" if args.quick else "bench_loading", payload)
    print(f"total {payload['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
