"""File -> `pixel_values`, per panorama: PanoVLMImageProcessor on a JPEG path against the pipelines a user writes.

    python benchmarks/bench_pipeline.py --baseline-python /path/to/bench-venv/bin/python   # ~6 min on 2 cores
    python benchmarks/bench_pipeline.py --quick    # 4096x2048 only, 1 thread, 2 repeats

Inputs: a synthetic scene (benchmarks/bench_views.make_panorama) saved as JPEG (quality 90, 4:2:0) at 4096x2048
and 8192x4096. For every configuration (JPEG size x strategy x view size x threads) each method goes from the file
path to a normalised float32 tensor of views (SigLIP's mean / std 0.5), in its own persistent worker process started
with the configuration's thread count; the cases are interleaved, one discarded warm-up call, median per panorama.

* ours: `PanoVLMImageProcessor(crop_strategy, image_size)(path)["pixel_values"]`: JPEG draft (DCT-domain) decoding
  at the smallest scale at least `erp_width_needed` wide (`reduced_decoding=True`, the default), views sampled
  from the uint8 pixels, rescale + normalise.
* pil+py360convert[opencv]: `np.asarray(Image.open(path).convert("RGB"))`, `py360convert.e2p` per view (OpenCV
  remap), the global view by `cv2.resize(INTER_AREA)` + black bars, then stack, rescale, normalise, `torch.from_numpy`.
* pil+equilib: the same decode, the float32 CHW image, pyequilib `Equi2Pers` on the batch of views
  (`clip_output=False`), the global view by `F.interpolate(antialias=True)`, then normalise.

Views: anyres_e2p (global view + 8 horizon views at 45 degree steps) or e2p (9 views at 40 degree steps), 90 degree
fov, 384² or 224². Agreement: PSNR (peak 1, on [0, 1] pixels) of every method's views against a full-resolution
reference: the processor on the fully decoded panorama with the perspective views supersampled 4x
(`view_render_size=4 * image_size`, antialiased shrink), no reduced decoding.

Target: ours <= 0.4x the fastest of the peer pipelines, per panorama, in every configuration.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _timing  # noqa: E402
from bench_views import FOV, STRATEGIES, _equilib_rot, _letterbox_numpy, make_panorama  # noqa: E402


BASELINES = ("pil+py360convert[opencv]", "pil+equilib")
METHODS = ("ours", *BASELINES)
MEAN = STD = 0.5


def _worker(method: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    hello = {"method": method, "threads": threads, "available": True}
    try:
        if method == "pil+py360convert[opencv]":
            import cv2
            import py360convert  # noqa: F401

            cv2.setNumThreads(threads)
            hello.update(opencv=cv2.__version__, py360convert=_timing._version("py360convert"))
        elif method == "pil+equilib":
            import equilib  # noqa: F401

            hello["pyequilib"] = _timing._version("pyequilib")
        else:
            import processing_panovlm  # noqa: F401
    except ImportError as error:
        hello.update(available=False, reason=str(error))
    hello["machine"] = _timing.machine_facts(("pillow", "py360convert", "pyequilib", "opencv-python-headless"))
    state: dict = {}

    def setup(path: str, strategy: str, size: int) -> dict:
        state["run"] = _make_runner(method, path, strategy, size)
        return {}

    def run() -> dict:
        start = time.perf_counter()
        state["out"] = state["run"]()
        return {"seconds": time.perf_counter() - start}

    def dump(path: str) -> dict:
        np.save(path, state["out"].numpy())
        return {"shape": list(state["out"].shape)}

    _timing.serve({"setup": setup, "run": run, "dump": dump}, hello)


def _make_runner(method: str, path: str, strategy: str, size: int):
    import torch

    from configuration_panovlm.view_layout import build_view_layout

    crop_strategy, overlap = STRATEGIES[strategy]
    if method == "ours":
        from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor

        processor = PanoVLMImageProcessor(crop_strategy=crop_strategy, image_size=size, fov_deg=FOV, overlap_ratio=overlap)
        return lambda: processor(path, return_tensors="pt")["pixel_values"][0]
    from PIL import Image

    layout = build_view_layout(crop_strategy, FOV, overlap)
    perspective = [view for view in layout.views if view.kind == "perspective"]

    def decode() -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    if method == "pil+py360convert[opencv]":
        import cv2
        import py360convert

        def run():
            erp = decode()
            views = [_letterbox_numpy(cv2.resize(erp, (size, size // 2), interpolation=cv2.INTER_AREA), size)] if (
                layout.has_global_view) else []
            views += [py360convert.e2p(erp, FOV, v.yaw_deg, v.pitch_deg, (size, size)) for v in perspective]
            values = (np.stack(views).astype(np.float32) * (1 / 255) - MEAN) / STD
            return torch.from_numpy(values).permute(0, 3, 1, 2)

        return run
    if method == "pil+equilib":
        import torch.nn.functional as F
        from equilib import Equi2Pers

        sampler = Equi2Pers(height=size, width=size, fov_x=FOV, mode="bilinear", clip_output=False)
        rots = [_equilib_rot(view) for view in perspective]

        def run():
            image = torch.from_numpy(decode()).permute(2, 0, 1).float()
            views = []
            if layout.has_global_view:
                content = F.interpolate(image[None], size=(size // 2, size), mode="bilinear", antialias=True)
                top = (size - size // 2) // 2
                views.append(F.pad(content, (0, 0, top, size - size // 2 - top)))
            views.append(sampler(image[None].expand(len(rots), -1, -1, -1), rots))
            return (torch.cat(views) * (1 / 255) - MEAN) / STD

        return run
    raise ValueError(method)


# ================================================================================================== orchestrator side
def make_jpeg(height: int, cache_dir: Path) -> Path:
    from PIL import Image

    path = cache_dir / f"erp_{2 * height}x{height}.jpg"
    if not path.exists():
        Image.fromarray(np.load(make_panorama(height, cache_dir))).save(path, quality=90)
    return path


def reference_views(path: Path, strategy: str, size: int) -> np.ndarray:
    """The processor on the full decode, perspective views supersampled 4x: (V, 3, S, S) on [0, 1]."""
    from PIL import Image

    from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor

    crop_strategy, overlap = STRATEGIES[strategy]
    with Image.open(path) as image:
        erp = np.asarray(image.convert("RGB"))
    processor = PanoVLMImageProcessor(crop_strategy=crop_strategy, image_size=size, fov_deg=FOV, overlap_ratio=overlap,
                                      view_render_size=4 * size, reduced_decoding=False)
    return processor(erp, return_tensors="pt")["pixel_values"][0].numpy() * STD + MEAN


def psnr(views: np.ndarray, reference: np.ndarray) -> float:
    mse = float(np.mean((np.clip(views * STD + MEAN, 0, 1) - reference) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 2)")
    parser.add_argument("--threads", type=int, nargs="+", default=None)
    parser.add_argument("--heights", type=int, nargs="+", default=None, help="ERP heights (default 2048 4096)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 224])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--baseline-python", default=None,
                        help="interpreter with py360convert, opencv-python-headless and pyequilib (default: this one)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.threads = args.threads or ([1] if args.quick else [1, 2])
    args.heights = args.heights or ([2048] if args.quick else [2048, 4096])
    if args.worker:
        _worker(args.worker, args.threads[0])
        return

    start = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    load_before = _timing.load_average()
    python = {m: (sys.executable if m == "ours" else args.baseline_python or sys.executable) for m in METHODS}
    rows, configs, hellos = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        tmp = Path(tmp)
        jpegs = {h: make_jpeg(h, tmp) for h in args.heights}
        for threads in args.threads:
            workers = {}
            for method in METHODS:
                worker = _timing.Worker([python[method], str(Path(__file__).resolve()), "--worker", method,
                                         "--threads", str(threads)], cwd=str(HERE.parent))
                hellos[f"{method}@{threads}"] = worker.hello
                if worker.hello["available"]:
                    workers[method] = worker
                else:
                    log(f"{method} unavailable: {worker.hello['reason']}")
                    worker.close()
            for height in args.heights:
                for strategy in args.strategies:
                    for size in args.sizes:
                        name = f"JPEG {2 * height}x{height} -> {size}^2, {strategy}, {threads} thread(s)"
                        log(name)
                        for worker in workers.values():
                            worker.request(cmd="setup", path=str(jpegs[height]), strategy=strategy, size=size)
                        timing = _timing.interleaved(
                            {m: (lambda w=w: w.request(cmd="run")["seconds"]) for m, w in workers.items()},
                            repeats=args.repeats, warmup=1, log=log)
                        reference = reference_views(jpegs[height], strategy, size)
                        quality = {}
                        for method, worker in workers.items():
                            out = tmp / f"{method}.npy"
                            worker.request(cmd="dump", path=str(out))
                            quality[method] = psnr(np.load(out), reference)
                        baselines = [m for m in BASELINES if m in workers]
                        fastest = min(baselines, key=lambda m: timing[m]["median_s"])
                        ratio = _timing.paired_ratio(timing, "ours", fastest)
                        rows.append(_timing.ratio_row(f"{name} (vs {fastest})", timing["ours"]["median_s"],
                                                      timing[fastest]["median_s"], "<= 0.4", ratio <= 0.4, ratio=ratio))
                        configs.append({"name": name, "height": height, "strategy": strategy, "size": size,
                                        "threads": threads, "timing": timing, "fastest_baseline": fastest,
                                        "ratio": ratio, "psnr_db_vs_full_resolution_reference": quality})
                        log("  PSNR vs full-resolution reference: " + ", ".join(
                            f"{m} {q:.1f} dB" for m, q in quality.items()) + f"; ratio {ratio:.3f} vs {fastest}")
            for worker in workers.values():
                worker.close()
    _timing.print_ratio_table(rows, "File -> pixel_values per panorama, ours / fastest peer pipeline")
    payload = {
        "benchmark": "bench_pipeline",
        "description": "JPEG file -> normalised views per panorama: PanoVLMImageProcessor (draft decoding) vs "
        "PIL + py360convert (OpenCV) and PIL + pyequilib",
        "targets": {"per_panorama": "ours <= 0.4x the fastest peer pipeline"},
        "settings": vars(args),
        "machine": {**_timing.machine_facts(("pillow",)), "load_average_before": load_before},
        "workers": hellos,
        "ratios": rows,
        "configurations": configs,
        "wall_time_s": time.perf_counter() - start,
    }
    _timing.write_results("bench_pipeline_quick" if args.quick else "bench_pipeline", payload)


if __name__ == "__main__":
    main()
