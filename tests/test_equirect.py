"""The batched ERP sampler against py360convert, analytic references and exact symmetries of the sphere."""

import math
import multiprocessing

import numpy as np
import py360convert
import pytest
import torch
from PIL import Image

from configuration_panovlm.view_layout import ViewLayout, ViewSpec, build_view_layout
from processing_panovlm import equirect
from processing_panovlm.equirect import (
    clear_grid_cache,
    grid_cache_info,
    pad_equirect,
    sample_views,
)


HEIGHT, WIDTH, SIZE = 256, 512, 64


def sphere_signal(x, y, z):
    """A smooth RGB function of the viewing direction (unit vector, +z forward, +x right, +y up)."""
    return np.stack([0.5 + 0.3 * x + 0.1 * y * z, 0.5 + 0.25 * y - 0.15 * x * z, 0.5 + 0.2 * z + 0.2 * x * y], -1)


def direction(lon, lat):
    return np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)


def analytic_erp(height=HEIGHT, width=WIDTH):
    """`(H, W, 3)` float64 ERP of `sphere_signal` sampled at the pixel centres."""
    lon = ((np.arange(width) + 0.5) / width - 0.5) * 2 * np.pi
    lat = (0.5 - (np.arange(height) + 0.5) / height) * np.pi
    return sphere_signal(*direction(lon[None, :], lat[:, None]))


@pytest.fixture(scope="module")
def erp_float():
    """Smooth signal plus pixel-level detail (noise), `(H, W, 3)` float32 in [0, 1]."""
    noise = np.random.default_rng(0).random((HEIGHT, WIDTH, 3))
    return (0.8 * analytic_erp() + 0.2 * noise).clip(0, 1).astype(np.float32)


def to_chw(array):
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def layout_of(*views):
    return ViewLayout("custom", tuple(views), False, 0.0)


def perspective_cases():
    layouts = [build_view_layout("e2p", 90.0, 0.5), build_view_layout("anyres_e2p", 60.0, 0.25)]
    layouts.append(build_view_layout("cubemap", 90.0, 0.0))
    # Every view of the pitch rows and vertical crops the layouts report (the processor's view_*_deg metadata).
    layouts.append(build_view_layout("e2p", 90.0, 0.5, [45.0, 0.0, -45.0]))
    layouts.append(build_view_layout("anyres_e2p", 60.0, 0.25, [60.0, 30.0, 0.0, -30.0, -60.0]))
    layouts.append(build_view_layout("e2p", 120.0, 0.25, [30.0, 0.0, -30.0]))
    layouts.append(build_view_layout("anyres_e2p", 90.0, 0.5, [40.0, 0.0, -40.0], vertical_crop_ratio=0.9))
    views = [view for layout in layouts for view in layout.views if view.kind == "perspective"]
    # Off the horizon, across the +/-180 degree seam, and at the poles.
    extra = [(179.0, 30.0, 90.0), (-175.0, -45.0, 75.0), (180.0, 60.0, 100.0), (10.0, 90.0, 90.0)]
    extra.append((-120.0, -90.0, 60.0))
    views += [ViewSpec("perspective", yaw, pitch, fov, fov) for yaw, pitch, fov in extra]
    return views


PERSPECTIVE_VIEWS = perspective_cases()


def py360_views(erp, views):
    return np.stack(
        [py360convert.e2p(erp, (v.hfov_deg, v.vfov_deg), v.yaw_deg, v.pitch_deg, (SIZE, SIZE)) for v in views]
    )


def test_perspective_matches_py360convert_float(erp_float):
    views = sample_views(to_chw(erp_float), layout_of(*PERSPECTIVE_VIEWS), SIZE)[0].permute(0, 2, 3, 1).numpy()
    error = np.abs(views - py360_views(erp_float, PERSPECTIVE_VIEWS))
    assert error.mean() <= 1e-4
    assert error.max() <= 1e-3  # measured ~1e-5: the float32 grid of py360convert


def test_perspective_matches_py360convert_uint8(erp_float):
    erp = np.round(erp_float * 255).astype(np.uint8)
    views = sample_views(to_chw(erp), layout_of(*PERSPECTIVE_VIEWS), SIZE)[0].permute(0, 2, 3, 1).numpy()
    reference = py360_views(erp, PERSPECTIVE_VIEWS).astype(np.float64)
    assert np.abs(np.round(views) - reference).max() <= 1


def test_views_follow_the_analytic_sphere_signal():
    """Independent of py360convert: every pixel shows the signal in the direction its ray (or ERP cell) points."""
    erp = to_chw(analytic_erp())
    views = [
        ViewSpec("perspective", 30.0, 20.0, 90.0, 90.0),
        ViewSpec("perspective", 180.0, -90.0, 60.0, 60.0),
        ViewSpec("equirect", 170.0, 0.0, 90.0, 90.0),
        ViewSpec("equirect", -60.0, 60.0, 80.0, 100.0),  # reaches 20 degrees past the north pole
    ]
    sampled = sample_views(erp, layout_of(*views), SIZE)[0].permute(0, 2, 3, 1).numpy()
    for view, image in zip(views, sampled):
        if view.kind == "perspective":
            half = math.tan(math.radians(view.hfov_deg) / 2)
            x, y = np.meshgrid(np.linspace(-half, half, SIZE), np.linspace(half, -half, SIZE))
            ray = np.stack([x, y, np.ones_like(x)], -1) / np.sqrt(x**2 + y**2 + 1)[..., None]
            pitch, yaw = math.radians(view.pitch_deg), math.radians(view.yaw_deg)
            # Row-vector rotation matrices: tilt the forward axis up (+y), then turn it right (+x).
            cos_p, sin_p, cos_y, sin_y = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
            tilt = np.array([[1, 0, 0], [0, cos_p, -sin_p], [0, sin_p, cos_p]])
            turn = np.array([[cos_y, 0, -sin_y], [0, 1, 0], [sin_y, 0, cos_y]])
            ray = ray @ tilt @ turn
            expected = sphere_signal(ray[..., 0], ray[..., 1], ray[..., 2])
        else:
            fraction = (np.arange(SIZE) + 0.5) / SIZE - 0.5
            lon = np.radians(view.yaw_deg + view.hfov_deg * fraction)[None, :]
            lat = np.radians(view.pitch_deg - view.vfov_deg * fraction)[:, None]
            expected = sphere_signal(*direction(lon, lat))  # lat > 90 degrees is the far side of the pole
        assert np.isfinite(image).all()
        assert np.abs(image - expected).max() < 2e-3, view


def test_seam_view_equals_centre_view_of_rolled_erp(erp_float):
    erp = to_chw(erp_float.astype(np.float64))
    rolled = torch.roll(erp, WIDTH // 2, dims=-1)
    for pitch in (0.0, 35.0, -80.0):
        seam = sample_views(erp, layout_of(ViewSpec("perspective", 180.0, pitch, 90.0, 90.0)), SIZE)
        centre = sample_views(rolled, layout_of(ViewSpec("perspective", 0.0, pitch, 90.0, 90.0)), SIZE)
        torch.testing.assert_close(seam, centre, rtol=0, atol=1e-10)


def test_seam_blends_last_and_first_column():
    """Columns ramp 0 .. 1 left to right: at lon = 180 degrees the value is the mean of both edges, not a clamp."""
    ramp = torch.linspace(0.0, 1.0, WIDTH, dtype=torch.float64)
    # An ERP crop 5 source pixels wide centred on the seam: the 5 output columns fall midway between source columns.
    view = ViewSpec("equirect", 180.0, 0.0, 5 * 360.0 / WIDTH, 5 * 180.0 / HEIGHT)
    row = sample_views(ramp.expand(3, HEIGHT, WIDTH), layout_of(view), 5)[0, 0, 0, 2].numpy()
    left, right = torch.tensor([-3, -2, -1, 0, 1]), torch.tensor([-2, -1, 0, 1, 2])
    np.testing.assert_allclose(row, ((ramp[left] + ramp[right]) / 2).numpy(), atol=1e-12)
    assert abs(row[2] - 0.5) < 1e-12


def test_straddling_view_has_no_dark_column(erp_float):
    bright = to_chw(0.5 + 0.5 * erp_float)  # values in [0.5, 1]
    views = sample_views(bright, layout_of(ViewSpec("perspective", 180.0, 10.0, 90.0, 90.0)), SIZE)
    assert views.min() >= 0.5 - 1e-6


def test_sliding_window_crops_are_wrapped_erp_columns():
    """With S = H / 2 a 90 degree crop maps source pixels 1:1, so each view is an exact, wrapped slice of the ERP."""
    height, width = 64, 128
    erp = torch.rand(3, height, width, dtype=torch.float64)
    layout = build_view_layout("sliding_window", 90.0, 0.5)
    views = sample_views(erp, layout, height // 2)[0]
    for view, image in zip(layout.views, views):
        first_column = round((view.yaw_deg - 45.0) / 360.0 * width + width / 2)
        columns = torch.arange(first_column, first_column + width // 4) % width
        torch.testing.assert_close(image, erp[:, height // 4 : 3 * height // 4, columns], rtol=0, atol=1e-12)


@pytest.mark.parametrize("strategy", ["e2p", "anyres_e2p", "sliding_window"])
def test_rolling_the_erp_permutes_the_views_of_every_pitch_row(erp_float, strategy):
    erp = to_chw(erp_float.astype(np.float64))
    layout = build_view_layout(strategy, 90.0, 0.5, [45.0, 0.0, -45.0])
    views = sample_views(erp, layout, SIZE)[0]
    rolled = sample_views(torch.roll(erp, WIDTH // 8, dims=-1), layout, SIZE)[0]
    first = int(layout.has_global_view)
    rows = views[first:].unflatten(0, (3, 8))
    # Content moved 45 degrees to the right: in each row the view at yaw k * 45 now shows what view k - 1 showed.
    torch.testing.assert_close(rolled[first:].unflatten(0, (3, 8)), torch.roll(rows, 1, dims=1), rtol=0, atol=1e-10)


@pytest.mark.parametrize("strategy", ["anyres", "anyres_max"])
def test_anyres_crops_are_panollavas_erp_tiles(strategy):
    """With S = H / 2 a 90 x 90 degree crop maps source pixels 1:1: each crop is an exact ERP tile, taken from the
    left edge (yaw -180) rightwards; anyres tiles the horizon band, anyres_max the top and bottom halves."""
    height, width = 64, 128
    erp = torch.rand(3, height, width, dtype=torch.float64)
    layout = build_view_layout(strategy, 90.0, 0.5)
    views = sample_views(erp, layout, height // 2)[0]
    bands = [slice(16, 48)] if strategy == "anyres" else [slice(0, 32), slice(32, 64)]
    tiles = [erp[:, band, column : column + 32] for band in bands for column in range(0, width, 32)]
    torch.testing.assert_close(views[1:], torch.stack(tiles), rtol=0, atol=1e-12)


def test_rolling_the_erp_permutes_e2p_views(erp_float):
    erp = to_chw(erp_float.astype(np.float64))
    layout = build_view_layout("e2p", 90.0, 0.5)
    assert layout.num_views == 8
    views = sample_views(erp, layout, SIZE)[0]
    rolled_views = sample_views(torch.roll(erp, WIDTH // 8, dims=-1), layout, SIZE)[0]
    # Content moved 45 degrees to the right: the view at yaw k * 45 now shows what view k - 1 showed.
    torch.testing.assert_close(rolled_views, torch.roll(views, 1, dims=0), rtol=0, atol=1e-10)


def test_pad_wraps_columns_and_rolls_pole_rows():
    erp = torch.arange(2 * 4 * 8, dtype=torch.float32).reshape(1, 2, 4, 8)
    padded = pad_equirect(erp)
    assert padded.shape == (1, 2, 6, 10)
    torch.testing.assert_close(padded[..., 1:-1, 1:-1], erp)
    torch.testing.assert_close(padded[..., 0, 1:-1], torch.roll(erp[..., 0, :], 4, dims=-1))
    torch.testing.assert_close(padded[..., -1, 1:-1], torch.roll(erp[..., -1, :], 4, dims=-1))
    torch.testing.assert_close(padded[..., 0], padded[..., -2])
    torch.testing.assert_close(padded[..., -1], padded[..., 1])


def pil_bilinear_resize(erp_float, width, height):
    """Reference antialiased resize: PIL's bilinear (triangle) filter per channel in float mode."""
    channels = [Image.fromarray(erp_float[..., c], mode="F").resize((width, height), Image.BILINEAR) for c in range(3)]
    return np.stack([np.asarray(channel) for channel in channels])


def test_letterbox_view(erp_float):
    views = sample_views(to_chw(erp_float), build_view_layout("anyres_e2p", 90.0, 0.5), SIZE)
    assert views.shape == (1, 9, 3, SIZE, SIZE)
    letterbox = views[0, 0].numpy()
    top = (SIZE - SIZE // 2) // 2
    assert (letterbox[:, :top] == 0).all() and (letterbox[:, top + SIZE // 2 :] == 0).all()
    reference = pil_bilinear_resize(erp_float, SIZE, SIZE // 2)
    np.testing.assert_allclose(letterbox[:, top : top + SIZE // 2], reference, atol=1e-4)


def test_resize_view(erp_float):
    views = sample_views(to_chw(erp_float), build_view_layout("resize", 90.0, 0.5), SIZE)
    assert views.shape == (1, 1, 3, SIZE, SIZE)
    np.testing.assert_allclose(views[0, 0].numpy(), pil_bilinear_resize(erp_float, SIZE, SIZE), atol=1e-4)


@pytest.mark.parametrize("strategy", ["resize", "anyres_e2p"])
def test_uint8_whole_panorama_views_are_whole_grey_levels_near_the_float_resize(erp_float, strategy):
    layout = build_view_layout(strategy, 90.0, 0.5)
    erp = np.round(erp_float * 255).astype(np.uint8)
    channels_last = sample_views(to_chw(erp), layout, SIZE)[0, 0]  # a view of the (H, W, 3) array
    channels_first = sample_views(to_chw(erp).contiguous(), layout, SIZE)[0, 0]
    exact = sample_views(to_chw(erp).float(), layout, SIZE)[0, 0]
    torch.testing.assert_close(channels_last, channels_first, rtol=0, atol=0)
    assert torch.equal(channels_last, channels_last.round())
    assert (channels_last - exact).abs().max() <= 1


@pytest.mark.parametrize("strategy", ["resize", "e2p", "anyres_e2p", "cubemap", "sliding_window", "anyres", "anyres_max"])
def test_constant_erp_gives_constant_views(strategy):
    fov, overlap = (90.0, 0.0) if strategy == "cubemap" else (90.0, 0.5)
    levels = [45.0, 0.0, -45.0] if strategy in ("e2p", "anyres_e2p", "sliding_window") else [0.0]
    layout = build_view_layout(strategy, fov, overlap, levels)
    colour = torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1)
    views = sample_views(colour.expand(3, 32, 64).clone(), layout, 16)
    assert views.shape == (1, layout.num_views, 3, 16, 16)
    for view, image in zip(layout.views, views[0]):
        content = image[:, 4:12] if view.kind == "letterbox" else image
        torch.testing.assert_close(content, colour.expand_as(content), rtol=0, atol=1e-6)


def test_batch_equals_single_images(erp_float):
    layout = build_view_layout("anyres_e2p", 90.0, 0.5)
    first, second = to_chw(erp_float), to_chw(erp_float[:, ::-1])
    batch = sample_views(torch.stack([first, second]), layout, SIZE)
    torch.testing.assert_close(batch[0], sample_views(first, layout, SIZE)[0], rtol=0, atol=0)
    torch.testing.assert_close(batch[1], sample_views(second, layout, SIZE)[0], rtol=0, atol=0)


@pytest.fixture
def torch_threads():
    """Set torch's thread count for one test and restore it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_views_on_several_threads_equal_one_thread(erp_float, torch_threads, monkeypatch):
    monkeypatch.setattr(equirect, "_POOLS", {})  # the pools this test creates, and only those
    layout = build_view_layout("anyres_e2p", 90.0, 0.5)
    erp = torch.stack([to_chw(np.round(erp_float * 255).astype(np.uint8))] * 2)
    torch_threads(1)
    serial = sample_views(erp, layout, SIZE)
    assert equirect._POOLS == {}  # one thread: sampled in the caller's thread
    torch_threads(3)  # more threads than cores is allowed and must not change a value
    assert torch.equal(sample_views(erp, layout, SIZE), serial)
    assert list(equirect._POOLS) == [3]


def _sample_in_child(queue):
    erp = torch.zeros(3, 32, 64, dtype=torch.uint8)
    queue.put(tuple(sample_views(erp, build_view_layout("e2p", 90.0, 0.5), 8).shape))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_samples_views_after_its_parent_did(erp_float, torch_threads):
    """The child inherits the parent's thread pool object but none of its threads (a DataLoader worker's case)."""
    torch_threads(2)
    sample_views(to_chw(erp_float), build_view_layout("e2p", 90.0, 0.5), 8)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_sample_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "sampling views in a forked child hung"
    assert queue.get(timeout=5) == (1, 8, 3, 8, 8)


def test_dtypes(erp_float):
    layout = build_view_layout("e2p", 90.0, 0.5)
    assert sample_views(to_chw(erp_float.astype(np.float64)), layout, 16).dtype == torch.float64
    assert sample_views(to_chw(np.round(erp_float * 255).astype(np.uint8)), layout, 16).dtype == torch.float32
    assert sample_views(to_chw(erp_float).half(), layout, 16).dtype == torch.float32


def test_max_erp_width_samples_the_area_shrunk_erp(erp_float):
    layout = build_view_layout("e2p", 90.0, 0.5)
    # 4x4 block means: what an area filter gives for an exact factor of 4.
    shrunk = erp_float.reshape(HEIGHT // 4, 4, WIDTH // 4, 4, 3).mean(axis=(1, 3))
    views = sample_views(to_chw(erp_float), layout, 32, max_erp_width=WIDTH // 4)
    torch.testing.assert_close(views, sample_views(to_chw(shrunk), layout, 32), rtol=0, atol=1e-6)


def test_grid_cache_is_reused(erp_float):
    clear_grid_cache()
    layout = build_view_layout("e2p", 90.0, 0.5)
    sample_views(to_chw(erp_float), layout, 32)
    sample_views(to_chw(erp_float[::-1].copy()), layout, 32)
    info = grid_cache_info()
    assert (info.misses, info.hits) == (1, 1)
    sample_views(to_chw(erp_float[::2, ::2].copy()), layout, 32)  # another ERP size needs its own grids
    assert grid_cache_info().misses == 2


def test_render_size_supersamples_the_point_sampled_views_only(erp_float):
    """Views rendered at 4x their size and shrunk (PanoLLaVA's 672-pixel tiles) are the antialiased shrink of the
    large views; they follow a smooth panorama as the directly sampled views do; whole-panorama views are unchanged."""
    layout = build_view_layout("anyres_e2p", 90.0, 0.5, [45.0, 0.0])
    erp = to_chw(analytic_erp())
    direct = sample_views(erp, layout, 16)
    supersampled = sample_views(erp, layout, 16, render_size=64)
    large = sample_views(erp, layout, 64)[0, 1:]
    shrunk = torch.nn.functional.interpolate(large, size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(supersampled[0, 1:], shrunk, rtol=0, atol=1e-6)
    torch.testing.assert_close(supersampled[0, 0], direct[0, 0], rtol=0, atol=0)
    assert (supersampled - direct).abs().max() < 0.02
    with pytest.raises(ValueError, match="render_size must be >= size"):
        sample_views(erp, layout, 16, render_size=8)


def test_differentiable_wrt_image(erp_float):
    erp = to_chw(erp_float).clone().requires_grad_(True)
    sample_views(erp, build_view_layout("anyres_e2p", 90.0, 0.5), 16).square().sum().backward()
    assert torch.isfinite(erp.grad).all() and erp.grad.abs().sum() > 0


def test_rejects_bad_arguments():
    layout = build_view_layout("e2p", 90.0, 0.5)
    with pytest.raises(ValueError, match="shape"):
        sample_views(torch.zeros(2, 3, 4, 8, 16), layout, 16)
    with pytest.raises(ValueError, match="size"):
        sample_views(torch.zeros(3, 8, 16), layout, 1)
    with pytest.raises(ValueError, match="letterbox"):
        sample_views(torch.zeros(3, 8, 16), layout_of(ViewSpec("letterbox", 10.0, 0.0, 360.0, 180.0)), 16)
