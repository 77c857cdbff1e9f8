"""JPEG panoramas are decoded at the smallest DCT scale that keeps the resolution the views need, the same way at
every entry point (processor, collator), with views close to those of a full decode."""


import pytest
import torch
from PIL import Image

from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from processing_panovlm import PanoVLMImageProcessor
from processing_panovlm.data.collator import PanoVLMDataCollator
from processing_panovlm.image_loading import load_panorama


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    objects = [SceneObject("red", "circle", 0.0), SceneObject("blue", "square", 100.0), SceneObject("green", "triangle", -120.0)]
    path = tmp_path_factory.mktemp("jpeg") / "pano.jpg"
    render_panorama(objects, height=1024).save(path, quality=95)  # 2048 x 1024
    return path


def test_min_width_picks_the_smallest_scale_that_keeps_it(big_jpeg):
    assert load_panorama(big_jpeg).shape[-1] == 2048
    for min_width, expected in ((2048, 2048), (1500, 2048), (1024, 1024), (700, 1024), (300, 512), (200, 256), (10, 256)):
        assert load_panorama(big_jpeg, min_width=min_width).shape[-1] == expected, min_width
    png = big_jpeg.with_suffix(".png")
    Image.open(big_jpeg).save(png)
    assert load_panorama(png, min_width=300).shape[-1] == 2048  # not a JPEG: decoded in full
    assert load_panorama(big_jpeg.read_bytes(), min_width=300).shape[-1] == 512  # bytes too


def test_processor_decodes_only_what_its_views_need_and_the_views_agree(big_jpeg):
    processor = PanoVLMImageProcessor(crop_strategy="e2p", image_size=64, fov_deg=90.0, overlap_ratio=0.5)
    assert processor.erp_width_needed == 256  # 360 / 90 * 64
    assert processor.load(big_jpeg).shape[-1] == 256
    reduced = processor(str(big_jpeg), return_tensors="pt")["pixel_values"]
    full_processor = PanoVLMImageProcessor(
        crop_strategy="e2p", image_size=64, fov_deg=90.0, overlap_ratio=0.5, reduced_decoding=False
    )
    assert full_processor.load(big_jpeg).shape[-1] == 2048
    full = full_processor(str(big_jpeg), return_tensors="pt")["pixel_values"]
    # Both in the normalised range [-1, 1]: PSNR over a peak-to-peak of 2.
    psnr = 10 * torch.log10(4.0 / (reduced - full).pow(2).mean())
    assert psnr > 25, psnr


def test_the_training_collator_sees_the_processors_pixels(big_jpeg):
    _, processor = build_tiny_checkpoint(resampler_type="mlp", crop_strategy="e2p")
    collator = PanoVLMDataCollator(processor, views_only=True)
    row = {"image": str(big_jpeg), "query": "x", "annotation": "y", "prompt_style": "query", "row": 1, "augment": False}
    from_collator = collator([row])["pixel_values"]
    from_processor = processor.image_processor(str(big_jpeg), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_collator, from_processor, atol=1e-5, rtol=0)
