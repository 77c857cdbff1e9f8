"""The model side of the view layout: pitch rows, anyres / anyres_max, `resample` stitching and PanoLLaVA's
positional encoding. For every combination the processor's token count is the model's, save -> load is exact, the
encodings match their definitions, and the vision stage pairs every overlapping strip, horizontal and vertical."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from configuration_panovlm import PanoVLMConfig, build_view_layout
from modeling_panovlm import PanoVLMForConditionalGeneration
from modeling_panovlm.panorama import panollava_encoding, resample_views, stitch_panorama
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint, tiny_config
from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer
from modeling_panovlm.training.losses import VICRegWeights, overlap_pairs, overlap_vicreg_loss

from .conftest import image_prompt_ids


LAYOUTS = {
    "resize": dict(crop_strategy="resize"),
    "e2p": dict(crop_strategy="e2p"),
    "e2p_rows": dict(crop_strategy="e2p", pitch_levels_deg=[45.0, 0.0, -45.0]),
    "anyres_e2p_rows": dict(crop_strategy="anyres_e2p", fov_deg=120.0, overlap_ratio=0.25, pitch_levels_deg=[30.0, -30.0]),
    "cubemap": dict(crop_strategy="cubemap"),
    "sliding_window_rows": dict(crop_strategy="sliding_window", pitch_levels_deg=[45.0, 0.0, -45.0]),
    "anyres": dict(crop_strategy="anyres"),
    "anyres_max": dict(crop_strategy="anyres_max", anyres_max_patches=12),
    "e2p_cropped": dict(crop_strategy="e2p", vertical_crop_ratio=0.9),
}
STITCHING = {
    "concat": dict(stitching_mode="concat"),
    "drop_overlap": dict(stitching_mode="drop_overlap"),
    "resample": dict(stitching_mode="resample"),
    "resample_to_5": dict(stitching_mode="resample", resample_columns=5, resample_interpolation="linear"),
}


@pytest.fixture(scope="module")
def panorama_rgb():
    rows, columns = np.mgrid[0:32, 0:64]
    return np.stack([4 * columns, 8 * rows, 255 - 4 * columns], -1).astype(np.uint8)


@pytest.mark.parametrize("stitching", list(STITCHING))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_processor_and_model_agree_on_the_token_count(layout, stitching, panorama_rgb):
    pe_type = "panollava" if len(layout) % 2 else "direction"  # both encodings, across the combinations
    model, processor = build_tiny_checkpoint(
        view_size=16, patch_size=8, hidden_size=32, panorama_pe_type=pe_type, **LAYOUTS[layout], **STITCHING[stitching]
    )
    config = model.config
    prompt = processor.apply_chat_template(processor.build_messages("ceiling"), add_generation_prompt=True)
    inputs = processor(images=[panorama_rgb, panorama_rgb], text=[prompt, prompt], return_tensors="pt")
    assert processor.num_image_tokens == config.num_image_tokens
    assert (inputs["input_ids"] == config.image_token_id).sum(-1).tolist() == [config.num_image_tokens] * 2
    assert inputs["pixel_values"].shape[1] == config.num_views
    with torch.no_grad():
        features = model.model.get_image_features(**{k: v for k, v in inputs.items() if k.startswith(("pixel", "view"))})
        logits = model(**inputs).logits
    assert features.pooler_output.shape == (2, config.num_image_tokens, config.text_config.hidden_size)
    assert torch.isfinite(logits).all()


def test_every_new_field_round_trips_through_config_model_and_processor(tmp_path, panorama_rgb):
    fields = dict(
        crop_strategy="anyres_e2p",
        fov_deg=120,
        overlap_ratio=0.25,
        pitch_levels_deg=(30, 0, -30),
        vertical_crop_ratio=0.95,
        anyres_max_patches=12,
        stitching_mode="resample",
        resample_columns=7,
        resample_interpolation="linear",
        panorama_pe_type="panollava",
    )
    model, processor = build_tiny_checkpoint(tmp_path, view_size=16, patch_size=8, hidden_size=32, **fields)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pitch_levels_deg"] == [30.0, 0.0, -30.0] and saved["resample_columns"] == 7
    assert saved["panorama_pe_type"] == "panollava" and saved["vertical_crop_ratio"] == 0.95
    loaded = PanoVLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    for name, value in fields.items():
        assert getattr(loaded.config, name) == getattr(model.config, name), name
    assert loaded.config.view_layout is model.config.view_layout
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.image_processor.pitch_levels_deg == [30.0, 0.0, -30.0]
    assert reloaded.image_processor.vertical_crop_ratio == 0.95 and reloaded.resample_columns == 7
    assert reloaded.num_image_tokens == loaded.config.num_image_tokens == 2 * 2 + 3 * 2 * 7
    prompt = reloaded.apply_chat_template(reloaded.build_messages("floor"), add_generation_prompt=True)
    inputs = reloaded(images=panorama_rgb, text=prompt, return_tensors="pt")
    torch.testing.assert_close(inputs["view_vfov_deg"][0, 1], torch.tensor(2 * math.degrees(math.atan(0.95 * math.sqrt(3)))))
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    assert torch.equal(model.model.panorama_pe.encoding, loaded.model.panorama_pe.encoding)


def test_view_metadata_of_another_pitch_or_vertical_crop_is_refused(panorama_rgb):
    model, _ = build_tiny_checkpoint(view_size=16, patch_size=8, hidden_size=32, crop_strategy="e2p", pitch_levels_deg=[45.0, 0.0])
    _, horizon = build_tiny_checkpoint(view_size=16, patch_size=8, hidden_size=32, crop_strategy="e2p", pitch_levels_deg=[45.0, -45.0])
    _, cropped = build_tiny_checkpoint(
        view_size=16, patch_size=8, hidden_size=32, crop_strategy="e2p", pitch_levels_deg=[45.0, 0.0], vertical_crop_ratio=0.9
    )
    for processor, key in ((horizon, "view_pitch_deg"), (cropped, "view_vfov_deg")):
        inputs = processor.image_processor(panorama_rgb, return_tensors="pt")
        with pytest.raises(ValueError, match=key):
            model.model.get_image_features(**inputs)


def panollava_reference(num_views, rows, cols, dim, overlap, temperature=10000.0):
    """PanoLLaVA's encoding, written from its definition in float64: `E(phi) + E(row) + E(g)` with
    `g = v (1 - overlap) + c / w`, `phi = 2 pi g / (V - (V - 1) overlap)`, `E(p) = [sin(p w_i), cos(p w_i)]`."""
    def sinusoid(position):
        freqs = temperature ** (-2.0 * np.arange(dim // 2) / dim)
        angles = position[..., None] * freqs
        return np.concatenate([np.sin(angles), np.cos(angles), np.zeros(angles.shape[:-1] + (dim % 2,))], -1)

    g = np.arange(num_views)[:, None] * (1 - overlap) + np.arange(cols)[None] / cols  # (V, cols)
    phi = 2 * np.pi * g / (num_views - (num_views - 1) * overlap)
    code = sinusoid(phi)[:, None] + sinusoid(np.arange(rows, dtype=np.float64))[None, :, None] + sinusoid(g)[:, None]
    return code.reshape(num_views, rows * cols, dim)


@pytest.mark.parametrize(("strategy", "dim"), [("e2p", 64), ("anyres_e2p", 64), ("e2p", 30)])
def test_panollava_encoding_is_panollavas_value_for_value(strategy, dim):
    layout = build_view_layout(strategy, 90.0, 0.5)
    table = panollava_encoding(layout, (16, 16), dim, 10000.0)
    assert table.dtype == torch.float32 and table.shape == (layout.num_views, 256, dim)
    # PanoLLaVA counted anyres_e2p's global view as the first view of its strip.
    reference = panollava_reference(layout.num_views, 16, 16, dim, 0.5)
    np.testing.assert_allclose(table.numpy(), reference, atol=2e-5, rtol=0)
    if dim % 2 == 0:
        grid = table.reshape(layout.num_views, 16, 16, dim)
        first = int(layout.has_global_view)
        # Continuity: the right half of a view and the left half of the next get identical codes.
        assert torch.equal(grid[first + 1, :, 8:], grid[first + 2, :, :8])


def test_panollava_encoding_continues_the_rows_below_the_first():
    layout = build_view_layout("anyres_e2p", 90.0, 0.5, [45.0, 0.0, -45.0])
    table = panollava_encoding(layout, (4, 4), 16, 10000.0).reshape(25, 4, 4, 16)
    single = panollava_encoding(build_view_layout("anyres_e2p", 90.0, 0.5), (4, 4), 16, 10000.0).reshape(9, 4, 4, 16)
    assert torch.equal(table[:9], single)  # the global view and the top row are PanoLLaVA's strip
    # Rows overlap by half a view: the bottom half of a top-row view shares its token-row code with the top half
    # of the view below it, and views at the same yaw share their yaw and column codes.
    torch.testing.assert_close(table[1, 2:], table[9, :2], atol=1e-6, rtol=0)
    torch.testing.assert_close(table[9, 2:], table[17, :2], atol=1e-6, rtol=0)


def resample_reference(tokens, drop, out_columns, linear):
    """`resample_views` written out in float64: zero-padded interpolation of each view at the strip points,
    averaged with PanoLLaVA's weights `sum_v f_v w_v / sum_v w_v` (f_v already carries the zero padding)."""
    batch, views, rows, cols, dim = tokens.shape
    unique = cols + (views - 1) * (cols - drop)
    points = np.linspace(0.0, unique - 1.0, out_columns)
    out = np.zeros((batch, rows, out_columns, dim))
    for j, point in enumerate(points):
        numerator, denominator = 0.0, 0.0
        for v in range(views):
            x = point - v * (cols - drop)
            taps = [(math.floor(x), 1 - (x - math.floor(x))), (math.floor(x) + 1, x - math.floor(x))] if linear else [(round(x), 1.0)]
            value, weight = 0.0, 0.0
            for column, tap in taps:
                if 0 <= column < cols:
                    value, weight = value + tap * tokens[:, v, :, column].double(), weight + tap
            numerator, denominator = numerator + value * weight, denominator + weight
        out[:, :, j] = (numerator / max(denominator, 1e-6)).numpy() if denominator else 0.0
    return out.reshape(batch, rows * out_columns, dim)


def test_resample_averages_shared_columns_and_compresses_the_strip_as_panollava():
    tokens = torch.randn(2, 8, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    default = resample_views(tokens, 2)  # 4 + 7 * 2 = 18 columns
    assert default.shape == (2, 3 * 18, 5)
    strip = default.reshape(2, 3, 18, 5)
    torch.testing.assert_close(strip[:, :, :2], tokens[:, 0, :, :2])  # seen by the first view only
    torch.testing.assert_close(strip[:, :, 2:4], (tokens[:, 0, :, 2:] + tokens[:, 1, :, :2]) / 2)  # shared: the mean
    torch.testing.assert_close(strip[:, :, 16:], tokens[:, 7, :, 2:])
    # (Widths whose sample points never fall half way between two columns, where nearest rounding is a tie.)
    for out_columns, interpolation in ((18, "nearest"), (7, "linear"), (8, "nearest"), (4, "linear")):
        expected = resample_reference(tokens, 2, out_columns, interpolation == "linear")
        result = resample_views(tokens, 2, out_columns, interpolation)
        np.testing.assert_allclose(result.numpy(), expected, atol=1e-5, rtol=0)
    assert resample_views(tokens.bfloat16(), 2).dtype == torch.bfloat16


def test_each_pitch_row_is_stitched_on_its_own_after_the_global_view():
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tokenizer, crop_strategy="anyres_e2p", pitch_levels_deg=[45.0, 0.0, -45.0], view_size=16, patch_size=8)
    views, rows, cols = config.num_views, *config.view_token_grid  # 25 views of 2 x 2 tokens
    index = torch.arange(views, dtype=torch.float32)[None, :, None, None, None].expand(1, views, rows, cols, 1)
    stitched = stitch_panorama(index, config)[0, :, 0]
    assert stitched.shape == (config.num_image_tokens,) == (4 + 3 * 2 * 9,)
    assert stitched[:4].tolist() == [0.0] * 4  # the global view, unstitched
    first_row = [1.0] * 2 + [float(v) for v in range(2, 9)]  # view 1 keeps both columns, later views their right one
    assert stitched[4:22].tolist() == first_row * 2  # token row 0, then token row 1 of the top pitch row
    assert stitched[22:40].tolist() == [v + 8.0 for v in first_row] * 2
    assert stitched[40:].tolist() == [v + 16.0 for v in first_row] * 2


def test_vision_stage_pairs_horizontal_and_vertical_neighbours():
    """ERP crops in three rows overlapping by half a view both ways: tokens that look the same way carry the same
    embedding, so the invariance is exactly zero over all 24 horizontal and 16 vertical pairs."""
    layout = build_view_layout("sliding_window", 90.0, 0.5, [45.0, 0.0, -45.0])
    yaw, pitch = layout.token_directions((4, 4))
    direction = np.stack([np.sin(np.radians(yaw)), np.cos(np.radians(yaw)), pitch / 90.0], -1)
    embeddings = torch.from_numpy(direction)[None].float().expand(2, -1, -1, -1, -1)
    groups = overlap_pairs(embeddings, layout)
    assert [tuple(first.shape) for first, _ in groups] == [(2 * 24, 8, 3), (2 * 8, 8, 3), (2 * 8, 8, 3)]
    for first, second in groups:
        torch.testing.assert_close(first, second, atol=1e-6, rtol=0)
    for mode in ("pairwise", "batchwise"):
        loss, terms = overlap_vicreg_loss(embeddings, layout, VICRegWeights(1.0, 0.0, 0.0), mode)
        assert terms["invariance"] < 1e-12
    # Swapping two rows breaks the vertical pairs only.
    swapped = embeddings[:, torch.cat([torch.arange(8, 16), torch.arange(8), torch.arange(16, 24)])]
    assert overlap_vicreg_loss(swapped, layout, VICRegWeights(1.0, 0.0, 0.0))[1]["invariance"] > 0.01
    horizontal = overlap_pairs(swapped, layout)[0]
    torch.testing.assert_close(horizontal[0], horizontal[1], atol=1e-6, rtol=0)


def test_vertical_overlap_alone_gives_pairs_and_no_overlap_is_refused():
    rows_only = build_view_layout("e2p", 90.0, 0.0, [45.0, 0.0, -45.0])  # 4 views a row that only touch
    groups = overlap_pairs(torch.randn(1, 12, 4, 4, 3), rows_only)
    assert [tuple(first.shape) for first, _ in groups] == [(4, 8, 3), (4, 8, 3)]
    for layout in (build_view_layout("anyres_max", 90.0, 0.5), build_view_layout("anyres", 90.0, 0.5)):
        with pytest.raises(ValueError, match="no overlap to make consistent"):
            overlap_vicreg_loss(torch.randn(1, layout.num_views, 4, 4, 3), layout)


def test_config_checks_of_the_new_fields():
    # (huggingface_hub's strict dataclasses wrap the ValueError in their own validation error.)
    tokenizer = build_tiny_tokenizer()
    with pytest.raises(Exception, match="resample_columns applies to stitching_mode='resample' only"):
        tiny_config(tokenizer, resample_columns=4)
    with pytest.raises(Exception, match="past the pole"):
        tiny_config(tokenizer, crop_strategy="e2p", pitch_levels_deg=[60.0])
    with pytest.raises(Exception, match="did you mean 'pitch_levels_deg'"):
        PanoVLMConfig(pitch_levels=[0.0])
    # PanoLLaVA's encoding has no width constraint; the direction encoding needs a multiple of 4.
    assert tiny_config(tokenizer, panorama_pe_type="panollava", resampler_config={"latent_dimension": 30})
    with pytest.raises(Exception, match="divisible by 4"):
        tiny_config(tokenizer, resampler_config={"latent_dimension": 30})
    config = tiny_config(tokenizer, crop_strategy="e2p", pitch_levels_deg=[45, 0])
    assert config.pitch_levels_deg == [45.0, 0.0] and config.num_views == 16


def test_ids_for_a_pitched_model_run_through_the_loss():
    model, _ = build_tiny_checkpoint(view_size=16, patch_size=8, hidden_size=32, crop_strategy="e2p", pitch_levels_deg=[45.0, 0.0, -45.0])
    config = model.config
    ids = image_prompt_ids(config)
    pixels = torch.randn(2, config.num_views, 3, 16, 16)
    loss = model(input_ids=ids, pixel_values=pixels, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.multi_modal_projector.weight.grad.abs().sum() > 0


def test_a_config_json_from_before_the_view_fields_loads_as_the_horizon_ring(tmp_path):
    model, _ = build_tiny_checkpoint(tmp_path, view_size=16, patch_size=8, hidden_size=32, crop_strategy="e2p")
    config = json.loads((tmp_path / "config.json").read_text())
    added = ["pitch_levels_deg", "vertical_crop_ratio", "anyres_max_patches", "resample_columns", "resample_interpolation", "panorama_pe_type"]
    for name in added:
        del config[name]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = PanoVLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert [getattr(loaded.config, name) for name in added] == [[0.0], 1.0, 9, None, "nearest", "direction"]
    ids, pixels = image_prompt_ids(model.config, batch=1), torch.randn(1, model.config.num_views, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=pixels).logits, loaded(input_ids=ids, pixel_values=pixels).logits)
