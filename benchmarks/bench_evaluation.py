"""Evaluation on a QuIC-360-shaped table: one generation per (image, query) against one generation per row.

    python benchmarks/bench_evaluation.py            # 16 panoramas x 3 queries x 4-6 references (~25 s)
    python benchmarks/bench_evaluation.py --quick    # 6 panoramas, 1 repeat, no CLI run (~10 s)

The table is built like QuIC-360 test (several references for every image + query): synthetic panoramas
(processing_panovlm/synthetic_panoramas.py), 3 queries per panorama, 4 to 6 paraphrased references per query. The
model is the tiny random checkpoint (modeling_panovlm/tiny_checkpoint.py: MLP resampler, anyres_e2p), saved to a
temporary directory and loaded with the Auto classes, as `examples/evaluate.py` does.

* ours: `modeling_panovlm.evaluation.generate_captions` over `group_rows(table)` (what `evaluate_caption_table`
  and the CLI run): one greedy generation per unique (image, query), each panorama encoded once, batches of 8.
* baseline: one generation per row, the straightforward loop: batches of 8 rows,
  `model.generate(**processor(images, prompts, padding=True))` (every row re-encodes its panorama).

Both run greedy with the same `max_new_tokens`, interleaved, `--repeats` times after a warm-up. The script also runs
the CLI once (`examples/evaluate.py --model DIR --csv CSV ...`, end to end with scoring) and reads the number of
generations from its metrics.json, and checks that the grouped predictions equal the per-row ones.

Target: number of generations = number of unique (image, query) pairs (not rows).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _timing  # noqa: E402


PARAPHRASES = (
    "{}",
    "In the panorama, {}",
    "Looking around: {}",
    "{} The rest is sky and ground.",
    "One can see that {}",
    "Here {}",
)


def build_table(root: Path, num_images: int, seed: int = 0) -> tuple[Path, dict]:
    """QuIC-360-shaped CSV: 3 queries per panorama, 4-6 references per (image, query)."""
    from modeling_panovlm.testing.synthetic_panoramas import (
        random_scene,
        render_panorama,
        scene_rows,
    )

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(num_images):
        objects = random_scene(rng)
        image = root / "images" / f"pano_{index:03d}.png"
        render_panorama(objects, height=128, seed=index).save(image)
        candidates = scene_rows(objects, str(image))
        for row in rng.sample(candidates, 3):
            for template in PARAPHRASES[: rng.randint(4, 6)]:
                text = row["annotation"]
                rows.append({"url": str(image), "query": row["query"],
                             "annotation": template.format(text[0].lower() + text[1:] if template != "{}" else text)})
    path = root / "test.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["url", "query", "annotation"])
        writer.writeheader()
        writer.writerows(rows)
    pairs = {(row["url"], row["query"]) for row in rows}
    return path, {"rows": len(rows), "unique_image_query_pairs": len(pairs), "images": num_images}


def per_row_captions(model, processor, table, batch_size: int, config) -> tuple[list[str], int]:
    """The baseline: one `generate` per row, in batches of rows, straight from the processor."""
    import torch

    captions, generations = [], 0
    for first in range(0, len(table), batch_size):
        rows = table.select(range(first, min(first + batch_size, len(table))))
        prompts = [processor.apply_chat_template(processor.build_messages(query, verbatim=style == "instruction"),
                                                 add_generation_prompt=True)
                   for query, style in zip(rows["query"], rows["prompt_style"])]
        inputs = processor(images=list(rows["image"]), text=prompts, padding=True, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, generation_config=config)
        new = output[:, inputs["input_ids"].shape[1]:]
        captions += [text.strip() for text in processor.batch_decode(new, skip_special_tokens=True)]
        generations += len(prompts)
    return captions, generations


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 panoramas, 1 repeat, no CLI run")
    parser.add_argument("--images", type=int, default=None, help="panoramas in the table (default 16)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.images = args.images or (6 if args.quick else 16)
    args.repeats = args.repeats or (1 if args.quick else 3)

    import torch

    from modeling_panovlm.evaluation import (
        generate_captions,
        greedy_generation_config,
        group_rows,
        load_model_and_processor,
    )
    from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
    from processing_panovlm.data.captions import load_caption_table, scan_images

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="panovlm_bench_eval_") as tmp:
        root = Path(tmp)
        table_path, shape = build_table(root / "data", args.images)
        build_tiny_checkpoint(root / "model", resampler_type="mlp", crop_strategy="anyres_e2p")
        model, processor = load_model_and_processor(root / "model", device="cpu")
        config = greedy_generation_config(model, args.max_new_tokens)
        table, problems = scan_images(load_caption_table(table_path))
        groups = group_rows(table)
        log(f"table: {shape['rows']} rows, {shape['unique_image_query_pairs']} unique (image, query) pairs, "
            f"{shape['images']} panoramas; {len(problems)} rows dropped")

        results = {}

        def ours():
            captions, failures, stats = generate_captions(model, processor, groups, args.batch_size, config,
                                                          show_progress=False)
            results["ours"] = (captions, stats)

        def baseline():
            results["baseline"] = per_row_captions(model, processor, table, args.batch_size, config)

        timing = _timing.interleaved({"ours (grouped)": ours, "baseline (per row)": baseline},
                                     repeats=args.repeats, warmup=1, log=log)
        captions, stats = results["ours"]
        row_captions, row_generations = results["baseline"]
        caption_of_group = {}
        for group, caption in zip(groups, captions):
            for row in group.rows:
                caption_of_group[row] = caption
        same = sum(caption_of_group[i] == row_captions[i] for i in range(len(table)))
        log(f"grouped predictions equal to per-row predictions for {same}/{len(table)} rows")

        cli = None
        if not args.quick:
            command = [sys.executable, str(HERE.parent / "examples" / "evaluate.py"), "--model", str(root / "model"),
                       "--csv", str(table_path), "--output-dir", str(root / "eval"), "--batch-size",
                       str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens)]
            t0 = time.perf_counter()
            completed = subprocess.run(command, capture_output=True, text=True, cwd=str(HERE.parent),
                                       env={**__import__("os").environ, "OMP_NUM_THREADS": str(args.threads)})
            wall = time.perf_counter() - t0
            if completed.returncode:
                raise RuntimeError(f"examples/evaluate.py failed:\n{completed.stderr[-4000:]}")
            metrics = json.loads((root / "eval" / "metrics.json").read_text())
            cli = {"wall_time_s": wall, "generations": metrics["generation"]["generations"],
                   "images_encoded": metrics["generation"]["images_encoded"],
                   "generation_seconds": metrics["generation"]["seconds"], "rows_scored": metrics["data"]["rows_scored"],
                   "tokenizer": metrics["tokenizer"],
                   "protocol_units": {name: p["units"] for name, p in metrics["protocols"].items()}}
            log(f"CLI: {cli['generations']} generations, {cli['wall_time_s']:.1f} s end to end "
                f"({cli['generation_seconds']:.1f} s generating)")

    pairs = shape["unique_image_query_pairs"]
    rows = [
        _timing.ratio_row("generations (in-process)", stats["generations"], row_generations,
                          f"= unique pairs ({pairs})", stats["generations"] == pairs, unit="generations"),
        _timing.ratio_row("generation wall time", timing["ours (grouped)"]["median_s"],
                          timing["baseline (per row)"]["median_s"], "(information)", True,
                          ratio=_timing.paired_ratio(timing, "ours (grouped)", "baseline (per row)")),
        _timing.ratio_row("panoramas encoded", stats["images_encoded"], row_generations, f"= panoramas ({shape['images']})",
                          stats["images_encoded"] == shape["images"], unit="encodings"),
    ]
    if cli:
        rows.insert(1, _timing.ratio_row("generations (examples/evaluate.py)", cli["generations"], row_generations,
                                         f"= unique pairs ({pairs})", cli["generations"] == pairs, unit="generations"))
    _timing.print_ratio_table(rows, "Evaluation, ours (grouped) / baseline (one generation per row)")
    payload = {
        "benchmark": "bench_evaluation",
        "description": "QuIC-360-shaped table, tiny checkpoint: grouped generation (modeling_panovlm.evaluation) vs "
        "one generation per row",
        "target": "generations = unique (image, query) pairs",
        "settings": vars(args),
        "machine": _timing.machine_facts(),
        "table": shape,
        "timing": timing,
        "ours_stats": stats,
        "baseline_generations": row_generations,
        "rows_with_identical_prediction": same,
        "cli": cli,
        "ratios": rows,
        "wall_time_s": time.perf_counter() - start,
    }
    _timing.write_results("bench_evaluation_quick" if args.quick else "bench_evaluation", payload)
    print(f"total {payload['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
