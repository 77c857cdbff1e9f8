"""Giving a language model without an image placeholder token one.

Qwen2/Qwen3 vocabularies have `<|image_pad|>`, PanoVLM's default placeholder, so nothing is resized for them. For
another language model, `add_image_token` adds a special token to the tokenizer, grows the input embeddings (and
the LM head, which stays tied when the model ties them) by the new rows, and points `config.image_token_id` at it.
"""

from __future__ import annotations

import logging

from transformers import PreTrainedModel, PreTrainedTokenizerBase


logger = logging.getLogger(__name__)


def add_image_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, token: str = "<image>") -> int:
    """Add `token` as a special token of `tokenizer` (if it has none of that name), resize `model`'s embeddings to
    the tokenizer's length and set `model.config.image_token_id`; returns the token's id.

    The new embedding rows are initialised by transformers (the mean of the existing rows). They are trained like
    any embedding row; with LoRA (PEFT), list the embeddings in `modules_to_save` or use `trainable_token_indices`,
    or the adapter will not save them. Build the processor afterwards (`PanoVLMProcessor.from_model_config`), so its
    placeholder is the new token.
    """
    if len(tokenizer.encode(token, add_special_tokens=False)) != 1:
        tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
    (token_id,) = tokenizer.encode(token, add_special_tokens=False)
    vocab_size = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab_size:
        model.resize_token_embeddings(len(tokenizer))
        logger.info("resized the embeddings from %d to %d rows for %r", vocab_size, len(tokenizer), token)
    model.config.image_token_id = token_id
    return token_id


__all__ = ["add_image_token"]
