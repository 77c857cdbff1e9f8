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

Before bilinear sampling the ERP is padded by one pixel: the columns wrap around, and the rows above and below are
the first and last row turned by 180 degrees (the continuation across the pole), so samples next to the seam or a
pole blend real neighbours instead of clamping. All grid-sampled views of a layout share one `grid_sample` call; the
grids are built once in float64 numpy (single-threaded elementwise maths, which torch's intra-op threads only slow
down on small arrays) and cached per (layout, ERP size, view size, device, dtype).
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from configuration_panovlm.view_layout import ViewLayout, ViewSpec


logger = logging.getLogger(__name__)

# Each entry holds one layout's grids, e.g. 8 views x 384^2 x 2 floats = 9.4 MB in float32.
GRID_CACHE_SIZE = 8


def sample_views(
    erp: torch.Tensor,
    layout: ViewLayout,
    size: int,
    max_erp_width: int | None = None,
) -> torch.Tensor:
    """Sample the views of `layout` from one panorama or a batch of same-size panoramas.

    Args:
        erp: `(C, H, W)` or `(B, C, H, W)` equirectangular image(s). Floating point images keep their dtype
            (float16/bfloat16 are computed in float32); integer images (e.g. uint8) are converted to float32
            without rescaling. Any device; the result is differentiable w.r.t. `erp`.
        layout: the views to take (`build_view_layout(...)`), in output order.
        size: side `S` of the square output views.
        max_erp_width: if set and the ERP is wider, it is first shrunk to this width with an area filter (aspect
            kept) before the perspective and ERP-crop views are sampled, which avoids aliasing and saves time on
            very large panoramas. `None` samples the original pixels (exact agreement with py360convert).

    Returns:
        `(B, V, C, S, S)` views in the order of `layout.views` (`B = 1` for a single image).

    The whole-panorama views (`resize`'s `equirect` view covering 360 x 180 degrees at yaw 0, and `letterbox`)
    shrink the ERP by a large factor, so they use an antialiased bilinear resize instead of point sampling.
    """
    if erp.dim() == 3:
        erp = erp.unsqueeze(0)
    if erp.dim() != 4:
        raise ValueError(f"erp must be (C, H, W) or (B, C, H, W), got shape {tuple(erp.shape)}")
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    if max_erp_width is not None and max_erp_width < 4:
        raise ValueError(f"max_erp_width must be >= 4 or None, got {max_erp_width}")
    if erp.dtype not in (torch.float32, torch.float64):
        # Sampling grids need float32 or better: half-precision grids misplace samples by pixels on wide ERPs.
        erp = erp.float()

    outputs: list[torch.Tensor | None] = [None] * layout.num_views
    grid_indices = []
    for index, view in enumerate(layout.views):
        if view.kind == "letterbox":
            _check_whole_panorama(view)
            outputs[index] = _letterbox(erp, size)
        elif view.kind == "equirect" and _is_whole_panorama(view):
            outputs[index] = _resize(erp, (size, size))
        elif view.kind in ("perspective", "equirect"):
            grid_indices.append(index)
        else:
            raise ValueError(f"unknown view kind {view.kind!r} in {view}")

    if grid_indices:
        source = erp
        if max_erp_width is not None and erp.shape[-1] > max_erp_width:
            height = max(2, round(erp.shape[-2] * max_erp_width / erp.shape[-1]))
            source = F.interpolate(erp, size=(height, max_erp_width), mode="area")
        grid_views = tuple(layout.views[index] for index in grid_indices)
        sampled = _grid_sample_views(source, grid_views, size)
        for position, index in enumerate(grid_indices):
            outputs[index] = sampled[:, position]
    return torch.stack(outputs, dim=1)


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
    """`(hits, misses, maxsize, currsize)` of the sampling-grid cache, as `functools.lru_cache` reports them."""
    return _layout_grid.cache_info()


def clear_grid_cache() -> None:
    """Drop all cached sampling grids (e.g. to free device memory)."""
    _layout_grid.cache_clear()


def _is_whole_panorama(view: ViewSpec) -> bool:
    return view.hfov_deg == 360.0 and view.vfov_deg == 180.0 and view.yaw_deg == 0.0 and view.pitch_deg == 0.0


def _check_whole_panorama(view: ViewSpec) -> None:
    if not _is_whole_panorama(view):
        raise ValueError(f"a letterbox view shows the whole panorama (yaw 0, pitch 0, 360 x 180 degrees), got {view}")


def _resize(erp: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(erp, size=size, mode="bilinear", align_corners=False, antialias=True)


def _letterbox(erp: torch.Tensor, size: int) -> torch.Tensor:
    content_height = size // 2
    top = (size - content_height) // 2
    content = _resize(erp, (content_height, size))
    return F.pad(content, (0, 0, top, size - content_height - top), value=0.0)


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


@lru_cache(maxsize=GRID_CACHE_SIZE)
def _layout_grid(
    views: tuple[ViewSpec, ...],
    height: int,
    width: int,
    size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """`(1, V * S, S, 2)` `grid_sample` coordinates (align_corners=True) of `views` into the padded ERP."""
    logger.debug("building sampling grids for %d views, ERP %dx%d, view size %d", len(views), width, height, size)
    grids = []
    for view in views:
        lon, lat = view_lonlat(view, size)
        # Pixel-centre coordinates in the unpadded ERP, shifted by the one-pixel padding.
        column = (lon / (2 * math.pi) + 0.5) * width - 0.5 + 1
        row = (0.5 - lat / math.pi) * height - 0.5 + 1
        # align_corners=True maps -1 / +1 to the centres of the first / last padded pixel.
        grids.append(np.stack((column * 2 / (width + 1) - 1, row * 2 / (height + 1) - 1), axis=-1))
    return torch.from_numpy(np.concatenate(grids)[None]).to(device=device, dtype=dtype)


def _grid_sample_views(erp: torch.Tensor, views: tuple[ViewSpec, ...], size: int) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, len(views), C, S, S)` with one bilinear `grid_sample` call."""
    batch, channels, height, width = erp.shape
    grid = _layout_grid(views, height, width, size, erp.device, erp.dtype)
    padded = pad_equirect(erp)
    # Channels are sampled independently, so folding the batch into them lets every panorama share one grid.
    sampled = F.grid_sample(
        padded.reshape(1, batch * channels, height + 2, width + 2),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return sampled.reshape(batch, channels, len(views), size, size).transpose(1, 2)
