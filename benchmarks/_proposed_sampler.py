"""Prototypes of faster panorama -> views paths, measured by bench_views.py. NOT library code.

Two variants, both producing what `PanoVLMImageProcessor(...)(erp)["pixel_values"]` produces for a uint8 HWC array:

* `preprocess_one_pass` (`proposed[one-pass]`): the library's own sampler, minus two full-image copies. The uint8
  panorama is converted to float32 *while* it is written into the one-pixel-padded buffer that `grid_sample` reads
  (one pass, instead of `torch.tensor` copy + strided float conversion + `.contiguous()` + `pad_equirect`), and the
  letterbox is resized from that buffer's interior. Same grids, same ops: equal to the library to float rounding.
* `preprocess` (`proposed[uint8-gather]`): samples straight from the uint8 image, described below.

`preprocess` in detail. The library's processor (`PanoVLMImageProcessor` -> `load_panorama` -> `sample_views`) converts the whole
uint8 panorama to float32 (a strided HWC -> CHW copy), pads it (a second full float copy) and then samples the views
with `grid_sample`. For a 2048 x 4096 panorama that is ~200 MB of float traffic to produce 8 views of 384^2,
which touch only a few percent of the pixels. This prototype samples the same views straight from the uint8
image:

* per (views, ERP size, view size) it caches, in float64 maths as the library does, the index of each output
  pixel's top-left neighbour in the one-pixel-padded ERP and its two bilinear fractions;
* per panorama it pads the uint8 image (25 MB copy for 2048 x 4096), gathers the four neighbours of every output
  pixel channel-planar, and accumulates the bilinear weights in float32; rescale and normalisation are one
  multiply-add on the output;
* the letterboxed global view uses torch's uint8 antialiased bilinear resize (AVX2 path), whose output is rounded
  to whole grey levels (the library computes it in float; measured difference < 1 grey level).

The geometry (pixel centres, padding across the seam and the poles, border clamp) is exactly that of
`processing_panovlm.equirect`, so the views agree with py360convert as the library's do, and with the library's own
views to float32 rounding.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from configuration_panovlm.view_layout import ViewLayout, ViewSpec
from processing_panovlm.equirect import view_lonlat


@lru_cache(maxsize=8)
def _gather_plan(views: tuple[ViewSpec, ...], height: int, width: int, size: int):
    """Top-left neighbour index (int64, in pixels of the padded ERP) and bilinear fractions (float32)."""
    padded_width = width + 2
    columns, rows = [], []
    for view in views:
        lon, lat = view_lonlat(view, size)
        columns.append((lon / (2 * math.pi) + 0.5) * width - 0.5 + 1)
        rows.append((0.5 - lat / math.pi) * height - 0.5 + 1)
    # grid_sample(padding_mode="border", align_corners=True) clamps to the padded image.
    x = np.clip(np.concatenate(columns).ravel(), 0, width + 1)
    y = np.clip(np.concatenate(rows).ravel(), 0, height + 1)
    x0 = np.minimum(np.floor(x), width).astype(np.int64)
    y0 = np.minimum(np.floor(y), height).astype(np.int64)
    index = torch.from_numpy(y0 * padded_width + x0)
    fx = torch.from_numpy((x - x0).astype(np.float32))
    fy = torch.from_numpy((y - y0).astype(np.float32))
    return index, fx, fy


def pad_uint8(erp: torch.Tensor) -> torch.Tensor:
    """`(H, W, 3)` uint8 -> `(H + 2, W + 2, 3)`, padded like `processing_panovlm.equirect.pad_equirect`."""
    height, width, channels = erp.shape
    padded = erp.new_empty(height + 2, width + 2, channels)
    padded[1:-1, 1:-1] = erp
    padded[0, 1:-1] = erp[0].roll(width // 2, 0)
    padded[-1, 1:-1] = erp[-1].roll(width // 2, 0)
    padded[:, 0] = padded[:, -2]
    padded[:, -1] = padded[:, 1]
    return padded


def sample_views_uint8(erp: torch.Tensor, layout: ViewLayout, size: int) -> torch.Tensor:
    """`(H, W, 3)` uint8 panorama -> `(V, 3, S, S)` float32 views on the 0..255 scale, in layout order."""
    height, width, _ = erp.shape
    outputs: list[torch.Tensor | None] = [None] * layout.num_views
    grid_indices = [i for i, view in enumerate(layout.views) if view.kind in ("perspective", "equirect")]
    for i, view in enumerate(layout.views):
        if view.kind == "letterbox":
            chw = erp.permute(2, 0, 1)[None]  # channels-last uint8: the fast antialiased path
            content = F.interpolate(chw, size=(size // 2, size), mode="bilinear", antialias=True, align_corners=False)
            top = (size - size // 2) // 2
            outputs[i] = F.pad(content.float(), (0, 0, top, size - size // 2 - top), value=0.0)[0]
        elif i not in grid_indices:
            raise NotImplementedError(f"prototype does not handle {view}")
    if grid_indices:
        views = tuple(layout.views[i] for i in grid_indices)
        index, fx, fy = _gather_plan(views, height, width, size)
        flat = pad_uint8(erp).reshape(-1)
        padded_width = width + 2
        channel = torch.arange(3).view(3, 1)
        gx, gy = 1 - fx, 1 - fy
        weights = (gx * gy, fx * gy, gx * fy, fx * fy)
        accumulated = None
        for offset, weight in zip((0, 1, padded_width, padded_width + 1), weights):
            positions = ((index + offset).mul_(3).view(1, -1) + channel).view(-1)
            samples = flat.index_select(0, positions).view(3, -1)  # (3, N) uint8, channel-planar
            if accumulated is None:
                accumulated = samples * weight
            else:
                accumulated.addcmul_(samples, weight)
        sampled = accumulated.view(3, len(views), size, size).transpose(0, 1)
        for position, i in enumerate(grid_indices):
            outputs[i] = sampled[position]
    return torch.stack(outputs)


def preprocess_one_pass(erp_hwc_uint8: np.ndarray, layout: ViewLayout, size: int, mean=(0.5,) * 3, std=(0.5,) * 3):
    """The library's path with the float conversion fused into the padding; `(1, V, 3, S, S)`."""
    from processing_panovlm.equirect import _layout_grid, _letterbox

    erp = torch.from_numpy(erp_hwc_uint8).permute(2, 0, 1)  # (3, H, W) uint8 view, no copy
    _, height, width = erp.shape
    padded = torch.empty(1, 3, height + 2, width + 2)
    padded[0, :, 1:-1, 1:-1] = erp  # the only full-image pass: uint8 -> float32, HWC -> CHW
    padded[0, :, 0, 1:-1] = erp[:, 0].roll(width // 2, -1)
    padded[0, :, -1, 1:-1] = erp[:, -1].roll(width // 2, -1)
    padded[..., 0] = padded[..., -2]
    padded[..., -1] = padded[..., 1]
    outputs: list[torch.Tensor | None] = [None] * layout.num_views
    grid_indices = [i for i, view in enumerate(layout.views) if view.kind in ("perspective", "equirect")]
    for i, view in enumerate(layout.views):
        if view.kind == "letterbox":
            outputs[i] = _letterbox(padded[..., 1:-1, 1:-1], size)[0]
        elif i not in grid_indices:
            raise NotImplementedError(f"prototype does not handle {view}")
    if grid_indices:
        views = tuple(layout.views[i] for i in grid_indices)
        grid = _layout_grid(views, height, width, size, padded.device, padded.dtype)
        sampled = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=True)
        sampled = sampled.reshape(3, len(views), size, size).transpose(0, 1)
        for position, i in enumerate(grid_indices):
            outputs[i] = sampled[position]
    return _normalise(torch.stack(outputs), mean, std)


def _normalise(views: torch.Tensor, mean, std) -> torch.Tensor:
    scale = torch.tensor([1 / 255 / s for s in std], dtype=torch.float32).view(3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).view(3, 1, 1)
    return torch.addcmul(shift, views, scale)[None]


def preprocess(erp_hwc_uint8: np.ndarray, layout: ViewLayout, size: int, mean=(0.5,) * 3, std=(0.5,) * 3):
    """What `PanoVLMImageProcessor(...)(erp)["pixel_values"]` returns for a uint8 HWC array: `(1, V, 3, S, S)`."""
    return _normalise(sample_views_uint8(torch.from_numpy(erp_hwc_uint8), layout, size), mean, std)
