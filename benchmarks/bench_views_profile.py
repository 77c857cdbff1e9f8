"""Where the time of `anyres_e2p` views goes, per output pixel, against memory-bandwidth bounds of this machine.

    python benchmarks/bench_views_profile.py                   # 2048x1024 -> 8 x 384² + letterbox, 1 thread
    python benchmarks/bench_views_profile.py --height 2048     # 4096x2048

The configuration that misses bench_views.py's target is anyres_e2p on a 2048x1024 panorama (py360convert with
OpenCV is fastest there). In one process, warm (sampling plan cached, as in a training run), `--repeats` times
interleaved, this measures:

* the processor call (uint8 array in, normalised float32 views out) and its parts: `sample_views` (all views),
  the letterbox view alone, the 8 perspective views alone, and for those the gathers alone (`index_select` of the
  4 bilinear neighbours, 3 channels, 8 views) and the blend alone (uint8 -> float, `mul_`, 3 `addcmul_`);
* bounds measured on the same machine: a streaming copy of 256 MiB of float32 (read + write bandwidth), and
  `index_select` of uint8 values from a 2048x1024 plane with sequential and with random indices (ns per gathered
  value).

Reported per output pixel of the perspective views (8 x 384² x 3 channels): ns, and the ns that the compulsory
traffic (the plan's 4 int32 indices + 4 float32 weights per pixel, the float32 output, the ERP bytes read) would
take at the streaming bandwidth: a floor no CPU implementation beats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _timing  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from configuration_panovlm.view_layout import ViewLayout, build_view_layout
    from processing_panovlm import equirect
    from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor

    torch.set_num_threads(args.threads)
    load_before = _timing.load_average()
    rng = np.random.default_rng(0)
    height, width, size = args.height, 2 * args.height, args.size
    erp_np = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    erp = torch.from_numpy(erp_np).permute(2, 0, 1)  # channels-last view, as the processor reads it
    layout = build_view_layout("anyres_e2p", 90.0, 0.5)
    perspective = tuple(view for view in layout.views if view.kind == "perspective")
    sub = ViewLayout("perspective", perspective, False, 0.0)
    processor = PanoVLMImageProcessor(crop_strategy="anyres_e2p", image_size=size, fov_deg=90.0, overlap_ratio=0.5)
    index, weights = equirect._sampling_plan(perspective, height, width, size, erp.device, torch.float32)
    planes = erp.reshape(1, 3, height * width)[0]
    out = torch.empty(len(perspective), 3, size * size)
    gathered = [[planes[c].index_select(0, index[v].view(-1)) for c in range(3)] for v in range(len(perspective))]

    def gathers():
        for v in range(len(perspective)):
            for c in range(3):
                planes[c].index_select(0, index[v].view(-1))

    def blend():
        for v in range(len(perspective)):
            for c in range(3):
                neighbours = gathered[v][c].view(4, -1).float()
                target = out[v, c]
                target.copy_(neighbours[0]).mul_(weights[v, 0])
                for corner in range(1, 4):
                    target.addcmul_(neighbours[corner], weights[v, corner])

    # Bounds on this machine, timed in the same interleaved run (the machine's load hits all cases alike).
    big = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(big)
    plane = planes[0].contiguous()
    n = index[0].numel()
    sequential = torch.arange(n, dtype=torch.int32) % plane.numel()
    random_ = torch.from_numpy(rng.integers(0, plane.numel(), n, dtype=np.int32))
    cases = {
        "processor": lambda: processor(erp_np, return_tensors="pt"),
        "sample_views": lambda: equirect.sample_views(erp, layout, size),
        "letterbox": lambda: equirect._letterbox(erp[None], size),
        "perspective views": lambda: equirect.sample_views(erp, sub, size),
        "gathers": gathers,
        "blend": blend,
        "copy 256 MiB": lambda: dst.copy_(big),
        "gather sequential": lambda: plane.index_select(0, sequential),
        "gather random": lambda: plane.index_select(0, random_),
        "gather plan (view 0, 1 channel)": lambda: plane.index_select(0, index[0].view(-1)),
    }
    timing = _timing.interleaved(cases, repeats=args.repeats, warmup=2)
    bandwidth = 2 * big.numel() * 4 / timing["copy 256 MiB"]["median_s"]  # bytes read + written per second

    pixels = len(perspective) * size * size  # output pixels of the perspective views
    values = pixels * 3
    # Compulsory traffic of the perspective views: plan (4 int32 + 4 float32 per pixel), output (3 float32 per pixel),
    # the ERP rows the views touch (at most the whole uint8 ERP).
    compulsory = pixels * (16 + 16 + 12) + erp_np.nbytes
    floor_s = compulsory / bandwidth
    parts = ("processor", "sample_views", "letterbox", "perspective views", "gathers", "blend")
    per_pixel = {name: timing[name]["median_s"] / pixels * 1e9 for name in parts}
    result = {
        "erp": [height, width], "views": f"letterbox + {len(perspective)} x {size}^2", "threads": args.threads,
        "median_ms": {name: timing[name]["median_s"] * 1e3 for name in timing},
        "gathers_share_of_perspective_views": _timing.paired_ratio(timing, "gathers", "perspective views"),
        "blend_share_of_perspective_views": _timing.paired_ratio(timing, "blend", "perspective views"),
        "ns_per_perspective_output_pixel": per_pixel,
        "ns_per_gathered_value": {
            "plan": timing["gather plan (view 0, 1 channel)"]["median_s"] / n * 1e9,
            "sequential": timing["gather sequential"]["median_s"] / n * 1e9,
            "random": timing["gather random"]["median_s"] / n * 1e9,
        },
        "stream_bandwidth_gb_s": bandwidth / 1e9,
        "compulsory_bytes_perspective": compulsory,
        "bandwidth_floor_ms": floor_s * 1e3,
        "bandwidth_floor_ns_per_pixel": floor_s / pixels * 1e9,
        "perspective_over_floor": timing["perspective views"]["median_s"] / floor_s,
        "gathered_values": values * 4,
    }
    print(f"\n### anyres_e2p {width}x{height} -> {size}², {args.threads} thread(s)\n")
    print("| part | ms | ns per perspective output pixel |\n|---|---:|---:|")
    for name in parts:
        print(f"| {name} | {result['median_ms'][name]:.1f} | {per_pixel[name]:.1f} |")
    print(f"\nstreaming bandwidth {result['stream_bandwidth_gb_s']:.1f} GB/s (read + write); compulsory traffic of the "
          f"perspective views {compulsory / 2**20:.1f} MiB -> floor {result['bandwidth_floor_ms']:.2f} ms "
          f"({result['bandwidth_floor_ns_per_pixel']:.2f} ns/pixel); measured {result['perspective_over_floor']:.1f}x "
          f"the floor. Gather: {result['ns_per_gathered_value']['plan']:.2f} ns per value with the plan's indices, "
          f"{result['ns_per_gathered_value']['sequential']:.2f} sequential, {result['ns_per_gathered_value']['random']:.2f} "
          "random.")
    payload = {"benchmark": "bench_views_profile", "settings": vars(args), "result": result, "timing": timing,
               "machine": {**_timing.machine_facts(), "load_average_before": load_before}}
    _timing.write_results(f"bench_views_profile_{width}x{height}_{size}_{args.threads}t", payload)


if __name__ == "__main__":
    main()
