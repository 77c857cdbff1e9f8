"""Write a tiny, randomly initialised PanoVLM checkpoint directory (model, processor, tokenizer, chat template).

    python examples/build_tiny_checkpoint.py --output-dir tiny-panovlm --resampler bimamba --crop-strategy e2p

The directory loads with `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`
(after `import modeling_panovlm`); nothing is downloaded.
"""

import argparse
import logging

from configuration_panovlm import CROP_STRATEGIES
from modeling_panovlm import RESAMPLERS
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="directory to write (created; files are replaced)")
    parser.add_argument("--resampler", choices=sorted(RESAMPLERS), default="mlp")
    parser.add_argument("--crop-strategy", choices=CROP_STRATEGIES, default="anyres_e2p")
    parser.add_argument("--view-size", type=int, default=32, help="view side in pixels (a multiple of 8)")
    parser.add_argument("--hidden-size", type=int, default=64, help="width of the tower, resampler and LM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, processor = build_tiny_checkpoint(
        args.output_dir,
        resampler_type=args.resampler,
        crop_strategy=args.crop_strategy,
        seed=args.seed,
        view_size=args.view_size,
        hidden_size=args.hidden_size,
    )
    config = model.config
    print(
        f"wrote {args.output_dir}: {args.resampler} resampler, {config.crop_strategy} "
        f"({config.num_views} views of {config.view_size}px, {config.num_image_tokens} image tokens per panorama), "
        f"{model.num_parameters():,} parameters"
    )


if __name__ == "__main__":
    main()
