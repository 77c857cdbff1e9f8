"""PanoVLMConfig: strictness, round trip, every field in config.json, the token-count contract."""

import json

import pytest

from configuration_panovlm import (
    PanoVLMConfig,
    PanoVLMResamplerConfig,
    build_view_layout,
    infer_token_grid,
)


TINY_VISION = {
    "model_type": "siglip_vision_model",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}
TINY_TEXT = {
    "model_type": "qwen3",
    "vocab_size": 300,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
}


def make_config(**kwargs) -> PanoVLMConfig:
    kwargs.setdefault("vision_config", dict(TINY_VISION))
    kwargs.setdefault("text_config", dict(TINY_TEXT))
    kwargs.setdefault("image_token_id", 5)
    return PanoVLMConfig(**kwargs)


def test_defaults_are_the_predecessor_setup():
    config = PanoVLMConfig()
    assert config.vision_config.model_type == "siglip_vision_model"
    assert config.text_config.model_type == "qwen3"
    resampler = config.resampler_config
    assert (resampler.resampler_type, resampler.depth, resampler.hidden_dim, resampler.latent_dimension) == (
        "bimamba",
        4,
        1024,
        768,
    )
    assert (resampler.expand, resampler.d_state, resampler.d_conv, resampler.norm_first) == (2.0, 64, 4, True)
    assert resampler.dt_rank == 64  # ceil(1024 / 16), stored as an integer
    assert (config.crop_strategy, config.stitching_mode, config.image_token_id) == ("anyres_e2p", "drop_overlap", 151655)


def test_every_field_is_written_to_config_json(tmp_path):
    config = make_config(resampler_config={"resampler_type": "bimamba", "hidden_dim": 64, "expand": 1.75})
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    resampler_fields = {f for f in PanoVLMResamplerConfig.__dataclass_fields__} - set(
        PanoVLMResamplerConfig.__mro__[1].__dataclass_fields__
    )
    assert resampler_fields <= set(saved["resampler_config"])
    panovlm_fields = {f for f in PanoVLMConfig.__dataclass_fields__} - set(PanoVLMConfig.__mro__[1].__dataclass_fields__)
    assert panovlm_fields <= set(saved)
    assert saved["resampler_config"]["expand"] == 1.75
    assert saved["resampler_config"]["dt_rank"] == 4


def test_round_trip_gives_an_equal_config(tmp_path):
    config = make_config(crop_strategy="e2p", fov_deg=100, overlap_ratio=0.25, stitching_mode="concat")
    config.save_pretrained(tmp_path)
    loaded = PanoVLMConfig.from_pretrained(tmp_path)
    original, reloaded = config.to_dict(), loaded.to_dict()
    original.pop("_name_or_path", None)
    reloaded.pop("_name_or_path", None)
    assert original == reloaded
    assert isinstance(loaded.resampler_config, PanoVLMResamplerConfig)
    assert loaded.num_image_tokens == config.num_image_tokens


def test_integers_for_float_fields_are_accepted_and_stored_as_floats():
    config = make_config(fov_deg=90, overlap_ratio=0, crop_strategy="cubemap", resampler_config={"expand": 2})
    assert isinstance(config.fov_deg, float) and isinstance(config.resampler_config.expand, float)


def test_predecessor_field_names_and_alias():
    resampler = PanoVLMResamplerConfig(num_layers=3, hidden_dim=96, latent_dimension=48, expand=1.75)
    assert resampler.depth == 3 and resampler.num_layers == 3
    assert resampler.d_inner == 168  # int(1.75 * 96), fractional expand as mamba-ssm rounds it


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_stratgy": "e2p"}, "unknown key 'crop_stratgy' \\(did you mean 'crop_strategy'\\?\\)"),
        ({"fov": 60.0}, "unknown key 'fov' \\(did you mean 'fov_deg'\\?\\)"),
        ({"overlap": 0.3}, "unknown key 'overlap' \\(did you mean 'overlap_ratio'\\?\\)"),
        ({"resampler_config": {"hiden_dim": 8}}, "unknown key 'hiden_dim' \\(did you mean 'hidden_dim'\\?\\)"),
        ({"resampler_config": {"foo": 1}}, "unknown key 'foo'"),
        ({"fov_deg": "wide"}, "fov_deg"),
        ({"crop_strategy": "fisheye"}, "crop_strategy"),
        ({"resampler_config": {"resampler_type": "lstm"}}, "resampler_type"),
        ({"resampler_config": {"expand": 0.0}}, "expand"),
        ({"resampler_config": {"dropout": 1.5}}, "dropout"),
        ({"resampler_config": {"resampler_type": "qformer", "hidden_dim": 30, "num_attention_heads": 8}}, "divisible"),
        ({"resampler_config": {"latent_dimension": 30}}, "divisible by 4"),
        ({"crop_strategy": "cubemap"}, "cubemap"),
        ({"fov_deg": 185.0}, "fov_deg"),
        ({"overlap_ratio": 1.0}, "overlap_ratio"),
        ({"image_token_id": 300}, "outside the language model's vocabulary"),
        ({"vision_config": {"model_type": "siglip"}}, "not supported"),
        ({"vision_config": dict(TINY_VISION, image_size=36)}, "not a multiple"),
        ({"model_type": "llava"}, "model_type"),
    ],
)
def test_strict_construction_rejects(kwargs, message):
    with pytest.raises(Exception, match=message):
        make_config(**kwargs)


def test_drop_overlap_that_would_remove_whole_views_is_rejected():
    # 4x4 tokens per view with 90% overlap would keep 0 of 4 columns of every later view.
    with pytest.raises(Exception, match="drop all"):
        make_config(crop_strategy="e2p", overlap_ratio=0.9)
    make_config(crop_strategy="e2p", overlap_ratio=0.9, stitching_mode="concat")  # fine without dropping


def test_loading_an_unknown_key_from_json_fails(tmp_path):
    make_config().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["resampler_config"]["latent_dim"] = 64
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="latent_dim"):
        PanoVLMConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "crop_strategy, resampler, expected",
    [
        ("resize", "mlp", 16),  # one 4x4 view
        ("e2p", "mlp", 4 * (4 + 7 * 2)),  # 8 views, every later one drops 2 of 4 columns
        ("anyres_e2p", "mlp", 16 + 4 * (4 + 7 * 2)),  # global view kept apart
        ("sliding_window", "bimamba", 4 * (4 + 7 * 2)),
        ("cubemap", "mlp", 4 * 4 * 4),  # faces do not overlap: nothing dropped
        ("anyres_e2p", "perceiver", 16 + 4 * (4 + 7 * 2)),  # 16 latents laid out 4x4
        ("e2p", "qformer", 2 * (8 + 7 * 4)),  # 16 queries laid out 2x8
    ],
)
def test_num_image_tokens(crop_strategy, resampler, expected):
    overrides = {"fov_deg": 90.0, "overlap_ratio": 0.0} if crop_strategy == "cubemap" else {}
    resampler_config = {"resampler_type": resampler, "num_latents": 16, "num_query_tokens": 16, "hidden_dim": 32}
    config = make_config(crop_strategy=crop_strategy, resampler_config=resampler_config, **overrides)
    assert config.num_image_tokens == expected
    if resampler == "qformer":
        assert config.view_token_grid == (4, 4)
    concat = make_config(crop_strategy=crop_strategy, resampler_config=resampler_config, stitching_mode="concat", **overrides)
    rows, cols = concat.view_token_grid
    assert concat.num_image_tokens == concat.num_views * rows * cols


def test_predecessor_token_counts_for_its_default_towers():
    # 16x16 tokens per view (SigLIP2-so400m at 256 px): 8 tiles stitch into 16 x 72 = 1152 tokens (PanoLLaVA's
    # e2p count); the global view is kept apart, 256 + 1152 = 1408 (CORA's count; the seed stitched the global
    # view into the strip as if it were a tile and got 1280).
    so400m = {"model_type": "siglip_vision_model", "image_size": 256, "patch_size": 16}
    assert PanoVLMConfig(vision_config=so400m).num_image_tokens == 1408
    assert PanoVLMConfig(vision_config=so400m, crop_strategy="e2p").num_image_tokens == 1152
    assert PanoVLMConfig().num_image_tokens == 196 + 14 * (14 + 7 * 7)  # SigLIP-base defaults: 224 px -> 14x14
    siglip2 = {"model_type": "siglip2_vision_model", "num_patches": 256, "patch_size": 16}
    assert PanoVLMConfig(vision_config=siglip2).view_size == 256


def test_vision_prefix_tokens():
    clip = make_config(vision_config=dict(TINY_VISION, model_type="clip_vision_model"))
    assert clip.num_vision_prefix_tokens == 1
    registers = make_config(
        vision_config=dict(TINY_VISION, model_type="dinov2_with_registers", num_register_tokens=4)
    )
    assert registers.num_vision_prefix_tokens == 5


def test_tie_word_embeddings_is_forwarded_from_the_text_config():
    assert make_config(text_config=dict(TINY_TEXT, tie_word_embeddings=True)).tie_word_embeddings
    assert not make_config(text_config=dict(TINY_TEXT, tie_word_embeddings=False)).tie_word_embeddings


def test_view_layouts():
    e2p = build_view_layout("e2p", 90.0, 0.5)
    assert [v.yaw_deg for v in e2p.views] == [0, 45, 90, 135, 180, -135, -90, -45]
    assert e2p.overlap == 0.5 and not e2p.has_global_view
    anyres = build_view_layout("anyres_e2p", 90.0, 0.5)
    assert anyres.views[0].kind == "letterbox" and anyres.strip_views == e2p.views
    # The circle is closed with equal steps: 0.25 requested with 90 degree views -> 6 views, 1/3 overlap.
    quarter = build_view_layout("e2p", 90.0, 0.25)
    assert quarter.num_views == 6 and quarter.overlap == pytest.approx(1 / 3)
    cube = build_view_layout("cubemap", 90.0, 0.0)
    assert [v.yaw_deg for v in cube.views] == [0, 90, 180, -90] and cube.overlap == 0.0
    assert build_view_layout("resize", 90.0, 0.5).num_views == 1


def test_overlapping_columns_look_the_same_way():
    layout = build_view_layout("e2p", 90.0, 0.5)
    yaw, pitch = layout.token_directions((4, 8))
    drop = layout.overlap_columns(8)
    assert drop == 4
    for v in range(layout.num_views):
        right_part = yaw[v, :, 8 - drop :]
        neighbour_left = yaw[(v + 1) % layout.num_views, :, :drop]
        # Same direction modulo 360 (the last view's right neighbour is the first one, across the seam).
        assert ((right_part - neighbour_left + 180) % 360 - 180) == pytest.approx(0.0, abs=1e-9)
    assert pitch[0, 0, 0] == pytest.approx(33.75) and pitch[0, -1, 0] == pytest.approx(-33.75)


def test_infer_token_grid():
    assert infer_token_grid(64) == (8, 8)
    assert infer_token_grid(32) == (4, 8)
    assert infer_token_grid(7) == (1, 7)


def test_attributes_set_after_construction_round_trip(tmp_path):
    """What transformers, quantizers, PEFT and test helpers write onto a model config survives save -> load, while
    misspellings of PanoVLM's own fields (above) still raise."""
    config = PanoVLMConfig(text_config=TINY_TEXT, vision_config=TINY_VISION, image_token_id=5)
    config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    config.rms_norm_eps = 1.0  # transformers' set_config_for_less_flaky_test
    config.pad_token_id = 0
    config.text_config.layer_norm_epsilon = 1.0
    config.save_pretrained(tmp_path)
    loaded = PanoVLMConfig.from_pretrained(tmp_path)
    assert loaded.quantization_config == {"quant_method": "bitsandbytes", "load_in_4bit": True}
    assert (loaded.rms_norm_eps, loaded.pad_token_id, loaded.text_config.layer_norm_epsilon) == (1.0, 0, 1.0)
    assert PanoVLMConfig(text_config=TINY_TEXT, vision_config=TINY_VISION, image_token_index=7).image_token_id == 7
