"""The two panorama-specific steps between the resampler and the language model: a parameter-free positional
encoding of every view token's direction, and the stitching of the horizon views into one token strip.

Both derive their geometry from `config.view_layout` (see `configuration_panovlm.view_layout`), the same object
the image processor samples views from, so training, evaluation and the processor cannot disagree.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from configuration_panovlm.configuration_panovlm import PanoVLMConfig


def panorama_encoding(
    yaw_deg: torch.Tensor, pitch_deg: torch.Tensor, dim: int, temperature: float = 10000.0
) -> torch.Tensor:
    """Direction code of tokens looking at (`yaw_deg`, `pitch_deg`), shape `(*yaw_deg.shape, dim)`.

    The first half of the channels encode yaw with the integer harmonics `sin(m * yaw), cos(m * yaw)`,
    `m = 1 .. dim / 4`: every channel is 360-degree periodic, so the code closes the circle exactly at +/-180 and
    two tokens looking the same way get the same code whichever view they sit in. The second half encode pitch
    in degrees with transformer sinusoids, wavelengths from 2*pi up to `2*pi * temperature`. Computed in float64.
    """
    if dim % 4:
        raise ValueError(f"the panorama encoding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    device = yaw_deg.device
    harmonics = torch.arange(1, quarter + 1, dtype=torch.float64, device=device)
    yaw = torch.deg2rad(yaw_deg.double())[..., None] * harmonics
    freqs = temperature ** (-torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    pitch = pitch_deg.double()[..., None] * freqs
    return torch.cat([yaw.sin(), yaw.cos(), pitch.sin(), pitch.cos()], dim=-1)


class PanoramaPositionalEncoding(nn.Module):
    """Adds the direction code of every view token to the resampler output.

    Holds no parameters; the code table `(num_views, tokens_per_view, latent_dimension)` is a non-persistent
    buffer rebuilt from the config (never read from a checkpoint), so a saved model reloads it bit-identically.
    """

    def __init__(self, config: PanoVLMConfig):
        super().__init__()
        self.dim = config.resampler_config.latent_dimension
        self.temperature = config.pe_temperature
        # Plain numpy (not buffers): immune to the meta device `from_pretrained` builds modules on.
        yaw, pitch = config.view_layout.token_directions(config.view_token_grid)  # (V, rows, cols) each
        self._yaw_deg = yaw.reshape(yaw.shape[0], -1)
        self._pitch_deg = pitch.reshape(pitch.shape[0], -1)
        self.register_buffer("encoding", self.compute_encoding(), persistent=False)

    def compute_encoding(self) -> torch.Tensor:
        """The code table, `(num_views, tokens_per_view, latent_dimension)` float32."""
        yaw, pitch = torch.from_numpy(self._yaw_deg), torch.from_numpy(self._pitch_deg)
        return panorama_encoding(yaw, pitch, self.dim, self.temperature).float()

    def init_weights_(self, std: float) -> None:
        # `from_pretrained` builds modules on the meta device and fills only what the checkpoint holds, so the
        # non-persistent table is recomputed here (as transformers does for rotary `inv_freq`).
        init.copy_(self.encoding, self.compute_encoding())

    def forward(self, view_tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, views, tokens, latent_dimension)` -> same shape with the direction code added."""
        return view_tokens + self.encoding.to(view_tokens.dtype)


def stitch_views(view_tokens: torch.Tensor, drop_columns: int) -> torch.Tensor:
    """Join horizon views left to right into one strip, row-major.

    Args:
        view_tokens: `(batch, views, rows, columns, dim)`, views ordered left to right.
        drop_columns: token columns each view after the first shares with its left neighbour and drops
            (0 = plain concatenation).

    Returns:
        `(batch, rows * (columns + (views - 1) * (columns - drop_columns)), dim)`: row 0 of the whole strip, then
        row 1, and so on.
    """
    batch, num_views, rows, cols, dim = view_tokens.shape
    first = view_tokens[:, 0]  # (B, rows, cols, D)
    rest = view_tokens[:, 1:, :, drop_columns:]  # (B, V-1, rows, cols - drop, D)
    rest = rest.permute(0, 2, 1, 3, 4).reshape(batch, rows, (num_views - 1) * (cols - drop_columns), dim)
    return torch.cat([first, rest], dim=2).reshape(batch, -1, dim)


def token_grid_check(num_tokens: int, grid: tuple[int, int]) -> None:
    """Raise if a resampler returned a token count that does not fill the configured per-view grid."""
    if num_tokens != math.prod(grid):
        raise ValueError(
            f"the resampler returned {num_tokens} tokens per view, but the config lays views out as a "
            f"{grid[0]}x{grid[1]} grid ({math.prod(grid)} tokens)"
        )
