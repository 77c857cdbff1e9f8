"""Data loss: kills, concurrency, full disk, permissions, debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from case_helpers import Ctx, copy_fixture, debris, env, identify, load_model, load_processor
from case_registry import case


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


def _kill_save_loop(models: list, target: Path, delay: float, **save_kwargs) -> None:
    """Fork a process that saves `models` to `target` in turn, over and over, and SIGKILL it `delay` seconds after
    its first save starts."""
    ready_read, ready_write = os.pipe()

    def saver():
        os.write(ready_write, b"r")
        while True:
            for model in models:
                model.save_pretrained(target, **save_kwargs)

    pid = _fork(saver)
    os.read(ready_read, 1)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def kill_during_save(ctx: Ctx, point: int, points: int) -> tuple[str, str]:
    target = copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    models = [load_model(ctx.ws / "b"), load_model(ctx.ws / "a")]
    start = time.perf_counter()
    models[0].save_pretrained(ctx.tmp / "timing")
    cycle = 2 * (time.perf_counter() - start)  # one save of b then one of a
    delay = cycle * (point + 0.5) / points + cycle  # past the first save, then spread over one cycle
    _kill_save_loop(models, target, delay)
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
        copy_fixture(ctx, "a", target)
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
    delay = cycle * (point + 0.5) / points + cycle
    _kill_save_loop(models, target, delay, max_shard_size="300KB")
    state, detail = identify(ctx, target)
    shards = sorted(p.name for p in target.glob("model*.safetensors*"))
    note = f"killed {delay:.2f}s into the sharded save loop: {state} ({detail}); weight files {shards}"
    return ("good" if state in ("a", "b") else "data_loss"), note


for _i in range(6):
    case("kill", f"kill_sharded_save_point_{_i}", timeout=240, point=_i, points=6)(kill_sharded_save)


@case("kill", "sharded_save_over_single_file_leaves_no_stale_weights")
def sharded_over_single(ctx: Ctx) -> tuple[str, str]:
    target = copy_fixture(ctx, "a", ctx.tmp / "ckpt")
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
        copy_fixture(ctx, "a", target)
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
    target = copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    models = [load_model(ctx.ws / "b"), load_model(ctx.ws / "a")]
    seen = set()
    for attempt in range(3):
        _kill_save_loop(models, target, 0.15 + 0.2 * attempt)
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

    target = copy_fixture(ctx, "a", ctx.tmp / "ckpt")
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
    target = copy_fixture(ctx, "a", ctx.tmp / "ckpt")
    model = load_model(ctx.ws / "b")
    allowed = {p.name for p in (ctx.ws / "a").iterdir()}
    stray = set()
    for attempt in range(4):
        _kill_save_loop([model], target, 0.1 + 0.15 * attempt)
        stray.update(debris(target, allowed))
    if stray:
        return "silent_wrong", f"temp files inside the checkpoint folder after kills: {sorted(stray)[:5]}"
    return "good", "no temp file ever inside the checkpoint folder (staging lives next to it)"


