"""The view layout off the horizon and PanoLLaVA's anyres strategies: which views, in which order, which of them
overlap, where their tokens look, and which pitch levels are refused (with the valid range named)."""

import math

import numpy as np
import pytest

from configuration_panovlm.view_layout import ViewLayout, ViewSpec, build_view_layout


def unit(yaw_deg, pitch_deg):
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    return np.stack([np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)], -1)


def pixel_rays(view, size, patch):
    """Unit rays through the centre pixel of each `patch` x `patch` token of a perspective view, as py360convert's
    grid places pixels (edge pixel centres on the field of view), tilted by the pitch, then turned by the yaw."""
    half_w, half_h = math.tan(math.radians(view.hfov_deg) / 2), math.tan(math.radians(view.vfov_deg) / 2)
    centre = (np.arange(size // patch) + 0.5) * patch - 0.5
    x, y = np.meshgrid(-half_w + 2 * half_w * centre / (size - 1), half_h - 2 * half_h * centre / (size - 1))
    z = np.ones_like(x)
    pitch, yaw = math.radians(view.pitch_deg), math.radians(view.yaw_deg)
    y, z = y * math.cos(pitch) + z * math.sin(pitch), z * math.cos(pitch) - y * math.sin(pitch)
    x, z = x * math.cos(yaw) + z * math.sin(yaw), z * math.cos(yaw) - x * math.sin(yaw)
    rays = np.stack([x, y, z], -1)
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def test_pitch_rows_are_pitch_major_top_down_and_yaw_left_to_right():
    layout = build_view_layout("e2p", 90.0, 0.5, [45.0, 0.0, -45.0])
    assert (layout.num_views, layout.num_rows, layout.views_per_row) == (24, 3, 8)
    assert layout.pitch_levels_deg == (45.0, 0.0, -45.0)
    ring = [0.0, 45.0, 90.0, 135.0, 180.0, -135.0, -90.0, -45.0]
    for pitch, row in zip((45.0, 0.0, -45.0), layout.rows):
        assert [(v.yaw_deg, v.pitch_deg, v.hfov_deg, v.vfov_deg) for v in row] == [(yaw, pitch, 90.0, 90.0) for yaw in ring]
    assert layout.row_overlaps == (0.5, 0.5) and layout.overlap == 0.5
    # The horizon row is today's ring; anyres_e2p puts the letterboxed global view first.
    assert layout.rows[1] == build_view_layout("e2p", 90.0, 0.5).views
    anyres = build_view_layout("anyres_e2p", 90.0, 0.5, [45.0, 0.0, -45.0])
    assert anyres.views[0].kind == "letterbox" and anyres.strip_views == layout.views
    assert anyres.view_index(2, 7) == 24 and layout.view_index(2, 7) == 23


def test_neighbours_wrap_within_each_row_and_pair_rows_at_the_same_yaw():
    layout = build_view_layout("anyres_e2p", 90.0, 0.5, [45.0, 0.0])
    horizontal = layout.horizontal_neighbours()
    assert len(horizontal) == 16 and horizontal[:2] == ((1, 2), (2, 3)) and horizontal[7] == (8, 1)
    assert horizontal[15] == (16, 9)  # second row wraps onto its own first view
    assert layout.vertical_neighbours(0) == tuple((1 + j, 9 + j) for j in range(8))
    assert layout.overlap_columns(16) == 8 and layout.overlap_rows(16, 0) == 8
    touching = build_view_layout("e2p", 60.0, 0.5, [60.0, 0.0, -60.0])
    assert touching.row_overlaps == (0.0, 0.0) and touching.overlap_rows(16, 0) == 0


@pytest.mark.parametrize(
    ("fov", "levels", "crop"), [(90.0, [45.0, 0.0, -45.0], 1.0), (60.0, [60.0, 30.0, 0.0], 1.0), (90.0, [40.0, 0.0], 0.9)]
)
def test_tokens_of_tilted_views_look_where_their_pixels_look_as_well_as_on_the_horizon(fov, levels, crop):
    """The token-direction model of a view off the horizon is the horizon model turned with the view: its error
    against the pinhole rays of the token centres is the same in every row (7.8 degrees at the corners of 16 x 16
    tokens of 90 degree views), and it never leaves the sphere."""
    layout = build_view_layout("e2p", fov, 0.5, levels, crop)
    yaw, pitch = layout.token_directions((16, 16))
    assert np.all(np.abs(pitch) <= 90.0)
    errors = []
    for index, view in enumerate(layout.views):
        cosine = (unit(yaw[index], pitch[index]) * pixel_rays(view, 256, 16)).sum(-1)
        errors.append(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    errors = np.stack(errors)
    np.testing.assert_allclose(errors, np.tile(errors[:1], (len(errors), 1, 1)), atol=1e-6)
    assert errors.max() < {90.0: 8.0, 60.0: 2.7}[fov]


def test_token_directions_turn_with_the_row_and_erp_crops_are_exact():
    layout = build_view_layout("e2p", 90.0, 0.5, [45.0, 0.0, -45.0])
    yaw, pitch = layout.token_directions((4, 4))
    for row in range(3):
        first, second = layout.view_index(row, 0), layout.view_index(row, 1)
        # A yaw step to the right: every token of the next view looks 45 degrees further right, at the same pitch.
        np.testing.assert_allclose(yaw[second], yaw[first] + 45.0, atol=1e-9)
        np.testing.assert_allclose(pitch[second], pitch[first], atol=1e-9)
    # Up and down rows mirror each other; the top row's top tokens look higher than the horizon row's.
    np.testing.assert_allclose(pitch[:8], -pitch[16:, ::-1], atol=1e-9)
    assert pitch[0].max() > 75.0 and pitch[8].max() < 34.0
    crops = build_view_layout("anyres_max", 90.0, 0.5)
    yaw, pitch = crops.token_directions((2, 2))
    assert yaw[1].tolist() == [[-157.5, -112.5]] * 2 and pitch[1].tolist() == [[67.5, 67.5], [22.5, 22.5]]


def test_anyres_is_panollavas_horizon_band_and_anyres_max_its_grid():
    anyres = build_view_layout("anyres", 90.0, 0.5)
    assert anyres.views[0] == ViewSpec("equirect", 0.0, 0.0, 360.0, 180.0) and anyres.has_global_view
    assert [(v.kind, v.yaw_deg, v.pitch_deg, v.hfov_deg, v.vfov_deg) for v in anyres.strip_views] == [
        ("equirect", yaw, 0.0, 90.0, 90.0) for yaw in (-135.0, -45.0, 45.0, 135.0)
    ]
    grid = build_view_layout("anyres_max", 90.0, 0.5)
    assert (grid.num_views, grid.num_rows, grid.views_per_row, grid.row_overlaps) == (9, 2, 4, (0.0,))
    assert [(v.yaw_deg, v.pitch_deg) for v in grid.strip_views] == [
        (yaw, pitch) for pitch in (45.0, -45.0) for yaw in (-135.0, -45.0, 45.0, 135.0)
    ]
    # The patch budget: anyres takes min(6, P // 2) crops; anyres_max a grid of min(6, P // 2) x min(3, P // columns).
    assert [build_view_layout("anyres", 90.0, 0.5, anyres_max_patches=p).num_views for p in (2, 9, 12, 40)] == [2, 5, 7, 7]
    assert [build_view_layout("anyres_max", 90.0, 0.5, anyres_max_patches=p).num_views for p in (2, 9, 12, 18)] == [3, 9, 13, 19]
    assert build_view_layout("anyres_max", 90.0, 0.5, anyres_max_patches=18).pitch_levels_deg == (60.0, 0.0, -60.0)
    # Crops abut: no overlap, so nothing is dropped and there is nothing to make consistent.
    assert anyres.overlap == 0.0 and anyres.overlap_columns(16) == 0 and grid.overlap_rows(16, 0) == 0


def test_vertical_crop_narrows_perspective_views_as_panollavas_e2p():
    layout = build_view_layout("e2p", 90.0, 0.5, vertical_crop_ratio=0.9)
    assert {(v.hfov_deg, round(v.vfov_deg, 2)) for v in layout.views} == {(90.0, 83.97)}
    assert build_view_layout("anyres_e2p", 90.0, 0.5, vertical_crop_ratio=0.9).views[0].vfov_deg == 180.0


def test_token_counts_per_row_and_stitching_mode():
    layout = build_view_layout("anyres_e2p", 90.0, 0.5, [45.0, 0.0, -45.0])
    grid = (16, 16)
    assert layout.num_image_tokens(grid, "concat") == 256 + 3 * 16 * 8 * 16
    assert layout.num_image_tokens(grid, "drop_overlap") == 256 + 3 * 16 * (16 + 7 * 8)
    assert layout.num_image_tokens(grid, "resample") == layout.num_image_tokens(grid, "drop_overlap")
    assert layout.num_image_tokens(grid, "resample", resample_columns=16) == 256 + 3 * 16 * 16
    with pytest.raises(ValueError, match="resample_columns applies to stitching_mode='resample' only"):
        layout.num_image_tokens(grid, "concat", resample_columns=16)
    with pytest.raises(ValueError, match="positive integer"):
        layout.num_image_tokens(grid, "resample", resample_columns=0)
    with pytest.raises(ValueError, match="stitching_mode must be one of"):
        layout.num_image_tokens(grid, "stride_views")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("e2p", 90.0, 0.5, [60.0]), r"reach 105 degrees, past the pole; with fov_deg=90 pitch levels must lie within \+/-45"),
        (("e2p", 60.0, 0.5, [-61.0]), r"must lie within \+/-60"),
        (("e2p", 90.0, 0.5, [50.0, 0.0], 0.9), r"must lie within \+/-48.01"),
        (("e2p", 90.0, 0.5, [0.0, 45.0]), "must run from the top row down"),
        (("e2p", 90.0, 0.5, [10.0, 10.0]), "must run from the top row down"),
        (("e2p", 60.0, 0.5, [50.0, -20.0]), "70 degrees apart, more than the views' vertical field of view"),
        (("e2p", 60.0, 0.0, [30.0, -30.0]), r"no view sees yaw .* between the top and bottom rows; raise overlap_ratio"),
        (("e2p", 90.0, 0.5, []), "non-empty list"),
        (("e2p", 90.0, 0.5, [float("nan")]), "finite numbers"),
        (("e2p", 90.0, 0.5, "0"), "list of angles"),
        (("cubemap", 90.0, 0.0, [30.0]), "'cubemap' takes fixed views, so leave pitch_levels_deg at"),
        (("anyres_max", 90.0, 0.5, [45.0, -45.0]), "'anyres_max' takes fixed views"),
        (("sliding_window", 90.0, 0.5, [0.0], 0.9), "vertical_crop_ratio=0.9 narrows perspective views"),
        (("e2p", 90.0, 0.5, [0.0], 0.0), r"vertical_crop_ratio must be in \(0, 1\]"),
        (("anyres", 90.0, 0.5, [0.0], 1.0, 1), "anyres_max_patches must be an integer >= 2"),
        (("anyres", 90.0, 0.5, [0.0], 1.0, True), "anyres_max_patches must be an integer >= 2"),
        (("e2p", 0.01, 0.5, [0.0]), r"makes a ring of 72000 views; at most 64 views per ring: with this overlap "
                                    r"fov_deg must be in \[11.25, 179\]"),
        (("sliding_window", 5.0, 0.0, [0.0]), r"ring of 72 views; .* must be in \[5.625, 180\]"),
    ],
)
def test_refused_settings_name_the_problem(args, message):
    with pytest.raises(ValueError, match=message):
        build_view_layout(*args)


def test_edge_cases_that_are_accepted():
    # Views that reach exactly the pole, rows that exactly touch, a single ring off the horizon, ERP crop rows.
    assert build_view_layout("e2p", 90.0, 0.0, [45.0, 0.0, -45.0]).num_views == 12
    assert build_view_layout("e2p", 11.25, 0.5).num_views == 64  # the finest ring allowed
    assert build_view_layout("e2p", 60.0, 0.0, [60.0, 0.0, -60.0]).row_overlaps == (0.0, 0.0)
    assert build_view_layout("e2p", 90.0, 0.0, [30.0]).pitch_levels_deg == (30.0,)
    assert build_view_layout("sliding_window", 90.0, 0.5, (45, 0, -45)).pitch_levels_deg == (45.0, 0.0, -45.0)
    # Integer levels and a tuple give the same (cached) layout as floats in a list.
    assert build_view_layout("e2p", 90, 0.5, (45, 0)) is build_view_layout("e2p", 90.0, 0.5, [45.0, 0.0])


def test_layout_rejects_rows_that_do_not_divide_the_views():
    view = ViewSpec("perspective", 0.0, 0.0, 90.0, 90.0)
    with pytest.raises(ValueError, match="cannot form 2 rows"):
        ViewLayout("custom", (view,) * 3, False, 0.0, num_rows=2, row_overlaps=(0.0,))
    with pytest.raises(ValueError, match="need 1 row overlaps"):
        ViewLayout("custom", (view,) * 4, False, 0.0, num_rows=2)


def test_overview_shows_one_row_of_tiles_per_pitch_row():
    from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
    from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor
    from processing_panovlm.visualization.views import VIEW_COLOURS, render_view_overview

    processor = PanoVLMImageProcessor(crop_strategy="anyres_e2p", image_size=16, pitch_levels_deg=[45.0, 0.0, -45.0])
    panorama = render_panorama([SceneObject("red", "circle", 0.0, 85.0, 20.0)], height=64)
    overview = np.asarray(render_view_overview(panorama, processor, display_width=800))
    tile = (800 - 6 * 9) // 8
    assert overview.shape == (400 + 4 * (tile + 14 + 6) + 6, 800, 3)  # the global view, then 3 rows of 8 tiles
    # View 1 (top row, yaw 0) is framed in its colour at the first column of the second tile row.
    y = 400 + 6 + (tile + 14 + 6) + 14 - 2
    assert tuple(overview[y, 6 + tile // 2]) == VIEW_COLOURS[1]
