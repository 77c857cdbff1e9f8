"""Pixels are normalised the way the vision tower was trained: its statistics are read from the tower checkpoint,
recorded in config.json and used by the processor built from the config; a tower without them gets its family's
published values and a warning."""

import logging

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor, CLIPImageProcessor

from configuration_panovlm import PanoVLMConfig
from configuration_panovlm.towers import CLIP_NORMALISATION, IMAGENET_NORMALISATION
from modeling_panovlm import PanoVLMForConditionalGeneration
from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer
from processing_panovlm import PanoVLMProcessor


TOWER = {"patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32}
RESAMPLER = {"resampler_type": "mlp", "hidden_dim": 32, "latent_dimension": 32}


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lm")
    tokenizer = build_tiny_tokenizer()
    from modeling_panovlm.testing.tiny_checkpoint import tiny_config

    lm = AutoModelForCausalLM.from_config(tiny_config(tokenizer).text_config)
    lm.save_pretrained(directory)
    return directory, tokenizer


def _tower(directory, model_type):
    from transformers import AutoConfig

    AutoModel.from_config(AutoConfig.for_model(model_type, **TOWER)).save_pretrained(directory)
    return directory


def test_tower_statistics_come_from_its_image_processor_and_round_trip(tmp_path, language_model):
    lm_dir, tokenizer = language_model
    tower = _tower(tmp_path / "clip", "clip_vision_model")
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(tower)
    model = PanoVLMForConditionalGeneration.from_vision_text_pretrained(
        tower, lm_dir, RESAMPLER, image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"), crop_strategy="e2p"
    )
    assert (model.config.image_mean, model.config.image_std) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    processor = PanoVLMProcessor.from_model_config(model.config, tokenizer)
    assert (processor.image_processor.image_mean, processor.image_processor.image_std) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    model.save_pretrained(tmp_path / "out")
    processor.save_pretrained(tmp_path / "out")
    assert PanoVLMConfig.from_pretrained(tmp_path / "out").image_mean == [0.1, 0.2, 0.3]
    assert AutoProcessor.from_pretrained(tmp_path / "out").image_processor.image_std == [0.4, 0.5, 0.6]
    # What the processor does with them: (x / 255 - mean) / std per channel.
    flat = torch.full((64, 128, 3), 255, dtype=torch.uint8).numpy()
    pixels = processor.image_processor(flat, return_tensors="pt")["pixel_values"]
    expected = (1.0 - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor([0.4, 0.5, 0.6])
    torch.testing.assert_close(pixels[0, 0, :, 5, 5], expected)


@pytest.mark.parametrize("model_type, statistics", [("clip_vision_model", CLIP_NORMALISATION), ("dinov2", IMAGENET_NORMALISATION)])
def test_a_tower_without_image_processor_gets_its_family_values_and_a_warning(tmp_path, language_model, caplog, model_type, statistics):
    lm_dir, tokenizer = language_model
    tower = _tower(tmp_path / model_type, model_type)
    with caplog.at_level(logging.WARNING):
        model = PanoVLMForConditionalGeneration.from_vision_text_pretrained(
            tower, lm_dir, RESAMPLER, image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"), crop_strategy="e2p"
        )
    assert "has no image processor config" in caplog.text
    assert model.config.image_mean == list(statistics[0]) and model.config.image_std == list(statistics[1])


def test_older_checkpoints_mean_siglip_statistics():
    # Before the statistics were recorded every processor used SigLIP's, whatever the tower: a CLIP checkpoint of
    # that time was trained with them, not with CLIP's published values.
    config = PanoVLMConfig(vision_config={"model_type": "clip_vision_model", **TOWER}).to_dict()
    assert config["image_mean"] == list(CLIP_NORMALISATION[0])
    del config["image_mean"], config["image_std"], config["rescale_factor"]
    loaded = PanoVLMConfig.from_dict(config)
    assert loaded.image_mean == [0.5, 0.5, 0.5] and loaded.image_std == [0.5, 0.5, 0.5]
