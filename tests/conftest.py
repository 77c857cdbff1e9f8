"""Shared fixtures: tiny random checkpoints built offline."""

import pytest
import torch

from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint


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

