"""Helpers that run inside a case's process, and the fixtures every case shares (built once per run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


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


def copy_fixture(ctx: Ctx, name: str, target: Path) -> Path:

    shutil.copytree(ctx.ws / name, target)
    return target


class LocalServer:
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


