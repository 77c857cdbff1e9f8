"""`panovlm probe`: which part of a PanoVLM carries which panoramic skill, measured in minutes on a CPU."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from modeling_panovlm.probe import RESULTS_JSON, RESULTS_MD, RESULTS_PNG, load_probe_file, render_markdown, run_probe
from modeling_panovlm.probe.runner import check_configurations
from modeling_panovlm.testing.probe_tasks import PROBE_TASKS

from .console import LEVELS, attach_log_file, configure_logging, library_warnings_logged
from .options import int_at_least


logger = logging.getLogger(__name__)

DEFAULT_PROBE_FILE = Path(__file__).resolve().parents[2] / "examples" / "probe.yaml"

DESCRIPTION = f"""\
The panorama reasoning probe: trains tiny random PanoVLMs of each configuration of a probe file through the three
stages, on synthetic panoramas with fixed seeds, and scores closed-set questions on held-out panoramas:

  {', '.join(PROBE_TASKS)}

(8-sector directions, with objects across the +/-180 degree seam scored apart; above/below the horizon and
ceiling/floor; "what is left of the red object?", "what is behind the camera?"; counting one colour over several
views; whether answers turn with a panorama rolled in yaw). A configuration is any PanoVLM config override
(resampler_type, use_panorama_pe, stitching_mode, crop_strategy, pitch_levels_deg...) and the stages it trains.

Writes <output-dir>/{RESULTS_MD} (mean ± standard deviation over seeds per task and configuration, wall time),
{RESULTS_JSON} (every run) and {RESULTS_PNG} (bar chart), rewritten after every run; details in probe.log.

examples:
  panovlm probe                                  # examples/probe.yaml, the default probe
  panovlm probe --config my_probe.yaml --output-dir out/my-probe --jobs 2
  panovlm probe --quick                          # 2 steps per stage, 8 panoramas, 2 seeds: checks the pipeline
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panovlm probe", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=str(DEFAULT_PROBE_FILE), help="probe file, YAML or JSON (default: examples/probe.yaml)"
    )
    parser.add_argument("--output-dir", default="out/probe", help="where everything is written (default: out/probe)")
    parser.add_argument(
        "--jobs",
        type=int_at_least(1),
        default=None,
        help="runs trained at once, in worker processes of one torch thread each when more than one (default: one "
        "per CPU core this process may use, at most the number of runs)",
    )
    parser.add_argument("--quick", action="store_true", help="2 steps per stage, 8 panoramas, 2 seeds: the pipeline only")
    parser.add_argument(
        "--log-level", choices=LEVELS, help="what the terminal shows besides the results (default: warnings)"
    )
    parser.add_argument("--quiet", action="store_true", help="the results table and errors only")
    return parser


def set_up_worker(log_level: str | None, log_file: Path | None) -> None:
    """Logging of a `--jobs` worker process: errors only on the terminal (no progress bars: several workers would
    draw over each other), everything in the command's log file."""
    configure_logging(log_level, quiet=True)
    if log_file is not None:
        attach_log_file(log_file)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = load_probe_file(args.config)
        check_configurations(spec)  # before anything is written
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if args.quick:
        spec = spec.quick()
    configure_logging(args.log_level, args.quiet)
    out = Path(args.output_dir)
    log_file = attach_log_file(out / "probe.log")
    total = len(spec.seeds) * len(spec.configurations)
    # Tiny models use a second thread poorly: two one-thread runs at once finish sooner than two two-thread runs.
    jobs = args.jobs or min(total, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if not args.quiet:
        print(f"probe {spec.source}: {len(spec.configurations)} configurations x {len(spec.seeds)} seeds = {total} runs", flush=True)

    def progress(run: dict) -> None:
        if not args.quiet:
            scores = ", ".join(f"{task} {score:.0%}" for task, score in run["scores"].items())
            print(f"  {run['configuration']} seed {run['seed']}: {scores} ({run['seconds']:.0f} s)", flush=True)

    try:
        results = run_probe(
            spec, out, jobs=jobs, on_run=progress, worker_setup=partial(set_up_worker, args.log_level, log_file)
        )
    except ValueError as error:
        parser.error(str(error))
    print(render_markdown(results), end="")
    print(f"results in {out / RESULTS_MD}, {out / RESULTS_JSON}, {out / RESULTS_PNG}; details in {log_file}")
    dropped = library_warnings_logged()
    if dropped and not args.quiet:
        print(f"{dropped} warning(s) from libraries were written to {log_file}")
    return 0


__all__ = ["DEFAULT_PROBE_FILE", "build_parser", "main", "set_up_worker"]
