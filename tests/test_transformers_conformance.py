"""transformers' own common tests (ModelTesterMixin, ConfigTester, ProcessorTesterMixin from the installed version's
sdist; see `tests/transformers_common`) on tiny PanoVLMs, with a tester modelled on LLaVA's
(`tests/models/llava/test_modeling_llava.py` in the transformers repository).

Two model testers cover the mlp and bimamba resamplers and the `anyres_e2p` and `e2p` layouts. Nothing is skipped
beyond the common tests' own conditions (GPU, flash attention, DeepSpeed, `RUN_SLOW`...); LLaVA's file skips its
gradient-checkpointing tests, which PanoVLM passes.
"""

from __future__ import annotations

import copy
import unittest

import numpy as np
import torch
from PIL import Image
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, MODEL_MAPPING_NAMES

import modeling_panovlm  # noqa: F401  (registers the Auto classes)
from configuration_panovlm import PanoVLMConfig
from modeling_panovlm import PanoVLMForConditionalGeneration, PanoVLMModel
from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer
from processing_panovlm import PanoVLMImageProcessor, PanoVLMProcessor
from tests.transformers_common.upstream.generation.test_utils import GenerationTesterMixin
from tests.transformers_common.upstream.test_configuration_common import ConfigTester
from tests.transformers_common.upstream.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor
from tests.transformers_common.upstream.test_processing_common import ProcessorTesterMixin


IMAGE_TOKEN_ID = 3
# The common tests treat classes named in transformers' own Auto tables as the base model / the image-text-to-text
# model (e.g. `test_training` skips base models, `test_get_image_features_pooler_output` checks VLMs only). An
# out-of-tree model registers through `AutoModel.register`, which these name tables do not read: add PanoVLM's names
# as an in-tree model would have them.
MODEL_MAPPING_NAMES.setdefault("panovlm", "PanoVLMModel")
MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.setdefault("panovlm", "PanoVLMForConditionalGeneration")


class PanoVLMModelTester:
    """Tiny PanoVLM configs and inputs, in the shape of LLaVA's `LlavaVisionText2TextModelTester`."""

    def __init__(self, parent, resampler_type: str, crop_strategy: str, batch_size: int = 3, seq_length: int = 7):
        self.parent = parent
        self.resampler_type = resampler_type
        self.crop_strategy = crop_strategy
        self.text_config = {
            "model_type": "qwen3",
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 512,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
            "initializer_range": 0.02,
        }
        self.vision_config = {
            "model_type": "siglip_vision_model",
            "image_size": 16,
            "patch_size": 4,
            "num_channels": 3,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "initializer_range": 0.02,
        }
        self.resampler_config = {
            "mlp": {"resampler_type": "mlp", "hidden_dim": 32, "latent_dimension": 32, "depth": 2, "dropout": 0.0},
            "bimamba": {
                "resampler_type": "bimamba",
                "hidden_dim": 16,
                "latent_dimension": 32,
                "depth": 1,
                "d_state": 4,
                "expand": 2,
                "dropout": 0.0,
            },
        }[resampler_type]
        self.batch_size = batch_size
        self.is_training = True
        self.pad_token_id = self.text_config["pad_token_id"]
        self.vocab_size = self.text_config["vocab_size"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.num_image_tokens = self.get_config().num_image_tokens
        self.seq_length = seq_length + self.num_image_tokens
        self.encoder_seq_length = self.seq_length

    def get_config(self) -> PanoVLMConfig:
        return PanoVLMConfig(
            vision_config=self.vision_config,
            text_config=self.text_config,
            resampler_config=self.resampler_config,
            image_token_id=IMAGE_TOKEN_ID,
            crop_strategy=self.crop_strategy,
            vicreg_projector_depth=0,  # the vision stage's head is not part of a model trained on text
        )

    def prepare_config_and_inputs(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, config.num_views, 3, config.view_size, config.view_size])
        return config, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        input_ids = ids_tensor([self.batch_size, self.seq_length], config.text_config.vocab_size - 4) + 4
        input_ids[:, : self.num_image_tokens] = config.image_token_id
        attention_mask = torch.ones(input_ids.shape, dtype=torch.long)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


class _PanoVLMModelTest(ModelTesterMixin, GenerationTesterMixin):
    """Shared by the concrete test cases below (one per resampler and layout)."""

    all_model_classes = (PanoVLMModel, PanoVLMForConditionalGeneration)
    _is_composite = True
    resampler_type = crop_strategy = None

    def setUp(self):
        self.model_tester = PanoVLMModelTester(self, self.resampler_type, self.crop_strategy)
        common_properties = ["image_token_id", "crop_strategy", "stitching_mode"]
        self.config_tester = ConfigTester(
            self, config_class=PanoVLMConfig, has_text_modality=False, common_properties=common_properties
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_mismatching_num_image_tokens(self):
        """As LLaVA's test: a prompt/panorama count mismatch raises, naming the counts; several panoramas in one
        prompt work."""
        config, input_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            inputs = copy.deepcopy(input_dict)
            model(**inputs)
            inputs["pixel_values"] = inputs["pixel_values"][-1:]
            with self.assertRaisesRegex(ValueError, "image tokens do not match"):
                model(**inputs)
            input_ids = torch.cat([inputs["input_ids"][:1]] * 2)
            with self.assertRaisesRegex(ValueError, "image tokens do not match"):
                model(input_ids=input_ids, pixel_values=inputs["pixel_values"][:1])
            model(input_ids=input_ids, pixel_values=torch.cat([inputs["pixel_values"][:1]] * 2))


class PanoVLMMlpAnyresE2PTest(_PanoVLMModelTest, unittest.TestCase):
    resampler_type, crop_strategy = "mlp", "anyres_e2p"


class PanoVLMBiMambaE2PTest(_PanoVLMModelTest, unittest.TestCase):
    resampler_type, crop_strategy = "bimamba", "e2p"


def _panorama(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(32, 64, 3), dtype=np.uint8))


class PanoVLMProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = PanoVLMProcessor
    image_token = "<|image_pad|>"
    # The max-length hooks the mixin offers: a panorama expands to 72 image tokens here (8 views), and the tiny
    # tokenizer spells the mixin's text in more tokens than LLaVA's; each length still cuts or pads every prompt.
    images_unstructured_max_length = 96
    images_text_kwargs_override_max_length = 112
    images_text_kwargs_max_length = 117

    @classmethod
    def _setup_image_processor(cls):
        return PanoVLMImageProcessor(crop_strategy="e2p", image_size=16, fov_deg=90.0, overlap_ratio=0.5)

    @classmethod
    def _setup_tokenizer(cls):
        return build_tiny_tokenizer()

    @staticmethod
    def prepare_processor_dict():
        return {"view_token_grid": [4, 4], "stitching_mode": "drop_overlap"}

    def prepare_images_inputs(self, batch_size: int | None = None, nested: bool = False):
        # Equirectangular panoramas (2:1); the mixin's default images are not, and PanoVLM refuses those by design.
        if batch_size is None:
            return _panorama()
        images = [_panorama(index) for index in range(batch_size)]
        return [[image] for image in images] if nested else images

    def _check_num_image_tokens_match_processor_call(self, processor, **kwargs):
        """The mixin's check (vLLM sizes its buffers with `_get_num_multimodal_tokens`: its counts must equal what a
        call inserts, one and two images per prompt) on equirectangular panoramas of several sizes: its own random
        sizes are not 2:1, which PanoVLM refuses by design (asserted here too)."""
        with self.assertRaisesRegex(ValueError, "not an equirectangular panorama"):
            processor(text=f"x {self.image_token}", images=np.zeros((100, 300, 3), dtype=np.uint8), **kwargs)
        sizes = [(32, 64), (50, 100), (17, 34), (64, 128)]
        images = [np.random.randint(255, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
        for per_prompt in (1, 2):
            text = [f"These are images {self.image_token * per_prompt}"] * len(images)
            inputs = processor(
                text=text, images=images * per_prompt, **kwargs, padding=True, return_text_replacement_offsets=True,
                return_tensors="pt",
            )
            from_call = self._count_embed_tokens(processor, inputs, "image")
            from_helper = processor._get_num_multimodal_tokens(image_sizes=sizes * per_prompt, **kwargs)
            self.assertListEqual(from_call, from_helper["num_image_tokens"])
            self.assertEqual(from_call, [processor.num_image_tokens] * len(images) * per_prompt)
