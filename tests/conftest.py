"""Shared fixtures: tiny random checkpoints built offline; every test leaves the process's logging as it found it."""

import logging

import pytest
import torch

from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint


LOGGERS = ("transformers", "configuration_panovlm", "processing_panovlm", "modeling_panovlm")


@pytest.fixture(autouse=True)
def restore_logging():
    """A command run in-process (`cli.main([...])`) sets up the console: handlers on the root logger, transformers'
    verbosity, captured warnings, hidden progress bars. Put everything back, so that no later test sees it (upstream
    config tests, for one, assert that nothing is logged at transformers' default verbosity)."""
    import datasets
    import transformers

    from modeling_panovlm.cli import console

    root = logging.getLogger()
    saved = [(root, root.handlers[:], root.level, root.propagate)]
    saved += [(log, log.handlers[:], log.level, log.propagate) for log in map(logging.getLogger, LOGGERS)]
    installed = dict(console._installed)
    yield
    for log, handlers, level, propagate in saved:
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate
    for kind, handler in list(console._installed.items()):
        if installed.get(kind) is not handler:
            handler.close()
    console._installed.clear()
    console._installed.update(installed)
    logging.captureWarnings(False)
    transformers.utils.logging.enable_progress_bar()
    datasets.enable_progress_bars()


@pytest.fixture(scope="session")
def tiny_mlp():
    """(model, processor) of the default tiny checkpoint: MLP resampler, anyres_e2p."""
    return build_tiny_checkpoint(resampler_type="mlp", crop_strategy="anyres_e2p")


@pytest.fixture(scope="session")
def panorama():
    """A 128x256 synthetic panorama with a shape in each direction, one straddling the seam."""
    objects = [
        SceneObject("red", "circle", 0.0),
        SceneObject("green", "square", 90.0),
        SceneObject("blue", "triangle", 180.0),
        SceneObject("yellow", "diamond", -90.0),
    ]
    return render_panorama(objects, height=128)


def image_prompt_ids(config, batch: int = 2, before: int = 3, after: int = 4) -> torch.Tensor:
    """`(batch, before + num_image_tokens + after)` ids with the image tokens in the middle."""
    ids = torch.randint(10, 100, (batch, before + config.num_image_tokens + after))
    ids[:, before : before + config.num_image_tokens] = config.image_token_id
    return ids

