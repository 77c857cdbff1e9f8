"""The probe's results: mean and spread over seeds per configuration and task, as JSON, Markdown and one PNG bar
chart (drawn with Pillow, like the training curves: no plotting dependency)."""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

from PIL import Image, ImageDraw

from configuration_panovlm.atomic_files import write_bytes_atomically, write_text_atomically
from modeling_panovlm.testing.probe_tasks import CHANCE, PROBE_TASKS


RESULTS_JSON = "probe_results.json"
RESULTS_MD = "probe_results.md"
RESULTS_PNG = "probe_results.png"
TASK_LABELS = {
    "direction8": "direction (8)",
    "direction8_seam": "direction, seam",
    "horizon": "above/below",
    "ceiling_floor": "ceiling/floor",
    "relative": "behind the camera",
    "relative_object": "beside an object",
    "counting": "counting",
    "consistency": "yaw consistency",
}


def summarise(runs: list[dict], configurations: list[str]) -> dict[str, dict]:
    """Per configuration: `mean` and `std` (sample standard deviation over seeds; 0 for one seed) of every task's
    score, `min` / `max`, the seeds, and the mean wall time of one run in seconds."""
    summary = {}
    for name in configurations:
        mine = [run for run in runs if run["configuration"] == name]
        if not mine:
            continue
        tasks = {}
        for task in PROBE_TASKS:
            values = [run["scores"][task] for run in mine]
            tasks[task] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
        seconds = [run["seconds"] for run in mine]
        summary[name] = {
            "seeds": [run["seed"] for run in mine],
            "tasks": tasks,
            "seconds_per_run": statistics.fmean(seconds),
            "cpu_seconds_per_run": statistics.fmean(run["cpu_seconds"] for run in mine),
            "image_tokens": mine[0]["image_tokens"],
            "num_views": mine[0]["num_views"],
        }
    return summary


def render_markdown(results: dict) -> str:
    """The results table: one row per configuration, `mean ± std` in percent per task, views / image tokens, and
    the wall time of one run."""
    summary = results["summary"]
    header = ["configuration", *(TASK_LABELS[t] for t in PROBE_TASKS), "views / tokens", "s per run (CPU s)"]
    lines = [
        f"Panorama probe ({results['source']}): accuracy in % on held-out questions, mean ± standard deviation over "
        f"seeds {results['seeds']}; yaw consistency: share of answers that turn with the panorama.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for name, entry in summary.items():
        cells = [f"{entry['tasks'][t]['mean'] * 100:.0f} ± {entry['tasks'][t]['std'] * 100:.0f}" for t in PROBE_TASKS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {entry['num_views']} / {entry['image_tokens']} | {entry['seconds_per_run']:.0f} ({entry['cpu_seconds_per_run']:.0f}) |")
    chance = " | ".join(f"{CHANCE[t] * 100:.0f}" for t in PROBE_TASKS)
    lines.append(f"| *chance* | {chance} | | |")
    per_seed = results["questions"].values()
    counts = ", ".join(f"{TASK_LABELS[t]} {'/'.join(str(q[t]) for q in per_seed)}" for t in PROBE_TASKS)
    cpu = sum(run["cpu_seconds"] for run in results["runs"])
    lines += [
        "",
        f"Held-out questions per seed ({'/'.join(results['questions'])}): {counts}.",
        f"Wall time {results['total_seconds'] / 60:.1f} min for {len(results['runs'])} runs ({results['jobs']} at a "
        f"time, {results['torch_threads']} torch thread(s) each); their CPU time {cpu / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def render_chart(summary: dict, path: Path, width: int = 1100, height: int = 420) -> Path:
    """A grouped bar chart: per task, one bar per configuration (mean), with a whisker of ± one standard
    deviation; chance marked per task by a grey dash."""
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    names = list(summary)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, bottom = 50, 20, height - 110
    plot_width = width - left - 10
    for percent in range(0, 101, 25):  # horizontal grid and axis labels
        y = bottom - (bottom - top) * percent / 100
        draw.line([(left, y), (width - 10, y)], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{percent}%", fill="black")
    group = plot_width / len(PROBE_TASKS)
    bar = group * 0.8 / max(1, len(names))
    for t, task in enumerate(PROBE_TASKS):
        x0 = left + t * group + group * 0.1
        for n, name in enumerate(names):
            stats = summary[name]["tasks"][task]
            x = x0 + n * bar
            y = bottom - (bottom - top) * stats["mean"]
            draw.rectangle([(x, y), (x + bar - 1, bottom)], fill=colours[n % len(colours)])
            low = bottom - (bottom - top) * max(0.0, stats["mean"] - stats["std"])
            high = bottom - (bottom - top) * min(1.0, stats["mean"] + stats["std"])
            draw.line([(x + bar / 2, low), (x + bar / 2, high)], fill="black")
        chance_y = bottom - (bottom - top) * CHANCE[task]
        draw.line([(x0, chance_y), (x0 + bar * len(names), chance_y)], fill=(110, 110, 110), width=2)
        draw.text((x0, bottom + 6), TASK_LABELS[task], fill="black")
    for n, name in enumerate(names):  # legend
        x, y = left + (n % 5) * (plot_width / 5), bottom + 30 + (n // 5) * 18
        draw.rectangle([(x, y + 2), (x + 10, y + 12)], fill=colours[n % len(colours)])
        draw.text((x + 15, y), name, fill="black")
    draw.text((left, height - 16), "mean over seeds, whisker ± 1 std, grey dash = chance", fill=(90, 90, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes_atomically(path, buffer.getvalue())


def write_results(results: dict, output_dir: Path) -> tuple[Path, Path, Path]:
    """Write `probe_results.json`, `probe_results.md` and `probe_results.png` into `output_dir` (each atomically)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_text_atomically(output_dir / RESULTS_JSON, json.dumps(results, indent=2))
    md_path = write_text_atomically(output_dir / RESULTS_MD, render_markdown(results))
    png_path = render_chart(results["summary"], output_dir / RESULTS_PNG)
    return json_path, md_path, png_path


__all__ = ["RESULTS_JSON", "RESULTS_MD", "RESULTS_PNG", "TASK_LABELS", "render_chart", "render_markdown", "summarise", "write_results"]
