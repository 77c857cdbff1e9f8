"""One training step and greedy generation: PanoVLM against transformers' LLaVA with the same towers.

    python benchmarks/bench_llava_step.py            # tiny and small towers, 1 and 2 threads (~40 s)
    python benchmarks/bench_llava_step.py --quick    # tiny towers, 1 thread, fewer repeats (~15 s)

Both models get the same SigLIP vision tower and Qwen3 language model (configs as in
modeling_panovlm/tiny_checkpoint.py; the weights are copied from PanoVLM into LLaVA), the same token ids and the
same number of image tokens per prompt:

* PanoVLM: anyres_e2p (global view + 8 horizon views of 32^2, patch 8 -> 16 tokens each), MLP resampler (2 layers,
  LayerNorm, GELU), panoramic positional encoding, linear projector, `stitching_mode="concat"`: 9 x 16 = 144 image
  tokens per panorama.
* LLaVA (`LlavaForConditionalGeneration`): the same 9 views passed as 9 images of one prompt (the same 144 image
  placeholders), `vision_feature_select_strategy="full"`, `vision_feature_layer=-1`, its 2-layer GELU projector.

Training step: forward with labels (image and padding positions ignored), backward, AdamW step, zero_grad; batch of
2 panoramas. Generation: greedy, exactly `--new-tokens` tokens (EOS suppressed by `min_new_tokens`), batch of 2;
reported as generated tokens per second. Cases are interleaved, medians of `--repeats` after warm-up.

Targets: step time ours / LLaVA <= 1.05; generated tokens/s ours / LLaVA >= 0.95.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _timing  # noqa: E402


SIZES = {
    # name: tiny_config keyword arguments (view_size, patch_size, hidden_size); layers as in tiny_config (2 + 2)
    "tiny": {"view_size": 32, "patch_size": 8, "hidden_size": 64},
    "small": {"view_size": 64, "patch_size": 16, "hidden_size": 256},
}


def build_pair(size: str, seed: int = 0):
    import torch
    from transformers import (
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from modeling_panovlm import PanoVLMForConditionalGeneration
    from modeling_panovlm.testing.tiny_checkpoint import tiny_config
    from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tokenizer, resampler_type="mlp", crop_strategy="anyres_e2p", stitching_mode="concat",
                         **SIZES[size])
    torch.manual_seed(seed)
    ours = PanoVLMForConditionalGeneration(config)
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.view_token_grid[0] * config.view_token_grid[1],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=config.text_config.tie_word_embeddings,
    )
    llava = LlavaForConditionalGeneration(llava_config)
    llava.model.vision_tower.load_state_dict(ours.model.vision_tower.state_dict())
    llava.model.language_model.load_state_dict(ours.model.language_model.state_dict())
    llava.lm_head.load_state_dict(ours.lm_head.state_dict())
    for model in (ours, llava):
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
        )
    return tokenizer, config, ours, llava


def make_inputs(tokenizer, config, batch: int, seed: int = 0):
    """Token ids with `num_image_tokens` placeholders per prompt, views for PanoVLM and for LLaVA, labels."""
    import torch

    from processing_panovlm.processing_panovlm import PanoVLMProcessor

    processor = PanoVLMProcessor.from_model_config(config, tokenizer)
    prompt = processor.apply_chat_template(processor.build_messages("What is behind the camera?", verbatim=True),
                                           add_generation_prompt=True)
    answer = "A red square is behind the camera, next to a blue circle on the left."
    text = [prompt + answer] * batch
    ids = tokenizer(text, return_tensors="pt", padding=True)
    image_ids = torch.full((batch, config.num_image_tokens), config.image_token_id)
    # Expand the placeholder as the processor does: splice the image tokens in at its position.
    position = (ids["input_ids"][0] == config.image_token_id).nonzero()[0, 0].item()
    input_ids = torch.cat([ids["input_ids"][:, :position], image_ids, ids["input_ids"][:, position + 1 :]], 1)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.masked_fill(input_ids == config.image_token_id, -100)
    torch.manual_seed(seed)
    pixel_values = torch.randn(batch, config.num_views, 3, config.view_size, config.view_size)
    prompt_ids = tokenizer([prompt] * batch, return_tensors="pt")["input_ids"]
    prompt_ids = torch.cat([prompt_ids[:, :position], image_ids, prompt_ids[:, position + 1 :]], 1)
    return {
        "ours": {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                 "labels": labels},
        "llava": {"input_ids": input_ids, "attention_mask": attention_mask,
                  "pixel_values": pixel_values.flatten(0, 1), "labels": labels},
        "prompt_ids": prompt_ids,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny towers, 1 thread, fewer repeats")
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    parser.add_argument("--threads", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None, help="training steps timed per case (default 40; generation gets half)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or (["tiny"] if args.quick else ["tiny", "small"])
    args.threads = args.threads or ([1] if args.quick else [1, 2])
    args.repeats = args.repeats or (10 if args.quick else 40)

    import torch

    start = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    rows, details = [], []
    for size in args.sizes:
        tokenizer, config, ours, llava = build_pair(size)
        inputs = make_inputs(tokenizer, config, args.batch)
        params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("ours", ours), ("llava", llava))}
        log(f"{size}: {config.num_image_tokens} image tokens per prompt, sequence {inputs['ours']['input_ids'].shape[1]}, "
            f"parameters ours {params['ours']:,} / LLaVA {params['llava']:,}")
        # Same towers, same tokens: the language model sees the same number of positions.
        with torch.no_grad():
            ours.eval()
            llava.eval()
            loss_ours = ours(**inputs["ours"]).loss.item()
            loss_llava = llava(**inputs["llava"]).loss.item()

        optimizers = {"ours": torch.optim.AdamW(ours.parameters(), lr=1e-4),
                      "llava": torch.optim.AdamW(llava.parameters(), lr=1e-4)}
        models = {"ours": ours, "llava": llava}

        def train_step(name):
            model, optimizer, batch = models[name], optimizers[name], inputs[name]

            def run():
                model.train()
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            return run

        def generate(name):
            model = models[name]
            batch = {"input_ids": inputs["prompt_ids"], "attention_mask": torch.ones_like(inputs["prompt_ids"]),
                     "pixel_values": inputs[name]["pixel_values"]}

            def run():
                model.eval()
                with torch.no_grad():
                    out = model.generate(**batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                         do_sample=False)
                assert out.shape[1] - batch["input_ids"].shape[1] == args.new_tokens

            return run

        for threads in args.threads:
            torch.set_num_threads(threads)
            log(f"{size}, {threads} thread(s): training step")
            step = _timing.interleaved({n: train_step(n) for n in models}, repeats=args.repeats, warmup=3)
            log(f"{size}, {threads} thread(s): generation")
            gen = _timing.interleaved({n: generate(n) for n in models}, repeats=max(3, args.repeats // 2), warmup=1)
            tokens = args.batch * args.new_tokens
            ratio = _timing.paired_ratio(step, "ours", "llava")
            row = _timing.ratio_row(f"{size} towers, training step, {threads}T", step["ours"]["median_s"],
                                    step["llava"]["median_s"], "<= 1.05", ratio <= 1.05, ratio=ratio)
            rows.append(row)
            ours_tps = tokens / gen["ours"]["median_s"]
            llava_tps = tokens / gen["llava"]["median_s"]
            ratio = 1 / _timing.paired_ratio(gen, "ours", "llava")  # tokens/s: the inverse of the time ratio
            row = _timing.ratio_row(f"{size} towers, generated tokens/s, {threads}T", ours_tps, llava_tps, ">= 0.95",
                                    ratio >= 0.95, unit="tok/s", ratio=ratio)
            rows.append(row)
            details.append({"size": size, "threads": threads, "training_step": step, "generation": gen,
                            "generated_tokens_per_call": tokens})
            log(f"  step: ours {step['ours']['median_s'] * 1e3:.1f} ms, LLaVA {step['llava']['median_s'] * 1e3:.1f} ms; "
                f"generation: ours {ours_tps:.0f} tok/s, LLaVA {llava_tps:.0f} tok/s")
        details.append({"size": size, "config": {"num_image_tokens": config.num_image_tokens,
                                                 "sequence_length": inputs["ours"]["input_ids"].shape[1],
                                                 "parameters": params, "vision": SIZES[size],
                                                 "loss_before_training": {"ours": loss_ours, "llava": loss_llava}}})

    _timing.print_ratio_table(rows, "Training step and generation, ours / LLaVA")
    payload = {
        "benchmark": "bench_llava_step",
        "description": "PanoVLM (MLP resampler, concat stitching) vs LlavaForConditionalGeneration, same SigLIP + "
        "Qwen3 towers and the same number of image tokens",
        "targets": {"training_step": "ours/LLaVA <= 1.05", "generation_tokens_per_s": "ours/LLaVA >= 0.95"},
        "settings": vars(args),
        "machine": _timing.machine_facts(),
        "ratios": rows,
        "details": details,
        "wall_time_s": time.perf_counter() - start,
    }
    _timing.write_results("bench_llava_step_quick" if args.quick else "bench_llava_step", payload)
    print(f"total {payload['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
