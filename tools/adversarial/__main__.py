"""Adversarial battery for issue 13 ("nothing lost, nothing silent"): run against a checkout, classify every case.

    python tools/adversarial --repo PATH [--json OUT.json] [--only REGEX] [--list]

Every case runs in its own process against the checkout at `--repo` (`PYTHONPATH=PATH`): a server process imports
torch / transformers / the checkout's packages once and forks one child per case (the child redirects its output to
a log, runs the case, writes its verdict and exits; a case that outlives its timeout is killed with its process
group). Cases that need a fresh interpreter (the example CLIs, savers that are SIGKILLed) start or fork their own.

Each case is classified as
    good           the correct result, or an error that names the problem (the file, key, row or value)
    unclear_error  it raises, but the message does not name the problem (or refuses valid input)
    silent_wrong   a wrong or degraded result with no error (a warning in a log does not count as an error)
    data_loss      a checkpoint that no longer loads, or loads as a mix of two saves
A case whose own setup fails is `harness_error` (a bug of this tool, not of the checkout; none should remain).

Cases use only what the old layout (cdbde97) and the new share: `AutoModelForImageTextToText` / `AutoProcessor`,
`save_pretrained` / `from_pretrained`, `processor(images=..., text=...)`, `load_caption_table`, the evaluation and
stage functions and the `examples/*.py` flags that existed then; test helpers are imported from either location.
Prints counts per class and per category; `--json` writes every case with its class and the observation.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from case_helpers import Ctx, build_fixtures
from case_registry import CASES, CLASSES


# Importing a module of cases registers them, in this order (the order of the listing and of the JSON).
CASE_MODULES = ("saving_cases", "loading_cases", "image_cases", "table_cases", "training_cases")
for _module in CASE_MODULES:
    importlib.import_module(_module)


# ---- the server (runs with PYTHONPATH=<repo>) and the runner ------------------------------------------------------


def _child(name: str, repo: Path, ws: Path, case_dir: Path, result_file: Path, fixture_weights: dict) -> None:
    case_dir.mkdir(parents=True, exist_ok=True)
    log = case_dir.parent / f"{name}.log"  # outside the case's directory, which cases list
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(case_dir)
    os.umask(0o022)
    ctx = Ctx(repo, ws, case_dir, log)
    ctx.fixture_weights = fixture_weights
    try:
        if name == "__fixtures__":
            build_fixtures(ws)
            verdict, detail = "good", "fixtures built"
        else:
            verdict, detail = CASES[name][1](ctx)
    except BaseException as error:  # noqa: BLE001  (a failure of the case's own setup)
        import traceback

        traceback.print_exc()
        verdict, detail = "harness_error", f"{type(error).__name__}: {str(error)[:400]}"
    result_file.write_text(json.dumps({"class": verdict, "detail": detail}))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve(repo: Path, ws: Path) -> None:
    """Read case names on stdin, fork a child per case, answer one JSON line per case on stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(ws / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 1)
    import datasets
    import peft  # noqa: F401
    import torch
    import transformers
    from PIL import Image  # noqa: F401

    import modeling_panovlm
    import processing_panovlm

    torch.set_num_threads(1)
    # Fewer threads alive when a case forks (progress-bar monitors): a lock held by one of them at fork time would
    # hang the child.
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    for package in (modeling_panovlm, processing_panovlm):
        if not Path(package.__file__).resolve().is_relative_to(repo.resolve()):
            raise SystemExit(f"{package.__name__} resolves to {package.__file__}, not under {repo}")
    fixture_weights: dict = {}
    for line in sys.stdin:
        name, timeout = line.split()
        case_dir = ws / "cases" / name
        result_file = ws / "cases" / f"{name}.result.json"
        shutil.rmtree(case_dir, ignore_errors=True)  # a retried case starts afresh
        result_file.unlink(missing_ok=True)
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            _child(name, repo, ws, case_dir, result_file, fixture_weights)
        deadline = started + float(timeout)
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)
        try:
            os.killpg(pid, signal.SIGKILL)  # savers and servers a case left behind
        except (ProcessLookupError, PermissionError):
            pass
        if result_file.exists():
            result = json.loads(result_file.read_text())
        else:
            result = {"class": "unclear_error", "detail": f"no result within {timeout}s: killed (hang)"}
        if name == "__fixtures__" and result["class"] == "good":
            from safetensors.torch import load_file

            fixture_weights.update({n: load_file(ws / n / "model.safetensors") for n in ("a", "b")})
        result["seconds"] = round(time.perf_counter() - started, 1)
        out.write(json.dumps(result) + "\n")


# The venv's editable install of PanoVLM adds an import hook that finds sub-packages of `modeling_panovlm` /
# `processing_panovlm` in its own checkout when the checkout under test lacks them (e.g. `processing_panovlm.data`
# against cdbde97): every process of a run drops that hook, so only `--repo` is ever imported.
SITECUSTOMIZE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", None) or type(f).__module__)]
sys.path_hooks[:] = [h for h in sys.path_hooks if "Editable" not in getattr(h, "__qualname__", "")]
sys.path_importer_cache.clear()
"""


def run_battery(repo: Path, selected: list[str], workdir: Path) -> list[dict]:
    sitefix = workdir / "sitefix"
    sitefix.mkdir(parents=True, exist_ok=True)
    (sitefix / "sitecustomize.py").write_text(SITECUSTOMIZE)
    environment = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{sitefix}", "ADVERSARIAL_REPO": str(repo),
                   "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                   "HF_HOME": str(workdir / "hf_home")}
    # Online, as a user runs: the URL cases fetch from a server on 127.0.0.1, which offline mode would refuse.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        environment.pop(name, None)
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--repo", str(repo), "--workdir", str(workdir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)

    def ask(name: str, timeout: int) -> dict:
        server.stdin.write(f"{name} {timeout}\n")
        server.stdin.flush()
        line = server.stdout.readline()
        if not line:
            raise SystemExit(f"the case server died (see {workdir / 'server.log'})")
        return json.loads(line)

    fixtures = ask("__fixtures__", 600)
    if fixtures["class"] != "good":
        raise SystemExit(f"fixtures failed: {fixtures} (see {workdir / 'cases' / '__fixtures__.log'})")
    results = []
    for index, name in enumerate(selected, 1):
        category, _, timeout = CASES[name]
        result = {"case": name, "category": category, **ask(name, timeout)}
        if result["detail"].startswith("no result within"):
            # Once more: a child forked from a process with threads can deadlock on a lock copied mid-use, which
            # says nothing about the checkout. A second hang is reported as one.
            first = result["seconds"]
            result = {"case": name, "category": category, **ask(name, timeout), "retried_after_hang_s": first}
        results.append(result)
        print(f"[{index:3d}/{len(selected)}] {result['class']:13s} {name}: {result['detail'][:150]}", flush=True)
    server.stdin.close()
    server.wait()
    return results


def summarise(results: list[dict]) -> str:
    classes = list(CLASSES) + sorted({r["class"] for r in results} - set(CLASSES))
    by_category: dict[str, Counter] = defaultdict(Counter)
    for result in results:
        by_category[result["category"]][result["class"]] += 1
    width = max(len(c) for c in by_category) if by_category else 8
    lines = [f"{'category':{width}s} " + " ".join(f"{c:>13s}" for c in classes) + f" {'total':>6s}"]
    for category, counts in by_category.items():
        lines.append(f"{category:{width}s} " + " ".join(f"{counts[c]:13d}" for c in classes) + f" {sum(counts.values()):6d}")
    total = Counter(r["class"] for r in results)
    lines.append(f"{'all':{width}s} " + " ".join(f"{total[c]:13d}" for c in classes) + f" {len(results):6d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, help="checkout to attack (default: the one holding this tool)")
    parser.add_argument("--json", type=Path, help="write every case's result here")
    parser.add_argument("--only", help="run the cases whose name matches this regular expression")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a fresh temporary one, removed)")
    parser.add_argument("--merge", type=Path, help="with --json: start from this earlier result file, replacing the "
                        "results of the cases run now (e.g. after changing how some cases are judged)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repo = (args.repo or Path(__file__).resolve().parents[2]).resolve()
    if args.serve:
        serve(repo, args.workdir)
        return 0
    selected = [name for name in CASES if not args.only or re.search(args.only, name)]
    if args.list:
        print("\n".join(f"{CASES[name][0]:15s} {name}" for name in selected))
        return 0
    if not (repo / "modeling_panovlm").is_dir():
        parser.error(f"--repo {repo} is not a PanoVLM checkout (no modeling_panovlm/)")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adversarial-") as scratch:
        workdir = (args.workdir or Path(scratch)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        results = run_battery(repo, selected, workdir)
    if args.merge:
        earlier = json.loads(args.merge.read_text())
        if earlier["commit"] != commit:
            parser.error(f"--merge {args.merge} was run on {earlier['commit']}, not {commit}")
        fresh = {r["case"]: r for r in results}
        results = [fresh.pop(r["case"], r) for r in earlier["results"]] + list(fresh.values())
        results = [r for r in results if r["case"] in CASES]
    table = summarise(results)
    print(f"\n{repo} @ {commit[:10]}: {len(results)} cases in {time.perf_counter() - started:.0f}s\n{table}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        counts = Counter(r["class"] for r in results)
        per_category: dict = defaultdict(Counter)
        for result in results:
            per_category[result["category"]][result["class"]] += 1
        args.json.write_text(json.dumps({
            "repo": str(repo), "commit": commit, "cases": len(results), "counts": dict(counts),
            "per_category": {c: dict(v) for c, v in per_category.items()},
            "seconds": round(time.perf_counter() - started) + (json.loads(args.merge.read_text())["seconds"] if args.merge else 0),
            "merged_from": str(args.merge) if args.merge else None, "rerun": selected if args.merge else None,
            "results": results,
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
