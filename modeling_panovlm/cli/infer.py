"""Ask a checkpoint one or several questions about one panorama.

examples:
    panovlm infer --model DIR_OR_HUB_ID --image pano.jpg --prompt "What is behind the camera?"
    panovlm infer --model DIR --image pano.jpg --prompt "red object" --prompt "blue object" --stream
    panovlm infer --model DIR --image pano.jpg --prompts-file questions.txt --show-views views.png
    panovlm infer --model DIR --image pano.jpg --prompt "Describe the ceiling." --verbatim --do-sample --seed 0
    panovlm infer --checkpoint-dir runs/exp/finetune/anyres-e2p_bimamba --image pano.jpg --prompt "location"

Each prompt is sent as training sent a question: wrapped in the user template saved with the model's processor
(the training run's), after its system prompt; --system-prompt / --user-template override them, and --verbatim
sends each prompt as the whole user turn, without the template. The panorama's views are encoded once, however
many prompts are asked; without --stream the prompts are answered in one batch.

With one prompt the answer alone is printed; with several, each as "Q: prompt" then "A: answer". --stream prints
answers while they are generated (transformers' TextIteratorStreamer); --show-views saves a picture of the
panorama with each view's footprint and the view tiles the model sees. A --model that is not a PanoVLM is asked
about the panorama as one resized image through its own processor, as `panovlm evaluate` does. Decoding is greedy
unless the decoding flags say otherwise; answers are printed as generated (<think> reasoning included). Also run
as `python examples/infer.py` or `python -m modeling_panovlm.cli.infer`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from threading import Thread

import torch
from transformers import TextIteratorStreamer

from modeling_panovlm.evaluation import (
    OneImagePrompting,
    encode_panoramas,
    expanded_prompt,
    generate_from_features,
    load_model_and_processor,
)
from modeling_panovlm.evaluation.baseline import OneImageCaptioner
from processing_panovlm.image_loading import PanoramaImageError, probe_panorama
from processing_panovlm.visualization.views import render_view_overview

from .console import configure_logging
from .options import (
    HelpFormatter,
    add_baseline_flags,
    add_generation_flags,
    add_log_level_flag,
    add_panollava_flags,
    add_prompt_flags,
    check_generation_flags,
    check_prompt_flags,
    convert_panollava_run,
    generation_config_from_flags,
    prompting_from_flags,
    read_panollava_flags,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panovlm infer", description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False
    )
    source = parser.add_argument_group("model")
    source.add_argument(
        "--model",
        help="checkpoint directory or Hub id; a PanoLLaVA run directory is converted on the fly (see --checkpoint-dir)",
    )
    parser.add_argument("--image", required=True, help="equirectangular panorama (2:1): a path or an http(s) URL")
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="a question about the panorama; repeat the flag to ask several (one vision encoding for all)",
    )
    parser.add_argument(
        "--prompts-file",
        type=Path,
        help="a UTF-8 text file of questions, one per line (blank lines are skipped); asked after any --prompt",
    )
    parser.add_argument(
        "--verbatim",
        action="store_true",
        help="send each prompt as the whole user turn, without the user template (instruction-style data)",
    )
    parser.add_argument("--stream", action="store_true", help="print each answer while it is generated")
    parser.add_argument(
        "--show-views", metavar="PNG", help="save the panorama with the view footprints and the view tiles here"
    )
    parser.add_argument("--adapter", help="PEFT adapter directory, applied to --model and merged")
    add_panollava_flags(parser, source)
    add_generation_flags(parser)
    add_prompt_flags(parser)
    add_baseline_flags(parser)
    add_log_level_flag(parser)
    return parser


def read_prompts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The --prompt values, then the lines of --prompts-file; refuses empty prompts, naming the flag or line."""
    prompts = []
    for index, prompt in enumerate(args.prompt, 1):
        if not prompt.strip():
            parser.error(f"--prompt number {index} is empty")
        prompts.append(prompt)
    if args.prompts_file is not None:
        try:
            lines = args.prompts_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            parser.error(f"--prompts-file {args.prompts_file} does not exist")
        except UnicodeDecodeError as error:
            parser.error(f"--prompts-file {args.prompts_file} is not UTF-8 text ({error})")
        except OSError as error:
            parser.error(f"--prompts-file {args.prompts_file} cannot be read ({error})")
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            parser.error(f"--prompts-file {args.prompts_file} holds no question")
        prompts += from_file
    if not prompts:
        parser.error("give at least one --prompt or a --prompts-file")
    return prompts


def _answer_with_views(model, processor, image: str, prompts: list[str], args, config, print_answer) -> None:
    """PanoVLM: encode the panorama once, then answer every prompt from those features."""
    features, errors = encode_panoramas(model, processor, [image])
    if errors:
        raise PanoramaImageError(errors[image])
    texts = [expanded_prompt(processor, prompt, args.verbatim) for prompt in prompts]
    encoded = features[image].unsqueeze(0)
    if not args.stream:
        answers = generate_from_features(model, processor, texts, encoded.expand(len(texts), -1, -1), config)
        for prompt, answer in zip(prompts, answers):
            print_answer(prompt, answer)
        return
    for prompt, text in zip(prompts, texts):

        def generate(streamer, text=text):
            return generate_from_features(model, processor, [text], encoded, config, streamer)

        _stream(prompt, processor, generate, several=len(prompts) > 1)


def _answer_with_one_image(
    model, processor, prompting: OneImagePrompting, image: str, prompts: list[str], args, config, print_answer
) -> None:
    """A general VLM: the panorama as one resized image, through its own processor and chat template."""
    captioner = OneImageCaptioner(model, processor, prompting)
    prepared, errors = captioner.prepare([image])
    if errors:
        raise PanoramaImageError(errors[image])
    picture = prepared[image]
    if not args.stream:
        answers = captioner.generate([(p, args.verbatim) for p in prompts], [picture] * len(prompts), config)
        for prompt, answer in zip(prompts, answers):
            print_answer(prompt, answer)
        return
    for prompt in prompts:

        def generate(streamer, prompt=prompt):
            return captioner.generate([(prompt, args.verbatim)], [picture], config, streamer)

        _stream(prompt, processor, generate, several=len(prompts) > 1)


def _stream(prompt: str, processor, generate: Callable[[TextIteratorStreamer], object], several: bool) -> None:
    """Print one answer while `generate(streamer)` produces it in a worker thread; an error there ends the stream
    and is raised here (instead of leaving this thread waiting for text that never comes)."""
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            generate(streamer)
        except BaseException as error:  # re-raised in the main thread below
            failures.append(error)
            streamer.end()

    if several:
        print(f"Q: {prompt}\nA: ", end="", flush=True)
    worker = Thread(target=work)
    worker.start()
    for piece in streamer:
        print(piece, end="", flush=True)
    worker.join()
    print("\n" if several else "")
    if failures:
        raise failures[0]


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (argument and input errors exit with status 2, as argparse does)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    migration = read_panollava_flags(parser, args)
    if args.model is None:
        parser.error("the following arguments are required: --model (or --checkpoint-dir)")
    check_generation_flags(parser, args)
    check_prompt_flags(parser, args)
    prompts = read_prompts(parser, args)
    if args.stream and (args.num_beams or 1) > 1:
        parser.error("--stream shows one sequence as it is generated: it cannot be combined with --num-beams above 1")
    views_dir = Path(args.show_views).resolve().parent if args.show_views else None
    if views_dir is not None and not views_dir.is_dir():
        parser.error(f"--show-views {args.show_views}: the directory {views_dir} does not exist")
    configure_logging(args.log_level, default="info")
    try:
        probe_panorama(args.image)  # a missing or unusable panorama fails before the model is loaded
        convert_panollava_run(parser, args, migration)
        model, processor = load_model_and_processor(args.model, args.adapter)
    except (OSError, ValueError) as error:  # a missing or unusable panorama (PanoramaImageError), model or adapter
        parser.error(str(error))
    one_image = prompting_from_flags(parser, args, model, processor)
    if one_image is not None and args.show_views:
        parser.error(f"--show-views draws a PanoVLM's views; {args.model} is a {model.config.model_type} model")
    if args.show_views:
        render_view_overview(args.image, processor.image_processor).save(args.show_views)
        print(f"saved the views to {args.show_views}")
    if args.seed is not None:
        torch.manual_seed(args.seed)

    def print_answer(prompt: str, answer: str) -> None:
        print(f"Q: {prompt}\nA: {answer}\n" if len(prompts) > 1 else answer)

    config = generation_config_from_flags(model, args)
    if one_image is None:
        _answer_with_views(model, processor, args.image, prompts, args, config, print_answer)
    else:
        _answer_with_one_image(model, processor, one_image, args.image, prompts, args, config, print_answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
