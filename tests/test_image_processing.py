"""`load_panorama` (conversions and every rejection) and `PanoVLMImageProcessor` (outputs, switches, persistence)."""

import io
import math
import warnings

import numpy as np
import py360convert
import pytest
import torch
from PIL import Image

from configuration_panovlm.view_layout import build_view_layout
from processing_panovlm.equirect import sample_views
from processing_panovlm.image_loading import PanoramaImageError, load_panorama
from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor


STRATEGIES = {
    "resize": (90.0, 0.5),
    "e2p": (90.0, 0.5),
    "anyres_e2p": (90.0, 0.5),
    "cubemap": (90.0, 0.0),
    "sliding_window": (60.0, 0.25),
    "anyres": (90.0, 0.5),
    "anyres_max": (90.0, 0.5),
}


@pytest.fixture(scope="module")
def rgb():
    """A 64x128 uint8 RGB panorama (smooth gradients plus noise)."""
    rows, columns = np.mgrid[0:64, 0:128]
    smooth = np.stack([2 * columns, 4 * rows, 255 - 2 * columns], -1)
    noise = np.random.default_rng(0).integers(0, 40, (64, 128, 3))
    return np.clip(smooth * 0.8 + noise, 0, 255).astype(np.uint8)


def processor(strategy="anyres_e2p", size=32, **kwargs):
    fov, overlap = STRATEGIES[strategy]
    return PanoVLMImageProcessor(crop_strategy=strategy, image_size=size, fov_deg=fov, overlap_ratio=overlap, **kwargs)


# --- load_panorama: accepted inputs and conversions ---------------------------------------------------------------


def test_pil_numpy_torch_and_path_agree(rgb, tmp_path):
    path = tmp_path / "pano.png"
    Image.fromarray(rgb).save(path)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float()
    for image in (Image.fromarray(rgb), rgb, torch.from_numpy(rgb).permute(2, 0, 1), path, str(path)):
        loaded = load_panorama(image)
        assert loaded.dtype == torch.float32 and loaded.shape == (3, 64, 128)
        torch.testing.assert_close(loaded, expected, rtol=0, atol=0)


def test_grayscale_is_replicated(rgb):
    grey = rgb[..., 0]
    for image in (Image.fromarray(grey, mode="L"), grey, grey[..., None], torch.from_numpy(grey)[None]):
        loaded = load_panorama(image)
        for channel in loaded:
            torch.testing.assert_close(channel, torch.from_numpy(grey).float())


def test_alpha_is_discarded_not_composited(rgb):
    rgba = np.concatenate([rgb, np.zeros((64, 128, 1), np.uint8)], -1)  # fully transparent
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float()
    torch.testing.assert_close(load_panorama(Image.fromarray(rgba, mode="RGBA")), expected)
    torch.testing.assert_close(load_panorama(rgba), expected)
    grey_alpha = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    torch.testing.assert_close(load_panorama(grey_alpha), expected[0].expand(3, -1, -1))


def test_palette_and_cmyk_are_converted(rgb):
    palette = Image.fromarray(rgb).quantize(16)
    expected = torch.from_numpy(np.array(palette.convert("RGB"))).permute(2, 0, 1).float()
    torch.testing.assert_close(load_panorama(palette), expected)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert load_panorama(cmyk).shape == (3, 64, 128)


def test_16_bit_images_map_onto_the_8_bit_range(tmp_path):
    values = np.linspace(0, 65535, 64 * 128).reshape(64, 128).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)  # 16-bit grey PNG, opened as mode "I;16"
    for image in (path, values, np.stack([values] * 3, -1)):
        loaded = load_panorama(image)
        torch.testing.assert_close(loaded[1], torch.from_numpy(values.astype(np.float32) / 257))
    assert load_panorama(values).max() == 255.0


def test_float_input_is_kept_in_unit_range(rgb):
    unit = rgb.astype(np.float32) / 255
    torch.testing.assert_close(load_panorama(unit), torch.from_numpy(unit).permute(2, 0, 1))


def test_exif_orientation_is_applied(rgb, tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displays rotated 90 degrees clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(path, exif=exif, quality=95)
    loaded = load_panorama(path)
    assert loaded.shape == (3, 64, 128)
    assert (loaded - torch.from_numpy(rgb).permute(2, 0, 1)).abs().mean() < 8  # JPEG-lossy, but upright


# --- load_panorama: rejections --------------------------------------------------------------------------------------


def test_not_two_to_one_names_the_size(rgb):
    with pytest.raises(PanoramaImageError, match=r"300x100.*2:1"):
        load_panorama(np.zeros((100, 300, 3), np.uint8))
    load_panorama(np.zeros((100, 201, 3), np.uint8))  # within 1 %
    with pytest.raises(PanoramaImageError, match="2:1"):
        load_panorama(np.zeros((100, 201, 3), np.uint8), aspect_ratio_tolerance=0.001)


def test_truncated_jpeg(rgb, tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(PanoramaImageError, match=r"truncated\.jpg.*truncated or corrupt"):
        load_panorama(path)


@pytest.mark.parametrize("limit", [5000, 3000])  # 8192 pixels: PIL warns above 1x the limit, refuses above 2x
def test_decompression_bomb(rgb, tmp_path, monkeypatch, limit):
    path = tmp_path / "big.png"
    Image.fromarray(rgb).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(PanoramaImageError, match=r"8192 pixels.*MAX_IMAGE_PIXELS"):
            load_panorama(path)
        with pytest.raises(PanoramaImageError, match=r"8192 pixels.*MAX_IMAGE_PIXELS"):
            load_panorama(Image.fromarray(rgb))
    # PIL's DecompressionBombWarning becomes our error instead of leaking out.
    assert not [warning for warning in caught if issubclass(warning.category, Image.DecompressionBombWarning)]


def test_missing_directory_and_non_image_files(tmp_path):
    with pytest.raises(PanoramaImageError, match="not found.*nope.jpg"):
        load_panorama(tmp_path / "nope.jpg")
    with pytest.raises(PanoramaImageError, match="directory"):
        load_panorama(tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(PanoramaImageError, match="not an image"):
        load_panorama(text)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), "empty"),
        (np.zeros((1, 2, 3), np.uint8), "too small"),
        (np.zeros((8, 16, 5), np.uint8), "channel"),
        (np.zeros((2, 8, 16, 3), np.uint8), "dimensions"),
        (np.zeros((8, 16, 3), np.int64), "dtype"),
        (np.full((8, 16, 3), np.nan, np.float32), "NaN"),
        (np.full((8, 16, 3), 255.0, np.float32), r"\[0, 1\]"),
        (torch.full((3, 8, 16), -0.5), r"\[0, 1\]"),
        (Image.new("I", (16, 8)), "mode"),
        ([np.zeros((8, 16, 3), np.uint8)], "type"),
    ],
)
def test_bad_arrays(image, message):
    with pytest.raises(PanoramaImageError, match=message):
        load_panorama(image)


# --- PanoVLMImageProcessor ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_shapes_and_metadata(rgb, strategy):
    image_processor = processor(strategy)
    layout = build_view_layout(strategy, *STRATEGIES[strategy])
    assert image_processor.view_layout == layout
    other_size = np.asarray(Image.fromarray(rgb).resize((64, 32)))
    out = image_processor([rgb, other_size], return_tensors="pt")
    assert out["pixel_values"].shape == (2, layout.num_views, 3, 32, 32)
    assert out["pixel_values"].dtype == torch.float32
    metadata = [("view_yaw_deg", "yaw_deg"), ("view_pitch_deg", "pitch_deg"), ("view_fov_deg", "hfov_deg"), ("view_vfov_deg", "vfov_deg")]
    for key, attribute in metadata:
        expected = torch.tensor([getattr(view, attribute) for view in layout.views], dtype=torch.float32)
        torch.testing.assert_close(out[key], expected.expand(2, -1), rtol=0, atol=0)
    assert ((out["view_yaw_deg"] > -180) & (out["view_yaw_deg"] <= 180)).all()
    # Each panorama of a mixed-size batch is processed as if alone.
    torch.testing.assert_close(out["pixel_values"][1], image_processor(other_size)["pixel_values"][0])


def test_views_match_py360convert_after_normalisation(rgb):
    out = processor("e2p")(rgb)["pixel_values"][0]
    for view, image in zip(build_view_layout("e2p", 90.0, 0.5).views, out):
        reference = py360convert.e2p(rgb.astype(np.float32), 90.0, view.yaw_deg, view.pitch_deg, (32, 32))
        expected = (torch.from_numpy(reference).permute(2, 0, 1) / 255 - 0.5) / 0.5
        torch.testing.assert_close(image, expected, rtol=0, atol=1e-4)


def test_rescale_and_normalize_switches(rgb):
    image_processor = processor("anyres_e2p")
    raw = sample_views(load_panorama(rgb, keep_uint8=True), image_processor.view_layout, 32)
    torch.testing.assert_close(image_processor(rgb, do_rescale=False, do_normalize=False)["pixel_values"], raw)
    torch.testing.assert_close(image_processor(rgb, do_normalize=False)["pixel_values"], raw / 255)
    torch.testing.assert_close(image_processor(rgb)["pixel_values"], (raw / 255 - 0.5) / 0.5)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    custom = image_processor(rgb, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])["pixel_values"]
    torch.testing.assert_close(custom, (raw / 255 - mean) / std)
    # Letterbox bars are exactly 0 before normalisation.
    bars = image_processor(rgb, do_rescale=False, do_normalize=False)["pixel_values"][0, 0, :, :8]
    assert (bars == 0).all()


def test_float_input_needs_do_rescale_false(rgb):
    image_processor = processor("e2p")
    unit = rgb.astype(np.float32) / 255
    with pytest.raises(PanoramaImageError, match="do_rescale=False"):
        image_processor(unit)
    expected = image_processor(rgb)["pixel_values"]
    torch.testing.assert_close(image_processor(unit, do_rescale=False)["pixel_values"], expected)


def test_invalid_settings_and_call_options(rgb):
    with pytest.raises(ValueError, match="cubemap"):
        PanoVLMImageProcessor(crop_strategy="cubemap", fov_deg=60.0, overlap_ratio=0.0)
    with pytest.raises(ValueError, match="crop_strategy"):
        PanoVLMImageProcessor(crop_strategy="anyres_xl")
    with pytest.raises(ValueError, match="overlap_ratio"):
        PanoVLMImageProcessor(overlap_ratio=1.0)
    with pytest.raises(ValueError, match="image_size"):
        PanoVLMImageProcessor(image_size=0)
    with pytest.raises(TypeError, match="image_szie"):
        PanoVLMImageProcessor(image_szie=256)
    image_processor = processor("e2p")
    with pytest.raises(ValueError, match="fixed at construction"):
        image_processor(rgb, crop_strategy="resize")
    with pytest.raises(ValueError, match="does not support 'size'"):
        image_processor(rgb, size={"height": 16, "width": 16})
    with pytest.raises(ValueError, match="empty"):
        image_processor([])


def test_four_dimensional_batch(rgb):
    image_processor = processor("e2p")
    single = image_processor(rgb)["pixel_values"]
    stacked = np.stack([rgb, rgb])
    torch.testing.assert_close(image_processor(stacked)["pixel_values"], single.expand(2, -1, -1, -1, -1))
    channels_first = torch.from_numpy(stacked).permute(0, 3, 1, 2)
    torch.testing.assert_close(image_processor(channels_first)["pixel_values"], single.expand(2, -1, -1, -1, -1))


def test_return_tensors_np(rgb):
    out = processor("cubemap")(rgb, return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].shape == (1, 4, 3, 32, 32)


def test_save_and_load_round_trip(rgb, tmp_path):
    image_processor = processor("sliding_window", size=24, image_mean=[0.1, 0.2, 0.3], max_erp_width=64)
    image_processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = PanoVLMImageProcessor.from_pretrained(tmp_path)
    settings = loaded.to_dict()
    assert settings == image_processor.to_dict()
    assert {"crop_strategy", "image_size", "fov_deg", "overlap_ratio", "max_erp_width", "image_mean"} <= set(settings)
    torch.testing.assert_close(loaded(rgb)["pixel_values"], image_processor(rgb)["pixel_values"], rtol=0, atol=0)
    # Default settings, including max_erp_width=None, survive too.
    default = PanoVLMImageProcessor()
    default.save_pretrained(tmp_path / "default")
    assert PanoVLMImageProcessor.from_pretrained(tmp_path / "default").to_dict() == default.to_dict()


def test_pitch_rows_crop_and_render_size_settings_round_trip_and_are_fixed(rgb, tmp_path):
    image_processor = processor(
        "anyres_e2p", size=16, pitch_levels_deg=(45, 0, -45), vertical_crop_ratio=0.9, view_render_size=40
    )
    assert image_processor.pitch_levels_deg == [45.0, 0.0, -45.0]
    # Views rendered 40 pixels across over 2 * atan(0.9) = 83.97 degrees vertically need 360 * 40 / 83.97 columns.
    assert image_processor.erp_width_needed == math.ceil(360 * 40 / math.degrees(2 * math.atan(0.9)))
    assert processor("anyres", size=16, anyres_max_patches=2).erp_width_needed == 64  # 360 x 90 degree crops: 4 * 16
    out = image_processor(rgb)
    assert out["pixel_values"].shape == (1, 25, 3, 16, 16)
    assert out["view_pitch_deg"][0, 1:].tolist() == [45.0] * 8 + [0.0] * 8 + [-45.0] * 8
    image_processor.save_pretrained(tmp_path)
    loaded = PanoVLMImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == image_processor.to_dict()
    assert (loaded.pitch_levels_deg, loaded.vertical_crop_ratio, loaded.view_render_size) == ([45.0, 0.0, -45.0], 0.9, 40)
    torch.testing.assert_close(loaded(rgb)["pixel_values"], out["pixel_values"], rtol=0, atol=0)
    image_processor(rgb, pitch_levels_deg=[45, 0, -45])  # the same levels, as given at construction
    with pytest.raises(ValueError, match="fixed at construction"):
        image_processor(rgb, pitch_levels_deg=[0.0])
    with pytest.raises(ValueError, match="view_render_size must be an integer >= image_size"):
        processor("e2p", size=16, view_render_size=8)
    with pytest.raises(ValueError, match="past the pole"):
        processor("e2p", pitch_levels_deg=[80.0])
