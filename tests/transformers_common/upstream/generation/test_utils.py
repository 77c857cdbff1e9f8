"""Stand-in for transformers' `tests/generation/test_utils.py`, which the PyPI sdist does not ship.

`ModelTesterMixin` requires the tester of every generative model to derive from a class of this name. This one holds
PanoVLM's own generation conformance checks, each checking a `generate` mode against an independent reference built
from the model's forward pass: one full forward over the generated sequence, without cache, in which every generated
token must be the argmax of the logits before it (up to a 1e-4 tie tolerance, since a cached decode and a full
forward differ by float rounding, which flips exact near-ties of a random model). On the tester's multimodal inputs:
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

    def _generative_models(self, seed: int = 0):
        from ..test_modeling_common import global_rng  # floats_tensor / ids_tensor draw from it

        global_rng.seed(seed)
        torch.manual_seed(seed)
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            if issubclass(model_class, GenerationMixin):
                torch.manual_seed(0)
                model = model_class(copy.deepcopy(config)).eval()
                yield model, {key: value.clone() for key, value in inputs.items()}

    def _assert_greedy(self, model, inputs: dict, sequences: torch.Tensor, tolerance: float = 1e-4) -> None:
        """Every token of `sequences` after the prompt is, in one full forward without cache, the argmax (up to
        `tolerance`) of the logits before it, the image placeholder excluded (as `suppress_tokens` does)."""
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = sequences.shape[1] - prompt_length
        self.assertEqual(new_tokens, MAX_NEW_TOKENS)
        mask = inputs.get("attention_mask")
        if mask is not None:
            mask = torch.cat([mask, torch.ones(mask.shape[0], new_tokens, dtype=mask.dtype)], dim=1)
        extra = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
        with torch.no_grad():
            logits = model(input_ids=sequences, attention_mask=mask, use_cache=False, **extra).logits
        for position in range(prompt_length, sequences.shape[1]):
            step = logits[:, position - 1].clone()
            step[:, model.config.image_token_id] = -torch.inf
            chosen = step.gather(1, sequences[:, position : position + 1]).squeeze(1)
            gap = step.max(-1).values - chosen
            self.assertTrue((gap <= tolerance).all(), f"token {position} is not greedy: logit gaps {gap.tolist()}")

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

    def test_greedy_generate_with_and_without_cache(self):
        for model, inputs in self._generative_models():
            self._assert_greedy(model, inputs, self._generate(model, inputs))
            self._assert_greedy(model, inputs, self._generate(model, inputs, use_cache=False))

    def test_static_cache_generate(self):
        for model, inputs in self._generative_models():
            self._assert_greedy(model, inputs, self._generate(model, inputs, cache_implementation="static"))

    def test_assisted_decoding_is_greedy(self):
        for model, inputs in self._generative_models():
            assistant = copy.deepcopy(model)
            single = {key: value[:1] for key, value in inputs.items()}  # assisted decoding takes one prompt
            self._assert_greedy(model, single, self._generate(model, single, assistant_model=assistant))

    def test_beam_search_and_sampling_expand_image_features_per_sequence(self):
        for model, inputs in self._generative_models():
            batch = inputs["input_ids"].shape[0]
            beams = self._generate(model, inputs, num_beams=2, num_return_sequences=2)
            self.assertEqual(beams.shape, (2 * batch, inputs["input_ids"].shape[1] + MAX_NEW_TOKENS))
            torch.manual_seed(0)
            sampled = self._generate(model, inputs, do_sample=True, num_return_sequences=3, top_k=0)
            self.assertEqual(sampled.shape[0], 3 * batch)
            # Each returned beam saw its own panorama's features: its first token is one of the two best after its
            # prompt, in a full forward with its own pixels.
            with torch.no_grad():
                first = model(**inputs).logits[:, -1]
            first[:, model.config.image_token_id] = -torch.inf
            top_two = first.topk(2, dim=-1).indices.repeat_interleave(2, dim=0)
            chosen = beams[:, inputs["input_ids"].shape[1]]
            self.assertTrue((top_two == chosen[:, None]).any(-1).all())

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
            self._assert_greedy(model, short, generated[:1, 2:])

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
            self._assert_greedy(model, inputs, resumed)

    def test_generate_from_inputs_embeds_returns_only_new_tokens(self):
        for model, inputs in self._generative_models():
            with torch.no_grad():
                features = model.get_image_features(inputs["pixel_values"], return_dict=True).pooler_output
                embeds = model.get_input_embeddings()(inputs["input_ids"])
                mask = (inputs["input_ids"] == model.config.image_token_id).unsqueeze(-1)
                embeds = embeds.masked_scatter(mask, features.reshape(-1, features.shape[-1]))
                new = self._generate(model, {"inputs_embeds": embeds, "attention_mask": inputs.get("attention_mask")})
            self._assert_greedy(model, inputs, torch.cat([inputs["input_ids"], new], dim=1))

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
