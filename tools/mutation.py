"""Mutation run: plant hand-written bugs in a scratch copy of the repository, one at a time, and check that the tests
of the bug's area catch it. Not run by CI (it runs parts of the suite once per mutant); run it by hand:

    PYTHONPATH=. python tools/mutation.py                      # every mutant, against this tree's tests
    PYTHONPATH=. python tools/mutation.py --tests-ref main      # ... against the tests of another commit
    PYTHONPATH=. python tools/mutation.py --area model --only pe-never-added --jobs 2
    PYTHONPATH=. python tools/mutation.py --list

The mutants live in `tools/mutants.py`: file, the exact original snippet, its replacement, area, the tests that
should catch it (`pytest -x`, smallest list first) and a comment (for an equivalent mutant: why no test can see
it). A snippet that no longer occurs exactly once in its file stops the run before anything is executed, so mutants
cannot rot silently. The repository is copied to a temporary folder (without `.git`) once per worker; each mutant
is written into the copy, its tests run with `PYTHONPATH` pointing at the copy, and the file is restored. The
working tree is never modified.

Prints the score and the survivors and writes a JSON report (`--json`, default `mutation_results.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from mutants import AREAS, MUTANTS, Mutant  # noqa: E402


IGNORED = shutil.ignore_patterns(".git", ".venv", "out", "__pycache__", "*.egg-info", ".ruff_cache", "mutation_results*.json")


class MutantRotError(RuntimeError):
    """A mutant's original snippet is not found exactly once in its file."""


def check_mutants(mutants: list[Mutant], root: Path) -> None:
    """Raise `MutantRotError` naming every mutant whose snippet is missing or ambiguous, and refuse duplicate ids."""
    problems = []
    ids = [m.id for m in mutants]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"duplicate mutant ids: {duplicates}")
    for mutant in mutants:
        path = root / mutant.file
        if not path.is_file():
            problems.append(f"{mutant.id}: {mutant.file} does not exist")
            continue
        text = path.read_text(encoding="utf-8")
        originals, replacements = edits(mutant)
        if len(originals) != len(replacements):
            problems.append(f"{mutant.id}: {len(originals)} original snippets but {len(replacements)} replacements")
        for number, (original, replacement) in enumerate(zip(originals, replacements), 1):
            count = text.count(original)
            if count != 1:
                problems.append(f"{mutant.id}: its original snippet {number} occurs {count} times in {mutant.file} (must be once)")
            if original == replacement:
                problems.append(f"{mutant.id}: replacement {number} equals its original")
        if mutant.area not in AREAS:
            problems.append(f"{mutant.id}: unknown area {mutant.area!r}")
    if problems:
        raise MutantRotError("mutants out of date with the code:\n  " + "\n  ".join(problems))


def edits(mutant: Mutant) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The mutant's (original snippets, replacements), one pair per place it changes."""
    as_tuple = lambda value: (value,) if isinstance(value, str) else tuple(value)
    return as_tuple(mutant.original), as_tuple(mutant.replacement)


def mutate(text: str, mutant: Mutant) -> str:
    for original, replacement in zip(*edits(mutant)):
        text = text.replace(original, replacement, 1)
    return text


def make_scratch(tests_ref: str | None) -> Path:
    """A copy of the working tree (no `.git`) in a new temporary folder; its `tests/` from commit `tests_ref` if given."""
    scratch = Path(tempfile.mkdtemp(prefix="panovlm-mutation-")) / "repo"
    shutil.copytree(ROOT, scratch, ignore=IGNORED)
    if tests_ref:
        shutil.rmtree(scratch / "tests")
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", tests_ref, "tests"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive.stdout, check=True)
    return scratch


def existing_tests(tests: tuple[str, ...], scratch: Path) -> list[str]:
    """The test ids whose file exists in the scratch copy (the tests of an older commit lack the newer files)."""
    return [test for test in tests if (scratch / test.split("::")[0]).is_file()]


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line
    return output.strip().splitlines()[-1] if output.strip() else ""


def run_tests(scratch: Path, tests: list[str], timeout: float, extra_env: dict[str, str]) -> tuple[int | None, str, float]:
    env = {**os.environ, "PYTHONPATH": str(scratch), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra_env}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnraisableExceptionWarning", *tests]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode(errors="replace") if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return None, output, time.perf_counter() - start
    return result.returncode, result.stdout + result.stderr, time.perf_counter() - start


def run_mutant(mutant: Mutant, scratch: Path, timeout: float, extra_env: dict[str, str]) -> dict:
    path = scratch / mutant.file
    original = path.read_text(encoding="utf-8")
    tests = existing_tests(mutant.tests, scratch)
    record = {"id": mutant.id, "area": mutant.area, "file": mutant.file, "tests": tests, "comment": mutant.comment,
              "equivalent": mutant.equivalent}
    if not tests:
        return {**record, "status": "no-tests", "seconds": 0.0, "detail": "none of its tests exist in this tree"}
    path.write_text(mutate(original, mutant), encoding="utf-8")
    try:
        code, output, seconds = run_tests(scratch, tests, timeout, extra_env)
    finally:
        path.write_text(original, encoding="utf-8")
    if code is None:
        status, detail = "killed", f"timeout after {timeout:.0f} s"
    elif code == 0:
        status, detail = "survived", ""
    elif code in (1, 2, 3):  # test failures, interrupted (a collection error), internal error: the bug is seen
        status, detail = "killed", first_failure(output)
    else:  # 4: usage error, 5: no tests collected
        status, detail = "error", f"pytest exit code {code}: {first_failure(output)}"
    return {**record, "status": status, "seconds": round(seconds, 1), "detail": detail}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=[], help="mutant ids to run (default: all)")
    parser.add_argument("--area", nargs="+", default=[], choices=AREAS, help="areas to run (default: all)")
    parser.add_argument("--tests-ref", help="run against the tests/ of this git commit (e.g. main) instead of this tree's")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own scratch copy")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant before it counts as killed")
    parser.add_argument("--full-demo", action="store_true",
                        help="also run the full demo's learning test (RUN_SLOW=1) for the mutants that list it")
    parser.add_argument("--check-baseline", action="store_true",
                        help="first run every selected mutant's tests on the unmutated copy; stop if any fails")
    parser.add_argument("--json", default="mutation_results.json", help="where to write the report")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_mutants(MUTANTS, ROOT)
    unknown = sorted(set(args.only) - {m.id for m in MUTANTS})
    if unknown:
        raise SystemExit(f"unknown mutant ids: {unknown}")
    selected = [m for m in MUTANTS if (not args.only or m.id in args.only) and (not args.area or m.area in args.area)]
    if args.list:
        for m in selected:
            print(f"{m.id:32} {m.area:11} {m.file}  [{' '.join(m.tests)}]")
        print(f"{len(selected)} mutants")
        return 0
    extra_env = {"RUN_SLOW": "1"} if args.full_demo else {}
    if not args.full_demo:  # the slow learning test is skipped anyway; leave it out of the lists
        selected = [m._replace(tests=tuple(t for t in m.tests if "full_demo" not in t)) for m in selected]

    scratches = [make_scratch(args.tests_ref) for _ in range(max(1, args.jobs))]
    print(f"{len(selected)} mutants, tests from {args.tests_ref or 'the working tree'}, scratch {scratches[0].parent}", flush=True)
    try:
        if args.check_baseline:
            tests = sorted({t for m in selected for t in existing_tests(m.tests, scratches[0])})
            code, output, seconds = run_tests(scratches[0], tests, args.timeout * 4, extra_env)
            if code != 0:
                raise SystemExit(f"the unmutated copy fails its tests ({seconds:.0f} s): {first_failure(output)}")
            print(f"baseline: {len(tests)} test ids pass on the unmutated copy in {seconds:.0f} s", flush=True)
        free = list(scratches)
        results: list[dict] = []
        start = time.perf_counter()

        def work(mutant: Mutant) -> dict:
            scratch = free.pop()
            try:
                result = run_mutant(mutant, scratch, args.timeout, extra_env)
            finally:
                free.append(scratch)
            print(f"  {result['status']:9} {result['seconds']:6.1f}s  {mutant.id:32} {result['detail'][:110]}", flush=True)
            return result

        with ThreadPoolExecutor(max_workers=len(scratches)) as pool:
            results = list(pool.map(work, selected))
        total = time.perf_counter() - start
    finally:
        for scratch in scratches:
            shutil.rmtree(scratch.parent, ignore_errors=True)

    counted = [r for r in results if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in counted)
    score = killed / len(counted) if counted else 0.0
    survivors = [r for r in results if r["status"] == "survived"]
    print(f"\nmutation score: {killed}/{len(counted)} killed = {score:.1%} ({total / 60:.1f} min)")
    for r in results:
        if r["status"] not in ("killed", "survived"):
            print(f"  not counted ({r['status']}): {r['id']}: {r['detail']}")
    if survivors:
        print("survivors:")
        for r in survivors:
            print(f"  {r['id']} ({r['area']}, {r['file']}){' [equivalent]' if r['equivalent'] else ''}: {r['comment']}")
    report = {"tests_ref": args.tests_ref or "working tree", "killed": killed, "counted": len(counted), "score": score,
              "minutes": round(total / 60, 1), "survivors": [r["id"] for r in survivors], "mutants": results}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"report: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
