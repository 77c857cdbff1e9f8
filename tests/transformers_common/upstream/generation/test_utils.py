"""Stand-in for transformers' `tests/generation/test_utils.py`, which the PyPI sdist does not ship.

`ModelTesterMixin` requires the tester of every generative model to derive from a class of this name. This one holds
PanoVLM's own generation conformance checks, each comparing a `generate` mode with an independent reference built
from the model's forward pass (greedy argmax over full-sequence logits), on the tester's multimodal inputs:
greedy with and without cache, static cache, assisted decoding, beam search and sampling with several sequences per
prompt (image features expanded per sequence), left padding, continuing from a returned cache, and `inputs_embeds`.
"""

from __future__ import annotations

import copy

import torch
from transformers import GenerationMixin


MAX_NEW_TOKENS = 4


class GenerationTesterMixin:
    """Mixed into a `unittest.TestCase` that has `model_tester` (with `prepare_config_and_inputs_for_common`) and
    `all_model_classes`."""

    def _generative_models(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            if issubclass(model_class, GenerationMixin):
                torch.manual_seed(0)
                model = model_class(copy.deepcopy(config)).eval()
                yield model, {key: value.clone() for key, value in inputs.items()}

    @staticmethod
    def _greedy_reference(model, inputs: dict, new_tokens: int = MAX_NEW_TOKENS) -> torch.Tensor:
        """Greedy continuation computed with full forward passes and no cache: the reference every mode must match."""
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        extra = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
        with torch.no_grad():
            for _ in range(new_tokens):
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits[:, -1]
                logits[:, model.config.image_token_id] = -torch.inf  # as `suppress_tokens` does in `_generate`
                token = logits.argmax(-1, keepdim=True)
                ids = torch.cat([ids, token], dim=1)
                if mask is not None:
                    mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        return ids

    def _generate(self, model, inputs: dict, **kwargs) -> torch.Tensor:
        # A random model may emit the image placeholder, which the next full forward (the reference) would then count
        # as an image token: suppressed in every mode.
        settings = {
            "max_new_tokens": MAX_NEW_TOKENS,
            "min_new_tokens": MAX_NEW_TOKENS,
            "do_sample": False,
            "suppress_tokens": [model.config.image_token_id],
        }
        with torch.no_grad():
            return model.generate(**inputs, **{**settings, **kwargs})

    def test_greedy_generate_matches_full_forward_argmax(self):
        for model, inputs in self._generative_models():
            reference = self._greedy_reference(model, inputs)
            self.assertTrue(torch.equal(self._generate(model, inputs), reference))
            self.assertTrue(torch.equal(self._generate(model, inputs, use_cache=False), reference))

    def test_static_cache_generate_matches_dynamic(self):
        for model, inputs in self._generative_models():
            self.assertTrue(
                torch.equal(self._generate(model, inputs, cache_implementation="static"), self._generate(model, inputs))
            )

    def test_assisted_decoding_matches_greedy(self):
        for model, inputs in self._generative_models():
            assistant = copy.deepcopy(model)
            single = {key: value[:1] for key, value in inputs.items()}  # assisted decoding takes one prompt
            self.assertTrue(
                torch.equal(self._generate(model, single, assistant_model=assistant), self._generate(model, single))
            )

    def test_beam_search_and_sampling_expand_image_features_per_sequence(self):
        for model, inputs in self._generative_models():
            batch = inputs["input_ids"].shape[0]
            beams = self._generate(model, inputs, num_beams=2, num_return_sequences=2)
            self.assertEqual(beams.shape, (2 * batch, inputs["input_ids"].shape[1] + MAX_NEW_TOKENS))
            torch.manual_seed(0)
            sampled = self._generate(model, inputs, do_sample=True, num_return_sequences=3, top_k=0)
            self.assertEqual(sampled.shape[0], 3 * batch)
            # With a single beam, beam search is greedy: each expanded sequence saw its own panorama's features.
            self.assertTrue(torch.equal(self._generate(model, inputs, num_beams=1), self._greedy_reference(model, inputs)))

    def test_left_padded_batch_matches_each_prompt_alone(self):
        for model, inputs in self._generative_models():
            ids, pixels = inputs["input_ids"], inputs["pixel_values"]
            pad = model.config.text_config.pad_token_id or 0
            # The first prompt shortened by two text tokens, then left-padded back to the batch length.
            short_ids = ids[:1, :-2]
            short = {"input_ids": short_ids, "attention_mask": torch.ones_like(short_ids), "pixel_values": pixels[:1]}
            padded = torch.cat([torch.full((1, 2), pad), short_ids], dim=1)
            padded_mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(short_ids)], dim=1)
            batch = {
                "input_ids": torch.cat([padded, ids[1:2]]),
                "attention_mask": torch.cat([padded_mask, torch.ones_like(ids[1:2])]),
                "pixel_values": pixels[:2],
            }
            with torch.no_grad():
                alone = model(**short).logits[0, -1]
                together = model(**batch).logits[0, -1]
            torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
            generated = self._generate(model, batch)
            self.assertTrue(torch.equal(generated[0, 2:], self._generate(model, short)[0]))

    def test_generate_continues_from_a_returned_cache(self):
        for model, inputs in self._generative_models():
            with torch.no_grad():
                first = model.generate(
                    **inputs,
                    max_new_tokens=2,
                    min_new_tokens=2,
                    do_sample=False,
                    return_dict_in_generate=True,
                    suppress_tokens=[model.config.image_token_id],
                )
                cache = first.cache
                mask = torch.ones_like(first.sequences) if "attention_mask" in inputs else None
                resumed = model.generate(
                    input_ids=first.sequences,
                    attention_mask=mask,
                    cache=cache,
                    max_new_tokens=MAX_NEW_TOKENS - 2,
                    min_new_tokens=MAX_NEW_TOKENS - 2,
                    do_sample=False,
                    suppress_tokens=[model.config.image_token_id],
                )
            self.assertTrue(torch.equal(resumed, self._greedy_reference(model, inputs)))

    def test_generate_from_inputs_embeds_returns_only_new_tokens(self):
        for model, inputs in self._generative_models():
            with torch.no_grad():
                features = model.get_image_features(inputs["pixel_values"], return_dict=True).pooler_output
                embeds = model.get_input_embeddings()(inputs["input_ids"])
                mask = (inputs["input_ids"] == model.config.image_token_id).unsqueeze(-1)
                embeds = embeds.masked_scatter(mask, features.reshape(-1, features.shape[-1]))
                new = self._generate(model, {"inputs_embeds": embeds, "attention_mask": inputs.get("attention_mask")})
            reference = self._greedy_reference(model, inputs)[:, inputs["input_ids"].shape[1] :]
            self.assertTrue(torch.equal(new, reference))

    def test_generate_scores_and_logits_have_one_step_each(self):
        for model, inputs in self._generative_models():
            with torch.no_grad():
                out = model.generate(
                    **inputs,
                    max_new_tokens=MAX_NEW_TOKENS,
                    min_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    return_dict_in_generate=True,
                    output_scores=True,
                    output_logits=True,
                    suppress_tokens=[model.config.image_token_id],
                )
            vocab = model.config.text_config.vocab_size
            self.assertEqual(len(out.scores), MAX_NEW_TOKENS)
            self.assertEqual(out.logits[0].shape, (inputs["input_ids"].shape[0], vocab))
