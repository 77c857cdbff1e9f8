"""Batched, seam-correct sampling of equirectangular panoramas (ERP) into the views of a `ViewLayout`.

Geometry follows `configuration_panovlm.view_layout` and py360convert (>= 1.0.3):

* ERP pixel centres: longitude `lon` (radians, 0 at the centre column, positive to the right) and latitude `lat`
  (positive up) sit at column `(lon / 2pi + 0.5) * W - 0.5` and row `(0.5 - lat / pi) * H - 0.5`.
* `perspective` views are pinhole projections identical to `py360convert.e2p(erp, (hfov, vfov), u_deg=yaw,
  v_deg=pitch, out_hw=(S, S))`: the tangent-plane grid puts the centres of the edge pixels on the nominal field of
  view (`linspace(-tan(fov / 2), tan(fov / 2), S)`), is tilted by the pitch and then turned by the yaw.
* `equirect` views are rectangles of the ERP itself, `hfov` x `vfov` degrees centred at (yaw, pitch). Their output
  pixels tile the rectangle (pixel `j` of `S` sits at `yaw + hfov * ((j + 0.5) / S - 0.5)`), the convention of
  `ViewLayout.token_directions`, so an ERP crop covers exactly `hfov / 360 * W` source columns.
* `letterbox` (the global view of `anyres_e2p`): the whole ERP scaled to `S` x `S // 2`, centred vertically between
  black (0) bars.

Point-sampled views (perspective, ERP crops) are bilinear samples of the ERP padded by one pixel (`pad_equirect`):
the columns wrap around, and the rows above and below are the first and last row turned by 180 degrees (the
continuation across the pole), so samples next to the seam or a pole blend real neighbours instead of clamping.
The padded image is never built: a sampling plan, computed once per (views, ERP size, view size, device, dtype) in
float64 and cached, holds the source pixel of each output pixel's four neighbours (found by padding an image of
pixel indices) and their bilinear weights. Each view is then four gathers per channel straight from the input's
memory and a weighted sum, so a uint8 panorama (e.g. a channels-last numpy array) is never converted to float as a
whole; only the gathered values are. On CPU the views are spread over `torch.get_num_threads()` Python threads.

The whole-panorama views (`letterbox`, `resize`'s 360 x 180 degree view) are antialiased bilinear resizes. A uint8
ERP goes through torch's uint8 kernel (the one torchvision uses for 8-bit images, 3-5x faster than any float path
here): its output is rounded to whole grey levels, within 1 of the exact resize, as PIL's is. Float ERPs, and the
`max_erp_width` pre-shrink (area filter) of any ERP, are separable resizes with torch's weights whose vertical
pass converts the ERP one block of rows at a time and multiplies it by the banded filter matrix; the horizontal
pass runs on the few rows left.

Apart from those whole-panorama views, integer images go through the same float arithmetic as their float
conversion, so the views of a uint8 ERP equal those of `erp.float()` to float rounding.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from configuration_panovlm.view_layout import ViewLayout, ViewSpec


logger = logging.getLogger(__name__)

# Each entry holds one layout's sampling plan: 4 neighbours x (int32 index + float32 weight) per output pixel,
# e.g. 38 MB for 8 views of 384^2.
GRID_CACHE_SIZE = 4
# Rows of the ERP converted and multiplied at once by the vertical resize pass (1.5 MB of float32 at width 4096).
RESIZE_BLOCK_ROWS = 32


def sample_views(
    erp: torch.Tensor,
    layout: ViewLayout,
    size: int,
    max_erp_width: int | None = None,
    render_size: int | None = None,
) -> torch.Tensor:
    """Sample the views of `layout` from one panorama or a batch of same-size panoramas.

    Args:
        erp: `(C, H, W)` or `(B, C, H, W)` equirectangular image(s), in any memory layout (a channels-last view of
            an `(H, W, C)` array is read in place). float32 and float64 images keep their dtype; uint8 images are
            sampled without converting them as a whole and give float32 (the values of `erp.float()`, no
            rescaling); other dtypes (float16, bfloat16, other integers) are converted to float32 first. Any
            device; the result is differentiable w.r.t. a floating point `erp`.
        layout: the views to take (`build_view_layout(...)`), in output order.
        size: side `S` of the square output views.
        max_erp_width: if set and the ERP is wider, it is first shrunk to this width with an area filter (aspect
            kept) before the perspective and ERP-crop views are sampled, which avoids aliasing when the views are
            much smaller than the panorama (it reads every pixel, so it costs time). `None` samples the original
            pixels (exact agreement with py360convert).
        render_size: if set (>= `size`), the perspective views and ERP crops are sampled at `render_size` and then
            shrunk to `size` with an antialiased bilinear filter: supersampling, as PanoLLaVA's anyres_e2p rendered
            its tiles at 672 pixels before its tower's processor resized them. `None` samples at `size` directly.

    Returns:
        `(B, V, C, S, S)` views in the order of `layout.views` (`B = 1` for a single image).

    The whole-panorama views (`resize`'s `equirect` view covering 360 x 180 degrees at yaw 0, and `letterbox`)
    shrink the ERP by a large factor, so they use an antialiased bilinear resize instead of point sampling (for a
    uint8 ERP rounded to whole grey levels, see the module docstring).
    """
    if erp.dim() == 3:
        erp = erp.unsqueeze(0)
    if erp.dim() != 4:
        raise ValueError(f"erp must be (C, H, W) or (B, C, H, W), got shape {tuple(erp.shape)}")
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    if max_erp_width is not None and max_erp_width < 4:
        raise ValueError(f"max_erp_width must be >= 4 or None, got {max_erp_width}")
    if render_size is not None and render_size < size:
        raise ValueError(f"render_size must be >= size ({size}) or None, got {render_size}")
    if erp.dtype not in (torch.uint8, torch.float32, torch.float64):
        # Half-precision weights would be too coarse; the other integer types have no fast path of their own.
        erp = erp.float()

    batch, channels, height, width = erp.shape
    dtype = torch.float32 if erp.dtype == torch.uint8 else erp.dtype
    out = torch.empty(batch, layout.num_views, channels, size, size, dtype=dtype, device=erp.device)
    point_sampled = []
    for index, view in enumerate(layout.views):
        if view.kind == "letterbox":
            _check_whole_panorama(view)
            out[:, index] = _letterbox(erp, size)
        elif view.kind == "equirect" and _is_whole_panorama(view):
            out[:, index] = _shrink_whole(erp, (size, size))
        elif view.kind in ("perspective", "equirect"):
            point_sampled.append(index)
        else:
            raise ValueError(f"unknown view kind {view.kind!r} in {view}")

    if point_sampled:
        source = erp
        if max_erp_width is not None and width > max_erp_width:
            source = _resize(erp, (max(2, round(height * max_erp_width / width)), max_erp_width), "area")
        views = tuple(layout.views[index] for index in point_sampled)
        if render_size is None or render_size == size:
            _sample_into(out, source, views, point_sampled)
        else:
            rendered = torch.empty(batch, len(views), channels, render_size, render_size, dtype=dtype, device=erp.device)
            _sample_into(rendered, source, views, list(range(len(views))))
            shrunk = F.interpolate(rendered.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out[:, point_sampled] = shrunk.view(batch, len(views), channels, size, size)
    return out


def pad_equirect(erp: torch.Tensor) -> torch.Tensor:
    """Pad `(B, C, H, W)` ERPs to `(B, C, H + 2, W + 2)` the way py360convert >= 1.0.3 does.

    The new top and bottom rows are the first and last row rolled by `W // 2` columns (what lies just beyond the
    pole), then the left and right columns wrap around the +/-180 degree seam (corners included).
    """
    batch, channels, height, width = erp.shape
    padded = erp.new_empty(batch, channels, height + 2, width + 2)
    padded[..., 1:-1, 1:-1] = erp
    padded[..., 0, 1:-1] = erp[..., 0, :].roll(width // 2, dims=-1)
    padded[..., -1, 1:-1] = erp[..., -1, :].roll(width // 2, dims=-1)
    padded[..., 0] = padded[..., -2]
    padded[..., -1] = padded[..., 1]
    return padded


def view_lonlat(view: ViewSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude in radians (float64, each `(S, S)`, row 0 at the top) that a view's pixels see."""
    if view.kind == "perspective":
        return _perspective_lonlat(view, size)
    if view.kind == "equirect":
        return _equirect_lonlat(view, size)
    raise ValueError(f"view kind {view.kind!r} is not point-sampled")


def grid_cache_info() -> tuple[int, int, int, int]:
    """`(hits, misses, maxsize, currsize)` of the sampling-plan cache, as `functools.lru_cache` reports them."""
    return _sampling_plan.cache_info()


def clear_grid_cache() -> None:
    """Drop all cached sampling plans and resize weights (e.g. to free device memory)."""
    _sampling_plan.cache_clear()
    _vertical_filter_blocks.cache_clear()


def _is_whole_panorama(view: ViewSpec) -> bool:
    return view.hfov_deg == 360.0 and view.vfov_deg == 180.0 and view.yaw_deg == 0.0 and view.pitch_deg == 0.0


def _check_whole_panorama(view: ViewSpec) -> None:
    if not _is_whole_panorama(view):
        raise ValueError(f"a letterbox view shows the whole panorama (yaw 0, pitch 0, 360 x 180 degrees), got {view}")


def _letterbox(erp: torch.Tensor, size: int) -> torch.Tensor:
    content_height = size // 2
    top = (size - content_height) // 2
    content = _shrink_whole(erp, (content_height, size))
    return F.pad(content, (0, 0, top, size - content_height - top), value=0.0)


def _shrink_whole(erp: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, C, h, w)` antialiased bilinear resize of whole ERPs, in the compute dtype."""
    if erp.dtype == torch.uint8:
        # Rounded to whole grey levels (within 1 of the exact resize); any memory layout gives the same values.
        return F.interpolate(erp, size=size, mode="bilinear", align_corners=False, antialias=True).float()
    return _resize(erp, size, "bilinear")


def _perspective_lonlat(view: ViewSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    half_width = math.tan(math.radians(view.hfov_deg) / 2)
    half_height = math.tan(math.radians(view.vfov_deg) / 2)
    # Tangent plane at distance 1 along +z, x to the right, y up; edge pixel centres on the nominal fov.
    x, y = np.meshgrid(np.linspace(-half_width, half_width, size), np.linspace(half_height, -half_height, size))
    z = np.ones_like(x)

    # Tilt about the x axis first (positive pitch raises the optical axis), then turn about the vertical axis
    # (positive yaw turns towards +x, i.e. right): the order py360convert applies.
    pitch, yaw = math.radians(view.pitch_deg), math.radians(view.yaw_deg)
    y, z = y * math.cos(pitch) + z * math.sin(pitch), z * math.cos(pitch) - y * math.sin(pitch)
    x, z = x * math.cos(yaw) + z * math.sin(yaw), z * math.cos(yaw) - x * math.sin(yaw)

    lon = np.arctan2(x, z)
    lat = np.arctan2(y, np.hypot(x, z))
    return lon, lat


def _equirect_lonlat(view: ViewSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    fraction = (np.arange(size) + 0.5) / size - 0.5
    lon = math.radians(view.yaw_deg) + math.radians(view.hfov_deg) * fraction[None, :]
    lat = math.radians(view.pitch_deg) - math.radians(view.vfov_deg) * fraction[:, None]
    lon, lat = np.broadcast_arrays(lon, lat)
    # A crop reaching past a pole continues down the meridian on the other side of the sphere.
    beyond_pole = np.abs(lat) > math.pi / 2
    lat = np.where(beyond_pole, np.sign(lat) * math.pi - lat, lat)
    lon = np.where(beyond_pole, lon + math.pi, lon)
    # The padding covers one pixel beyond the seam; crops spanning it need longitudes brought into [-pi, pi).
    lon = np.remainder(lon + math.pi, 2 * math.pi) - math.pi
    return lon, lat


def _sample_into(out: torch.Tensor, erp: torch.Tensor, views: tuple[ViewSpec, ...], positions: list[int]) -> None:
    """Write the bilinear samples of `views` from `(B, C, H, W)` `erp` into `out[:, positions]` (`(B, V, C, S, S)`)."""
    batch, channels, height, width = erp.shape
    size = out.shape[-1]
    index, weights = _sampling_plan(views, height, width, size, erp.device, out.dtype)
    # (B, C, H * W) is a view for channels-first and channels-last memory alike; 1-D gathers along it are fast.
    planes = erp.reshape(batch, channels, height * width)

    def sample_view(job: tuple[int, int, int]) -> None:
        # One view, all its channels in a row: the gathered values, the weights and the part of the ERP the view
        # sees stay in cache.
        sample, view_index, position = job
        for channel in range(channels):
            gathered = planes[sample, channel].index_select(0, index[view_index].view(-1))
            neighbours = gathered.view(4, -1).to(out.dtype)
            target = out[sample, position, channel].view(-1)
            target.copy_(neighbours[0]).mul_(weights[view_index, 0])
            for corner in range(1, 4):
                target.addcmul_(neighbours[corner], weights[view_index, corner])

    jobs = [(sample, view_index, position) for sample in range(batch) for view_index, position in enumerate(positions)]
    threads = torch.get_num_threads()
    # The views go to `torch.get_num_threads()` Python threads (torch releases the GIL in its kernels): the gathers
    # have no multi-threaded CPU kernel, and a view's elementwise ops are too small for intra-op threads to pay off.
    # Views write disjoint slices of `out`; a differentiable call stays on this thread (autograd records in-place
    # writes to one tensor, which must not race).
    if threads > 1 and len(jobs) > 1 and erp.device.type == "cpu" and not (erp.requires_grad and torch.is_grad_enabled()):
        list(_thread_pool(threads).map(sample_view, jobs))
    else:
        for job in jobs:
            sample_view(job)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools() -> None:
    # A forked child (e.g. a DataLoader worker) has the parent's pools but none of their threads, and maybe a lock
    # held by a thread that does not exist there.
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of `workers` threads, one per torch thread count in use; never shut down, as another thread may
    be using it."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="panovlm-views")
        return _POOLS[workers]


@lru_cache(maxsize=GRID_CACHE_SIZE)
def _sampling_plan(
    views: tuple[ViewSpec, ...],
    height: int,
    width: int,
    size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the bilinear neighbours of each output pixel are in the unpadded ERP, and their weights.

    Returns `(V, 4, S * S)` pixel indices (`y * W + x`; int32 unless the ERP has 2^31 pixels or more) and
    `(V, 4, S * S)` weights in `dtype`; the 4 neighbours are top-left, top-right, bottom-left, bottom-right.
    """
    logger.debug("building sampling plan for %d views, ERP %dx%d, view size %d", len(views), width, height, size)
    index_dtype = torch.int32 if height * width < 2**31 else torch.int64
    pixels = torch.arange(height * width, dtype=index_dtype).view(1, 1, height, width)
    source = pad_equirect(pixels)[0, 0].numpy()  # (H + 2, W + 2): the source pixel each padded pixel repeats
    lonlat = [view_lonlat(view, size) for view in views]
    lon = np.stack([lon.ravel() for lon, _ in lonlat])
    lat = np.stack([lat.ravel() for _, lat in lonlat])
    # Pixel-centre coordinates in the padded ERP, clamped to it (grid_sample's padding_mode="border").
    x = np.clip((lon / (2 * math.pi) + 0.5) * width - 0.5 + 1, 0, width + 1)
    y = np.clip((0.5 - lat / math.pi) * height - 0.5 + 1, 0, height + 1)
    # The top-left neighbour stays one pixel inside the padded ERP, so a sample on its last column or row has
    # weight 1 on the bottom-right neighbour instead of reading past the edge.
    x0 = np.minimum(np.floor(x), width).astype(np.int64)
    y0 = np.minimum(np.floor(y), height).astype(np.int64)
    fx, fy = x - x0, y - y0
    index = np.stack([source[y0, x0], source[y0, x0 + 1], source[y0 + 1, x0], source[y0 + 1, x0 + 1]], axis=1)
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    return torch.from_numpy(index).to(device), torch.from_numpy(weights).to(device=device, dtype=dtype)


def _resize(erp: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, C, h, w)` in the compute dtype, as `F.interpolate` resizes with `mode`.

    `mode="bilinear"` is the antialiased bilinear (triangle) filter, `"area"` the area average. The vertical pass
    runs here, `RESIZE_BLOCK_ROWS` input rows at a time, so an integer ERP is only ever converted one block at a
    time; `F.interpolate` then makes the horizontal pass on the `h` rows left (the height is unchanged there, so it
    is an exact identity vertically).
    """
    batch, channels, height, width = erp.shape
    out_height, out_width = size
    dtype = torch.float32 if erp.dtype == torch.uint8 else erp.dtype
    blocks = _vertical_filter_blocks(height, out_height, mode, erp.device, dtype)
    # Blocks of rows of W * C values: a view of channels-last images, a small copy of channels-first ones.
    pixels = erp.permute(0, 2, 3, 1)
    shrunk = torch.zeros(batch, out_height, width * channels, dtype=dtype, device=erp.device)
    for sample in range(batch):
        for start, stop, first, last, weights in blocks:
            block = pixels[sample, start:stop].reshape(stop - start, width * channels).to(dtype)
            shrunk[sample, first:last].addmm_(weights, block)
    shrunk = shrunk.view(batch, out_height, width, channels).permute(0, 3, 1, 2)
    if mode == "area":
        return F.interpolate(shrunk, size=size, mode="area")
    return F.interpolate(shrunk, size=size, mode="bilinear", align_corners=False, antialias=True)


@lru_cache(maxsize=16)
def _vertical_filter_blocks(
    in_size: int, out_size: int, mode: str, device: torch.device, dtype: torch.dtype
) -> tuple[tuple[int, int, int, int, torch.Tensor], ...]:
    """The filter matrix of `_filter_matrix` cut into blocks of input rows.

    Each block is `(start, stop, first, last, weights)`: input rows `start:stop` contribute to output rows
    `first:last` with the `(last - first, stop - start)` weights.
    """
    matrix = _filter_matrix(in_size, out_size, mode)
    blocks = []
    for start in range(0, in_size, RESIZE_BLOCK_ROWS):
        stop = min(start + RESIZE_BLOCK_ROWS, in_size)
        touched = np.flatnonzero(matrix[:, start:stop].any(axis=1))
        if touched.size:
            first, last = int(touched[0]), int(touched[-1]) + 1
            weights = torch.from_numpy(matrix[first:last, start:stop]).to(device=device, dtype=dtype)
            blocks.append((start, stop, first, last, weights))
    return tuple(blocks)


def _filter_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """`(out_size, in_size)` float64 weights of torch's resize along one axis (align_corners=False).

    `"bilinear"`: the antialiased triangle filter (`F.interpolate(..., antialias=True)`), stretched by the scale
    when shrinking, its taps normalised to sum to 1. `"area"`: `adaptive_avg_pool`'s mean over the input cells
    that output cell `i` overlaps, widened to whole cells (`floor(i * in / out)` to `ceil((i + 1) * in / out)`).
    """
    matrix = np.zeros((out_size, in_size))
    scale = in_size / out_size
    support = max(scale, 1.0)
    for row in range(out_size):
        if mode == "area":
            start, stop = row * in_size // out_size, -(-(row + 1) * in_size // out_size)
            matrix[row, start:stop] = 1.0 / (stop - start)
        elif mode == "bilinear":
            centre = scale * (row + 0.5)
            start, stop = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
            taps = np.maximum(0.0, 1.0 - np.abs((np.arange(start, stop) - centre + 0.5) / support))
            matrix[row, start:stop] = taps / taps.sum()
        else:
            raise ValueError(f"unknown resize mode {mode!r}")
    return matrix
