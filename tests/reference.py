"""References written by hand for the meaning tests (`test_meaning.py`, the placement and round-trip tests): the
directions of the default tiny layout as literal numbers, the direction code channel by channel, the order of the image
tokens one token at a time, and the vision path called module by module. None of them calls the code they check
(`get_image_features`, `stitch_panorama`, `PanoramaPositionalEncoding`, `panorama_encoding`)."""

import math

import numpy as np
import torch


# ---- the default tiny layout, written out ---------------------------------------------------------------------------
# anyres_e2p, fov 90, overlap 0.5, 32-pixel views of 8-pixel patches: a letterboxed global view, then 8 horizon views
# 45 degrees apart, each a 4 x 4 token grid; drop_overlap keeps 4 columns of the first strip view and 2 of each other.
STRIP_YAWS = (0.0, 45.0, 90.0, 135.0, 180.0, -135.0, -90.0, -45.0)
# A 90-degree view cut into 4 columns / rows: token centres 33.75 and 11.25 degrees off the view centre.
OFFSETS = (-33.75, -11.25, 11.25, 33.75)
# The global view shows 360 x 180 degrees in the middle half of its rows: token columns 90 degrees wide, and its two
# middle token rows each cover half the ERP's height (centres at +/-45 degrees); the outer rows are the black bars,
# taken as the poles.
GLOBAL_YAWS = (-135.0, -45.0, 45.0, 135.0)
GLOBAL_PITCHES = (90.0, 45.0, -45.0, -90.0)
ROWS = COLS = 4
DROP = 2


def literal_directions() -> tuple[np.ndarray, np.ndarray]:
    """(yaw, pitch) in degrees of every token of the tiny anyres_e2p layout, `(9, 4, 4)` each, from the constants."""
    yaw = [[list(GLOBAL_YAWS)] * ROWS] + [[[centre + offset for offset in OFFSETS]] * ROWS for centre in STRIP_YAWS]
    pitch = [[[p] * COLS for p in GLOBAL_PITCHES]] + [[[-o] * COLS for o in OFFSETS]] * len(STRIP_YAWS)
    return np.array(yaw), np.array(pitch)


def reference_code(yaw_deg: float, pitch_deg: float, dim: int, temperature: float = 10000.0) -> list[float]:
    """The direction code written out channel by channel: a quarter of sin(m * yaw), a quarter of cos(m * yaw) for
    the harmonics m = 1, 2, ...; then sin and cos of the pitch in degrees times temperature ** (-i / quarter)."""
    quarter, yaw = dim // 4, math.radians(yaw_deg)
    code = [math.sin(m * yaw) for m in range(1, quarter + 1)] + [math.cos(m * yaw) for m in range(1, quarter + 1)]
    rates = [temperature ** (-i / quarter) for i in range(quarter)]
    return code + [math.sin(pitch_deg * r) for r in rates] + [math.cos(pitch_deg * r) for r in rates]


def reference_table(dim: int) -> torch.Tensor:
    """`(9, 16, dim)` direction code of every token of the tiny layout, from `literal_directions`."""
    yaw, pitch = literal_directions()
    rows = [[reference_code(y, p, dim) for y, p in zip(yv.ravel(), pv.ravel())] for yv, pv in zip(yaw, pitch)]
    return torch.tensor(rows, dtype=torch.float32)


def order_by_hand(per_view: torch.Tensor, has_global: bool, rows_of_views: int, drop: int) -> torch.Tensor:
    """Image tokens from per-view tokens `(views, rows, cols, dim)` of one panorama: the global view's tokens row by
    row, then each pitch row of views as one strip, token row by token row, left to right, every view after the
    first of its row without its first `drop` columns. Plain loops, one token at a time."""
    tokens = []
    views = list(range(per_view.shape[0]))
    if has_global:
        tokens += [per_view[0, r, c] for r in range(per_view.shape[1]) for c in range(per_view.shape[2])]
        views = views[1:]
    per_row = len(views) // rows_of_views
    for pitch_row in range(rows_of_views):
        row_views = views[pitch_row * per_row : (pitch_row + 1) * per_row]
        for r in range(per_view.shape[1]):
            for position, v in enumerate(row_views):
                for c in range(0 if position == 0 else drop, per_view.shape[2]):
                    tokens.append(per_view[v, r, c])
    return torch.stack(tokens)


def view_tokens_by_hand(model, pixels: torch.Tensor) -> torch.Tensor:
    """Tower -> feature norm -> resampler, called module by module: `(panoramas, views, rows, cols, latent)`."""
    inner = model.model
    flat = pixels.flatten(0, 1)
    patches = inner.vision_tower(pixel_values=flat).last_hidden_state
    tokens = inner.resampler(inner.vision_feature_norm(patches))
    rows, cols = model.config.view_token_grid
    return tokens.reshape(pixels.shape[0], pixels.shape[1], rows, cols, -1)


