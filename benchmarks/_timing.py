"""Shared helpers of the benchmarks: interleaved timing, peak memory, machine facts, ratio tables and JSON results.

Every benchmark times "ours" and its baselines in the same run, interleaved: after the warm-up calls (discarded),
each repeat runs every case once, in an order that rotates from repeat to repeat, so that drifts of the machine
(other processes, thermal state, page cache) hit all cases alike. The reported figure is the median of the repeats.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path


RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---- timing ----------------------------------------------------------------------------------------------------
def summarize(samples: list[float]) -> dict:
    """Median, min, max and all samples (seconds) of one case."""
    ordered = sorted(samples)
    return {
        "median_s": statistics.median(ordered),
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "repeats": len(ordered),
        "samples_s": samples,
    }


def interleaved(
    cases: dict[str, Callable[[], float | None]],
    repeats: int,
    warmup: int | dict[str, int] = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Time every case `warmup + repeats` times, interleaved; warm-up calls are discarded.

    A case is a callable; it is timed with `time.perf_counter` around the call, unless it returns a float, which is
    then taken as its own measurement in seconds (for cases that run in a worker process and time themselves, so
    that the pipe round trip is not charged to them). Returns `{name: summarize(samples)}` plus the warm-up times
    under `"warmup_s"` (the first call includes one-time costs such as building sampling grids). `warmup` may be a
    dict giving the number of warm-up calls per case (e.g. 0 for a case that runs for a minute).
    """
    names = list(cases)
    warm: dict[str, list[float]] = {name: [] for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}

    def run(name: str) -> float:
        start = time.perf_counter()
        reported = cases[name]()
        elapsed = time.perf_counter() - start
        return float(reported) if isinstance(reported, float) else elapsed

    counts = warmup if isinstance(warmup, dict) else {name: warmup for name in names}
    for round_ in range(max(counts.values(), default=0)):
        for name in names:
            if round_ < counts.get(name, 0):
                warm[name].append(run(name))
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(run(name))
        if log is not None:
            log(f"  repeat {repeat + 1}/{repeats}: " + ", ".join(f"{n} {samples[n][-1] * 1e3:.1f} ms" for n in names))
    return {name: {**summarize(samples[name]), "warmup_s": warm[name]} for name in names}


# ---- memory ----------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux /proc), in bytes."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident set size (VmHWM) since the process started or since `reset_peak_rss()`, in bytes."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss is the peak since the start (KiB on Linux, bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    return kib * 1024


def measure_peak_rss(fn: Callable[[], object]) -> dict:
    """Run `fn` once and return how far the process's RSS rose above its level just before the call.

    Meant for a fresh worker process (see the benchmarks): run it with `MALLOC_MMAP_THRESHOLD_` set, so that glibc
    serves large tensors with mmap and gives them back on free; the RSS then follows the live tensor memory.
    """
    before = rss_bytes()
    exact = reset_peak_rss()
    fn()
    peak = peak_rss_bytes()
    return {
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "peak_increase_bytes": None if before is None or peak is None else peak - before,
        "method": "VmHWM after reset (clear_refs 5)" if exact else "ru_maxrss (peak since process start)",
    }


# Environment for memory-measuring worker processes (see measure_peak_rss).
MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# ---- machine facts ---------------------------------------------------------------------------------------------
def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_facts(packages: tuple[str, ...] = ()) -> dict:
    """What the figures depend on: CPU, threads, library versions, device, load of the machine."""
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    facts = {
        "device": "cpu",
        "device_name": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_total_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": "not measured: no GPU on this machine" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "load_average_1_5_15": load_average(),
        "env": {key: os.environ[key] for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if key in os.environ},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    for package in ("panovlm", "numpy", *packages):
        facts[package] = _version(package)
    return facts


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


# ---- reporting -------------------------------------------------------------------------------------------------
def paired_ratio(timing: dict, ours: str, baseline: str) -> float:
    """Median over repeats of ours_i / baseline_i, each pair measured back to back in the same repeat.

    More robust than the ratio of the medians when the load of the machine drifts during the run.
    """
    pairs = [a / b for a, b in zip(timing[ours]["samples_s"], timing[baseline]["samples_s"])]
    return statistics.median(pairs)


def ratio_row(
    name: str, ours: float, baseline: float, target: str, met: bool, unit: str = "s", ratio: float | None = None
) -> dict:
    """One line of a ratio table. `ratio` defaults to ours / baseline; timing rows pass `paired_ratio(...)`."""
    return {
        "comparison": name,
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio if ratio is not None else (ours / baseline if baseline else float("nan")),
        "ratio_of_medians": ours / baseline if baseline else float("nan"),
        "target": target,
        "met": bool(met),
        "unit": unit,
    }


def format_value(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.1f} ms" if value < 10 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:.4g} {unit}".strip()


def print_ratio_table(rows: list[dict], title: str) -> None:
    """Print `ratio_row`s as a Markdown table: ours, baseline (medians), ours/baseline (the median of the paired
    per-repeat ratios for timings), target, met."""
    print(f"\n### {title}\n")
    print("| comparison | ours | baseline | ours / baseline | target | met |")
    print("|---|---:|---:|---:|---|---|")
    for row in rows:
        print(
            f"| {row['comparison']} | {format_value(row['ours'], row['unit'])} | "
            f"{format_value(row['baseline'], row['unit'])} | {row['ratio']:.3f} | {row['target']} | "
            f"{'yes' if row['met'] else 'NO'} |"
        )
    print()


def write_results(name: str, payload: dict) -> Path:
    """Write `benchmarks/results/<name>.json` (indented, stable key order) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


# ---- worker processes ------------------------------------------------------------------------------------------
class Worker:
    """A persistent Python subprocess that answers one JSON request per line with one JSON reply per line.

    Used for baselines that must run in another interpreter (a venv with OpenCV, py360convert without it) or in a
    fresh process. The worker times its own calls and returns the seconds, so the pipe is not charged.
    """

    def __init__(self, argv: list[str], env: dict | None = None, cwd: str | None = None):
        full_env = {**os.environ, **(env or {})}
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=full_env, cwd=cwd, bufsize=1
        )
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args} exited with {self.process.wait()}")
        return json.loads(line)

    def request(self, **message) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"worker error: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def serve(handlers: dict[str, Callable[..., dict]], hello: dict) -> None:
    """Worker side of `Worker`: print `hello`, then answer requests `{"cmd": name, ...}` until "quit"."""
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints of libraries must not corrupt the protocol
    out.write(json.dumps(hello) + "\n")
    out.flush()
    for line in sys.stdin:
        message = json.loads(line)
        command = message.pop("cmd")
        if command == "quit":
            break
        try:
            reply = handlers[command](**message)
        except Exception as error:  # reported to the parent, which raises
            import traceback

            reply = {"error": f"{type(error).__name__}: {error}\n{traceback.format_exc()}"}
        out.write(json.dumps(reply, default=_json_default) + "\n")
        out.flush()
