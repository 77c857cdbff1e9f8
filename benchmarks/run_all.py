"""Run every benchmark, then print the headline ratios of all results/*.json.

    python benchmarks/run_all.py                 # full runs (~15 min on 2 cores)
    python benchmarks/run_all.py --quick         # quick runs (~6 min), written to results/*_quick.json
    python benchmarks/run_all.py --only views bimamba
    python benchmarks/run_all.py --summary       # only print the table of the existing results

Run it with the interpreter of a venv that has the bench extras (`pip install -c constraints.txt -e ".[bench]"`);
see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
BENCHMARKS = ("views", "bimamba", "llava_step", "loading", "evaluation", "fsdp_memory", "pipeline", "real_loading",
              "real_step")


def summary(quick: bool) -> None:
    print("\n## Headline ratios (ours / baseline)\n")
    print("| benchmark | comparison | ours | baseline | ours / baseline | target | met |")
    print("|---|---|---:|---:|---:|---|---|")
    for name in BENCHMARKS:
        path = HERE / "results" / f"bench_{name}{'_quick' if quick else ''}.json"
        if not path.exists():
            print(f"| {name} | (no results: {path.name} missing) | | | | | |")
            continue
        result = json.loads(path.read_text())
        sys.path.insert(0, str(HERE))
        import _timing

        for row in result["ratios"]:
            print(f"| {name} | {row['comparison']} | {_timing.format_value(row['ours'], row['unit'])} | "
                  f"{_timing.format_value(row['baseline'], row['unit'])} | {row['ratio']:.3f} | {row['target']} | "
                  f"{'yes' if row['met'] else 'NO'} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--summary", action="store_true", help="print the table of the existing results and stop")
    args = parser.parse_args(argv)
    if not args.summary:
        for name in args.only:
            command = [sys.executable, str(HERE / f"bench_{name}.py")] + (["--quick"] if args.quick else [])
            print(f"\n=== {' '.join(command)}", flush=True)
            start = time.perf_counter()
            subprocess.run(command, check=True)
            print(f"=== bench_{name}: {time.perf_counter() - start:.0f} s", flush=True)
    summary(args.quick)


if __name__ == "__main__":
    main()
