"""Adversarial battery for issue 13 ("nothing lost, nothing silent"): run against a checkout, classify every case.

    python tools/adversarial.py --repo PATH [--json OUT.json] [--only REGEX] [--list]

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


CLASSES = ("good", "unclear_error", "silent_wrong", "data_loss")
CASES: dict[str, tuple[str, object, int]] = {}  # name -> (category, function(ctx) -> (class, detail), timeout s)


def case(category: str, name: str, timeout: int = 180, **bound):
    def register(function):
        CASES[name] = (category, (lambda ctx: function(ctx, **bound)) if bound else function, timeout)
        return function

    return register


# ---- helpers run inside a case's process -----------------------------------------------------------------------


class Ctx:
    def __init__(self, repo: Path, ws: Path, tmp: Path, log: Path):
        self.repo, self.ws, self.tmp, self.log = repo, ws, tmp, log


def imp(*candidates: str):
    """The first importable `module:attr` of `candidates` (new layout first, then the old one)."""
    import importlib

    repo = Path(os.environ["ADVERSARIAL_REPO"]).resolve()
    for candidate in candidates:
        module, _, attr = candidate.partition(":")
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        if not Path(loaded.__file__).resolve().is_relative_to(repo):  # never another checkout's module
            raise ImportError(f"{module} comes from {loaded.__file__}, outside {repo}")
        if not attr:
            return loaded
        if hasattr(loaded, attr):
            return getattr(loaded, attr)
    raise ImportError(f"none of {candidates} in this checkout")


def build_tiny(*args, **kwargs):
    return imp("modeling_panovlm.testing.tiny_checkpoint:build_tiny_checkpoint",
               "modeling_panovlm.tiny_checkpoint:build_tiny_checkpoint")(*args, **kwargs)


def synthetic(name: str):
    return imp(f"modeling_panovlm.testing.synthetic_panoramas:{name}", f"processing_panovlm.synthetic_panoramas:{name}")


def names(message: str, *needles: str) -> bool:
    lower = message.lower()
    return all(any(option.lower() in lower for option in needle.split("|")) for needle in needles)


def refusal(error: BaseException, *needles: str) -> tuple[str, str]:
    message = f"{type(error).__name__}: {error}"
    return ("good" if names(message, *needles) else "unclear_error"), message[:400]


def env(ctx: Ctx) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # PYTHONPATH: the server's


def example(ctx: Ctx, script: str, *args, timeout: int = 400) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ctx.repo / "examples" / script), *[str(a) for a in args]]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env(ctx), cwd=ctx.tmp)


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[-400:]


def load_model(directory, **kwargs):
    from transformers import AutoModelForImageTextToText

    import modeling_panovlm  # noqa: F401  (registers the Auto classes)

    # No output_loading_info: the new layout treats asking for it as opting out of strict loading.
    return AutoModelForImageTextToText.from_pretrained(directory, **kwargs)


def load_processor(directory):
    from transformers import AutoProcessor

    import modeling_panovlm  # noqa: F401

    return AutoProcessor.from_pretrained(directory)


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(directory) / "model.safetensors")


def same_tensors(first: dict, second: dict) -> bool:
    import torch

    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def identify(ctx: Ctx, target: Path) -> tuple[str, str]:
    """'a' or 'b' when `target` loads (strictly) as exactly fixture a or b; else 'mix' / 'unloadable' with why."""
    try:
        model = load_model(target)
    except Exception as error:  # noqa: BLE001  (any failure to load is the observation)
        return "unloadable", f"{type(error).__name__}: {str(error)[:300]}"
    import torch

    config_of = "b" if model.config.pe_temperature == 500.0 else "a"
    state = model.state_dict()  # the loaded model, whatever files (one or several shards) it came from

    def same(reference: dict) -> bool:
        return all(key in state and torch.equal(state[key], value) for key, value in reference.items())

    weights_of = next((n for n in ("a", "b") if same(ctx.fixture_weights[n])), None)
    if weights_of is None:
        return "mix", f"config of {config_of}, weights of neither saved model"
    if weights_of != config_of:
        return "mix", f"config of {config_of} (pe_temperature={model.config.pe_temperature}), weights of {weights_of}"
    return weights_of, "exact"


def debris(directory: Path, allowed: set[str]) -> list[str]:
    """Entries of `directory` (recursively) that are not in `allowed` (relative names)."""
    if not directory.exists():
        return []
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.relative_to(directory).as_posix() not in allowed and not p.is_dir())


def captured_warnings(function):
    """Run `function`; return (result or exception, text of every warning logged or printed meanwhile)."""
    import logging
    import warnings

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(logging.WARNING)
    loggers = [logging.getLogger(), logging.getLogger("transformers"), logging.getLogger("peft")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome = function()
            except Exception as error:  # noqa: BLE001
                outcome = error
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return outcome, "\n".join(records + [str(w.message) for w in caught])


def prompt_for(processor) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in front?"}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def pixels(processor, image):
    return processor(images=image, text=prompt_for(processor), return_tensors="pt")["pixel_values"]


# ---- fixtures (built once per run by the server, in a child of their own) ------------------------------------------


def build_fixtures(ws: Path) -> None:
    import numpy as np
    from PIL import Image

    build_tiny(ws / "a", resampler_type="mlp", seed=0)
    build_tiny(ws / "b", resampler_type="mlp", seed=1, pe_temperature=500.0)
    build_tiny(ws / "c", resampler_type="mlp", seed=2)  # same config as a, other weights
    synthetic("write_synthetic_dataset")(ws / "data", num=3, height=64, test_fraction=0.34, num_objects=1)
    SceneObject, render = synthetic("SceneObject"), synthetic("render_panorama")
    objects = [SceneObject("red", "circle", 0.0), SceneObject("blue", "square", 120.0)]
    render(objects, height=64).save(ws / "pano.png")  # 128 x 64 RGB
    gray = np.asarray(Image.open(ws / "pano.png").convert("L"))
    np.save(ws / "gray.npy", gray)


# ---- data loss: kills, concurrency, full disk, permissions, debris ---------------------------------------------------


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            code = body() or 0
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _copy_fixture(ctx: Ctx, name: str, target: Path) -> Path:
    import shutil

    shutil.copytree(ctx.ws / name, target)
    return target


def kill_during_save(ctx: Ctx, point: int, points: int) -> tuple[str, str]:
    target = _copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    models = [load_model(ctx.ws / "b"), load_model(ctx.ws / "a")]
    start = time.perf_counter()
    models[0].save_pretrained(ctx.tmp / "timing")
    cycle = 2 * (time.perf_counter() - start)  # one save of b then one of a
    ready_read, ready_write = os.pipe()

    def saver():
        os.write(ready_write, b"r")
        while True:
            for model in models:
                model.save_pretrained(target)

    pid = _fork(saver)
    os.read(ready_read, 1)
    delay = cycle * (point + 0.5) / points + cycle  # past the first save, then spread over one cycle
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    state, detail = identify(ctx, target)
    left = debris(target, {p.relative_to(ctx.ws / "a").as_posix() for p in (ctx.ws / "a").rglob("*")})
    note = f"killed {delay:.2f}s into the save loop (cycle {cycle:.2f}s): {state} ({detail})"
    if left:
        note += f"; stray files in the checkpoint: {left[:4]}"
    if state in ("a", "b"):
        return "good", note
    return "data_loss", note


for _i in range(20):
    case("kill", f"kill_save_pretrained_point_{_i:02d}", timeout=240, point=_i, points=20)(kill_during_save)


def concurrent_saves(ctx: Ctx, sources: tuple[str, ...], repeats: int, fresh: bool) -> tuple[str, str]:
    target = ctx.tmp / "ckpt"
    if not fresh:
        _copy_fixture(ctx, "a", target)
    models = [load_model(ctx.ws / name) for name in sources]

    def saver(model):
        def body():
            for _ in range(repeats):
                model.save_pretrained(target)
        return body

    pids = [_fork(saver(model)) for model in models]
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    state, detail = identify(ctx, target)
    siblings = [p.name for p in ctx.tmp.iterdir() if p.name not in ("ckpt",)]
    note = f"{len(models)} savers exited {codes}; result: {state} ({detail}); other entries next to it: {siblings}"
    if state not in ("a", "b"):
        return "data_loss", note
    if any(codes):
        return "unclear_error", note + " (a saver failed: see the case log)"
    return ("silent_wrong", note + " (staging debris)") if siblings else ("good", note)


for _i, (_sources, _repeats, _fresh) in enumerate([(("a", "b"), 4, False), (("b", "a"), 6, True), (("a", "b", "b"), 3, False)]):
    case("concurrent", f"concurrent_saves_{len(_sources)}proc_{_i}", timeout=300,
         sources=_sources, repeats=_repeats, fresh=_fresh)(concurrent_saves)


def kill_sharded_save(ctx: Ctx, point: int, points: int) -> tuple[str, str]:
    """As kill_during_save, with the weights split in shards (an index and several files to keep consistent)."""
    target = ctx.tmp / "ckpt"
    models = [load_model(ctx.ws / "b"), load_model(ctx.ws / "a")]
    models[1].save_pretrained(target, max_shard_size="300KB")
    start = time.perf_counter()
    models[0].save_pretrained(ctx.tmp / "timing", max_shard_size="300KB")
    cycle = 2 * (time.perf_counter() - start)
    ready_read, ready_write = os.pipe()

    def saver():
        os.write(ready_write, b"r")
        while True:
            for model in models:
                model.save_pretrained(target, max_shard_size="300KB")

    pid = _fork(saver)
    os.read(ready_read, 1)
    delay = cycle * (point + 0.5) / points + cycle
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    state, detail = identify(ctx, target)
    shards = sorted(p.name for p in target.glob("model*.safetensors*"))
    note = f"killed {delay:.2f}s into the sharded save loop: {state} ({detail}); weight files {shards}"
    return ("good" if state in ("a", "b") else "data_loss"), note


for _i in range(6):
    case("kill", f"kill_sharded_save_point_{_i}", timeout=240, point=_i, points=6)(kill_sharded_save)


@case("kill", "sharded_save_over_single_file_leaves_no_stale_weights")
def sharded_over_single(ctx: Ctx) -> tuple[str, str]:
    target = _copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    load_model(ctx.ws / "b").save_pretrained(target, max_shard_size="300KB")
    files = sorted(p.name for p in target.glob("model*.safetensors*"))
    state, detail = identify(ctx, target)
    if state != "b":
        return "data_loss", f"after a sharded save of b over a: {state} ({detail}); weight files {files}"
    if "model.safetensors" in files:
        return "silent_wrong", f"loads as b, but the old single-file weights stay next to the shards: {files}"
    return "good", f"exactly b; weight files {files}"


def trainer_checkpoint_kill(ctx: Ctx, delay: float) -> tuple[str, str]:
    """SIGKILL a training run while it writes (and rotates) checkpoint-N; every checkpoint left must be usable."""
    out = ctx.tmp / "run"
    command = [sys.executable, str(ctx.repo / "examples" / "train.py"), "--stage", "vision", "--model", str(ctx.ws / "a"),
               "--train-csv", str(ctx.ws / "data" / "train.csv"), "--output-dir", str(out), "--batch-size", "2",
               "--max-steps", "12", "--save-steps", "1", "--save-total-limit", "2", "--logging-steps", "1"]
    with open(ctx.tmp / "train.stderr", "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env(ctx), cwd=ctx.tmp)
        deadline = time.perf_counter() + 300
        while process.poll() is None and time.perf_counter() < deadline:
            if out.exists() and any(p.name.startswith("checkpoint-") for p in out.iterdir()):
                break
            time.sleep(0.02)
        time.sleep(delay)
        if process.poll() is not None:
            return "harness_error", f"the run ended (exit {process.returncode}) before the kill"
        process.kill()
        process.wait()
    checkpoints = sorted((p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                         key=lambda p: int(p.name.split("-")[-1]))
    broken = []
    for checkpoint in checkpoints:
        problems = [name for name in ("trainer_state.json", "config.json") if not (checkpoint / name).exists()]
        try:
            load_model(checkpoint)
        except Exception as error:  # noqa: BLE001
            problems.append(f"does not load: {type(error).__name__}: {str(error)[:120]}")
        if problems:
            broken.append((checkpoint.name, problems))
    note = f"killed {delay:.1f}s after the first checkpoint: {[p.name for p in checkpoints]}"
    if checkpoints and broken and broken[-1][0] == checkpoints[-1].name:
        return "data_loss", note + f"; the latest checkpoint (what resuming picks) is broken: {broken[-1]}"
    if broken:
        return "silent_wrong", note + f"; a half-written or half-deleted older checkpoint is left: {broken}"
    if not checkpoints:
        return "data_loss", note + "; no checkpoint left at all"
    return "good", note + "; every checkpoint is complete"


for _i, _delay in enumerate((0.0, 0.4, 0.8, 1.3, 2.0)):
    case("kill", f"kill_trainer_during_checkpointing_{_i}", timeout=400, delay=_delay)(trainer_checkpoint_kill)


@case("concurrent", "concurrent_model_and_processor_saves_keep_both", timeout=300)
def concurrent_model_and_processor(ctx: Ctx) -> tuple[str, str]:
    target = ctx.tmp / "ckpt"
    model, processor = load_model(ctx.ws / "a"), load_processor(ctx.ws / "a")

    def save(obj):
        def body():
            for _ in range(4):
                obj.save_pretrained(target)
        return body

    pids = [_fork(save(model)), _fork(save(processor))]
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    present = sorted(p.name for p in target.iterdir()) if target.exists() else []
    needed = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"}
    if not needed <= set(present):
        return "data_loss", f"savers exited {codes}; directory holds {present}: lacks {sorted(needed - set(present))}"
    try:
        load_model(target)
        load_processor(target)
    except Exception as error:  # noqa: BLE001
        return "data_loss", f"does not load: {type(error).__name__}: {str(error)[:300]}"
    return ("good" if not any(codes) else "unclear_error"), f"savers exited {codes}; holds {present}"


def _full_disk_patch(kind: str):
    """Make the next write of `kind` fail as a full disk does: part of the bytes written, then ENOSPC."""
    import builtins
    import errno
    import io

    import transformers.modeling_utils as modeling_utils

    def full(path):
        return OSError(errno.ENOSPC, "No space left on device", str(path))

    if kind in ("weights_half", "weights_empty"):
        original = modeling_utils.safe_save_file

        def save_file(tensors, filename, metadata=None):
            original(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2] if kind == "weights_half" else b"")
            raise full(filename)

        modeling_utils.safe_save_file = save_file
        return
    basename = {"config": "config.json", "generation_config": "generation_config.json",
                "processor_config": "processor_config.json"}[kind]
    real_open = builtins.open

    class Full:
        def __init__(self, handle, path):
            self.handle, self.path = handle, path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[:16])
            self.handle.flush()
            raise full(self.path)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if any(flag in mode for flag in "wax") and os.path.basename(os.fspath(file)) == basename:
            return Full(handle, file)
        return handle

    builtins.open = io.open = fake_open


def full_disk(ctx: Ctx, kind: str, fresh: bool) -> tuple[str, str]:
    target = ctx.tmp / "ckpt"
    if not fresh:
        _copy_fixture(ctx, "a", target)
    before = sorted(p.name for p in ctx.tmp.iterdir())
    model, processor = load_model(ctx.ws / "b"), load_processor(ctx.ws / "b")
    _full_disk_patch(kind)
    try:
        (processor if kind == "processor_config" else model).save_pretrained(target)
        raised = None
    except OSError as error:
        raised = error
    after = sorted(p.name for p in ctx.tmp.iterdir())
    stray = [name for name in after if name not in before and name != "ckpt"]
    if raised is None:
        return "silent_wrong", f"save_pretrained returned normally after an ENOSPC write; dir: {after}"
    note = f"raised {type(raised).__name__}: {str(raised)[:120]}"
    if fresh:
        if target.exists() and any(target.iterdir()):
            return "silent_wrong", note + f"; a half-written checkpoint is left: {sorted(p.name for p in target.iterdir())}"
    else:
        state, detail = identify(ctx, target)
        if state != "a":
            return "data_loss", note + f"; the previous checkpoint is now {state} ({detail})"
        left = debris(target, {p.relative_to(ctx.ws / "a").as_posix() for p in (ctx.ws / "a").rglob("*")})
        stray += left
    if stray:
        return "silent_wrong", note + f"; debris left: {stray}"
    return "good", note + "; previous state intact, no debris"


for _kind in ("weights_half", "weights_empty", "config", "generation_config", "processor_config"):
    for _fresh in (False, True):
        case("full_disk", f"enospc_{_kind}_{'new_dir' if _fresh else 'over_checkpoint'}", kind=_kind, fresh=_fresh)(full_disk)


def modes(ctx: Ctx, umask: int, what: str) -> tuple[str, str]:
    import stat

    model, processor = load_model(ctx.ws / "a"), load_processor(ctx.ws / "a")
    os.umask(umask)
    target = ctx.tmp / "ckpt"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    os.umask(0o022)
    if what == "dir":
        found = {".": stat.S_IMODE(target.stat().st_mode)}
        wanted = 0o755
    else:
        pattern = {"weights": "model.safetensors", "config": "config.json", "processor": "*.json"}[what]
        found = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.glob(pattern)}
        wanted = 0o644
    wrong = {name: oct(mode) for name, mode in found.items() if mode != wanted}
    note = f"umask {oct(umask)}: " + (f"modes {wrong}, expected {oct(wanted)}" if wrong else f"all {oct(wanted)}")
    return ("silent_wrong" if wrong else "good"), note


for _umask in (0o022, 0o077):
    for _what in ("weights", "config", "processor", "dir"):
        case("permissions", f"mode_{_what}_umask_{_umask:03o}", umask=_umask, what=_what)(modes)


@case("debris", "kill_then_save_leaves_no_debris", timeout=300)
def kill_then_save(ctx: Ctx) -> tuple[str, str]:
    target = _copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    models = [load_model(ctx.ws / "b"), load_model(ctx.ws / "a")]
    seen = set()
    for attempt in range(3):
        ready_read, ready_write = os.pipe()

        def saver():
            os.write(ready_write, b"r")
            while True:
                for model in models:
                    model.save_pretrained(target)

        pid = _fork(saver)
        os.read(ready_read, 1)
        time.sleep(0.15 + 0.2 * attempt)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        seen.update(p.name for p in ctx.tmp.iterdir())
        seen.update("ckpt/" + p.name for p in target.iterdir())
    models[1].save_pretrained(target)  # a completed save after the kills
    allowed = {p.name for p in (ctx.ws / "a").iterdir()}
    left = [p.name for p in ctx.tmp.iterdir() if p.name != "ckpt"] + debris(target, allowed)
    if left:
        return "silent_wrong", f"after 3 kills and a completed save, stray entries remain: {left[:6]}"
    return "good", f"no stray entries after a completed save (seen during kills: {sorted(seen)[:8]})"


@case("debris", "exception_during_save_leaves_no_debris")
def exception_during_save(ctx: Ctx) -> tuple[str, str]:
    import transformers.modeling_utils as modeling_utils

    target = _copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    model = load_model(ctx.ws / "b")
    original = modeling_utils.safe_save_file

    def interrupted(tensors, filename, metadata=None):
        original(tensors, filename, metadata=metadata)
        raise KeyboardInterrupt("interrupted after writing the weights")

    modeling_utils.safe_save_file = interrupted
    try:
        model.save_pretrained(target)
        return "silent_wrong", "save_pretrained swallowed the interruption"
    except KeyboardInterrupt:
        pass
    state, detail = identify(ctx, target)
    left = [p.name for p in ctx.tmp.iterdir() if p.name != "ckpt"]
    if state not in ("a", "b"):  # the old or the new model as a whole are both fine
        return "data_loss", f"an interrupted save left {state} ({detail})"
    return ("silent_wrong", f"debris: {left}") if left else ("good", "previous checkpoint intact, no debris")


@case("debris", "temp_files_in_checkpoint_after_kills", timeout=300)
def temp_files_after_kills(ctx: Ctx) -> tuple[str, str]:
    target = _copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    model = load_model(ctx.ws / "b")
    allowed = {p.name for p in (ctx.ws / "a").iterdir()}
    stray = set()
    for attempt in range(4):
        ready_read, ready_write = os.pipe()

        def saver():
            os.write(ready_write, b"r")
            while True:
                model.save_pretrained(target)

        pid = _fork(saver)
        os.read(ready_read, 1)
        time.sleep(0.1 + 0.15 * attempt)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        stray.update(debris(target, allowed))
    if stray:
        return "silent_wrong", f"temp files inside the checkpoint folder after kills: {sorted(stray)[:5]}"
    return "good", "no temp file ever inside the checkpoint folder (staging lives next to it)"


# ---- strict loading --------------------------------------------------------------------------------------------


def edited_weights(ctx: Ctx, edit: str) -> tuple[str, str]:
    import torch
    from safetensors.torch import save_file

    target = _copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    tensors = weights(target)
    prefix = {"missing_resampler": "model.resampler.", "missing_vision": "model.vision_tower.",
              "missing_projector": "model.multi_modal_projector.", "missing_language": "model.language_model.",
              "reshaped": "model.resampler.", "extra": None, "extra_and_missing": "model.resampler."}[edit]
    key = next((k for k in tensors if prefix and k.startswith(prefix) and k.endswith("weight")), None)
    if prefix and key is None:
        key = next(k for k in tensors if k.startswith(prefix.split(".")[0] + "." + prefix.split(".")[1]))
    if edit.startswith("missing") or edit == "extra_and_missing":
        del tensors[key]
    if edit.startswith("extra"):
        tensors["model.extra_head.weight"] = torch.zeros(3, 3)
    if edit == "reshaped":
        tensors[key] = torch.zeros(*[s + 1 for s in tensors[key].shape])
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    needles = {"extra": ["model.extra_head.weight"], "extra_and_missing": [key, "model.extra_head.weight"]}.get(edit, [key])
    outcome, warned = captured_warnings(lambda: load_model(target))
    if isinstance(outcome, Exception):
        return refusal(outcome, *needles)
    return "silent_wrong", f"loaded without error; warning logged: {bool(warned.strip())}"


for _edit in ("missing_resampler", "missing_vision", "missing_projector", "missing_language", "extra", "extra_and_missing", "reshaped"):
    case("strict_loading", f"tensor_{_edit}", edit=_edit)(edited_weights)


def removed_config_field(ctx: Ctx, field: str) -> tuple[str, str]:
    import torch

    target = _copy_fixture(ctx, "b", ctx.tmp / "ckpt")
    config = json.loads((target / "config.json").read_text())
    holder, key = (config["resampler_config"], field.split(".", 1)[1]) if "." in field else (config, field)
    saved = holder.pop(key)
    (target / "config.json").write_text(json.dumps(config))
    outcome, warned = captured_warnings(lambda: load_model(target))
    if isinstance(outcome, Exception):
        return refusal(outcome, key)
    model = outcome
    loaded_config = model.config.resampler_config if "." in field else model.config
    value = loaded_config.get(key) if isinstance(loaded_config, dict) else getattr(loaded_config, key, None)
    reference = load_model(ctx.ws / "b")
    same_weights = all(torch.equal(p, reference.state_dict()[n]) for n, p in model.state_dict().items()
                       if n in reference.state_dict() and p.shape == reference.state_dict()[n].shape)
    note = f"{field} saved {saved!r}, loaded {value!r}; same weights: {same_weights}"
    if value == saved and same_weights:
        return "good", note + " (the default is the saved value)"
    return "silent_wrong", note + f"; warning logged: {bool(warned.strip())}"


for _field in ("pe_temperature", "resampler_config.depth", "resampler_config.hidden_dim", "resampler_config.resampler_type",
               "image_token_id", "tie_word_embeddings", "vicreg_projector_dim", "initializer_range"):
    case("config_fields", f"config_without_{_field.replace('.', '_')}", field=_field)(removed_config_field)


@case("config_fields", "config_json_records_every_field")
def config_records_every_field(ctx: Ctx) -> tuple[str, str]:
    config_class = imp("configuration_panovlm.configuration_panovlm:PanoVLMConfig")
    saved = json.loads((ctx.ws / "a" / "config.json").read_text())
    generic = {"_name_or_path", "chunk_size_feed_forward", "id2label", "is_encoder_decoder", "label2id",
               "output_attentions", "output_hidden_states", "problem_type", "return_dict"}
    own = [k for k in config_class().to_dict() if k not in generic and k not in saved]
    if own:
        return "silent_wrong", f"config.json omits PanoVLM fields left at their default: {own}"
    return "good", "every PanoVLM field is in config.json"


@case("strict_loading", "control_roundtrip_is_exact")
def roundtrip(ctx: Ctx) -> tuple[str, str]:
    load_model(ctx.ws / "b").save_pretrained(ctx.tmp / "again")
    again = load_model(ctx.tmp / "again")
    if not same_tensors(weights(ctx.tmp / "again"), weights(ctx.ws / "b")) or again.config.pe_temperature != 500.0:
        return "silent_wrong", "save -> load -> save changed the weights or the config"
    return "good", "save -> load -> save is exact"


# ---- adapters ---------------------------------------------------------------------------------------------------


def _adapter(ctx: Ctx) -> Path:
    """A LoRA adapter trained by the finetune stage (one step) on fixture a; built once, shared by the cases."""
    out = ctx.ws / "adapter"
    if not (out / "adapter_model.safetensors").exists():
        result = example(ctx, "train.py", "--stage", "finetune", "--model", ctx.ws / "a", "--train-csv",
                         ctx.ws / "data" / "train.csv", "--output-dir", ctx.ws / "adapter-run", "--max-steps", "1",
                         "--batch-size", "2", "--lora-r", "4", "--lora-alpha", "8", "--logging-steps", "1")
        if result.returncode != 0:
            raise RuntimeError(f"finetune stage failed: {tail(result.stderr, 8)}")
        (ctx.ws / "adapter-run").rename(out)
    return out


def adapter_on_base(ctx: Ctx, base: str, how: str) -> tuple[str, str]:
    adapter = _adapter(ctx)

    def apply():
        if how == "load_adapter":
            model = load_model(ctx.ws / base)
            model.load_adapter(str(adapter))
        elif how == "evaluation_loader":
            loader = imp("modeling_panovlm.evaluation:load_model_and_processor")
            loader(str(ctx.ws / base), str(adapter))
        return True

    if how == "infer_cli":
        result = example(ctx, "infer.py", "--model", ctx.ws / base, "--adapter", adapter, "--image",
                         ctx.ws / "pano.png", "--prompt", "what is in front?", "--max-new-tokens", "2")
        outcome = RuntimeError(result.stderr) if result.returncode else True
        warned = result.stderr
    else:
        outcome, warned = captured_warnings(apply)
    flagged = names(warned, "base") and names(warned, "trained on|fingerprint|different|another|other")
    if base == "a":  # the adapter's own base: must load, without a false alarm
        if isinstance(outcome, Exception):
            return "unclear_error", f"refused on its own base: {str(outcome)[-300:]}"
        return ("unclear_error", f"false mismatch warning: {warned[-300:]}") if flagged else ("good", "loads quietly")
    if isinstance(outcome, Exception):
        return refusal(outcome, "base")
    if flagged:
        return "good", "warned: " + next(line for line in warned.splitlines() if "base" in line.lower())[:300]
    return "silent_wrong", f"adapter trained on a applied to {base} without a word"


for _base in ("a", "b", "c"):
    for _how in ("load_adapter", "evaluation_loader"):
        case("adapter", f"adapter_from_a_on_base_{_base}_via_{_how}", timeout=400, base=_base, how=_how)(adapter_on_base)
case("adapter", "adapter_from_a_on_base_c_via_infer_cli", timeout=400, base="c", how="infer_cli")(adapter_on_base)


# ---- images --------------------------------------------------------------------------------------------------------


def _png16_rgb(path: Path, array) -> None:
    """A 16-bit RGB PNG (PIL cannot write one)."""
    import struct
    import zlib

    height, width, _ = array.shape
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _huge_png(path: Path, width: int, height: int) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row, parts = zlib.compressobj(9), b"\x00" + bytes(width * 3), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def _close(actual, expected, tolerance: float = 0.03) -> tuple[bool, float]:
    difference = float((actual.float() - expected.float()).abs().mean())
    return difference <= tolerance, difference


def same_pixels_as_8bit(ctx: Ctx, variant: str, entry: str) -> tuple[str, str]:
    import numpy as np
    from PIL import Image

    processor = load_processor(ctx.ws / "a")
    rgb = np.asarray(Image.open(ctx.ws / "pano.png").convert("RGB"))
    gray = np.load(ctx.ws / "gray.npy")
    path = ctx.tmp / {"png16_rgb": "pano16.png", "png16_gray": "gray16.png", "tiff_float": "float.tif"}[variant]
    if variant == "png16_rgb":
        _png16_rgb(path, rgb.astype(np.uint16) * 257)
        reference = rgb
    elif variant == "png16_gray":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
        reference = np.repeat(gray[..., None], 3, axis=2)
    else:
        Image.fromarray(gray.astype(np.float32) / 255.0, mode="F").save(path)
        reference = np.repeat(gray[..., None], 3, axis=2)
    expected = pixels(processor, reference)
    source = {"path": str(path), "pathlib": path, "pil": Image.open(path)}.get(entry)

    def run():
        if entry == "image_processor":
            return processor.image_processor(str(path), return_tensors="pt")["pixel_values"]
        return pixels(processor, source)

    try:
        actual = run()
    except Exception as error:  # noqa: BLE001
        return refusal(error, path.name)
    ok, difference = _close(actual, expected.reshape(actual.shape) if actual.numel() == expected.numel() else expected)
    note = f"mean |difference| to the 8-bit panorama's pixel_values: {difference:.3f}"
    return ("good" if ok else "silent_wrong"), note + ("" if ok else f"; white fraction {float((actual > 0.99).float().mean()):.2f}, black fraction {float((actual < -0.99).float().mean()):.2f}")


for _variant in ("png16_rgb", "png16_gray", "tiff_float"):
    for _entry in ("path", "pil", "image_processor"):
        case("images", f"{_variant}_via_{_entry}", variant=_variant, entry=_entry)(same_pixels_as_8bit)


def bad_file(ctx: Ctx, kind: str, entry: str) -> tuple[str, str]:
    processor = load_processor(ctx.ws / "a")
    good = (ctx.ws / "pano.png").read_bytes()
    path = ctx.tmp / {"missing": "nowhere/pano.png", "truncated_png": "cut.png", "truncated_jpeg": "cut.jpg",
                      "not_image": "notes.png", "empty": "empty.png"}[kind]
    if kind == "truncated_png":
        path.write_bytes(good[: len(good) * 6 // 10])
    elif kind == "truncated_jpeg":
        from PIL import Image

        Image.open(ctx.ws / "pano.png").convert("RGB").save(ctx.tmp / "full.jpg", quality=95)
        data = (ctx.tmp / "full.jpg").read_bytes()
        path.write_bytes(data[: len(data) * 6 // 10])
    elif kind == "not_image":
        path.write_text("these are notes, not an image\n")
    elif kind == "empty":
        path.write_bytes(b"")
    source = {"path": str(path), "pathlib": path, "list": [str(ctx.ws / "pano.png"), str(path)]}[entry]
    try:
        if entry == "list":
            processor(images=source, text=[prompt_for(processor)] * 2, return_tensors="pt", padding=True)
        else:
            pixels(processor, source)
    except Exception as error:  # noqa: BLE001
        # The file, and what is wrong with it (a missing file is not "an incorrect image source").
        problem = {"missing": "not found|does not exist|no such file", "truncated_png": "truncated|corrupt",
                   "truncated_jpeg": "truncated|corrupt", "not_image": "not an image|cannot identify|not a valid image",
                   "empty": "empty|not an image|cannot identify"}[kind]
        return refusal(error, path.name, problem)
    return "silent_wrong", f"{kind} file accepted without error"


for _kind in ("missing", "truncated_png", "truncated_jpeg", "not_image", "empty"):
    for _entry in ("path", "pathlib", "list"):
        if _kind in ("not_image", "empty") and _entry == "pathlib":
            continue
        case("images", f"{_kind}_file_via_{_entry}", kind=_kind, entry=_entry)(bad_file)


@case("images", "huge_98mpx_png_refused_before_decoding", timeout=240)
def huge(ctx: Ctx) -> tuple[str, str]:
    import resource

    path = ctx.tmp / "huge.png"
    _huge_png(path, 14000, 7000)
    processor = load_processor(ctx.ws / "a")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        pixels(processor, str(path))
        outcome = None
    except Exception as error:  # noqa: BLE001
        outcome = error
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    note = f"peak memory grew {grown:.0f} MB in {time.perf_counter() - started:.1f}s"
    if outcome is None:
        return "silent_wrong", f"a 98-Mpx panorama was decoded and processed ({note})"
    verdict, message = refusal(outcome, path.name)
    if verdict == "good" and grown > 150:
        return "unclear_error", f"refused only after decoding it fully ({note}): {message}"
    return verdict, f"{message} ({note})"


def pathlib_ok(ctx: Ctx, entry: str) -> tuple[str, str]:
    processor = load_processor(ctx.ws / "a")
    expected = pixels(processor, str(ctx.ws / "pano.png"))
    try:
        if entry == "image_processor":
            actual = processor.image_processor(ctx.ws / "pano.png", return_tensors="pt")["pixel_values"]
            expected = processor.image_processor(str(ctx.ws / "pano.png"), return_tensors="pt")["pixel_values"]
        elif entry == "list":
            actual = processor(images=[ctx.ws / "pano.png"], text=[prompt_for(processor)], return_tensors="pt")["pixel_values"]
        else:
            actual = pixels(processor, ctx.ws / "pano.png")
    except Exception as error:  # noqa: BLE001
        return "unclear_error", f"a pathlib.Path is refused: {type(error).__name__}: {str(error)[:300]}"
    ok, difference = _close(actual, expected, 0.0)
    return ("good" if ok else "silent_wrong"), f"pathlib.Path vs str: mean |difference| {difference:.4f}"


for _entry in ("processor", "list", "image_processor"):
    case("images", f"pathlib_path_via_{_entry}", entry=_entry)(pathlib_ok)


@case("images", "control_str_path_equals_array")
def control_path(ctx: Ctx) -> tuple[str, str]:
    import numpy as np
    from PIL import Image

    processor = load_processor(ctx.ws / "a")
    ok, difference = _close(pixels(processor, str(ctx.ws / "pano.png")),
                            pixels(processor, np.asarray(Image.open(ctx.ws / "pano.png").convert("RGB"))), 0.0)
    return ("good" if ok else "silent_wrong"), f"path vs decoded array: mean |difference| {difference:.4f}"


def _exif_rotated(ctx: Ctx, suffix: str) -> Path:
    from PIL import Image, ImageOps

    upright = Image.open(ctx.ws / "pano.png").convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # portrait on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": exif_transpose gives the upright 2:1 panorama back
    path = ctx.tmp / f"rotated{suffix}"
    stored.save(path, exif=exif, **({"quality": 98} if suffix == ".jpg" else {}))
    assert ImageOps.exif_transpose(Image.open(path)).size == upright.size
    return path


def exif_loader(ctx: Ctx, suffix: str) -> tuple[str, str]:
    import numpy as np
    from PIL import Image, ImageOps

    path = _exif_rotated(ctx, suffix)
    processor = load_processor(ctx.ws / "a")
    expected = pixels(processor, np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")))
    try:
        actual = pixels(processor, str(path))
    except Exception as error:  # noqa: BLE001
        return "unclear_error", f"a valid EXIF-rotated 2:1 panorama is refused: {str(error)[:300]}"
    ok, difference = _close(actual, expected, 0.05)
    return ("good" if ok else "silent_wrong"), f"vs the upright panorama: mean |difference| {difference:.3f}"


def _scan(ctx: Ctx, table: Path):
    """(kept row numbers, problems as (row, text)) of the table's image check, in either layout."""
    try:
        prepare = imp("processing_panovlm.data:prepare_caption_table")
        prepared = prepare(str(table), needs_text=False)
        return list(prepared.rows["row"]), [(p.row, f"{p.reason}: {p.detail}") for p in prepared.problems]
    except ImportError:
        load, scan = imp("processing_panovlm.caption_data:load_caption_table"), imp("processing_panovlm.caption_data:scan_images")
        kept, problems = scan(load(table))
        return list(kept["row"]), [(p.row, f"{p.reason}: {getattr(p, 'detail', '')}") for p in problems]


def exif_scan(ctx: Ctx, suffix: str) -> tuple[str, str]:
    path = _exif_rotated(ctx, suffix)
    table = ctx.tmp / "table.csv"
    table.write_text(f"url,query,annotation\n{path},front,a red circle\n{ctx.ws / 'pano.png'},front,a red circle\n")
    try:
        kept, problems = _scan(ctx, table)
    except Exception as error:  # noqa: BLE001
        return "unclear_error", f"scan raised: {type(error).__name__}: {str(error)[:300]}"
    if problems:
        return "unclear_error", f"the scan refuses a valid EXIF-rotated panorama: {problems}"
    return "good", f"kept rows {kept}"


for _suffix in (".jpg", ".png"):
    case("images", f"exif_rotated{_suffix.replace('.', '_')}_via_processor", suffix=_suffix)(exif_loader)
    case("images", f"exif_rotated{_suffix.replace('.', '_')}_via_table_scan", suffix=_suffix)(exif_scan)


class _Server:
    """A local HTTP server on 127.0.0.1: /pano.png is served, anything else is 404."""

    def __init__(self, ctx: Ctx):
        import http.server
        import threading

        body = (ctx.ws / "pano.png").read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/pano.png":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def url_case(ctx: Ctx, what: str, entry: str) -> tuple[str, str]:
    import socket

    with _Server(ctx) as server:
        if what == "refused":
            with socket.socket() as probe:  # a port nobody listens on
                probe.bind(("127.0.0.1", 0))
                url = f"http://127.0.0.1:{probe.getsockname()[1]}/pano.png"
        else:
            url = server.url + ("/pano.png" if what == "ok" else "/missing/pano.png")
        if entry == "processor":
            processor = load_processor(ctx.ws / "a")
            try:
                actual = pixels(processor, url)
            except Exception as error:  # noqa: BLE001
                if what == "ok":
                    return "unclear_error", f"a served panorama is refused: {str(error)[:300]}"
                return refusal(error, url)
            if what != "ok":
                return "silent_wrong", f"{url} ({what}) gave pixels"
            ok, difference = _close(actual, pixels(processor, str(ctx.ws / "pano.png")), 0.0)
            return ("good" if ok else "silent_wrong"), f"URL vs file: mean |difference| {difference:.4f}"
        table = ctx.tmp / "table.csv"
        table.write_text(f"url,query,annotation\n{ctx.ws / 'pano.png'},front,a red circle\n{url},front,a red circle\n")
        try:
            kept, problems = _scan(ctx, table)
        except Exception as error:  # noqa: BLE001
            return refusal(error, url, "row 2|line 3")
        if what == "ok":
            return ("good", f"kept {kept}") if not problems else ("unclear_error", f"refused a served URL: {problems}")
        text = " ".join(str(p) for p in problems)
        if any(row == 2 for row, _ in problems) and names(text, url):
            return "good", f"reported: {problems}"
        if problems:
            return "unclear_error", f"reported without naming the URL and row: {problems}"
        return "silent_wrong", f"the scan kept the row of the failing URL ({what}): kept rows {kept}"


for _what in ("404", "refused", "ok"):
    for _entry in ("processor", "table_scan"):
        case("images", f"url_{_what}_via_{_entry}", what=_what, entry=_entry)(url_case)


# ---- tables ---------------------------------------------------------------------------------------------------------


def _rows(ctx: Ctx) -> list[tuple[str, str, str]]:
    import csv

    with (ctx.ws / "data" / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = [(str((ctx.ws / "data" / r["url"]).resolve()), r["query"], r["annotation"]) for r in csv.DictReader(handle)]
    unique = {}
    for row in rows:
        unique.setdefault(row[0], row)
    return list(unique.values())[:3]


def _quote(value: str) -> str:
    return f'"{value}"' if ("," in value or '"' in value) else value


def _table_text(ctx: Ctx, defect: str) -> tuple[bytes, dict]:
    rows = _rows(ctx)
    lines = ["url,query,annotation"] + [",".join(_quote(v) for v in row) for row in rows]
    expect = {"rows": len(rows)}
    image = rows[0][0]
    if defect == "duplicate":
        lines.append(lines[1])
        expect.update(defect_row=len(rows) + 1)
    elif defect == "empty_reference":
        lines.append(f"{image},what is behind?,")
        expect.update(defect_row=len(rows) + 1)
    elif defect == "unquoted_comma":
        lines.append(f"{image},what is behind?,a red circle, and a blue square behind")
        expect.update(defect_row=len(rows) + 1, lost="blue square behind")
    elif defect == "short_row":
        lines.insert(2, f"{image},what is behind?")
        expect.update(defect_row=2)
    data = ("\n".join(lines) + "\n").encode()
    if defect == "bom":
        data = b"\xef\xbb\xbf" + data
    elif defect == "non_utf8":
        data += f"{image},what is behind?,caf\xe9 cr\xe8me\n".encode("latin-1")
        expect.update(defect_row=len(rows) + 1)
    elif defect == "utf16":
        data = ("\n".join(lines) + "\n").encode("utf-16")
    return data, expect


def table_load(ctx: Ctx, defect: str) -> tuple[str, str]:
    data, expect = _table_text(ctx, defect)
    path = ctx.tmp / f"{defect}.csv"
    path.write_bytes(data)
    load = imp("processing_panovlm.data:load_caption_table", "processing_panovlm.caption_data:load_caption_table")
    try:
        table = load(path)
    except Exception as error:  # noqa: BLE001
        if defect == "bom":
            return "unclear_error", f"a BOM header is not recognised: {type(error).__name__}: {str(error)[:300]}"
        needles = [path.name] + ({"short_row": ["line 3|row 2"], "unquoted_comma": [f"line {expect.get('defect_row', 0) + 1}|row {expect.get('defect_row', 0)}"]}.get(defect, []))
        return refusal(error, *needles)
    columns = table.column_names
    problems = [p for p in table["problem"] if p] if "problem" in columns else []
    if defect == "bom":
        ok = "url" in columns and len(table) == expect["rows"] and all(table["annotation"])
        return ("good" if ok else "silent_wrong"), f"columns {columns}, {len(table)} rows"
    if defect in ("unquoted_comma", "short_row"):
        if problems:
            return "good", f"the row is marked: {problems}"
        annotations = table["annotation"]
        if defect == "unquoted_comma" and not any(expect["lost"] in (a or "") for a in annotations):
            return "silent_wrong", f"the row lost its last field silently: {annotations[-1]!r}"
        return "silent_wrong", f"a {defect} loads as an ordinary row: {table[expect['defect_row'] - 1]}"
    return "silent_wrong", f"{defect} table loaded ({len(table)} rows, columns {columns})"


for _defect in ("bom", "non_utf8", "utf16", "unquoted_comma", "short_row"):
    case("tables", f"load_caption_table_{_defect}", defect=_defect)(table_load)


def table_prepare(ctx: Ctx, defect: str) -> tuple[str, str]:
    """The training path: prepare_table(csv, output_dir, split, needs_text, augment) drops and reports rows."""
    data, expect = _table_text(ctx, defect)
    path = ctx.tmp / f"{defect}.csv"
    path.write_bytes(data)
    prepare = imp("modeling_panovlm.training.runner:prepare_table", "modeling_panovlm.stage_runner:prepare_table")
    try:
        table = prepare(str(path), ctx.tmp / "out", "train", True, False)
    except Exception as error:  # noqa: BLE001
        if defect == "bom":
            return "unclear_error", f"a BOM header is not recognised: {str(error)[:300]}"
        return refusal(error, path.name, f"line {expect.get('defect_row', 0) + 1}|row {expect.get('defect_row', 0)}")
    reports = list((ctx.tmp / "out").glob("*report*.json"))
    report = reports[0].read_text() if reports else ""
    if defect == "bom":
        ok = len(table) == expect["rows"]
        return ("good" if ok else "silent_wrong"), f"{len(table)} rows kept of {expect['rows']}"
    row = expect["defect_row"]
    mentioned = re.search(rf'"row": {row}\b', report) is not None
    if mentioned:
        return "good", f"row {row} reported in {reports[0].name} ({len(table)} rows kept)"
    return "silent_wrong", f"row {row} ({defect}) neither dropped with a report nor counted: {len(table)} rows kept, report {report[:200]!r}"


for _defect in ("duplicate", "empty_reference", "unquoted_comma", "short_row", "bom"):
    case("tables", f"training_table_{_defect}", defect=_defect)(table_prepare)


def table_evaluate(ctx: Ctx, defect: str) -> tuple[str, str]:
    data, expect = _table_text(ctx, defect)
    path = ctx.tmp / f"{defect}.csv"
    path.write_bytes(data)
    evaluate = imp("modeling_panovlm.evaluation:evaluate_caption_table")
    greedy = imp("modeling_panovlm.evaluation:greedy_generation_config")
    model, processor = load_model(ctx.ws / "a"), load_processor(ctx.ws / "a")
    try:
        summary = evaluate(model, processor, path, ctx.tmp / "eval", generation_config=greedy(model, 3))
    except Exception as error:  # noqa: BLE001
        if defect == "bom":
            return "unclear_error", f"a BOM header is not recognised: {type(error).__name__}: {str(error)[:300]}"
        return refusal(error, path.name, *([] if defect == "non_utf8" else [f"line {expect.get('defect_row', 0) + 1}|row {expect.get('defect_row', 0)}"]))
    text = json.dumps(summary)
    units = summary.get("protocols", {}).get("per-row", {}).get("units")
    if defect == "bom":
        return ("good" if units == expect["rows"] else "silent_wrong"), f"per-row units {units} of {expect['rows']} rows"
    row = expect["defect_row"]
    counted = re.search(rf'"row": {row}\b', text) is not None
    if units == expect["rows"] and counted:
        return "good", f"row {row} left out of the scores and reported; per-row units {units}"
    if units == expect["rows"]:
        return "silent_wrong", f"row {row} left out of the scores but not reported; per-row units {units}"
    return "silent_wrong", f"row {row} ({defect}) scored: per-row units {units} for {expect['rows']} good rows"


for _defect in ("duplicate", "empty_reference", "unquoted_comma", "short_row", "bom", "non_utf8"):
    case("tables", f"evaluation_table_{_defect}", timeout=300, defect=_defect)(table_evaluate)


@case("tables", "evaluation_table_failing_url", timeout=300)
def evaluation_failing_url(ctx: Ctx) -> tuple[str, str]:
    rows = _rows(ctx)
    evaluate = imp("modeling_panovlm.evaluation:evaluate_caption_table")
    greedy = imp("modeling_panovlm.evaluation:greedy_generation_config")
    model, processor = load_model(ctx.ws / "a"), load_processor(ctx.ws / "a")
    with _Server(ctx) as server:
        url = server.url + "/missing/pano.png"
        path = ctx.tmp / "url.csv"
        path.write_text("url,query,annotation\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows[:2]) + f"{url},front,a red circle\n")
        try:
            summary = evaluate(model, processor, path, ctx.tmp / "eval", generation_config=greedy(model, 3))
        except Exception as error:  # noqa: BLE001
            return refusal(error, url, "row 3|line 4")
    text = json.dumps(summary)
    units = summary.get("protocols", {}).get("per-row", {}).get("units")
    if units == 2 and url in text and re.search(r'"row": 3\b', text):
        return "good", f"row 3 ({url}) left out of the scores and reported; per-row units {units}"
    return "silent_wrong", f"a failing URL row: per-row units {units}, reported: {url in text}"


@case("tables", "control_clean_table_loads")
def clean_table(ctx: Ctx) -> tuple[str, str]:
    data, expect = _table_text(ctx, "clean")
    (ctx.tmp / "t.csv").write_bytes(data)
    load = imp("processing_panovlm.data:load_caption_table", "processing_panovlm.caption_data:load_caption_table")
    table = load(ctx.tmp / "t.csv")
    return ("good" if len(table) == expect["rows"] else "silent_wrong"), f"{len(table)} rows"


# ---- training CLI: seeds, ranges, short runs, missing directories ------------------------------------------------


def _train(ctx: Ctx, output: Path, *flags, model: Path | None = None, stage: str = "vision") -> subprocess.CompletedProcess:
    return example(ctx, "train.py", "--stage", stage, "--model", model or ctx.ws / "a", "--train-csv",
                   ctx.ws / "data" / "train.csv", "--output-dir", output, "--batch-size", "2", *flags)


def seeded(ctx: Ctx, stage: str) -> tuple[str, str]:
    outputs = []
    for run in (1, 2):
        out = ctx.tmp / f"run{run}"
        result = _train(ctx, out, "--max-steps", "2", "--seed", "7", "--logging-steps", "1", "--warmup-steps", "0",
                        "--learning-rate", "1e-3", "--lora-r", "4", "--lora-alpha", "8", "--save-steps", "100",
                        stage=stage)
        if result.returncode != 0:
            return "unclear_error", f"run {run} failed: {tail(result.stderr)}"
        name = "adapter_model.safetensors" if stage == "finetune" else "model.safetensors"
        from safetensors.torch import load_file

        outputs.append(load_file(out / name))
    import torch

    differ = [k for k in outputs[0] if not torch.equal(outputs[0][k], outputs[1][k])]
    if outputs[0].keys() != outputs[1].keys() or differ:
        return "silent_wrong", f"two runs with --seed 7: {len(differ)}/{len(outputs[0])} tensors differ (e.g. {differ[:2]})"
    return "good", f"two runs with --seed 7 are bit-identical ({len(outputs[0])} tensors)"


for _stage in ("vision", "resampler", "finetune"):
    case("seeds", f"seed_reproducible_{_stage}", timeout=600, stage=_stage)(seeded)


def out_of_range(ctx: Ctx, flag: str, value: str, stage: str) -> tuple[str, str]:
    out = ctx.tmp / "out"
    result = _train(ctx, out, flag, value, *([] if flag == "--max-steps" else ["--max-steps", "2"]), stage=stage)
    trained = [p.name for p in (out.iterdir() if out.exists() else []) if p.name in ("model.safetensors", "adapter_model.safetensors")]
    state = out / "trainer_state.json"
    steps = json.loads(state.read_text()).get("global_step") if state.exists() else "?"
    if result.returncode == 0:
        return "silent_wrong", f"{flag} {value} accepted: trained {steps} steps"
    if trained:  # it trained with the value, then failed for another reason
        return "silent_wrong", f"{flag} {value} accepted: trained {steps} steps, then exit {result.returncode}: {tail(result.stderr, 1)}"
    # The error is the last lines of stderr; earlier lines (logs that repeat the options) do not count.
    message = tail(result.stderr, 2)
    bare = flag.lstrip("-")
    if names(message, f"{bare}|{bare.replace('-', '_')}|{bare.replace('-', ' ')}"):
        return "good", message
    return "unclear_error", message


for _flag, _value, _stage in [("--max-steps", "0", "vision"), ("--max-steps", "-5", "vision"),
                              ("--vision-trainable-blocks", "-1", "vision"), ("--vision-trainable-blocks", "99", "vision"),
                              ("--batch-size", "0", "vision"), ("--learning-rate", "-0.001", "vision"),
                              ("--num-train-epochs", "0", "vision"), ("--logging-steps", "0", "vision"),
                              ("--gradient-accumulation-steps", "0", "vision"), ("--lora-r", "0", "finetune"),
                              ("--lora-dropout", "1.5", "finetune"), ("--warmup-steps", "-1", "vision")]:
    case("cli_ranges", f"train{_flag.replace('-', '_')}_{_value}", timeout=400, flag=_flag, value=_value, stage=_stage)(out_of_range)


def view_range(ctx: Ctx, where: str, field: str, value: float) -> tuple[str, str]:
    kwargs = {field: value, "crop_strategy": "e2p"}
    try:
        if where == "image_processor":
            made = imp("processing_panovlm:PanoVLMImageProcessor")(**kwargs)
        else:
            made = imp("configuration_panovlm.configuration_panovlm:PanoVLMConfig")(**kwargs)
    except Exception as error:  # noqa: BLE001
        return refusal(error, field, str(value).rstrip("0").rstrip(".") if "." in str(value) else str(value))
    layout = getattr(made, "view_layout", None)
    views = len(layout.views) if layout is not None else getattr(made, "num_views", None)
    return "silent_wrong", f"{field}={value} accepted by {where} (num_views {views})"


for _where in ("image_processor", "config"):
    for _field, _value in (("fov_deg", 0.01), ("fov_deg", 0.0), ("fov_deg", -30.0), ("overlap_ratio", 1.0)):
        case("cli_ranges", f"{_where}_{_field}_{_value}", where=_where, field=_field, value=_value)(view_range)


def short_run(ctx: Ctx, stage: str) -> tuple[str, str]:
    out = ctx.tmp / "short"
    result = _train(ctx, out, "--max-steps", "2", "--logging-steps", "50", stage=stage)
    if result.returncode != 0:
        return "unclear_error", f"exit {result.returncode} after a 2-step run with --logging-steps 50: {tail(result.stderr)}"
    try:
        load_model(out)
    except Exception as error:  # noqa: BLE001
        return "data_loss", f"exit 0 but the output does not load: {error}"
    return "good", "exit 0; the output loads"


for _stage in ("vision", "resampler"):
    case("short_run", f"run_shorter_than_logging_steps_{_stage}", timeout=400, stage=_stage)(short_run)


def missing_directory(ctx: Ctx, entry: str) -> tuple[str, str]:
    missing = "out/no/such/run"
    if entry in ("train_cli", "evaluate_cli", "infer_cli"):
        if entry == "train_cli":
            result = example(ctx, "train.py", "--stage", "vision", "--model", missing, "--train-csv",
                             ctx.ws / "data" / "train.csv", "--output-dir", ctx.tmp / "o", "--max-steps", "1")
        elif entry == "evaluate_cli":
            result = example(ctx, "evaluate.py", "--model", missing, "--csv", ctx.ws / "data" / "test.csv",
                             "--output-dir", ctx.tmp / "o")
        else:
            result = example(ctx, "infer.py", "--model", missing, "--image", ctx.ws / "pano.png", "--prompt", "x")
        if result.returncode == 0:
            return "silent_wrong", "exit 0 with a missing model directory"
        message = result.stderr[-2000:]
        return ("good" if names(message, missing, "does not exist|not found|no such") else "unclear_error"), tail(message, 2)
    try:
        if entry == "model_class":
            imp("modeling_panovlm:PanoVLMForConditionalGeneration").from_pretrained(missing)
        elif entry == "auto_model":
            load_model(missing)
        elif entry == "auto_processor":
            load_processor(missing)
        elif entry == "processor_class":
            imp("processing_panovlm:PanoVLMProcessor").from_pretrained(missing)
    except Exception as error:  # noqa: BLE001
        return refusal(error, missing, "does not exist|not found|no such")
    return "silent_wrong", "loaded something from a missing directory"


for _entry in ("train_cli", "evaluate_cli", "infer_cli", "model_class", "auto_model", "auto_processor", "processor_class"):
    case("missing_dirs", f"missing_model_directory_via_{_entry}", timeout=300, entry=_entry)(missing_directory)


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
    repo = (args.repo or Path(__file__).resolve().parents[1]).resolve()
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
