"""PanoVLM model: shapes, merge, loss, the token-count contract, PE geometry, stitching, generation."""

import functools
import math

import pytest
import torch

from configuration_panovlm import build_view_layout
from modeling_panovlm import PanoVLMForConditionalGeneration
from modeling_panovlm.panorama import panorama_encoding, stitch_views
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint

from .conftest import image_prompt_ids
from .reference import COLS, DROP, ROWS, order_by_hand, reference_table, view_tokens_by_hand


def random_pixels(config, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.num_views, 3, config.view_size, config.view_size, generator=generator)


def test_image_features_shape_and_placement(tiny_mlp):
    model, _ = tiny_mlp
    config = model.config
    pixels = random_pixels(config)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        features = model.get_image_features(pixels).pooler_output
        # What the features must hold, by hand: the view tokens (module by module) plus the direction code of the
        # written-out token directions, projected, in the order global view, then the strip row by row.
        encoded = view_tokens_by_hand(model, pixels) + reference_table(config.resampler_config.latent_dimension).reshape(9, ROWS, COLS, -1)
        projected = encoded @ projector.weight.T + projector.bias
        expected = torch.stack([order_by_hand(panorama, True, 1, DROP) for panorama in projected])
    assert features.shape == (2, config.num_image_tokens, config.text_config.hidden_size)
    torch.testing.assert_close(features, expected, atol=2e-5, rtol=1e-4)

    ids = image_prompt_ids(config)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
        # The merge is exactly "embeddings with the image rows replaced by the features, in order".
        embeds = model.get_input_embeddings()(ids)
        embeds[ids == config.image_token_id] = expected.reshape(-1, expected.shape[-1])
        reference = model.lm_head(model.model.language_model(inputs_embeds=embeds).last_hidden_state)
    torch.testing.assert_close(out.logits, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.image_outputs.pooler_output, features)


def test_inputs_embeds_path_matches_input_ids(tiny_mlp):
    model, _ = tiny_mlp
    ids, pixels = image_prompt_ids(model.config), random_pixels(model.config)
    with torch.no_grad():
        by_ids = model(input_ids=ids, pixel_values=pixels).logits
        by_embeds = model(inputs_embeds=model.get_input_embeddings()(ids), pixel_values=pixels).logits
    torch.testing.assert_close(by_ids, by_embeds)


def test_loss_ignores_masked_labels_and_accepts_num_items_in_batch(tiny_mlp):
    model, _ = tiny_mlp
    config = model.config
    ids, pixels = image_prompt_ids(config), random_pixels(config)
    labels = ids.clone()
    labels[ids == config.image_token_id] = -100
    labels[:, :3] = -100
    out = model(input_ids=ids, pixel_values=pixels, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1]).float()
    targets = labels[:, 1:].reshape(-1)
    expected = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    n_items = int((targets != -100).sum())
    summed = model(input_ids=ids, pixel_values=pixels, labels=labels, num_items_in_batch=2 * n_items).loss
    torch.testing.assert_close(summed, expected / 2)
    out.loss.backward()
    assert model.model.resampler.mlp[0].weight.grad is not None
    model.zero_grad()


def test_image_and_padding_positions_are_never_targets(tiny_mlp):
    model, _ = tiny_mlp
    config = model.config
    ids, pixels = image_prompt_ids(config), random_pixels(config)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :2] = 0  # left padding of the second prompt
    masked = ids.masked_fill(ids == config.image_token_id, -100).masked_fill(attention_mask == 0, -100)
    with torch.no_grad():
        naive = model(input_ids=ids, pixel_values=pixels, attention_mask=attention_mask, labels=ids).loss
        explicit = model(input_ids=ids, pixel_values=pixels, attention_mask=attention_mask, labels=masked).loss
    torch.testing.assert_close(naive, explicit)


@pytest.mark.parametrize("resampler", ["bimamba", "mlp", "perceiver", "qformer"])
def test_activation_checkpointing_gives_the_same_gradients(resampler):
    model, _ = build_tiny_checkpoint(resampler_type=resampler, crop_strategy="e2p", hidden_size=32)
    config = model.config
    ids, pixels = image_prompt_ids(config, batch=1), random_pixels(config, batch=1)
    model.train()

    def resampler_grads():
        model.zero_grad()
        model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.model.resampler.named_parameters() if p.grad is not None}

    plain = resampler_grads()
    model.activation_checkpointing_enable()
    resampler_layers = [m for m in model.model.resampler.modules() if getattr(m, "gradient_checkpointing", False)]
    assert bool(resampler_layers) == (resampler != "mlp")  # the MLP has no blocks to checkpoint
    assert model.model.language_model.layers[0].gradient_checkpointing
    checkpointed = resampler_grads()
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)


def test_mismatched_image_token_count_names_both_counts(tiny_mlp):
    model, _ = tiny_mlp
    config = model.config
    ids = image_prompt_ids(config)
    ids[0, 3] = 11  # one image token fewer in the first prompt
    with pytest.raises(ValueError, match=rf"\[{config.num_image_tokens - 1}, {config.num_image_tokens}\].*give {2 * config.num_image_tokens} features \({config.num_image_tokens} each"):
        model(input_ids=ids, pixel_values=random_pixels(config))


@pytest.mark.parametrize(
    "shape, message",
    [((2, 8, 3, 32, 32), "8 views per panorama"), ((2, 9, 3, 48, 48), "must be"), ((9, 3, 32, 32), r"must be \(panoramas, 9")],
)
def test_bad_pixel_values_are_rejected(tiny_mlp, shape, message):
    model, _ = tiny_mlp
    with pytest.raises(ValueError, match=message):
        model.get_image_features(torch.zeros(shape))


def test_view_metadata_disagreeing_with_the_config_is_rejected(tiny_mlp):
    model, _ = tiny_mlp
    config = model.config
    yaw = torch.tensor([[v.yaw_deg for v in config.view_layout.views]] * 2)
    model(input_ids=image_prompt_ids(config), pixel_values=random_pixels(config), view_yaw_deg=yaw)
    with pytest.raises(ValueError, match="view_yaw_deg"):
        model(input_ids=image_prompt_ids(config), pixel_values=random_pixels(config), view_yaw_deg=yaw + 10)


def test_panorama_encoding_is_periodic_in_yaw_and_shared_by_overlapping_columns():
    yaw = torch.tensor([-180.0, 180.0, 540.0, 10.0])
    pitch = torch.zeros(4)
    code = panorama_encoding(yaw, pitch, dim=64)
    torch.testing.assert_close(code[0], code[1], atol=1e-9, rtol=0)  # closes the circle at +/-180
    torch.testing.assert_close(code[0], code[2], atol=1e-9, rtol=0)
    assert not torch.allclose(code[0], code[3])
    assert not torch.allclose(
        panorama_encoding(torch.zeros(1), torch.tensor([10.0]), 64), panorama_encoding(torch.zeros(1), torch.tensor([-10.0]), 64)
    )

    model, _ = build_tiny_checkpoint(resampler_type="mlp", crop_strategy="e2p", view_size=64, hidden_size=32)
    table = model.model.panorama_pe.encoding  # (views, rows*cols, D)
    rows, cols = model.config.view_token_grid
    grid = table.reshape(table.shape[0], rows, cols, -1)
    drop = model.config.view_layout.overlap_columns(cols)
    for v in range(grid.shape[0]):
        # Right part of view v and left part of its right neighbour look the same way: same code.
        torch.testing.assert_close(grid[v, :, cols - drop :], grid[(v + 1) % grid.shape[0], :, :drop], atol=1e-5, rtol=0)


def test_stitching_keeps_each_direction_once():
    views, rows, cols = 8, 2, 4
    layout = build_view_layout("e2p", 90.0, 0.5)
    yaw, _ = layout.token_directions((rows, cols))
    tokens = torch.from_numpy(yaw).reshape(1, views, rows, cols, 1)
    drop = layout.overlap_columns(cols)
    strip = stitch_views(tokens, drop).reshape(rows, -1)
    assert strip.shape == (rows, cols + (views - 1) * (cols - drop))
    # Row-major strip: every row sweeps left to right once around the circle in equal steps.
    steps = (torch.diff(strip[0]) + 180) % 360 - 180  # yaw wraps from 180 to -135 at the seam
    torch.testing.assert_close(steps, torch.full_like(steps, 90.0 / cols), atol=1e-9, rtol=0)
    assert torch.equal(strip[0], strip[1])
    concat = stitch_views(tokens, 0)
    assert concat.shape[1] == views * rows * cols


def test_generate_encodes_the_panorama_once_and_sends_it_at_prefill_only(tiny_mlp, monkeypatch):
    model, _ = tiny_mlp
    config = model.config
    calls, encodings = [], []
    original = model.model.get_image_features

    @functools.wraps(original)  # generate reads the signature to find what to encode
    def counting(*args, **kwargs):
        encodings.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.model, "get_image_features", counting)

    def record(module, args, kwargs):
        image = (kwargs.get("mm_encoder_outputs") or {}).get("image")
        calls.append((kwargs.get("pixel_values") is not None, image is not None))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = model.generate(
            input_ids=image_prompt_ids(config, batch=1), pixel_values=random_pixels(config, batch=1), max_new_tokens=4, min_new_tokens=4, do_sample=False
        )
    finally:
        hook.remove()
    assert encodings == [1]  # generate encodes before the prefill step
    assert calls == [(False, True), (False, False), (False, False), (False, False)]
    assert out.shape[1] == config.num_image_tokens + 7 + 4


def test_from_vision_text_pretrained_copies_both_towers(tmp_path, tiny_mlp):
    from transformers import AutoModel, AutoModelForCausalLM, SiglipConfig, SiglipModel

    source, _ = tiny_mlp
    config = source.config
    vision_dir, text_dir = tmp_path / "vision", tmp_path / "text"
    source.model.vision_tower.save_pretrained(vision_dir)
    lm = AutoModelForCausalLM.from_config(config.text_config)
    lm.save_pretrained(text_dir)

    model = PanoVLMForConditionalGeneration.from_vision_text_pretrained(
        vision_dir, text_dir, resampler_config={"resampler_type": "mlp", "hidden_dim": 32, "latent_dimension": 32}, image_token_id=config.image_token_id
    )
    for name, tensor in source.model.vision_tower.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], tensor)
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(model.model.language_model.state_dict()[name], tensor)
    assert torch.equal(model.lm_head.weight, lm.lm_head.weight)
    assert model.config.resampler_config.hidden_dim == 32

    # A dual-tower SigLIP checkpoint contributes its vision half.
    dual = SiglipModel(SiglipConfig(vision_config=config.vision_config.to_dict(), text_config={"vocab_size": 50, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}))
    dual.save_pretrained(tmp_path / "dual")
    model = PanoVLMForConditionalGeneration.from_vision_text_pretrained(tmp_path / "dual", text_dir, image_token_id=config.image_token_id)
    tower = model.model.vision_tower.state_dict()
    assert set(tower) == set(AutoModel.from_config(config.vision_config).state_dict())
    dual_vision = dual.vision_model.state_dict()
    assert all(torch.equal(tower[name], dual_vision[name]) for name in tower)


@pytest.mark.parametrize("vision_type", ["clip_vision_model", "dinov2", "siglip2_vision_model"])
def test_other_vision_towers(vision_type):
    vision = {"model_type": vision_type, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision.update({"num_patches": 16} if vision_type == "siglip2_vision_model" else {"image_size": 32})
    model, _ = build_tiny_checkpoint(resampler_type="mlp", crop_strategy="e2p", hidden_size=32, vision_config=vision)
    config = model.config
    assert config.patch_grid == (4, 4)
    features = model.get_image_features(random_pixels(config, batch=1)).pooler_output
    assert features.shape == (1, config.num_image_tokens, 32)
    assert math.isfinite(features.sum().item())
