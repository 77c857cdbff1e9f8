"""Panorama -> views: PanoVLMImageProcessor against py360convert (SciPy and OpenCV backends) and pyequilib.

    python benchmarks/bench_views.py            # full run (~3 min on 2 cores)
    python benchmarks/bench_views.py --quick    # 1024 x 2048 ERP, 1 thread, 3 repeats (~1.5 min)

For every configuration (ERP size x view size x crop strategy x thread count) each method turns the same uint8
panorama (H, W, 3) into its views, interleaved, `--repeats` times after one discarded warm-up call; the median
time per panorama is reported. Every method runs in its own persistent worker process started with the thread
count of the configuration (torch.set_num_threads, cv2.setNumThreads, OMP_NUM_THREADS), so the OpenCV and the SciPy
variants of py360convert can be timed side by side: py360convert picks OpenCV at import when `cv2` imports, and the
SciPy worker blocks that import.

Methods (all produce the same views: 8 horizon views at 45 degree steps, or 9 at 40 degree steps, 90 degree fov):

* ours: `PanoVLMImageProcessor(crop_strategy, image_size)(erp)`: uint8 array in, normalised float32
  `(1, V, 3, S, S)` tensor out (load, sampling straight from the uint8 pixels, letterbox global view, rescale +
  normalise).
* py360convert[scipy] / py360convert[opencv]: one `py360convert.e2p(erp, 90, yaw, pitch, (S, S))` call per view
  (uint8 in, uint8 out; py360convert caches its sampling maps per view, as we cache our sampling plans). For anyres_e2p the
  global view is added the way that stack would make it: PIL bilinear resize (SciPy worker) or cv2.resize with
  INTER_AREA (OpenCV worker), then the black bars. No normalisation or tensor conversion is charged to them.
* equilib[per-view] / equilib[batched]: pyequilib's torch backend, `Equi2Pers(height=S, width=S, fov_x=90)`
  (cached grid prep) called once per view on the float32 CHW image, or once with the image expanded to a batch of V;
  the global view by `F.interpolate(antialias=True)`.

Target: ours <= 0.5x the fastest baseline per panorama. Agreement is reported against py360convert on the same
views: float pipeline (float32 ERP in [0, 1]) and uint8 pipeline (our output mapped back to grey levels).

A second part measures `max_erp_width` (pre-shrinking the ERP with an area filter before sampling): time per
panorama and PSNR of the perspective views against a supersampled reference (each view rendered at k x S from
the full-resolution ERP and box-averaged k x k), on a synthetic scene and on a fine grating.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _timing  # noqa: E402


FOV = 90.0
STRATEGIES = {
    # name: (crop_strategy, overlap_ratio) -> views
    "anyres_e2p": ("anyres_e2p", 0.5),  # letterboxed global view + 8 views at 45 degrees
    "e2p_9": ("e2p", 0.55),  # 9 views at 40 degrees
}
BASELINES = ("py360convert[scipy]", "py360convert[opencv]", "equilib[per-view]", "equilib[batched]")
METHODS = ("ours", *BASELINES)


# ======================================================================================================== worker side
class _BlockCv2:
    """Meta-path finder that makes `import cv2` fail, so py360convert falls back to SciPy's map_coordinates."""

    def find_spec(self, name, path=None, target=None):
        if name == "cv2" or name.startswith("cv2."):
            raise ImportError("cv2 blocked by bench_views (SciPy backend of py360convert)")
        return None


def _worker(method: str, threads: int) -> None:
    if method == "py360convert[scipy]":
        sys.meta_path.insert(0, _BlockCv2())
    import torch

    torch.set_num_threads(threads)
    hello = {"method": method, "threads": threads, "available": True}
    try:
        if method.startswith("py360convert"):
            import py360convert
            import py360convert.utils

            backend = "opencv" if py360convert.utils.cv2 is not None else "scipy"
            hello["backend"] = backend
            hello["py360convert"] = _timing._version("py360convert")
            if method == "py360convert[opencv]":
                if backend != "opencv":
                    raise ImportError("opencv-python-headless is not installed in this interpreter")
                import cv2

                cv2.setNumThreads(threads)
                hello["opencv"] = cv2.__version__
        elif method.startswith("equilib"):
            import equilib  # noqa: F401

            hello["pyequilib"] = _timing._version("pyequilib")
        else:
            import processing_panovlm  # noqa: F401
    except ImportError as error:
        hello.update(available=False, reason=str(error))
    hello["machine"] = _timing.machine_facts(("py360convert", "pyequilib", "opencv-python-headless", "scipy"))
    state: dict = {}

    def setup(erp_path: str, strategy: str, size: int) -> dict:
        from configuration_panovlm.view_layout import build_view_layout

        crop_strategy, overlap = STRATEGIES[strategy]
        state.clear()
        state["erp"] = np.load(erp_path)
        state["size"] = size
        state["layout"] = build_view_layout(crop_strategy, FOV, overlap)
        state["settings"] = (crop_strategy, overlap)
        state["run"] = _make_runner(method, state["erp"], state["layout"], size, crop_strategy, overlap)
        return {"views": state["layout"].num_views}

    def run() -> dict:
        start = time.perf_counter()
        state["run"]()
        return {"seconds": time.perf_counter() - start}

    def dump(path: str, float_input: bool) -> dict:
        """Write the perspective views as float64 (V, S, S, 3) on the input's scale."""
        erp = state["erp"].astype(np.float32) / 255 if float_input else state["erp"]
        views = _perspective_views(method, erp, state["layout"], state["size"], *state["settings"])
        np.save(path, views)
        return {"shape": list(views.shape)}

    _timing.serve({"setup": setup, "run": run, "dump": dump}, hello)


def _letterbox_numpy(content: np.ndarray, size: int) -> np.ndarray:
    top = (size - size // 2) // 2
    return np.pad(content, ((top, size - size // 2 - top), (0, 0), (0, 0)))


def _equilib_rot(view) -> dict:
    # pyequilib turns the other way (z up, yaw left): negated angles give py360convert's / our views.
    return {"roll": 0.0, "pitch": -math.radians(view.pitch_deg), "yaw": -math.radians(view.yaw_deg)}


def _make_runner(method, erp, layout, size, crop_strategy, overlap):
    perspective = [view for view in layout.views if view.kind == "perspective"]
    has_global = layout.has_global_view
    if method == "ours":
        from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor

        processor = PanoVLMImageProcessor(
            crop_strategy=crop_strategy, image_size=size, fov_deg=FOV, overlap_ratio=overlap
        )
        return lambda: processor(erp, return_tensors="pt")["pixel_values"]
    if method.startswith("py360convert"):
        import py360convert

        if method.endswith("[opencv]"):
            import cv2

            def global_view():
                return _letterbox_numpy(cv2.resize(erp, (size, size // 2), interpolation=cv2.INTER_AREA), size)
        else:
            from PIL import Image

            image = Image.fromarray(erp)

            def global_view():
                return _letterbox_numpy(np.asarray(image.resize((size, size // 2), Image.BILINEAR)), size)

        def run():
            views = [global_view()] if has_global else []
            views += [py360convert.e2p(erp, FOV, v.yaw_deg, v.pitch_deg, (size, size)) for v in perspective]
            return views

        return run
    if method.startswith("equilib"):
        import torch
        import torch.nn.functional as F
        from equilib import Equi2Pers

        # clip_output=False: the default clamps every view to the whole image's min / max, a full pass per call
        # that bilinear sampling does not need; the baseline gets its fastest setting.
        sampler = Equi2Pers(height=size, width=size, fov_x=FOV, mode="bilinear", clip_output=False)
        rots = [_equilib_rot(view) for view in perspective]
        batched = method.endswith("[batched]")

        def run():
            image = torch.from_numpy(erp).permute(2, 0, 1).float()
            views = []
            if has_global:
                content = F.interpolate(image[None], size=(size // 2, size), mode="bilinear", antialias=True)
                top = (size - size // 2) // 2
                views.append(F.pad(content, (0, 0, top, size - size // 2 - top)))
            if batched:
                views.append(sampler(image[None].expand(len(rots), -1, -1, -1), rots))
            else:
                views += [sampler(image, rot)[None] for rot in rots]
            return torch.cat(views)

        return run
    raise ValueError(method)


def _perspective_views(method, erp, layout, size, crop_strategy, overlap) -> np.ndarray:
    """The perspective views of a method as float64 (V, S, S, 3), on the scale of `erp` (0..255 or 0..1)."""
    perspective = [view for view in layout.views if view.kind == "perspective"]
    if method == "ours":
        import torch

        from configuration_panovlm.view_layout import ViewLayout
        from processing_panovlm.equirect import sample_views
        from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor

        if erp.dtype == np.uint8:  # the full processor, normalisation undone
            processor = PanoVLMImageProcessor(
                crop_strategy=crop_strategy, image_size=size, fov_deg=FOV, overlap_ratio=overlap
            )
            values = processor(erp, return_tensors="pt")["pixel_values"][0] * 127.5 + 127.5
            values = values[1:] if layout.has_global_view else values
        else:
            sub = ViewLayout("perspective", tuple(perspective), False, 0.0)
            values = sample_views(torch.from_numpy(erp).permute(2, 0, 1), sub, size)[0]
        return values.permute(0, 2, 3, 1).double().numpy()
    if method.startswith("py360convert"):
        import py360convert

        return np.stack([py360convert.e2p(erp, FOV, v.yaw_deg, v.pitch_deg, (size, size)) for v in perspective]).astype(
            np.float64
        )
    if method.startswith("equilib"):
        import torch
        from equilib import Equi2Pers

        sampler = Equi2Pers(height=size, width=size, fov_x=FOV, mode="bilinear", clip_output=False)
        image = torch.from_numpy(np.ascontiguousarray(erp)).permute(2, 0, 1).float()
        views = [sampler(image, _equilib_rot(view)) for view in perspective]
        return torch.stack(views).permute(0, 2, 3, 1).double().numpy()
    raise ValueError(method)


# ================================================================================================== orchestrator side
def make_panorama(height: int, cache_dir: Path) -> Path:
    """A synthetic scene (coloured shapes, sky/ground gradient, per-pixel noise) as uint8 (H, 2H, 3) .npy."""
    path = cache_dir / f"erp_{height}.npy"
    if not path.exists():
        import random

        from modeling_panovlm.testing.synthetic_panoramas import (
            random_scene,
            render_panorama,
        )

        objects = random_scene(random.Random(1), num_objects=4, seam_probability=1.0)
        np.save(path, np.asarray(render_panorama(objects, height=height, seed=1)))
    return path


def agreement(views: np.ndarray, reference: np.ndarray, uint8: bool) -> dict:
    diff = np.abs(views - reference)
    result = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
    if uint8:
        rounded = np.abs(np.round(views) - reference)
        result["max_abs_diff_after_rounding"] = float(rounded.max())
        result["share_of_values_off_by_more_than_1"] = float((rounded > 1).mean())
    return result


def run_timing(args, workers_python: dict[str, str], erp_paths: dict[int, Path], log) -> tuple[list, dict]:
    configs, hellos = [], {}
    for threads in args.threads:
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        workers = {}
        for method in METHODS:
            worker = _timing.Worker(
                [workers_python[method], str(Path(__file__).resolve()), "--worker", method, "--threads", str(threads)],
                env=env,
                cwd=str(HERE.parent),
            )
            hellos[f"{method}@{threads}"] = {k: v for k, v in worker.hello.items() if k != "machine"}
            if worker.hello["available"]:
                workers[method] = worker
            else:
                log(f"{method}: skipped ({worker.hello['reason']})")
                worker.close()
        try:
            for height in args.erp:
                for size in args.sizes:
                    for strategy in args.strategies:
                        for worker in workers.values():
                            worker.request(cmd="setup", erp_path=str(erp_paths[height]), strategy=strategy, size=size)
                        log(f"ERP {2 * height}x{height} -> {size}^2, {strategy}, {threads} thread(s)")
                        cases = {m: (lambda w=w: w.request(cmd="run")["seconds"]) for m, w in workers.items()}
                        timing = _timing.interleaved(cases, repeats=args.repeats, warmup=1, log=log)
                        configs.append(
                            {"erp": [height, 2 * height], "view_size": size, "strategy": strategy, "threads": threads,
                             "timing": timing}
                        )
        finally:
            for worker in workers.values():
                worker.close()
    return configs, hellos


def run_agreement(args, workers_python, erp_paths, log) -> list:
    """Views of every method on the same panorama, compared with py360convert (both backends)."""
    results = []
    methods = ("ours", "py360convert[scipy]", "py360convert[opencv]", "equilib[per-view]")
    workers = {}
    for method in methods:
        worker = _timing.Worker([workers_python[method], str(Path(__file__).resolve()), "--worker", method, "--threads", "1"],
                                cwd=str(HERE.parent))
        if worker.hello["available"]:
            workers[method] = worker
        else:
            worker.close()
    height = max(args.erp)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for size in args.sizes:
                for strategy in args.strategies:
                    views = {}
                    for method, worker in workers.items():
                        worker.request(cmd="setup", erp_path=str(erp_paths[height]), strategy=strategy, size=size)
                        for float_input in (False, True):
                            path = f"{tmp}/{method}_{float_input}.npy"
                            worker.request(cmd="dump", path=path, float_input=float_input)
                            views[(method, float_input)] = np.load(path)
                    for reference in ("py360convert[scipy]", "py360convert[opencv]"):
                        if (reference, True) not in views:
                            continue
                        for method in workers:
                            if method == reference or method.startswith("py360convert"):
                                continue
                            entry = {"erp": [height, 2 * height], "view_size": size, "strategy": strategy,
                                     "method": method, "reference": reference}
                            if (method, True) in views:
                                entry["float_0_1"] = agreement(views[(method, True)], views[(reference, True)], False)
                            entry["uint8_grey_levels"] = agreement(views[(method, False)], views[(reference, False)], True)
                            results.append(entry)
                            log(f"agreement {method} vs {reference} ({size}^2, {strategy}): "
                                f"float max {entry.get('float_0_1', {}).get('max_abs_diff', float('nan')):.2e}, "
                                f"uint8 max {entry['uint8_grey_levels']['max_abs_diff']:.3f}")
        finally:
            for worker in workers.values():
                worker.close()
    return results


def run_preshrink(args, erp_paths, log) -> dict:
    """Time and aliasing of `max_erp_width` (area pre-shrink) on the largest ERP, in this process, 1 thread."""
    import torch

    from configuration_panovlm.view_layout import ViewLayout
    from processing_panovlm.equirect import sample_views
    from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor

    torch.set_num_threads(1)
    height = max(args.erp)
    width = 2 * height
    scene = np.load(erp_paths[height])
    columns = np.arange(width)
    rows = np.arange(height)
    # A grating of period 2.5 ERP pixels along the longitude, modulated in latitude: detail the views cannot resolve.
    grating = 0.5 + 0.4 * np.sin(2 * np.pi * columns[None, :] / 2.5) * np.cos(2 * np.pi * rows[:, None] / 7.0)
    grating = np.repeat((grating * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    images = {"synthetic scene": scene, "grating (period 2.5 px)": grating}
    widths = [None] + [w for w in args.preshrink_widths if w < width]
    result = {"erp": [height, width], "crop_strategy": "anyres_e2p", "threads": 1, "images": {}}
    for size in args.sizes:
        layout = PanoVLMImageProcessor(crop_strategy="anyres_e2p", image_size=size).view_layout
        perspective = ViewLayout("perspective", layout.strip_views, False, 0.0)
        processors = {
            str(w): PanoVLMImageProcessor(crop_strategy="anyres_e2p", image_size=size, max_erp_width=w) for w in widths
        }
        cases = {key: (lambda p=p: p(scene, return_tensors="pt")) for key, p in processors.items()}
        log(f"pre-shrink timing, views {size}^2")
        timing = _timing.interleaved(cases, repeats=args.repeats, warmup=1, log=log)
        factor = args.supersample
        for name, image in images.items():
            erp = torch.from_numpy(image).permute(2, 0, 1).double() / 255
            # Reference: each view rendered at factor x size from the full-resolution ERP, then box-averaged.
            reference = torch.cat(
                [
                    torch.nn.functional.avg_pool2d(
                        sample_views(erp, ViewLayout("one", (view,), False, 0.0), size * factor)[0], factor
                    )
                    for view in perspective.views
                ]
            )
            entry = {}
            for w in widths:
                views = sample_views(erp.float(), perspective, size, max_erp_width=w)[0].double()
                mse = torch.mean((views - reference) ** 2).item()
                entry[str(w)] = {
                    "psnr_db_vs_supersampled": 10 * math.log10(1.0 / mse) if mse > 0 else float("inf"),
                    "median_s_per_panorama": timing[str(w)]["median_s"],
                }
            result["images"].setdefault(name, {})[str(size)] = entry
            log(f"  {name} {size}^2: " + ", ".join(
                f"max_erp_width={w}: {e['psnr_db_vs_supersampled']:.2f} dB" for w, e in entry.items()))
        result.setdefault("timing", {})[str(size)] = timing
    result["reference"] = f"each view sampled at {factor} x S from the full ERP (float64), then {factor}x{factor} box-averaged"
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1024x2048 ERP, 1 thread, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=None)
    parser.add_argument("--erp", type=int, nargs="+", default=None, help="ERP heights (width = 2 x height)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 224])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--baseline-python", default=None,
                        help="interpreter with py360convert, opencv-python-headless and pyequilib (default: this one)")
    parser.add_argument("--no-preshrink", action="store_true")
    parser.add_argument("--preshrink-widths", type=int, nargs="+", default=[2048, 1024, 768])
    parser.add_argument("--supersample", type=int, default=4)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.threads[0] if args.threads else 1)
        return
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.threads = args.threads or ([1] if args.quick else [1, 2])
    args.erp = args.erp or ([1024] if args.quick else [2048, 1024])

    start = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    baseline_python = args.baseline_python or sys.executable
    workers_python = {method: (sys.executable if method == "ours" else baseline_python) for method in METHODS}
    cache_dir = Path(tempfile.gettempdir()) / "panovlm_bench_views"
    cache_dir.mkdir(exist_ok=True)
    erp_paths = {height: make_panorama(height, cache_dir) for height in args.erp}
    load_before = _timing.load_average()

    configs, hellos = run_timing(args, workers_python, erp_paths, log)
    agreements = run_agreement(args, workers_python, erp_paths, log)
    preshrink = None if args.no_preshrink else run_preshrink(args, erp_paths, log)

    rows = []
    for config in configs:
        timing = config["timing"]
        baselines = {m: timing[m]["median_s"] for m in BASELINES if m in timing}
        fastest = min(baselines, key=baselines.get)
        label = f"{config['erp'][1]}x{config['erp'][0]} -> {config['view_size']}², {config['strategy']}, {config['threads']}T"
        ratio_row = _timing.ratio_row(f"{label} (vs {fastest})", timing["ours"]["median_s"], baselines[fastest],
                                      "<= 0.5x", False, ratio=_timing.paired_ratio(timing, "ours", fastest))
        ratio_row["met"] = ratio_row["ratio"] <= 0.5
        ratio_row["fastest_baseline"] = fastest
        ratio_row["all_baselines_median_s"] = baselines
        config["ratio"] = ratio_row
        rows.append(ratio_row)
    _timing.print_ratio_table(rows, "Panorama -> views, ours / fastest baseline (median per panorama)")
    print("\nAll medians (ms):")
    for config in configs:
        print(f"  {config['ratio']['comparison']}: " + ", ".join(
            f"{m} {t['median_s'] * 1e3:.1f}" for m, t in config["timing"].items()))
    if preshrink:
        print("\nPre-shrink (max_erp_width, area filter) on", f"{preshrink['erp'][1]}x{preshrink['erp'][0]}:")
        for name, per_size in preshrink["images"].items():
            for size, entry in per_size.items():
                print(f"  {name}, {size}²: " + "; ".join(
                    f"{w}: {e['median_s_per_panorama'] * 1e3:.0f} ms, {e['psnr_db_vs_supersampled']:.2f} dB"
                    for w, e in entry.items()))

    payload = {
        "benchmark": "bench_views",
        "description": "panorama (uint8 HWC) -> views per panorama; ours = PanoVLMImageProcessor",
        "target": "ours <= 0.5x the fastest baseline per panorama",
        "settings": {k: v for k, v in vars(args).items() if k != "worker"},
        "machine": _timing.machine_facts(("py360convert", "pyequilib", "opencv-python-headless", "scipy")),
        "workers": hellos,
        "load_average_before": load_before,
        "load_average_after": _timing.load_average(),
        "ratios": rows,
        "configs": configs,
        "agreement": agreements,
        "preshrink": preshrink,
        "wall_time_s": time.perf_counter() - start,
    }
    _timing.write_results("bench_views_quick" if args.quick else "bench_views", payload)
    print(f"total {payload['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
