"""Ask a PanoVLM checkpoint about one panorama.

    python examples/infer.py --model DIR_OR_HUB_ID --image pano.jpg --prompt "What is behind the camera?"
        [--stream] [--show-views views.png] [--adapter DIR] [--max-new-tokens T]

`--stream` prints the answer while it is generated (transformers' TextIteratorStreamer); `--show-views` saves a
picture of the panorama with each view's footprint and the view tiles the model sees. Decoding is greedy.
"""

import argparse
from threading import Thread

from transformers import TextIteratorStreamer

from modeling_panovlm.evaluation import (
    DEFAULT_MAX_NEW_TOKENS,
    greedy_generation_config,
    load_model_and_processor,
)
from processing_panovlm.visualization.views import render_view_overview


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    parser.add_argument("--image", required=True, help="equirectangular panorama (2:1)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--stream", action="store_true", help="print the answer while it is generated")
    parser.add_argument("--show-views", metavar="PNG", help="save the panorama with view footprints and the views")
    parser.add_argument("--adapter", help="PEFT adapter directory, merged into --model")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")

    model, processor = load_model_and_processor(args.model, args.adapter)
    if args.show_views:
        render_view_overview(args.image, processor.image_processor).save(args.show_views)
        print(f"saved the views to {args.show_views}")

    # The prompt format saved with the processor: the training run's system prompt and user template.
    prompt = processor.apply_chat_template(processor.build_messages(args.prompt), add_generation_prompt=True)
    inputs = processor(images=args.image, text=prompt, return_tensors="pt").to(model.device)
    config = greedy_generation_config(model, args.max_new_tokens)
    if args.stream:
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = Thread(target=model.generate, kwargs={**inputs, "generation_config": config, "streamer": streamer})
        worker.start()
        for piece in streamer:
            print(piece, end="", flush=True)
        worker.join()
        print()
    else:
        output = model.generate(**inputs, generation_config=config)
        print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())


if __name__ == "__main__":
    main()
