"""PanoVLM end to end on CPU, offline: build a tiny checkpoint, load it through the Auto classes, turn a synthetic
panorama into views, generate, and check that a save/load round trip reproduces the model exactly.

    python examples/demo.py [--output-dir out/demo] [--resampler bimamba] [--crop-strategy anyres_e2p]

The tiny model is randomly initialised, so its answer is noise; the point is the data flow and the figures.
"""

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_panovlm  # noqa: F401  (registers the PanoVLM Auto classes)
from configuration_panovlm import CROP_STRATEGIES
from modeling_panovlm import RESAMPLERS
from modeling_panovlm.tiny_checkpoint import build_tiny_checkpoint
from processing_panovlm.synthetic_panoramas import SceneObject, describe_scene, render_panorama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="out/demo")
    parser.add_argument("--resampler", choices=sorted(RESAMPLERS), default="bimamba")
    parser.add_argument("--crop-strategy", choices=CROP_STRATEGIES, default="anyres_e2p")
    args = parser.parse_args()
    out = Path(args.output_dir)
    checkpoint = out / "tiny-panovlm"

    start = time.perf_counter()
    build_tiny_checkpoint(checkpoint, resampler_type=args.resampler, crop_strategy=args.crop_strategy, view_size=64)
    print(f"1. built a tiny random checkpoint in {checkpoint} ({time.perf_counter() - start:.1f} s)")

    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    config = model.config
    print(
        f"2. loaded {type(model).__name__} ({model.num_parameters():,} parameters) and {type(processor).__name__}: "
        f"{config.resampler_config.resampler_type} resampler, {config.crop_strategy}, "
        f"{config.num_views} views of {config.view_size} px -> {config.num_image_tokens} image tokens per panorama"
    )

    scene = [
        SceneObject("red", "circle", 0.0),
        SceneObject("green", "square", 90.0),
        SceneObject("blue", "triangle", 180.0),  # straddles the +/-180 degree seam
        SceneObject("yellow", "diamond", -90.0),
    ]
    panorama = render_panorama(scene, height=256)
    panorama.save(out / "panorama.png")
    print(f"3. rendered {out / 'panorama.png'} ({panorama.width}x{panorama.height}): {describe_scene(scene)}")

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is behind the camera?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=panorama, text=prompt, return_tensors="pt")
    yaws = ", ".join(f"{yaw:g}" for yaw in inputs["view_yaw_deg"][0].tolist())
    print(f"4. pixel_values {tuple(inputs['pixel_values'].shape)}, input_ids {tuple(inputs['input_ids'].shape)}; view yaws: {yaws}")

    start = time.perf_counter()
    generated = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"5. generated 16 tokens in {time.perf_counter() - start:.2f} s (random weights, so noise): {answer!r}")

    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_pretrained(out / "resaved")
    processor.save_pretrained(out / "resaved")
    reloaded, info = AutoModelForImageTextToText.from_pretrained(out / "resaved", output_loading_info=True)
    reinputs = AutoProcessor.from_pretrained(out / "resaved")(images=panorama, text=prompt, return_tensors="pt")
    with torch.no_grad():
        relogits = reloaded.eval()(**reinputs).logits
    problems = sum(len(v) for v in info.values())
    print(f"6. save -> load: {problems} missing/unexpected/mismatched keys, bit-identical logits: {torch.equal(logits, relogits)}")


if __name__ == "__main__":
    main()
