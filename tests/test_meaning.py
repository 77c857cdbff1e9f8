"""What each part of the vision path means, checked against references written here by hand, not against the code
under test: the direction code's values at known directions and its contribution to the image features; the
directions every token of the default layout looks at (literal values, and what its pixels actually see); the order
and content of the image tokens built from the view tensors by hand; batched = one prompt at a time at the level of
logits for left-padded prompts; every configuration default against the predecessor's documented value.

`tools/mutation.py` measures how many planted bugs these (and the other) tests catch."""

import csv
import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import Qwen3Config, SiglipVisionConfig

from configuration_panovlm import PanoVLMConfig, PanoVLMResamplerConfig
from modeling_panovlm.evaluation import generate_captions, greedy_generation_config, group_rows
from modeling_panovlm.panorama import panorama_encoding
from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training.losses import VICRegWeights
from processing_panovlm.data.captions import load_caption_table

from .reference import (
    COLS,
    DROP,
    ROWS,
    literal_directions,
    order_by_hand,
    reference_code,
    reference_table,
    view_tokens_by_hand,
)


def random_pixels(config, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.num_views, 3, config.view_size, config.view_size, generator=generator)


# ---- the direction code ------------------------------------------------------------------------------------------------
def test_direction_code_values_at_known_directions():
    # Looking right (yaw 90) on the horizon: sin(m * 90) = 1, 0, -1, 0; cos(m * 90) = 0, -1, 0, 1; sin 0 = 0, cos 0 = 1.
    right = panorama_encoding(torch.tensor([90.0]), torch.tensor([0.0]), dim=16)[0]
    expected = [1, 0, -1, 0, 0, -1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    torch.testing.assert_close(right, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    # Straight ahead and 30 degrees up: yaw channels sin 0 = 0, cos 0 = 1; pitch channels at 30 * 10000^(-i/4).
    up = panorama_encoding(torch.tensor([0.0]), torch.tensor([30.0]), dim=16)[0]
    rates = [1.0, 0.1, 0.01, 0.001]
    expected = [0.0] * 4 + [1.0] * 4 + [math.sin(30 * r) for r in rates] + [math.cos(30 * r) for r in rates]
    torch.testing.assert_close(up, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    # Behind the camera, from either side of the seam.
    for yaw in (180.0, -180.0):
        behind = panorama_encoding(torch.tensor([yaw]), torch.tensor([-20.0]), dim=32)[0]
        torch.testing.assert_close(behind, torch.tensor(reference_code(180.0, -20.0, 32), dtype=torch.float64), atol=1e-12, rtol=0)


def test_token_directions_of_the_default_layout_are_the_written_out_ones(tiny_mlp):
    model, _ = tiny_mlp
    config = model.config
    assert config.view_token_grid == (ROWS, COLS) and config.view_layout.overlap_columns(COLS) == DROP
    yaw, pitch = config.view_layout.token_directions(config.view_token_grid)
    literal_yaw, literal_pitch = literal_directions()
    # Yaw is not wrapped: compare on the circle.
    np.testing.assert_allclose((yaw - literal_yaw + 180.0) % 360.0 - 180.0, 0.0, atol=1e-9)
    np.testing.assert_allclose(pitch, literal_pitch, atol=1e-9)
    # The model's code table is the direction code of exactly those directions.
    torch.testing.assert_close(model.model.panorama_pe.encoding, reference_table(config.resampler_config.latent_dimension), atol=1e-5, rtol=0)


def direction_panorama(height: int = 256) -> Image.Image:
    """An ERP whose pixels say where they look: red = latitude (0 at -90, 255 at +90), green / blue = sin / cos of
    the longitude (127.5 at 0)."""
    width = 2 * height
    lat = 90.0 - (np.arange(height) + 0.5) * 180.0 / height
    lon = np.radians(-180.0 + (np.arange(width) + 0.5) * 360.0 / width)
    rgb = np.zeros((height, width, 3))
    rgb[..., 0] = ((lat + 90.0) / 180.0 * 255.0)[:, None]
    rgb[..., 1] = (127.5 + 127.5 * np.sin(lon))[None, :]
    rgb[..., 2] = (127.5 + 127.5 * np.cos(lon))[None, :]
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def test_every_token_looks_where_its_pixels_look(tiny_mlp):
    """What the pixels under each token's patch show (read back from the views the processor cut), against the
    direction the positional encoding gives that token. The global view's bar rows are black and have no direction."""
    model, processor = tiny_mlp
    config = model.config
    image_processor = processor.image_processor
    pixels = image_processor(direction_panorama(), return_tensors="pt")["pixel_values"][0].double()  # (V, 3, S, S)
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(image_processor.image_std, dtype=torch.float64)[:, None, None]
    rgb = (pixels * std + mean) * 255.0
    patch = config.view_size // COLS
    cells = rgb.unflatten(2, (ROWS, patch)).unflatten(4, (COLS, patch)).mean(dim=(3, 5))  # (V, 3, rows, cols)
    seen_pitch = cells[:, 0] / 255.0 * 180.0 - 90.0
    seen_yaw = torch.rad2deg(torch.atan2(cells[:, 1] - 127.5, cells[:, 2] - 127.5))
    yaw, pitch = (torch.from_numpy(a) for a in config.view_layout.token_directions(config.view_token_grid))
    yaw_error = (seen_yaw - yaw + 180.0) % 360.0 - 180.0
    # Global view: the two middle rows show the ERP (centres at +/-45); every column is seen where it is encoded.
    torch.testing.assert_close(seen_pitch[0, 1:3], pitch[0, 1:3], atol=1.5, rtol=0)
    assert pitch[0, 0].eq(90).all() and pitch[0, 3].eq(-90).all()
    assert yaw_error[0, 1:3].abs().max() < 1.5
    # Perspective views: within the few degrees between a pinhole view and the equiangular token model (3.6 at most
    # for these 22.5-degree patches).
    torch.testing.assert_close(seen_pitch[1:], pitch[1:], atol=3.0, rtol=0)
    assert yaw_error[1:].abs().max() < 4.5


# ---- what the image features hold ------------------------------------------------------------------------------------
def test_features_are_the_features_without_encoding_plus_the_projected_encoding(tiny_mlp):
    model, _ = tiny_mlp
    config = model.config
    pixels = random_pixels(config)
    inner = model.model
    with torch.no_grad():
        with_pe = model.get_image_features(pixels).pooler_output
        pe = inner.panorama_pe
        inner.panorama_pe = nn.Identity()
        try:
            without_pe = model.get_image_features(pixels).pooler_output
        finally:
            inner.panorama_pe = pe
        projected = reference_table(config.resampler_config.latent_dimension) @ inner.multi_modal_projector.weight.T
    contribution = order_by_hand(projected.reshape(9, ROWS, COLS, -1), True, 1, DROP)
    assert contribution.abs().mean() > 0.1  # the code is not negligible next to the features
    for panorama in range(pixels.shape[0]):
        torch.testing.assert_close(with_pe[panorama] - without_pe[panorama], contribution, atol=2e-5, rtol=1e-4)


def test_image_tokens_are_the_global_view_then_the_strip_row_by_row(tiny_mlp):
    """Tower, resampler, direction code of the written-out directions, projector: each step by hand; then the
    tokens put in order by hand, one at a time."""
    model, _ = tiny_mlp
    config = model.config
    pixels = random_pixels(config, seed=3)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        features = model.get_image_features(pixels).pooler_output
        per_view = view_tokens_by_hand(model, pixels)
        encoded = per_view + reference_table(config.resampler_config.latent_dimension).reshape(9, ROWS, COLS, -1)
        projected = encoded @ projector.weight.T + projector.bias
    assert features.shape == (2, ROWS * COLS + ROWS * (COLS + 7 * (COLS - DROP)), config.text_config.hidden_size)
    for panorama in range(pixels.shape[0]):
        expected = order_by_hand(projected[panorama], True, 1, DROP)
        torch.testing.assert_close(features[panorama], expected, atol=2e-5, rtol=1e-4)
    # The global view's first token is the first image token, the first strip view's first token comes next.
    torch.testing.assert_close(features[:, 0], projected[:, 0, 0, 0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(features[:, ROWS * COLS], projected[:, 1, 0, 0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "settings, has_global, pitch_rows, drop",
    [
        ({"crop_strategy": "e2p", "pitch_levels_deg": [30.0, -30.0]}, False, 2, DROP),
        ({"crop_strategy": "anyres_e2p", "stitching_mode": "concat"}, True, 1, 0),
        ({"crop_strategy": "cubemap"}, False, 1, 0),
    ],
)
def test_image_token_order_of_other_layouts(settings, has_global, pitch_rows, drop):
    model, _ = build_tiny_checkpoint(resampler_type="mlp", hidden_size=32, seed=2, **settings)
    config = model.config
    # Trained LayerNorms: freshly initialised ones (weight 1, bias 0) would make the feature norm an identity on
    # the tower's already normalised output, and a skipped norm would go unseen.
    generator = torch.Generator().manual_seed(7)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.data = 1.0 + 0.5 * torch.randn(module.weight.shape, generator=generator)
            module.bias.data = 0.5 * torch.randn(module.bias.shape, generator=generator)
    pixels = random_pixels(config, batch=1, seed=5)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        features = model.get_image_features(pixels).pooler_output[0]
        encoded = view_tokens_by_hand(model, pixels)[0] + model.model.panorama_pe.encoding.reshape(config.num_views, ROWS, COLS, -1)
        projected = encoded @ projector.weight.T + projector.bias
    torch.testing.assert_close(features, order_by_hand(projected, has_global, pitch_rows, drop), atol=2e-5, rtol=1e-4)


# ---- batched = one prompt at a time, for left-padded prompts ---------------------------------------------------------
QUERIES = ("Hi.", "What is in front of the camera, and what is behind it, far away?", "Left?")


@pytest.fixture(scope="module")
def panoramas():
    return [
        render_panorama([SceneObject("red", "circle", 0.0), SceneObject("blue", "square", 170.0)], height=64),
        render_panorama([SceneObject("green", "triangle", -90.0)], height=64, seed=1),
        render_panorama([SceneObject("yellow", "diamond", 45.0)], height=64, seed=2),
    ]


def prompts(processor):
    return [processor.apply_chat_template(processor.build_messages(q), add_generation_prompt=True) for q in QUERIES]


def test_forward_logits_of_a_left_padded_batch_equal_each_prompt_alone(tiny_mlp, panoramas):
    model, processor = tiny_mlp
    texts = prompts(processor)
    batch = processor(images=panoramas, text=texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(dim=1).tolist() == [True, False, True]  # left padding
    with torch.no_grad():
        batched = model(**batch).logits
        for row, (image, text) in enumerate(zip(panoramas, texts)):
            alone = model(**processor(images=image, text=text, return_tensors="pt")).logits[0]
            torch.testing.assert_close(batched[row, -alone.shape[0] :], alone, atol=1e-5, rtol=1e-4)


def test_generate_logits_of_a_left_padded_batch_equal_each_prompt_alone(tiny_mlp, panoramas):
    model, processor = tiny_mlp
    texts = prompts(processor)
    settings = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    batch = processor(images=panoramas, text=texts, padding=True, return_tensors="pt")
    batched = model.generate(**batch, **settings)
    batched_logits = torch.stack(batched.logits, dim=1)  # (batch, steps, vocab)
    for row, (image, text) in enumerate(zip(panoramas, texts)):
        alone = model.generate(**processor(images=image, text=text, return_tensors="pt"), **settings)
        steps = len(alone.logits)
        torch.testing.assert_close(batched_logits[row, :steps], torch.stack(alone.logits, dim=1)[0], atol=1e-5, rtol=1e-4)
        new = alone.sequences[0, -steps:]
        torch.testing.assert_close(batched.sequences[row, batch["input_ids"].shape[1] :][:steps], new)


def test_evaluation_logits_do_not_depend_on_the_batch_size(tiny_mlp, panoramas, tmp_path):
    model, processor = tiny_mlp
    for index, image in enumerate(panoramas):
        image.save(tmp_path / f"{index}.png")
    with open(tmp_path / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "query", "annotation"])
        writer.writerows([("0.png", QUERIES[0], "x"), ("0.png", QUERIES[1], "y"), ("1.png", QUERIES[2], "z"), ("2.png", QUERIES[1], "w")])
    groups = group_rows(load_caption_table(tmp_path / "test.csv"))
    config = greedy_generation_config(model, max_new_tokens=4)
    recorded: list[torch.Tensor] = []
    original = model.generate

    def recording(**kwargs):
        output = original(**kwargs, output_logits=True, return_dict_in_generate=True)
        recorded.extend(torch.stack(output.logits, dim=1))  # one (steps, vocab) per prompt
        return output.sequences

    model.generate = recording
    try:
        runs = {}
        for batch_size in (4, 1):
            recorded.clear()
            captions, failures, _ = generate_captions(model, processor, groups, batch_size, config, show_progress=False)
            assert failures == {}
            runs[batch_size] = (captions, list(recorded))
    finally:
        del model.generate
    assert runs[4][0] == runs[1][0]
    for batched, alone in zip(runs[4][1], runs[1][1], strict=True):
        torch.testing.assert_close(batched[: alone.shape[0]], alone, atol=1e-5, rtol=1e-4)


# ---- configuration defaults against the predecessor (PanoLLaVA, /work/shared/reference/panollava-seed-system.md) -----
# field -> (default, where the predecessor documents it, or why it differs). A new field fails the test until it is
# entered here with its reason.
CONFIG_DEFAULTS = {
    "image_token_id": (151655, "changed: Qwen's <|image_pad|> instead of an added <|vision|> token (§2.8), so no resize"),
    "crop_strategy": ("anyres_e2p", "§3.4/§10 #17: the default strategy of the seed configs"),
    "fov_deg": (90.0, "§3.4: hFOV 90"),
    "overlap_ratio": (0.5, "§3.4, §4.1: overlap 0.5"),
    "pitch_levels_deg": ([0.0], "§3.4: only pitch 0 for 90-degree tiles in ±45"),
    "vertical_crop_ratio": (1.0, "§3.4: anyres_e2p tiles are uncropped squares (e2p's 0.9 crop is opt-in)"),
    "anyres_max_patches": (9, "§3.1: the YAMLs' 9"),
    "stitching_mode": ("drop_overlap", "§4.1: what seed training used"),
    "resample_columns": (None, "§2.7: stitch_target_to_view_width=False, i.e. the unique column count"),
    "resample_interpolation": ("nearest", "§4.1: stitch_interp='nearest'"),
    "use_panorama_pe": (True, "§2.7: every seed YAML but panovlm.yaml sets it (the schema default false is unused)"),
    "panorama_pe_type": ("direction", "changed: the seed code (§2.7) does not close the circle and encodes the global "
                         "view as a strip view; 'panollava' keeps it"),
    "pe_temperature": (10000.0, "§2.7: T = 10000"),
    "vision_feature_norm": (True, "§2.2: use_vicreg_norm default true"),
    "vicreg_projector_dim": (768, "§2.6: the latent dimension, 768"),
    "vicreg_projector_depth": (2, "§2.6: depth 2"),
    "initializer_range": (0.02, "changed: transformers' convention; the seed used each module's own init"),
    "tie_word_embeddings": (False, "follows text_config (Qwen3-0.6B ties, §2.8), set in __post_init__"),
    "use_cache": (True, "changed: transformers' default for generation; the seed loaded the LM with use_cache=False (§2.8)"),
    "image_mean": ([0.5, 0.5, 0.5], "§3.1: SigLIP's processor mean (0.5, 0.5, 0.5)"),
    "image_std": ([0.5, 0.5, 0.5], "§3.1: SigLIP's processor std (0.5, 0.5, 0.5)"),
    "rescale_factor": (1 / 255, "§3.1: rescale(1/255)"),
    "training_stage": (None, "new: metadata only"),
}
RESAMPLER_DEFAULTS = {
    "resampler_type": ("bimamba", "§2.3: anyres_e2p.yaml's resampler"),
    "latent_dimension": (768, "§2.3: 768 in every seed config"),
    "hidden_dim": (1024, "§2.3 row 1"),
    "depth": (4, "§2.3 row 1"),
    "dropout": (0.05, "§2.3 row 1"),
    "expand": (2.0, "§2.3 row 1 (the YAML with resampler_config)"),
    "d_state": (64, "§2.3 row 1"),
    "d_conv": (4, "§2.3 row 1"),
    "dt_rank": (64, "§2.4: ceil(d_model / 16) = 64 for hidden 1024 ('auto')"),
    "dt_min": (0.001, "§2.4: mamba-ssm's library default"),
    "dt_max": (0.1, "§2.4: mamba-ssm's library default"),
    "dt_init_floor": (1e-4, "§2.4: mamba-ssm's library default"),
    "norm_first": (True, "§2.3/§2.4: pre-norm"),
    "use_ln": (True, "§2.3: mlp preset use_ln True"),
    "num_latents": (64, "§2.5: perceiver 64 latents"),
    "heads": (8, "§2.5: perceiver 8 heads"),
    "dim_head": (64, "§2.5: perceiver dim_head 64"),
    "ff_mult": (4, "§2.5: perceiver ff x4"),
    "num_query_tokens": (64, "§2.3/§2.5: qformer 64 queries"),
    "num_hidden_layers": (6, "§2.3/§2.5: qformer 6 layers"),
    "num_attention_heads": (8, "§2.3/§2.5: qformer 8 heads"),
    "layer_norm_eps": (1e-5, "§2.2/§2.5: LayerNorm eps 1e-5"),
}


def own_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {f.name for f in dataclasses.fields(cls.__mro__[1])} - {
        "vision_config", "text_config", "resampler_config"
    }


@pytest.mark.parametrize("cls, table", [(PanoVLMConfig, CONFIG_DEFAULTS), (PanoVLMResamplerConfig, RESAMPLER_DEFAULTS)])
def test_every_default_is_the_predecessors_or_a_documented_change(cls, table):
    assert own_fields(cls) == set(table), "enter every new field in the table with its source"
    # Sub-configs given explicitly (their own defaults): a bare PanoVLMConfig() logs transformers' one-time "is None,
    # initializing" messages, which the conformance tests expect to see first.
    subs = {"vision_config": SiglipVisionConfig(), "text_config": Qwen3Config(), "resampler_config": PanoVLMResamplerConfig()}
    config = cls(**subs) if cls is PanoVLMConfig else cls()
    for name, (value, source) in table.items():
        actual = getattr(config, name)
        assert type(actual) is type(value) or isinstance(value, float), (name, actual, source)
        assert actual == pytest.approx(value, rel=1e-12) if isinstance(value, float) else actual == value, (name, actual, source)


def test_vicreg_weights_are_the_predecessors():
    # §4.3: weights 25 / 25 / 1, variance target gamma 1.
    assert dataclasses.astuple(VICRegWeights()) == (25.0, 25.0, 1.0, 1.0)


@pytest.mark.parametrize("resampler", ["bimamba", "mlp", "perceiver", "qformer"])
def test_every_layer_norm_of_a_resampler_takes_layer_norm_eps(resampler):
    model, _ = build_tiny_checkpoint(resampler_type=resampler, crop_strategy="e2p", hidden_size=32,
                                     resampler_config={"layer_norm_eps": 1e-3})
    norms = [m for m in model.model.resampler.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-3 for m in norms)
