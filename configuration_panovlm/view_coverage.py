"""Checks of pitch levels: every view stays on this side of the poles, and the views of all pitch rows together
leave no direction between the top and the bottom row unseen.

Kept apart from `view_layout` so that the geometry module reads as the layout itself; the checks take views as
plain records (`kind`, `yaw_deg`, `pitch_deg`, `hfov_deg`, `vfov_deg`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


# Slack of the containment test, in tangent-plane units / degrees: views that exactly touch cover their seam.
_EPS = 1e-9
# Spacing of the directions the coverage check samples, in degrees.
_COVERAGE_STEP_DEG = 1.0


def check_pitch_levels(levels: Sequence[float], fov_deg: float, vfov_deg: float) -> None:
    """Raise `ValueError` unless `levels` run from the top row down, keep every view of vertical field of view
    `vfov_deg` between the poles, and put neighbouring rows at most `vfov_deg` apart (so that they touch or
    overlap)."""
    shown = [float(level) for level in levels]
    limit = 90.0 - vfov_deg / 2.0
    for level in levels:
        if abs(level) > limit + _EPS:
            raise ValueError(
                f"pitch_levels_deg={shown}: a view at pitch {level:g} spans {vfov_deg:g} degrees vertically and "
                f"would reach {abs(level) + vfov_deg / 2:g} degrees, past the pole; with fov_deg={fov_deg:g} "
                f"pitch levels must lie within +/-{limit:g}"
            )
    if any(upper <= lower for upper, lower in zip(levels, levels[1:])):
        raise ValueError(
            f"pitch_levels_deg={shown} must run from the top row down (strictly decreasing), e.g. [45.0, 0.0, -45.0]"
        )
    for upper, lower in zip(levels, levels[1:]):
        if upper - lower > vfov_deg + _EPS:
            raise ValueError(
                f"pitch_levels_deg={shown}: the rows at pitch {upper:g} and {lower:g} are {upper - lower:g} degrees "
                f"apart, more than the views' vertical field of view ({vfov_deg:g} degrees), so no view would see the "
                f"band between them; put neighbouring pitch levels at most {vfov_deg:g} degrees apart"
            )


def uncovered_direction(views: Sequence, lowest_deg: float, highest_deg: float) -> tuple[float, float] | None:
    """A direction `(yaw, pitch)` in degrees with pitch in `[lowest_deg, highest_deg]` that none of `views` sees,
    or `None` when they cover that whole band (sampled every degree)."""
    count = max(1, math.ceil((highest_deg - lowest_deg) / _COVERAGE_STEP_DEG)) + 1
    lat = np.radians(np.linspace(lowest_deg, highest_deg, count))[:, None]
    lon = np.radians(np.arange(-180.0, 180.0, _COVERAGE_STEP_DEG) + 0.25)[None, :]
    seen = np.zeros(np.broadcast_shapes(lat.shape, lon.shape), dtype=bool)
    for view in views:
        seen |= _sees(view, lon, lat)
    if seen.all():
        return None
    row, column = np.argwhere(~seen)[0]
    return float(np.degrees(lon[0, column])), float(np.degrees(lat[row, 0]))


def _sees(view, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Whether `view` sees each direction (`lon`, `lat` in radians, broadcast)."""
    yaw, pitch = math.radians(view.yaw_deg), math.radians(view.pitch_deg)
    if view.kind == "equirect":
        off_yaw = np.abs(np.remainder(lon - yaw + math.pi, 2 * math.pi) - math.pi)
        return (off_yaw <= math.radians(view.hfov_deg) / 2 + _EPS) & (np.abs(lat - pitch) <= math.radians(view.vfov_deg) / 2 + _EPS)
    if view.kind != "perspective":
        raise ValueError(f"cannot check the coverage of a {view.kind!r} view")
    x, y, z = np.cos(lat) * np.sin(lon), np.sin(lat) * np.ones_like(lon), np.cos(lat) * np.cos(lon)
    # Undo the turn by the yaw, then the tilt by the pitch (equirect.py applies tilt, then turn).
    x, z = x * math.cos(yaw) - z * math.sin(yaw), x * math.sin(yaw) + z * math.cos(yaw)
    y, z = y * math.cos(pitch) - z * math.sin(pitch), z * math.cos(pitch) + y * math.sin(pitch)
    half_width = math.tan(math.radians(view.hfov_deg) / 2)
    half_height = math.tan(math.radians(view.vfov_deg) / 2)
    return (z > 0) & (np.abs(x) <= half_width * z + _EPS) & (np.abs(y) <= half_height * z + _EPS)
