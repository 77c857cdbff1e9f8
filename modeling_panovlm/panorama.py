"""The two panorama-specific steps between the resampler and the language model: a parameter-free positional
encoding of every view token, and the stitching of each pitch row of views into one token strip.

Both derive their geometry from `config.view_layout` (see `configuration_panovlm.view_layout`), the same object
the image processor samples views from, so training, evaluation and the processor cannot disagree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from configuration_panovlm.configuration_panovlm import PanoVLMConfig
from configuration_panovlm.view_layout import ViewLayout


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


def _sinusoid(positions: torch.Tensor, dim: int, temperature: float) -> torch.Tensor:
    """PanoLLaVA's sinusoid of `positions` (float32): `[sin(p * w_0), .., sin(p * w_{n-1}), cos(p * w_0), ..]`,
    `w_i = temperature^(-2i / dim)`, `n = dim // 2`, zero-padded to `dim` channels; computed as PanoLLaVA does."""
    half = dim // 2
    index = torch.arange(half, dtype=torch.float32, device=positions.device)
    freqs = torch.exp(-math.log(temperature) * (2 * index / max(1, dim)))
    angles = positions.unsqueeze(-1) * freqs
    return F.pad(torch.cat([angles.sin(), angles.cos()], dim=-1), (0, dim - 2 * half))


def panollava_encoding(layout: ViewLayout, token_grid: tuple[int, int], dim: int, temperature: float) -> torch.Tensor:
    """PanoLLaVA's panorama encoding of every view token, `(num_views, rows * columns, dim)` float32.

    A view is placed along its pitch row as PanoLLaVA placed it along its strip: the view at position `v` (the
    global view, if any, is position 0 of every row, the row's views follow from 1) and its token column `c` of
    `w` get the continuous column `g = v * (1 - overlap) + c / w` (`overlap` = the realised overlap, capped at
    0.999) and the yaw angle `2 pi g / L`, `L = V - (V - 1) * overlap` for `V` positions. The code is
    `E(yaw angle) + E(token row) + E(g)` with `E = _sinusoid`. For one row of views this is PanoLLaVA's encoding
    value for value; rows below the first continue the token-row count, shifted by the part of a view's height
    they do not share with the row above.
    """
    rows, cols = token_grid
    overlap = min(max(layout.overlap, 0.0), 0.999)
    offset = int(layout.has_global_view)
    positions = layout.views_per_row + offset
    length = max(1e-6, positions - (positions - 1) * overlap)
    row_start = [0.0]
    for row_overlap in layout.row_overlaps:
        row_start.append(row_start[-1] + rows * (1.0 - row_overlap))
    placements = [(0, 0.0)] if layout.has_global_view else []  # (position in the row, first token row)
    placements += [(offset + column, row_start[row]) for row in range(layout.num_rows) for column in range(layout.views_per_row)]

    cpu = torch.device("cpu")  # explicit: `from_pretrained` may build modules under a meta-device context
    view_position = torch.tensor([[position] for position, _ in placements], dtype=torch.float32, device=cpu)
    column = view_position * (1.0 - overlap) + torch.arange(cols, dtype=torch.float32, device=cpu) / max(1.0, float(cols))
    yaw = _sinusoid((2.0 * math.pi) * (column / length), dim, temperature)  # (V, cols, dim)
    token_rows = torch.arange(rows, dtype=torch.float32, device=cpu)[None] + torch.tensor(
        [[start] for _, start in placements], dtype=torch.float32, device=cpu
    )
    spatial = _sinusoid(token_rows, dim, temperature)[:, :, None] + _sinusoid(column, dim, temperature)[:, None]
    return (yaw[:, None] + spatial).reshape(len(placements), rows * cols, dim)


class PanoramaPositionalEncoding(nn.Module):
    """Adds the panorama code of every view token to the resampler output: the `panorama_encoding` of the
    direction it looks (`panorama_pe_type="direction"`) or PanoLLaVA's `panollava_encoding`.

    Holds no parameters; the code table `(num_views, tokens_per_view, latent_dimension)` is a non-persistent
    buffer rebuilt from the config (never read from a checkpoint), so a saved model reloads it bit-identically.
    """

    def __init__(self, config: PanoVLMConfig):
        super().__init__()
        self.dim = config.resampler_config.latent_dimension
        self.temperature = config.pe_temperature
        self.kind = config.panorama_pe_type
        # Plain Python / numpy (not buffers): immune to the meta device `from_pretrained` builds modules on.
        self._layout, self._grid = config.view_layout, config.view_token_grid
        yaw, pitch = self._layout.token_directions(self._grid)  # (V, rows, cols) each
        self._yaw_deg = yaw.reshape(yaw.shape[0], -1)
        self._pitch_deg = pitch.reshape(pitch.shape[0], -1)
        self.register_buffer("encoding", self.compute_encoding(), persistent=False)

    def compute_encoding(self) -> torch.Tensor:
        """The code table, `(num_views, tokens_per_view, latent_dimension)` float32."""
        if self.kind == "panollava":
            return panollava_encoding(self._layout, self._grid, self.dim, self.temperature)
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
    """Join one row of views left to right into one strip, row-major (`drop_overlap` and `concat` stitching).

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


def resample_views(
    view_tokens: torch.Tensor, drop_columns: int, out_columns: int | None = None, interpolation: str = "nearest"
) -> torch.Tensor:
    """PanoLLaVA's `resample` stitching of one row of views into one strip, row-major.

    View `v` covers columns `v * (columns - drop_columns)` to that plus `columns - 1` of a strip of `unique =
    columns + (views - 1) * (columns - drop_columns)` columns (the last view is not wrapped onto the first, as in
    `drop_overlap`). `out_columns` points (default `unique`) spread evenly over `[0, unique - 1]` are sampled from
    every view (`grid_sample`, `"nearest"` or bilinear for `"linear"`, zeros outside the view, `align_corners`), and
    the views are averaged weighted by how much of each sample lies inside them, as PanoLLaVA did:
    `sum_v sample_v * weight_v / sum_v weight_v`. With the default width every point is a whole column, so columns
    seen by one view are kept and columns two views share are their mean. Computed in float32.

    Args:
        view_tokens: `(batch, views, rows, columns, dim)`, views ordered left to right.

    Returns:
        `(batch, rows * out_columns, dim)` in the input dtype.
    """
    batch, num_views, rows, cols, dim = view_tokens.shape
    unique = cols + (num_views - 1) * (cols - drop_columns)
    out_columns = out_columns or unique
    device = view_tokens.device
    strip = torch.linspace(0.0, unique - 1.0, out_columns, dtype=torch.float32, device=device)
    local = strip[None] - torch.arange(num_views, device=device, dtype=torch.float32)[:, None] * (cols - drop_columns)
    x = 2.0 * local / (cols - 1) - 1.0 if cols > 1 else torch.zeros_like(local)
    y = torch.linspace(-1.0, 1.0, rows, dtype=torch.float32, device=device) if rows > 1 else local.new_zeros(1)
    grid = torch.stack([x[:, None, :].expand(-1, rows, -1), y[None, :, None].expand(num_views, -1, out_columns)], -1)
    grid = grid.expand(batch, -1, -1, -1, -1).reshape(batch * num_views, rows, out_columns, 2)
    features = view_tokens.float().permute(0, 1, 4, 2, 3).reshape(batch * num_views, dim, rows, cols)
    mode = "bilinear" if interpolation == "linear" else "nearest"
    sampled = F.grid_sample(features, grid, mode=mode, padding_mode="zeros", align_corners=True)
    ones = features.new_ones(batch * num_views, 1, rows, cols)
    weight = F.grid_sample(ones, grid, mode=mode, padding_mode="zeros", align_corners=True)
    sampled = sampled.view(batch, num_views, dim, rows, out_columns)
    weight = weight.view(batch, num_views, 1, rows, out_columns)
    fused = (sampled * weight).sum(1) / weight.sum(1).clamp_min(1e-6)  # (batch, dim, rows, out_columns)
    return fused.permute(0, 2, 3, 1).reshape(batch, rows * out_columns, dim).to(view_tokens.dtype)


def stitch_panorama(view_tokens: torch.Tensor, config: PanoVLMConfig) -> torch.Tensor:
    """All views of each panorama -> its image tokens, `(batch, config.num_image_tokens, dim)`.

    `view_tokens` is `(batch, views, rows, columns, dim)` in layout order. The global view's tokens (if any) come
    first, unstitched; then each pitch row, top row first, stitched by `config.stitching_mode` (`stitch_views` or
    `resample_views`).
    """
    layout = config.view_layout
    batch, _, rows, cols, dim = view_tokens.shape
    parts = []
    if layout.has_global_view:
        parts.append(view_tokens[:, 0].reshape(batch, rows * cols, dim))
        view_tokens = view_tokens[:, 1:]
    view_rows = view_tokens.unflatten(1, (layout.num_rows, layout.views_per_row))
    drop = layout.overlap_columns(cols)
    for row in range(layout.num_rows):
        if config.stitching_mode == "resample":
            parts.append(resample_views(view_rows[:, row], drop, config.resample_columns, config.resample_interpolation))
        else:
            parts.append(stitch_views(view_rows[:, row], drop if config.stitching_mode == "drop_overlap" else 0))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def token_grid_check(num_tokens: int, grid: tuple[int, int]) -> None:
    """Raise if a resampler returned a token count that does not fill the configured per-view grid."""
    if num_tokens != math.prod(grid):
        raise ValueError(
            f"the resampler returned {num_tokens} tokens per view, but the config lays views out as a "
            f"{grid[0]}x{grid[1]} grid ({math.prod(grid)} tokens)"
        )
