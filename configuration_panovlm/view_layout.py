"""Panorama view geometry: the views a crop strategy takes, where every view token looks, and how many image
tokens one panorama becomes.

This module is the single source of truth for that geometry. The image processor samples exactly these views,
the model derives its panoramic positional encoding and its stitching from them, and `num_image_tokens` is the
only place the per-panorama token count is computed.

Conventions (the same as py360convert's `e2p(u_deg=yaw, v_deg=pitch)`):

* yaw 0 looks at the centre column of the equirectangular image (ERP); **positive yaw turns right**, towards
  larger column indices; yaw is reported in (-180, 180].
* pitch 0 is the horizon; **positive pitch looks up**.
* The horizontal views of a layout (the "strip") are ordered left to right: view `v + 1` is `step` degrees to
  the right of view `v`, and the last view's right neighbour is the first one (the circle closes).

Token directions use the equiangular column model: the `c`-th of `w` token columns of a view centred at yaw `psi`
with horizontal field of view `F` is given yaw `psi + F * ((c + 0.5) / w - 0.5)` (rows likewise with pitch). This
is exact for ERP crops and within a few degrees for perspective views; it makes the columns that two overlapping
views share (the ones `drop_overlap` stitching removes) get exactly the same direction whenever the overlap is a
whole number of token columns, e.g. 8 of 16 columns for the default 90 degree views with 50 % overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np


CROP_STRATEGIES = ("resize", "e2p", "anyres_e2p", "cubemap", "sliding_window")
STITCHING_MODES = ("concat", "drop_overlap")

CropStrategy = Literal["resize", "e2p", "anyres_e2p", "cubemap", "sliding_window"]
StitchingMode = Literal["concat", "drop_overlap"]

# Cube faces front, right, back, left: a fixed 90 degree geometry whose faces touch but do not overlap.
CUBEMAP_FACE_YAWS = (0.0, 90.0, 180.0, -90.0)
CUBEMAP_FOV_DEG = 90.0


def normalize_yaw(yaw_deg: float) -> float:
    """Map an angle in degrees to (-180, 180]."""
    yaw = math.fmod(yaw_deg, 360.0)
    if yaw <= -180.0:
        yaw += 360.0
    elif yaw > 180.0:
        yaw -= 360.0
    return 0.0 if yaw == 0.0 else yaw  # no -0.0


@dataclass(frozen=True)
class ViewSpec:
    """One view of a panorama.

    kind:
        `"perspective"`: a pinhole projection (what py360convert's `e2p` computes) with square pixels;
        `"equirect"`: a rectangle of the ERP itself, resampled to the view size (ERP crop, whole-panorama resize);
        `"letterbox"`: the whole ERP scaled into the top-to-bottom middle half of a square view, black bars above
        and below (the global view of `anyres_e2p`).
    """

    kind: Literal["perspective", "equirect", "letterbox"]
    yaw_deg: float
    pitch_deg: float
    hfov_deg: float
    vfov_deg: float


@dataclass(frozen=True)
class ViewLayout:
    """The views of one panorama, in the order the model sees them.

    `views` holds the global view first (only `anyres_e2p` has one), then the strip from left to right.
    `overlap` is the overlap actually realised between strip neighbours as a fraction of a view's width; the
    circle is closed with equal steps, so it can exceed the requested `overlap_ratio` (e.g. 0.25 requested with
    90 degree views gives 6 views 60 degrees apart, i.e. 1/3 overlap).
    """

    crop_strategy: str
    views: tuple[ViewSpec, ...]
    has_global_view: bool
    overlap: float

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def strip_views(self) -> tuple[ViewSpec, ...]:
        return self.views[1:] if self.has_global_view else self.views

    def overlap_columns(self, grid_width: int) -> int:
        """Token columns a strip view shares with its left neighbour on a grid `grid_width` columns wide."""
        if len(self.strip_views) < 2:
            return 0
        return int(round(grid_width * self.overlap))

    def num_image_tokens(self, token_grid: tuple[int, int], stitching_mode: str) -> int:
        """Image tokens per panorama for views of `token_grid = (rows, columns)` tokens each.

        `concat` keeps every token of every view. `drop_overlap` keeps all columns of the first strip view and
        drops, from every later strip view, the columns it shares with its left neighbour. The global view is
        never stitched: all of its tokens come first.
        """
        if stitching_mode not in STITCHING_MODES:
            raise ValueError(f"stitching_mode must be one of {STITCHING_MODES}, got {stitching_mode!r}")
        rows, cols = token_grid
        drop = self.overlap_columns(cols) if stitching_mode == "drop_overlap" else 0
        if drop >= cols:
            raise ValueError(
                f"drop_overlap stitching would drop all {cols} token columns of every view but the first "
                f"(realised overlap {self.overlap:.3f}); lower overlap_ratio or use stitching_mode='concat'"
            )
        num_strip = len(self.strip_views)
        strip_tokens = rows * (cols + (num_strip - 1) * (cols - drop))
        global_tokens = rows * cols if self.has_global_view else 0
        return global_tokens + strip_tokens

    def token_directions(self, token_grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Yaw and pitch in degrees of every view token, each of shape `(num_views, rows, columns)`.

        Yaw is not wrapped (the positional encoding is periodic in it); see the module docstring for the model.
        """
        rows, cols = token_grid
        col_frac = (np.arange(cols, dtype=np.float64) + 0.5) / cols - 0.5  # (-0.5, 0.5), left to right
        row_frac = 0.5 - (np.arange(rows, dtype=np.float64) + 0.5) / rows  # (0.5, -0.5), top to bottom
        yaws, pitches = [], []
        for view in self.views:
            yaw = view.yaw_deg + view.hfov_deg * col_frac
            if view.kind == "letterbox":
                # The ERP fills the middle half of the rows; bar rows are clamped to the poles.
                pitch = np.clip(2.0 * view.vfov_deg * row_frac, -90.0, 90.0)
            else:
                pitch = view.pitch_deg + view.vfov_deg * row_frac
            yaws.append(np.broadcast_to(yaw[None, :], (rows, cols)))
            pitches.append(np.broadcast_to(pitch[:, None], (rows, cols)))
        return np.stack(yaws), np.stack(pitches)


def _ring_yaws(fov_deg: float, overlap_ratio: float) -> tuple[list[float], float]:
    """Yaws of the fewest equally spaced views of width `fov_deg` that overlap by at least `overlap_ratio`."""
    step_wanted = fov_deg * (1.0 - overlap_ratio)
    num = max(1, math.ceil(360.0 / step_wanted - 1e-9))
    step = 360.0 / num
    return [normalize_yaw(k * step) for k in range(num)], 1.0 - step / fov_deg


@lru_cache(maxsize=64)
def build_view_layout(crop_strategy: str, fov_deg: float, overlap_ratio: float) -> ViewLayout:
    """The `ViewLayout` of a crop strategy. Raises `ValueError` naming the problem for impossible settings.

    * `resize`: the whole ERP squashed into one square view (fov and overlap unused).
    * `e2p`: `N = ceil(360 / (fov * (1 - overlap)))` perspective views around the horizon at yaw `k * 360 / N`,
      hfov = vfov = `fov_deg` (8 views 45 degrees apart for fov 90, overlap 0.5).
    * `anyres_e2p`: a letterboxed global view of the whole panorama, then the `e2p` views.
    * `cubemap`: the front, right, back and left cube faces (fov must be 90 and overlap 0: faces touch).
    * `sliding_window`: `N` (as `e2p`) ERP crops of `fov_deg` x `fov_deg` degrees on the horizon, wrapping at
      the +/-180 degree seam.
    """
    if crop_strategy not in CROP_STRATEGIES:
        raise ValueError(f"crop_strategy must be one of {CROP_STRATEGIES}, got {crop_strategy!r}")
    if not 0.0 <= overlap_ratio < 1.0:
        raise ValueError(f"overlap_ratio must be in [0, 1), got {overlap_ratio}")
    if crop_strategy == "resize":
        return ViewLayout(crop_strategy, (ViewSpec("equirect", 0.0, 0.0, 360.0, 180.0),), False, 0.0)
    if crop_strategy == "cubemap":
        if fov_deg != CUBEMAP_FOV_DEG or overlap_ratio != 0.0:
            raise ValueError(
                "crop_strategy='cubemap' takes the four 90 degree side faces of a cube, which touch without "
                f"overlapping: it needs fov_deg=90 and overlap_ratio=0.0, got fov_deg={fov_deg}, "
                f"overlap_ratio={overlap_ratio}"
            )
        views = tuple(ViewSpec("perspective", yaw, 0.0, 90.0, 90.0) for yaw in CUBEMAP_FACE_YAWS)
        return ViewLayout(crop_strategy, views, False, 0.0)

    max_fov = 180.0 if crop_strategy == "sliding_window" else 179.0
    if not 0.0 < fov_deg <= max_fov:
        raise ValueError(f"fov_deg must be in (0, {max_fov:g}] for crop_strategy={crop_strategy!r}, got {fov_deg}")
    yaws, overlap = _ring_yaws(fov_deg, overlap_ratio)
    kind = "equirect" if crop_strategy == "sliding_window" else "perspective"
    strip = tuple(ViewSpec(kind, yaw, 0.0, fov_deg, fov_deg) for yaw in yaws)
    if crop_strategy == "anyres_e2p":
        return ViewLayout(crop_strategy, (ViewSpec("letterbox", 0.0, 0.0, 360.0, 180.0), *strip), True, overlap)
    return ViewLayout(crop_strategy, strip, False, overlap)


def infer_token_grid(num_tokens: int) -> tuple[int, int]:
    """(rows, columns) of a token sequence laid out as a grid: square when possible, else the most square
    factorisation with rows <= columns (64 -> (8, 8), 32 -> (4, 8), a prime p -> (1, p))."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    rows = math.isqrt(num_tokens)
    while num_tokens % rows:
        rows -= 1
    return rows, num_tokens // rows
