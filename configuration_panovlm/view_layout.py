"""Panorama view geometry: the views a crop strategy takes, where every view token looks, how the views are
stitched and paired, and how many image tokens one panorama becomes.

This module is the single source of truth for that geometry. The image processor samples exactly these views,
the model derives its panoramic positional encoding and its stitching from them, the vision stage its overlap
pairs, and `num_image_tokens` is the only place the per-panorama token count is computed.

Conventions (the same as py360convert's `e2p(u_deg=yaw, v_deg=pitch)`):

* yaw 0 looks at the centre column of the equirectangular image (ERP); **positive yaw turns right**, towards
  larger column indices; yaw is reported in (-180, 180].
* pitch 0 is the horizon; **positive pitch looks up**.
* The non-global views form a grid of **pitch rows** (one row for horizon-only layouts), ordered pitch-major from
  the top row down; within a row the views run left to right: view `j + 1` is one yaw step to the right of view
  `j`, and the last view's right neighbour is the first one (every row closes the circle).

Token directions use the equiangular model in each view's own frame: the token in column `c` of `w` and row `r`
of `h` of a view with fields of view `F_h x F_v` sits at the angular offsets `a = F_h * ((c + 0.5) / w - 0.5)`
to the right and `b = F_v * (0.5 - (r + 0.5) / h)` up of the view centre. ERP crops take these offsets directly
in yaw and pitch (exact). A perspective view on the horizon does too (within a few degrees of its pinhole rays),
which makes the columns two overlapping horizon views share (the ones `drop_overlap` stitching removes) get
exactly the same direction whenever the overlap is a whole number of token columns, e.g. 8 of 16 columns for
the default 90 degree views with 50 % overlap. A perspective view off the horizon turns its offsets with the
view (tilt by the pitch, then turn by the yaw, as py360convert does), so its tokens keep looking where its
pixels look, up to the poles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from .view_coverage import check_pitch_levels, uncovered_direction


CROP_STRATEGIES = ("resize", "e2p", "anyres_e2p", "cubemap", "sliding_window", "anyres", "anyres_max")
STITCHING_MODES = ("concat", "drop_overlap", "resample")

CropStrategy = Literal["resize", "e2p", "anyres_e2p", "cubemap", "sliding_window", "anyres", "anyres_max"]
StitchingMode = Literal["concat", "drop_overlap", "resample"]

# Strategies made of one ring of views around the horizon, which `pitch_levels_deg` repeats above and below it.
PITCHED_STRATEGIES = ("e2p", "anyres_e2p", "sliding_window")
# Strategies of perspective views, which `vertical_crop_ratio` can narrow vertically.
PERSPECTIVE_STRATEGIES = ("e2p", "anyres_e2p")
DEFAULT_PITCH_LEVELS_DEG = (0.0,)
# PanoLLaVA's anyres / anyres_max patch budget (its configs' `anyres_max_patches`).
DEFAULT_ANYRES_MAX_PATCHES = 9
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
        `"perspective"`: a pinhole projection (what py360convert's `e2p` computes); `hfov_deg` and `vfov_deg` span
        the square view, so unequal fields of view give non-square pixels;
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

    `views` holds the global view first (`anyres_e2p`, `anyres`, `anyres_max` have one), then the strip views:
    `num_rows` pitch rows of equally many views, pitch-major from the top row down, left to right within a row.
    `overlap` is the overlap actually realised between horizontal neighbours as a fraction of a view's width; the
    circle is closed with equal steps, so it can exceed the requested `overlap_ratio` (e.g. 0.25 requested with
    90 degree views gives 6 views 60 degrees apart, i.e. 1/3 overlap). `row_overlaps[i]` is the fraction of a
    view's height that the views of row `i` share with the views below them in row `i + 1` (0 when they only
    touch).
    """

    crop_strategy: str
    views: tuple[ViewSpec, ...]
    has_global_view: bool
    overlap: float
    num_rows: int = 1
    row_overlaps: tuple[float, ...] = ()

    def __post_init__(self):
        strip = len(self.views) - int(self.has_global_view)
        if self.num_rows < 1 or strip < self.num_rows or strip % self.num_rows:
            raise ValueError(f"{strip} strip views cannot form {self.num_rows} rows of equally many views")
        if len(self.row_overlaps) != self.num_rows - 1:
            raise ValueError(f"{self.num_rows} pitch rows need {self.num_rows - 1} row overlaps, got {self.row_overlaps}")

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def strip_views(self) -> tuple[ViewSpec, ...]:
        """Every view but the global one: the pitch rows one after the other."""
        return self.views[1:] if self.has_global_view else self.views

    @property
    def views_per_row(self) -> int:
        return len(self.strip_views) // self.num_rows

    @property
    def rows(self) -> tuple[tuple[ViewSpec, ...], ...]:
        """The strip views as `num_rows` tuples of `views_per_row` views, top row first."""
        strip, per_row = self.strip_views, self.views_per_row
        return tuple(strip[row * per_row : (row + 1) * per_row] for row in range(self.num_rows))

    @property
    def pitch_levels_deg(self) -> tuple[float, ...]:
        """Centre pitch of each row, top row first."""
        return tuple(row[0].pitch_deg for row in self.rows)

    def view_index(self, row: int, column: int) -> int:
        """Index in `views` of the view in pitch row `row`, position `column` from the left."""
        return int(self.has_global_view) + row * self.views_per_row + column

    # ---- neighbours ---------------------------------------------------------------------------------------------
    def overlap_columns(self, grid_width: int) -> int:
        """Token columns a strip view shares with its left neighbour on a grid `grid_width` columns wide."""
        if self.views_per_row < 2:
            return 0
        return int(round(grid_width * self.overlap))

    def overlap_rows(self, grid_height: int, row: int) -> int:
        """Token rows the views of pitch row `row` share with the views below them (row `row + 1`)."""
        return int(round(grid_height * self.row_overlaps[row]))

    def horizontal_neighbours(self) -> tuple[tuple[int, int], ...]:
        """`(left, right)` indices into `views` of every pair of horizontal neighbours, row by row, left to right;
        the last view of a row pairs with the first. Empty when rows hold a single view."""
        if self.views_per_row < 2:
            return ()
        per_row = self.views_per_row
        return tuple(
            (self.view_index(row, column), self.view_index(row, (column + 1) % per_row))
            for row in range(self.num_rows)
            for column in range(per_row)
        )

    def vertical_neighbours(self, row: int) -> tuple[tuple[int, int], ...]:
        """`(upper, lower)` indices into `views` of the views of pitch row `row` and those below them in row
        `row + 1` (same yaw), left to right."""
        return tuple((self.view_index(row, column), self.view_index(row + 1, column)) for column in range(self.views_per_row))

    # ---- stitching and token counts -------------------------------------------------------------------------
    def stitched_columns(self, grid_width: int, stitching_mode: str, resample_columns: int | None = None) -> int:
        """Token columns of one stitched pitch row, for views `grid_width` token columns wide.

        `concat` keeps every column of every view. `drop_overlap` keeps all columns of a row's first view and,
        from every later view, the columns it does not share with its left neighbour. `resample` resamples the
        row onto `resample_columns` columns (default: as many as `drop_overlap` keeps), averaging views where they
        overlap.
        """
        if stitching_mode not in STITCHING_MODES:
            raise ValueError(f"stitching_mode must be one of {STITCHING_MODES}, got {stitching_mode!r}")
        if resample_columns is not None and stitching_mode != "resample":
            raise ValueError(f"resample_columns applies to stitching_mode='resample' only, got {stitching_mode!r}")
        per_row = self.views_per_row
        if stitching_mode == "concat":
            return per_row * grid_width
        drop = self.overlap_columns(grid_width)
        if drop >= grid_width:
            raise ValueError(
                f"{stitching_mode} stitching would drop all {grid_width} token columns of every view but the first "
                f"(realised overlap {self.overlap:.3f}); lower overlap_ratio or use stitching_mode='concat'"
            )
        if resample_columns is not None:
            if isinstance(resample_columns, bool) or not isinstance(resample_columns, int) or resample_columns < 1:
                raise ValueError(f"resample_columns must be a positive integer or None, got {resample_columns!r}")
            return resample_columns
        return grid_width + (per_row - 1) * (grid_width - drop)

    def num_image_tokens(
        self, token_grid: tuple[int, int], stitching_mode: str, resample_columns: int | None = None
    ) -> int:
        """Image tokens per panorama for views of `token_grid = (rows, columns)` tokens each.

        The global view is never stitched: all of its tokens come first. Then each pitch row, top row first, is
        stitched into `stitched_columns(...)` token columns of `rows` token rows.
        """
        rows, cols = token_grid
        per_row = rows * self.stitched_columns(cols, stitching_mode, resample_columns)
        global_tokens = rows * cols if self.has_global_view else 0
        return global_tokens + self.num_rows * per_row

    # ---- token directions -------------------------------------------------------------------------------------
    def token_directions(self, token_grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Yaw and pitch in degrees of every view token, each of shape `(num_views, rows, columns)`.

        Yaw is not wrapped (the positional encoding is periodic in it); see the module docstring for the model.
        """
        rows, cols = token_grid
        col_frac = (np.arange(cols, dtype=np.float64) + 0.5) / cols - 0.5  # (-0.5, 0.5), left to right
        row_frac = 0.5 - (np.arange(rows, dtype=np.float64) + 0.5) / rows  # (0.5, -0.5), top to bottom
        yaws, pitches = [], []
        for view in self.views:
            across = np.broadcast_to(view.hfov_deg * col_frac[None, :], (rows, cols))
            up = np.broadcast_to(view.vfov_deg * row_frac[:, None], (rows, cols))
            if view.kind == "letterbox":
                # The ERP fills the middle half of the rows; bar rows are clamped to the poles.
                yaw, pitch = view.yaw_deg + across, np.clip(2.0 * up, -90.0, 90.0)
            elif view.kind == "perspective" and view.pitch_deg != 0.0:
                yaw, pitch = _turned_offsets(view, across, up)
            else:
                yaw, pitch = view.yaw_deg + across, view.pitch_deg + up
            yaws.append(yaw)
            pitches.append(pitch)
        return np.stack(yaws), np.stack(pitches)


def _turned_offsets(view: ViewSpec, across: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directions (yaw, pitch in degrees) of the angular offsets `across` / `up` of a view's own frame, after the
    view is tilted by its pitch and turned by its yaw."""
    a, b = np.radians(across), np.radians(up)
    x, y, z = np.cos(b) * np.sin(a), np.sin(b), np.cos(b) * np.cos(a)  # x right, y up, z forward
    tilt = math.radians(view.pitch_deg)
    y, z = y * math.cos(tilt) + z * math.sin(tilt), z * math.cos(tilt) - y * math.sin(tilt)
    return view.yaw_deg + np.degrees(np.arctan2(x, z)), np.degrees(np.arctan2(y, np.hypot(x, z)))


def infer_token_grid(num_tokens: int) -> tuple[int, int]:
    """(rows, columns) of a token sequence laid out as a grid: square when possible, else the most square
    factorisation with rows <= columns (64 -> (8, 8), 32 -> (4, 8), a prime p -> (1, p))."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    rows = math.isqrt(num_tokens)
    while num_tokens % rows:
        rows -= 1
    return rows, num_tokens // rows




# ---- crop strategies ------------------------------------------------------------------------------------------------
WHOLE_PANORAMA = ViewSpec("equirect", 0.0, 0.0, 360.0, 180.0)


VIEW_LAYOUT_FIELDS = ("crop_strategy", "fov_deg", "overlap_ratio", "pitch_levels_deg", "vertical_crop_ratio", "anyres_max_patches")


def view_layout_of(settings) -> ViewLayout:
    """The layout of a `PanoVLMConfig` or `PanoVLMImageProcessor`: both read their `VIEW_LAYOUT_FIELDS` here."""
    return build_view_layout(*(getattr(settings, name) for name in VIEW_LAYOUT_FIELDS))


def build_view_layout(
    crop_strategy: str,
    fov_deg: float,
    overlap_ratio: float,
    pitch_levels_deg: tuple[float, ...] | list[float] = DEFAULT_PITCH_LEVELS_DEG,
    vertical_crop_ratio: float = 1.0,
    anyres_max_patches: int = DEFAULT_ANYRES_MAX_PATCHES,
) -> ViewLayout:
    """The `ViewLayout` of a crop strategy. Raises `ValueError` naming the problem for impossible settings.

    * `resize`: the whole ERP squashed into one square view (fov and overlap unused).
    * `e2p`: a ring of `N = ceil(360 / (fov * (1 - overlap)))` perspective views at yaw `k * 360 / N`, hfov =
      `fov_deg` (8 views 45 degrees apart for fov 90, overlap 0.5), repeated at every pitch in `pitch_levels_deg`
      (one row per level, top row first). vfov = `fov_deg`, or `2 * atan(vertical_crop_ratio * tan(fov / 2))`:
      PanoLLaVA's e2p cut 5 % of the rows off the top and bottom of each view and stretched the rest back to a
      square, i.e. `vertical_crop_ratio=0.9` (vfov 83.97 degrees for fov 90).
    * `anyres_e2p`: a letterboxed global view of the whole panorama, then the `e2p` views.
    * `sliding_window`: the `e2p` rows with ERP crops of `fov_deg` x `fov_deg` degrees instead of perspective
      views, wrapping at the +/-180 degree seam.
    * `cubemap`: the front, right, back and left cube faces (fov must be 90 and overlap 0: faces touch).
    * `anyres` (PanoLLaVA's): the whole ERP squashed into one global view, then the horizon band (pitch -45 to 45)
      cut into `n = min(6, anyres_max_patches // 2)` ERP crops side by side from yaw -180 (4 crops of 90 x 90
      degrees for the default 9). fov and overlap unused.
    * `anyres_max` (PanoLLaVA's): the global view, then the whole ERP cut into a grid of `c = min(6,
      anyres_max_patches // 2)` columns by `r = min(3, anyres_max_patches // c)` rows of ERP crops, top row first
      (4 x 2 crops of 90 x 90 degrees at pitch +/-45 for the default 9). fov and overlap unused.

    `pitch_levels_deg` (default `[0.0]`) applies to `e2p`, `anyres_e2p` and `sliding_window`. Levels run from the
    top row down; each view must stay within the poles (`|pitch| <= 90 - vfov / 2`, i.e. within +/-45 for 90 degree
    views), neighbouring levels must be at most vfov apart, and the rows together must see every direction between
    the top and the bottom level.
    """
    return _build_view_layout(
        crop_strategy,
        float(fov_deg),
        float(overlap_ratio),
        _as_pitch_levels(pitch_levels_deg),
        float(vertical_crop_ratio),
        _as_patch_budget(anyres_max_patches),
    )


def _as_pitch_levels(levels) -> tuple[float, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, (list, tuple)) or not levels:
        raise ValueError(f"pitch_levels_deg must be a non-empty list of angles in degrees, got {levels!r}")
    if any(isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level) for level in levels):
        raise ValueError(f"pitch_levels_deg must hold finite numbers (degrees), got {list(levels)!r}")
    return tuple(float(level) + 0.0 for level in levels)  # + 0.0: no -0.0


def _as_patch_budget(patches) -> int:
    if isinstance(patches, bool) or not isinstance(patches, int) or patches < 2:
        raise ValueError(f"anyres_max_patches must be an integer >= 2, got {patches!r}")
    return patches


# A finer ring is a typo, not a layout (fov_deg=0.01 asked for 72,000 views, each a pass of the vision tower).
MAX_RING_VIEWS = 64


@lru_cache(maxsize=64)
def _build_view_layout(
    crop_strategy: str,
    fov_deg: float,
    overlap_ratio: float,
    pitch_levels: tuple[float, ...],
    vertical_crop_ratio: float,
    anyres_max_patches: int,
) -> ViewLayout:
    if crop_strategy not in CROP_STRATEGIES:
        raise ValueError(f"crop_strategy must be one of {CROP_STRATEGIES}, got {crop_strategy!r}")
    if not 0.0 <= overlap_ratio < 1.0:
        raise ValueError(f"overlap_ratio must be in [0, 1), got {overlap_ratio}")
    if pitch_levels != DEFAULT_PITCH_LEVELS_DEG and crop_strategy not in PITCHED_STRATEGIES:
        raise ValueError(
            f"pitch_levels_deg={list(pitch_levels)}: views above and below the horizon are defined for crop_strategy "
            f"{' / '.join(PITCHED_STRATEGIES)}; {crop_strategy!r} takes fixed views, so leave pitch_levels_deg at [0.0]"
        )
    if not 0.0 < vertical_crop_ratio <= 1.0:
        raise ValueError(f"vertical_crop_ratio must be in (0, 1], got {vertical_crop_ratio}")
    if vertical_crop_ratio != 1.0 and crop_strategy not in PERSPECTIVE_STRATEGIES:
        raise ValueError(
            f"vertical_crop_ratio={vertical_crop_ratio} narrows perspective views (crop_strategy "
            f"{' / '.join(PERSPECTIVE_STRATEGIES)}); {crop_strategy!r} has none, so leave it at 1.0"
        )
    if crop_strategy == "resize":
        return ViewLayout(crop_strategy, (WHOLE_PANORAMA,), False, 0.0)
    if crop_strategy == "cubemap":
        if fov_deg != CUBEMAP_FOV_DEG or overlap_ratio != 0.0:
            raise ValueError(
                "crop_strategy='cubemap' takes the four 90 degree side faces of a cube, which touch without "
                f"overlapping: it needs fov_deg=90 and overlap_ratio=0.0, got fov_deg={fov_deg}, "
                f"overlap_ratio={overlap_ratio}"
            )
        views = tuple(ViewSpec("perspective", yaw, 0.0, 90.0, 90.0) for yaw in CUBEMAP_FACE_YAWS)
        return ViewLayout(crop_strategy, views, False, 0.0)
    if crop_strategy in ("anyres", "anyres_max"):
        return _anyres_layout(crop_strategy, anyres_max_patches)

    max_fov = 180.0 if crop_strategy == "sliding_window" else 179.0
    if not 0.0 < fov_deg <= max_fov:
        raise ValueError(f"fov_deg must be in (0, {max_fov:g}] for crop_strategy={crop_strategy!r}, got {fov_deg}")
    yaws, overlap = _ring_yaws(fov_deg, overlap_ratio)
    if len(yaws) > MAX_RING_VIEWS:
        raise ValueError(
            f"fov_deg={fov_deg:g} with overlap_ratio={overlap_ratio:g} makes a ring of {len(yaws)} views; at most "
            f"{MAX_RING_VIEWS} views per ring: with this overlap fov_deg must be in "
            f"[{360.0 / (MAX_RING_VIEWS * (1.0 - overlap_ratio)):.4g}, {max_fov:g}]"
        )
    vfov = fov_deg if vertical_crop_ratio == 1.0 else math.degrees(2 * math.atan(vertical_crop_ratio * math.tan(math.radians(fov_deg) / 2)))
    check_pitch_levels(pitch_levels, fov_deg, vfov)
    kind = "equirect" if crop_strategy == "sliding_window" else "perspective"
    strip = tuple(ViewSpec(kind, yaw, pitch, fov_deg, vfov) for pitch in pitch_levels for yaw in yaws)
    if pitch_levels != DEFAULT_PITCH_LEVELS_DEG:
        gap = uncovered_direction(strip, pitch_levels[-1], pitch_levels[0])
        if gap is not None:
            raise ValueError(
                f"pitch_levels_deg={list(pitch_levels)} with fov_deg={fov_deg:g}, overlap_ratio={overlap_ratio:g}: no "
                f"view sees yaw {gap[0]:.2f}, pitch {gap[1]:.2f} between the top and bottom rows; raise "
                "overlap_ratio or bring the pitch levels closer together"
            )
    row_overlaps = tuple(max(0.0, 1.0 - (upper - lower) / vfov) for upper, lower in zip(pitch_levels, pitch_levels[1:]))
    num_rows = len(pitch_levels)
    if crop_strategy == "anyres_e2p":
        views = (ViewSpec("letterbox", 0.0, 0.0, 360.0, 180.0), *strip)
        return ViewLayout(crop_strategy, views, True, overlap, num_rows, row_overlaps)
    return ViewLayout(crop_strategy, strip, False, overlap, num_rows, row_overlaps)


def _ring_yaws(fov_deg: float, overlap_ratio: float) -> tuple[list[float], float]:
    """Yaws of the fewest equally spaced views of width `fov_deg` that overlap by at least `overlap_ratio`."""
    step_wanted = fov_deg * (1.0 - overlap_ratio)
    num = max(1, math.ceil(360.0 / step_wanted - 1e-9))
    step = 360.0 / num
    return [normalize_yaw(k * step) for k in range(num)], 1.0 - step / fov_deg


def _anyres_layout(crop_strategy: str, patches: int) -> ViewLayout:
    """PanoLLaVA's anyres / anyres_max: the whole panorama, then ERP crops from yaw -180 rightwards (see
    `build_view_layout`); the crops abut, so no two views overlap."""
    columns = min(6, patches // 2)
    rows = 1 if crop_strategy == "anyres" else min(3, patches // columns)
    width = 360.0 / columns
    height = 90.0 if crop_strategy == "anyres" else 180.0 / rows
    strip = tuple(
        ViewSpec("equirect", normalize_yaw(-180.0 + (column + 0.5) * width), pitch, width, height)
        for pitch in ([0.0] if crop_strategy == "anyres" else [90.0 - (row + 0.5) * height for row in range(rows)])
        for column in range(columns)
    )
    return ViewLayout(crop_strategy, (WHOLE_PANORAMA, *strip), True, 0.0, rows, (0.0,) * (rows - 1))
