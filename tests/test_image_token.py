"""A language model without an image placeholder gets one: tokenizer, embeddings (tied head included) and config."""

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_panovlm.image_token import add_image_token
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from processing_panovlm import PanoVLMProcessor


def test_add_image_token_resizes_ties_and_round_trips(tmp_path):
    model, processor = build_tiny_checkpoint(resampler_type="mlp", crop_strategy="e2p")
    tokenizer = processor.tokenizer
    rows = model.get_input_embeddings().num_embeddings
    assert len(tokenizer.encode("<image>", add_special_tokens=False)) > 1  # not a token yet
    token_id = add_image_token(model, tokenizer, "<image>")
    assert token_id == rows and model.config.image_token_id == token_id
    assert model.get_input_embeddings().num_embeddings == rows + 1 == model.config.text_config.vocab_size
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    assert add_image_token(model, tokenizer, "<image>") == token_id  # idempotent

    processor = PanoVLMProcessor.from_model_config(model.config, tokenizer)
    prompt = processor.apply_chat_template(processor.build_messages("the red object"), add_generation_prompt=True)
    inputs = processor(images=np.zeros((32, 64, 3), np.uint8), text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == token_id).sum()) == model.config.num_image_tokens
    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path).image_token_id == token_id
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, logits)
