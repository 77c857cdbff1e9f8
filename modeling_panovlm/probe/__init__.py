"""The panorama reasoning probe: which part of a PanoVLM carries which panoramic skill, measured in minutes on a CPU.

`run_probe(spec, output_dir)` writes one probe dataset per seed (`testing.probe_tasks`: 8-sector directions with the
+/-180 degree seam apart, above/below the horizon, ceiling/floor, relative position, counting, yaw-roll
consistency), trains every configuration of the probe file on every seed through the three stages (the stage
runner of `training.plan`, tiny random models of `testing.tiny_checkpoint`), asks every held-out question, and
writes `probe_results.json` / `.md` / `.png` (mean ± spread over seeds, wall time) after every run, so a run cut
short keeps what it measured.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from modeling_panovlm.testing.probe_tasks import MANIFEST, write_probe_dataset

from .report import RESULTS_JSON, RESULTS_MD, RESULTS_PNG, render_markdown, summarise, write_results
from .runner import check_configurations, run_configuration
from .spec import ProbeConfiguration, ProbeSpec, load_probe_file, parse_probe


logger = logging.getLogger(__name__)


def probe_data(spec: ProbeSpec, seed: int, data_dir: Path) -> dict:
    """The probe dataset of `seed` in `data_dir`: reused when its manifest matches the spec, else written anew."""
    manifest_path = data_dir / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        wanted = {"seed": seed, "height": spec.height, "train_panoramas": spec.train_panoramas, "test_panoramas": spec.test_panoramas}
        if all(manifest.get(key) == value for key, value in wanted.items()):
            return manifest
    return write_probe_dataset(data_dir, spec.train_panoramas, spec.test_panoramas, seed=seed, height=spec.height)


def _run_in_worker(threads: int, *arguments) -> dict:
    """`run_configuration` in a worker process limited to `threads` torch threads."""
    torch.set_num_threads(threads)
    return run_configuration(*arguments)


def run_probe(
    spec: ProbeSpec,
    output_dir: str | Path,
    jobs: int = 1,
    on_run: Callable[[dict], None] | None = None,
    worker_setup: Callable[[], None] | None = None,
) -> dict:
    """Run every configuration of `spec` on every seed in `output_dir` (data under `data/seed-N`, runs under
    `runs/<configuration>/seed-N`), rewriting the results files after each run; return the results (what
    `probe_results.json` holds). With `jobs` > 1, that many runs train at once in worker processes, sharing the
    CPU's threads (tiny models use two threads poorly: two one-thread runs finish sooner than two two-thread runs
    in turn). `on_run` is called with each run's record as it finishes; `worker_setup` (picklable) runs first in each
    worker process (e.g. to set up its logging)."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    output_dir = Path(output_dir)
    check_configurations(spec)
    begin = time.perf_counter()
    names = [configuration.name for configuration in spec.configurations]
    manifests = {seed: probe_data(spec, seed, output_dir / "data" / f"seed-{seed}") for seed in spec.seeds}
    tasks = [
        (spec, configuration, seed, output_dir / "data" / f"seed-{seed}", manifests[seed],
         output_dir / "runs" / configuration.name / f"seed-{seed}")
        for seed in spec.seeds
        for configuration in spec.configurations
    ]
    order = {(seed, configuration.name): index for index, (_, configuration, seed, *_) in enumerate(tasks)}
    runs: list[dict] = []

    def record(run: dict) -> dict:
        runs.append(run)
        runs.sort(key=lambda r: order[(r["seed"], r["configuration"])])
        results = {
            "source": spec.source,
            "seeds": list(spec.seeds),
            "configurations": {c.name: {"config": c.config, "stages": list(c.stages)} for c in spec.configurations},
            "model": spec.model,
            "stages": spec.stages,
            "batch_size": spec.batch_size,
            "data": {"train_panoramas": spec.train_panoramas, "test_panoramas": spec.test_panoramas, "height": spec.height},
            "questions": {str(seed): manifest["questions"] for seed, manifest in manifests.items()},
            "jobs": jobs,
            "torch_threads": torch.get_num_threads() if jobs == 1 else max(1, torch.get_num_threads() // jobs),
            "complete": len(runs) == len(tasks),
            "total_seconds": round(time.perf_counter() - begin, 1),
            "summary": summarise(runs, names),
            "runs": runs,
        }
        write_results(results, output_dir)
        if on_run is not None:
            on_run(run)
        return results

    results: dict = {}
    if jobs == 1:
        for arguments in tasks:
            results = record(run_configuration(*arguments))
        return results
    threads = max(1, torch.get_num_threads() // jobs)
    with ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), initializer=worker_setup) as pool:
        pending = [pool.submit(_run_in_worker, threads, *arguments) for arguments in tasks]
        try:
            for future in as_completed(pending):
                results = record(future.result())
        except BaseException:  # a failed run (or Ctrl-C) stops the probe: drop the runs not started yet
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


__all__ = [
    "ProbeConfiguration",
    "ProbeSpec",
    "RESULTS_JSON",
    "RESULTS_MD",
    "RESULTS_PNG",
    "load_probe_file",
    "parse_probe",
    "render_markdown",
    "run_probe",
    "summarise",
    "write_results",
]
