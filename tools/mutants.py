"""The hand-written mutants of `tools/mutation.py`: realistic bugs, one per entry, spread over every area.

Each `Mutant` names its file, the exact original snippet (it must occur once), the replacement, its area, the tests
that should catch it (run with `pytest -x` in this order: the quickest, most direct ones first) and a comment saying
what the bug means. `equivalent=True` marks a mutant no test can catch, with the reason in its comment.
The first five reproduce the bugs an outside measurement planted and the whole suite once missed (issue #20).
"""

from __future__ import annotations

from typing import NamedTuple


AREAS = ("geometry", "model", "resampler", "config", "training", "evaluation", "processor", "hub", "conversion")


class Mutant(NamedTuple):
    id: str
    area: str
    file: str
    original: str | tuple[str, ...]  # several snippets for a bug that touches several places of one file
    replacement: str | tuple[str, ...]
    tests: tuple[str, ...]
    comment: str
    equivalent: bool = False


MEANING = "tests/test_meaning.py"
MODELING = "tests/test_modeling.py"
LAYOUTS = "tests/test_view_layouts.py"
VIEWS = "tests/test_panorama_views.py"
EQUIRECT = "tests/test_equirect.py"
CONFIGURATION = "tests/test_configuration.py"
BIMAMBA = "tests/test_bimamba.py"
ATTENTION = "tests/test_attention_resamplers.py"
METRICS = "tests/test_caption_metrics.py"
EVALUATION = "tests/test_evaluation.py"
PROCESSING = "tests/test_processing.py"
IMAGES = "tests/test_image_processing.py"
REMOTE = "tests/test_remote_code.py"
HUB = "tests/test_hub.py"
LEGACY = "tests/test_legacy_conversion.py"
# The training tests without the three-stage runs (minutes each); the stage runs are listed where a mutant needs them.
TRAINING_UNITS = (
    "tests/test_training.py::test_apply_stage_sets_exactly_the_stage_trainable_set",
    "tests/test_training.py::test_overlap_pairs_match_neighbouring_columns_and_wrap_around",
    "tests/test_training.py::test_vicreg_loss_errors_when_views_do_not_overlap",
    "tests/test_training.py::test_callback_refuses_an_optimizer_holding_frozen_tensors_or_missing_trainable_ones",
    "tests/test_training.py::test_module_learning_rates_reach_the_optimizer_param_groups",
    "tests/test_training.py::test_collator_masks_prompt_image_and_padding_and_keeps_the_answer",
)
VICREG = "tests/test_distributed.py::test_batchwise_vicreg_matches_a_hand_computed_reference"
FULL_DEMO = "tests/test_demo.py::test_full_demo_learns_well_above_chance"

V = "configuration_panovlm/view_layout.py"
E = "processing_panovlm/equirect.py"
F = "modeling_panovlm/image_features.py"
M = "modeling_panovlm/modeling_panovlm.py"
P = "modeling_panovlm/panorama.py"
C = "configuration_panovlm/configuration_panovlm.py"

MUTANTS: list[Mutant] = [
    # ---- the five bugs the whole suite once missed ----------------------------------------------------------------
    Mutant("pe-never-added", "model", F,
           "view_tokens = self.panorama_pe(view_tokens.reshape(panoramas, views, rows * cols, latent))",
           "view_tokens = view_tokens.reshape(panoramas, views, rows * cols, latent)",
           (MEANING, MODELING), "the positional encoding is never added: checkpoints lose all direction information"),
    Mutant("attention-mask-dropped", "model", M,
           "            inputs_embeds=inputs_embeds,\n            attention_mask=attention_mask,",
           "            inputs_embeds=inputs_embeds,\n            attention_mask=None,",
           (MEANING, MODELING, EVALUATION),
           "the LM never sees the attention mask: left-padded rows attend to padding, answers depend on the batch"),
    Mutant("global-view-after-strip", "model", P,
           ("    parts = []\n    if layout.has_global_view:\n        parts.append(view_tokens[:, 0].reshape(batch, rows * cols, dim))",
            "    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]"),
           ("    parts = []\n    global_parts = []\n    if layout.has_global_view:\n"
            "        global_parts.append(view_tokens[:, 0].reshape(batch, rows * cols, dim))",
            "    parts += global_parts\n    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]"),
           (MEANING, VIEWS), "anyres_e2p's global view tokens placed after the strip instead of first"),
    Mutant("letterbox-pitch-not-stretched", "geometry", V,
           "yaw, pitch = view.yaw_deg + across, np.clip(2.0 * up, -90.0, 90.0)",
           "yaw, pitch = view.yaw_deg + across, np.clip(up, -90.0, 90.0)",
           (MEANING, LAYOUTS), "the global view's token pitches ignore the letterbox bars (the ERP fills half the rows)"),
    Mutant("layer-norm-eps-default", "resampler", C,
           "layer_norm_eps: float | int = 1e-5", "layer_norm_eps: float | int = 1e-6",
           (MEANING, CONFIGURATION), "a resampler default differs from the predecessor's (LayerNorm eps 1e-5)"),
    # ---- geometry: view layouts -----------------------------------------------------------------------------------
    Mutant("token-columns-mirrored", "geometry", V,
           "col_frac = (np.arange(cols, dtype=np.float64) + 0.5) / cols - 0.5",
           "col_frac = 0.5 - (np.arange(cols, dtype=np.float64) + 0.5) / cols",
           (MEANING, LAYOUTS, CONFIGURATION), "token columns run right to left inside every view"),
    Mutant("token-rows-flipped", "geometry", V,
           "row_frac = 0.5 - (np.arange(rows, dtype=np.float64) + 0.5) / rows",
           "row_frac = (np.arange(rows, dtype=np.float64) + 0.5) / rows - 0.5",
           (MEANING, LAYOUTS), "token row 0 is taken as the bottom of the view"),
    Mutant("overlap-columns-truncated", "geometry", V,
           "return int(round(grid_width * self.overlap))", "return int(grid_width * self.overlap)",
           (LAYOUTS, CONFIGURATION, VIEWS, MEANING),
           "shared token columns rounded down (4 views of 120 degrees on 3 columns share 0.75 -> 0 instead of 1)"),
    Mutant("ring-too-few-views", "geometry", V,
           "num = max(1, math.ceil(360.0 / step_wanted - 1e-9))", "num = max(1, math.floor(360.0 / step_wanted + 1e-9))",
           (LAYOUTS, CONFIGURATION), "too few views to reach the requested overlap (0.25 -> 5 views, not 6)"),
    Mutant("yaw-180-wrapped-to-minus", "geometry", V,
           "    elif yaw > 180.0:\n        yaw -= 360.0", "    elif yaw >= 180.0:\n        yaw -= 360.0",
           (LAYOUTS, CONFIGURATION, IMAGES, MEANING), "yaw 180 reported as -180, outside (-180, 180]"),
    Mutant("tilt-sign", "geometry", V,
           "y, z = y * math.cos(tilt) + z * math.sin(tilt), z * math.cos(tilt) - y * math.sin(tilt)",
           "y, z = y * math.cos(tilt) - z * math.sin(tilt), z * math.cos(tilt) + y * math.sin(tilt)",
           (LAYOUTS, VIEWS), "tokens of a view looking up are given the directions of one looking down"),
    Mutant("anyres-crops-shifted", "geometry", V,
           "normalize_yaw(-180.0 + (column + 0.5) * width)", "normalize_yaw(-180.0 + column * width)",
           (LAYOUTS, EQUIRECT), "anyres crops centred half a crop to the left of where they are cut"),
    # ---- geometry: equirectangular sampling -----------------------------------------------------------------------
    Mutant("erp-crop-upside-down", "geometry", E,
           "lat = math.radians(view.pitch_deg) - math.radians(view.vfov_deg) * fraction[:, None]",
           "lat = math.radians(view.pitch_deg) + math.radians(view.vfov_deg) * fraction[:, None]",
           (EQUIRECT, MEANING), "ERP crops (sliding_window, anyres) sampled upside down"),
    Mutant("perspective-yaw-sign", "geometry", E,
           "x, z = x * math.cos(yaw) + z * math.sin(yaw), z * math.cos(yaw) - x * math.sin(yaw)",
           "x, z = x * math.cos(yaw) - z * math.sin(yaw), z * math.cos(yaw) + x * math.sin(yaw)",
           (EQUIRECT, MEANING), "perspective views turned left for a positive yaw"),
    Mutant("letterbox-at-top", "geometry", E,
           "    top = (size - content_height) // 2\n", "    top = 0\n",
           (EQUIRECT, MEANING), "the global view's ERP pasted at the top instead of between two bars"),
    Mutant("pole-row-not-rolled", "geometry", E,
           "padded[..., 0, 1:-1] = erp[..., 0, :].roll(width // 2, dims=-1)", "padded[..., 0, 1:-1] = erp[..., 0, :]",
           (EQUIRECT,), "the pixels beyond the north pole taken from the same side of the sphere"),
    Mutant("half-pixel-shift", "geometry", E,
           "x = np.clip((lon / (2 * math.pi) + 0.5) * width - 0.5 + 1, 0, width + 1)",
           "x = np.clip((lon / (2 * math.pi) + 0.5) * width + 1, 0, width + 1)",
           (EQUIRECT,), "half a pixel off in longitude (pixel corners taken for centres)"),
    # ---- model -----------------------------------------------------------------------------------------------------
    Mutant("strip-drops-right-columns", "model", P,
           "rest = view_tokens[:, 1:, :, drop_columns:]", "rest = view_tokens[:, 1:, :, : cols - drop_columns]",
           (MEANING, MODELING), "stitching drops the columns a view does not share instead of the shared ones"),
    Mutant("strip-view-major", "model", P,
           "rest = rest.permute(0, 2, 1, 3, 4).reshape(batch, rows, (num_views - 1) * (cols - drop_columns), dim)",
           "rest = rest.reshape(batch, rows, (num_views - 1) * (cols - drop_columns), dim)",
           (MEANING, MODELING), "the strip's rows mix tokens of different views and token rows"),
    Mutant("yaw-harmonics-from-zero", "model", P,
           "harmonics = torch.arange(1, quarter + 1, dtype=torch.float64, device=device)",
           "harmonics = torch.arange(0, quarter, dtype=torch.float64, device=device)",
           (MEANING, MODELING), "the first yaw harmonic is constant (sin 0, cos 0)"),
    Mutant("pe-subtracted", "model", P,
           "return view_tokens + self.encoding.to(view_tokens.dtype)", "return view_tokens - self.encoding.to(view_tokens.dtype)",
           (MEANING, MODELING), "the code is subtracted"),
    Mutant("padding-labels-count", "model", M,
           "None if attention_mask is None else attention_mask == 0,", "None,",
           (MODELING,), "padding positions count as loss targets"),
    Mutant("prefix-tokens-kept", "model", F,
           "patches = tower.last_hidden_state[:, self.config.num_vision_prefix_tokens :]",
           "patches = tower.last_hidden_state",
           (MODELING,), "the CLS token of CLIP / DINOv2 towers goes into the resampler"),
    Mutant("feature-norm-skipped", "model", F,
           "tokens = self.resampler(self.vision_feature_norm(patches))", "tokens = self.resampler(patches)",
           (MEANING, MODELING), "the LayerNorm over the tower's output is skipped"),
    Mutant("view-metadata-unchecked", "model", F,
           "if not torch.allclose(values, reference, atol=1e-4):", "if False:",
           (MODELING, VIEWS), "views of another layout are accepted and misplaced"),
    Mutant("panollava-pe-strip-length", "model", P,
           "length = max(1e-6, positions - (positions - 1) * overlap)", "length = max(1e-6, float(positions))",
           (VIEWS,), "PanoLLaVA's encoding with the strip length of views that do not overlap"),
    Mutant("resample-unweighted", "model", P,
           "fused = (sampled * weight).sum(1) / weight.sum(1).clamp_min(1e-6)", "fused = sampled.mean(1)",
           (VIEWS,), "resample stitching averages zeros from views that do not see a column"),
    # ---- resamplers ---------------------------------------------------------------------------------------------
    Mutant("bimamba-sum-not-mean", "resampler", "modeling_panovlm/resampler_bimamba.py",
           "self.dropout(0.5 * (forward_out + backward_out))", "self.dropout(forward_out + backward_out)",
           (BIMAMBA,), "both directions summed instead of averaged"),
    Mutant("bimamba-backward-not-flipped-back", "resampler", "modeling_panovlm/resampler_bimamba.py",
           "backward_out = self.backward_block(mixer_input.flip(1)).flip(1)",
           "backward_out = self.backward_block(mixer_input.flip(1))",
           (BIMAMBA,), "the backward scan's output left in reversed token order"),
    Mutant("mamba-a-init", "resampler", "modeling_panovlm/resampler_bimamba.py",
           "init.copy_(self.A_log, torch.log(s4d_real).expand_as(self.A_log))",
           "init.copy_(self.A_log, s4d_real.expand_as(self.A_log))",
           (BIMAMBA,), "A_log initialised to 1..N instead of log(1..N) (S4D-real)"),
    Mutant("mamba-no-softplus", "resampler", "modeling_panovlm/resampler_bimamba.py",
           "            delta_softplus=True,\n", "            delta_softplus=False,\n",
           (BIMAMBA,), "step sizes used without softplus (negative steps)"),
    Mutant("mlp-ln-eps-ignored", "resampler", "modeling_panovlm/resampler_mlp.py",
           "layers.append(nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps))",
           "layers.append(nn.LayerNorm(config.hidden_dim))",
           (MEANING, ATTENTION), "the MLP's LayerNorms ignore layer_norm_eps (same value only at the default)"),
    Mutant("perceiver-latents-not-keys", "resampler", "modeling_panovlm/resampler_perceiver.py",
           "keys = torch.cat([self.context_norm(context), normed_latents], dim=1)", "keys = self.context_norm(context)",
           (ATTENTION,), "latents no longer attend to each other (Flamingo's keys are context + latents)"),
    Mutant("qformer-context-unnormalised", "resampler", "modeling_panovlm/resampler_qformer.py",
           "self.cross_attn(self.cross_attn_norm(queries), self.context_norm(context))",
           "self.cross_attn(self.cross_attn_norm(queries), context)",
           (ATTENTION,), "cross-attention over the unnormalised context"),
    Mutant("attention-scaling", "resampler", "modeling_panovlm/resampler_attention.py",
           "self.scaling = head_dim**-0.5", "self.scaling = head_dim**-1.0",
           (ATTENTION,), "attention scores scaled by 1/d instead of 1/sqrt(d)"),
    Mutant("eager-softmax-axis", "resampler", "modeling_panovlm/resampler_attention.py",
           "weights = F.softmax(weights, dim=-1,", "weights = F.softmax(weights, dim=-2,",
           (ATTENTION,), "eager attention normalised over the queries instead of the keys"),
    # ---- configuration --------------------------------------------------------------------------------------------
    Mutant("global-tokens-not-counted", "config", V,
           "global_tokens = rows * cols if self.has_global_view else 0", "global_tokens = 0",
           (CONFIGURATION, MODELING), "num_image_tokens forgets the global view"),
    Mutant("dt-rank-auto", "config", C,
           "self.dt_rank = math.ceil(self.hidden_dim / 16)", "self.dt_rank = math.ceil(self.hidden_dim / 8)",
           (CONFIGURATION, MEANING), "dt_rank='auto' resolves to another rank than mamba-ssm's"),
    Mutant("tie-not-forwarded", "config", C,
           'if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):',
           "if False:",
           (CONFIGURATION,), "a tied LM (Qwen3-0.6B) is untied inside the composite"),
    Mutant("pe-temperature-default", "config", C,
           "pe_temperature: float | int = 10000.0", "pe_temperature: float | int = 1000.0",
           (CONFIGURATION, MEANING), "the encoding's wavelength base differs from the predecessor's 10000"),
    Mutant("vicreg-head-depth-default", "config", C,
           "vicreg_projector_depth: int = 2", "vicreg_projector_depth: int = 1",
           (CONFIGURATION, MEANING), "the VICReg head is one layer instead of the predecessor's two"),
    Mutant("overlap-default", "config", C,
           "overlap_ratio: float | int = 0.5", "overlap_ratio: float | int = 0.25",
           (CONFIGURATION, MEANING), "the default overlap is not the predecessor's 0.5"),
    Mutant("latent-width-unchecked", "config", C,
           'if self.use_panorama_pe and self.panorama_pe_type == "direction" and self.resampler_config.latent_dimension % 4:',
           "if False:",
           (CONFIGURATION, VIEWS), "a latent width the direction code cannot split is accepted (fails at forward)"),
    Mutant("square-grid-inferred", "config", C,
           "return (rows, cols) if num == rows * cols else infer_token_grid(num)", "return infer_token_grid(num)",
           (CONFIGURATION,),
           "equivalent: the patch grid is always square (side x side) and infer_token_grid(side * side) is "
           "(side, side), so both branches agree for every token-preserving resampler", equivalent=True),
    # ---- training -----------------------------------------------------------------------------------------------
    Mutant("vicreg-variance-unbiased", "training", "modeling_panovlm/training/losses.py",
           "std = torch.sqrt(x.var(dim=1, unbiased=False) + 1e-4)", "std = torch.sqrt(x.var(dim=1, unbiased=True) + 1e-4)",
           (VICREG, *TRAINING_UNITS, FULL_DEMO), "the variance term uses the unbiased variance (PanoLLaVA: biased)"),
    Mutant("vicreg-pairs-wrong-edge", "training", "modeling_panovlm/training/losses.py",
           "second = view_embeddings[:, right, :, :k]", "second = view_embeddings[:, right, :, cols - k :]",
           (*TRAINING_UNITS, VICREG, FULL_DEMO), "the right neighbour's right edge is paired instead of its left edge"),
    Mutant("vicreg-covariance-diagonal", "training", "modeling_panovlm/training/losses.py",
           "off_diagonal = cov.pow(2).sum(dim=(1, 2)) - torch.diagonal(cov, dim1=1, dim2=2).pow(2).sum(dim=-1)",
           "off_diagonal = cov.pow(2).sum(dim=(1, 2))",
           (VICREG, *TRAINING_UNITS, FULL_DEMO), "the covariance term includes the variances on the diagonal"),
    Mutant("vicreg-invariance-weight", "training", "modeling_panovlm/training/losses.py",
           "    invariance: float = 25.0", "    invariance: float = 1.0",
           (MEANING, VICREG, *TRAINING_UNITS), "the invariance weight is not the predecessor's 25"),
    Mutant("resampler-stage-freezes-projector", "training", "modeling_panovlm/training/stages.py",
           '("model.resampler.", "model.multi_modal_projector."), "lm"', '("model.resampler.",), "lm"',
           (*TRAINING_UNITS, FULL_DEMO), "the resampler stage leaves the projector frozen"),
    Mutant("weight-decay-on-mamba-state", "training", "modeling_panovlm/training/trainer.py",
           "decay = 0.0 if name in no_decay else self.args.weight_decay", "decay = self.args.weight_decay",
           ("tests/test_training.py::test_module_learning_rates_reach_the_optimizer_param_groups",),
           "A_log, D and learned queries are weight-decayed"),
    Mutant("first-tower-blocks-trained", "training", "modeling_panovlm/training/stages.py",
           "for block in vision_tower_blocks(model)[-vision_trainable_blocks:]:",
           "for block in vision_tower_blocks(model)[:vision_trainable_blocks]:",
           (*TRAINING_UNITS, FULL_DEMO), "vision_trainable_blocks unfreezes the first tower blocks, not the last"),
    # ---- evaluation and metrics ---------------------------------------------------------------------------------
    Mutant("bleu-unsmoothed", "evaluation", "modeling_panovlm/evaluation/metrics.py",
           "smoothing_function=SmoothingFunction().method1", "smoothing_function=SmoothingFunction().method2",
           ("tests/test_caption_metrics.py::test_panollava_style_matches_the_predecessors_libraries", METRICS),
           "seed-compatible BLEU-4 with another smoothing than the one that reproduces the seed's numbers"),
    Mutant("rouge-unstemmed", "evaluation", "modeling_panovlm/evaluation/metrics.py",
           'RougeScorer(["rougeL"], use_stemmer=True)', 'RougeScorer(["rougeL"], use_stemmer=False)',
           ("tests/test_caption_metrics.py::test_panollava_style_matches_the_predecessors_libraries", METRICS),
           "seed-compatible ROUGE-L without stemming"),
    Mutant("grouped-first-reference-only", "evaluation", "modeling_panovlm/evaluation/metrics.py",
           "return [rows[first].prediction for first, _ in groups.values()], [refs for _, refs in groups.values()]",
           "return [rows[first].prediction for first, _ in groups.values()], [refs[:1] for _, refs in groups.values()]",
           (METRICS, EVALUATION), "the grouped protocol scores against the first reference only"),
    Mutant("generation-right-padded", "evaluation", "modeling_panovlm/evaluation/generation.py",
           'processor.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")',
           'processor.tokenizer(prompts, padding=True, padding_side="right", return_tensors="pt")',
           (MEANING, EVALUATION), "batched evaluation prompts padded on the right: generation continues the padding"),
    Mutant("caption-keeps-last-prompt-token", "evaluation", "modeling_panovlm/evaluation/generation.py",
           'new_tokens = output[:, text["input_ids"].shape[1] :]', 'new_tokens = output[:, text["input_ids"].shape[1] - 1 :]',
           (EVALUATION,),
           "equivalent: the decoded text also holds the prompt's last token, which every chat template PanoVLM saves "
           "ends with (the newline after the assistant header); captions are stripped, so they are the same",
           equivalent=True),
    # ---- processor ------------------------------------------------------------------------------------------------
    Mutant("placeholder-one-short", "processor", "processing_panovlm/processing_panovlm.py",
           "return prompt.replace(self.image_token, self.image_token * self.num_image_tokens)",
           "return prompt.replace(self.image_token, self.image_token * (self.num_image_tokens - 1))",
           (EVALUATION, PROCESSING), "expanded prompts hold one image token too few"),
    Mutant("processor-pads-right", "processor", "processing_panovlm/processing_panovlm.py",
           '        tokenizer.padding_side = "left"\n', '        tokenizer.padding_side = "right"\n',
           (PROCESSING, MEANING), "processors built for a model pad on the right: batched generation breaks"),
    Mutant("yaw-metadata-unwrapped", "processor", "processing_panovlm/image_processing_panovlm.py",
           '"view_yaw_deg": [normalize_yaw(view.yaw_deg) for view in layout.views],',
           '"view_yaw_deg": [view.yaw_deg + 360.0 * (view.yaw_deg < 0) for view in layout.views],',
           (IMAGES, PROCESSING, MODELING), "view yaws reported in [0, 360) instead of (-180, 180]"),
    Mutant("normalise-with-mean-twice", "processor", "processing_panovlm/image_processing_panovlm.py",
           'self.image_mean = _channel_stats(SIGLIP_NORMALISATION[0] if image_mean is None else image_mean, "image_mean")',
           'self.image_mean = _channel_stats(SIGLIP_NORMALISATION[1] if image_mean is None else image_mean, "image_mean")',
           (IMAGES, MEANING),
           "equivalent: SigLIP's mean and std are both (0.5, 0.5, 0.5), so the default mean read from the std "
           "tuple is the same number", equivalent=True),
    # ---- Hub and remote code ----------------------------------------------------------------------------------------
    Mutant("auto-map-bare-model", "hub", "modeling_panovlm/hub/remote_code.py",
           '"AutoModelForImageTextToText": "modeling_panovlm.PanoVLMForConditionalGeneration",',
           '"AutoModelForImageTextToText": "modeling_panovlm.PanoVLMModel",',
           (REMOTE,), "remote code maps AutoModelForImageTextToText to the model without LM head"),
    Mutant("remote-deps-not-followed", "hub", "modeling_panovlm/hub/remote_code.py",
           '            dependencies.append(f"{package}.{node.module}")\n', "            pass\n",
           (REMOTE,), "sibling-relative imports are not followed: the export misses modules"),
    Mutant("card-pipeline-tag", "hub", "modeling_panovlm/hub/cards.py",
           '        library_name="transformers",\n        pipeline_tag="image-text-to-text",',
           '        library_name="transformers",\n        pipeline_tag="image-to-text",',
           (HUB,), "model cards tag the wrong pipeline"),
    # ---- conversion -------------------------------------------------------------------------------------------------
    Mutant("convert-norm-dropped", "conversion", "modeling_panovlm/conversion/panollava.py",
           'vision_feature_norm="vision_backbone.norm.weight" in sd,', "vision_feature_norm=False,",
           (LEGACY,), "converted checkpoints lose the LayerNorm over the tower's output"),
    Mutant("convert-d-inner", "conversion", "modeling_panovlm/conversion/panollava.py",
           'd_inner = tensors["blocks.0.forward_block.in_proj.weight"].shape[0] // 2',
           'd_inner = tensors["blocks.0.forward_block.in_proj.weight"].shape[0]',
           (LEGACY,), "BiMamba's expand read as twice the real one"),
    Mutant("convert-overlap-priority", "conversion", "modeling_panovlm/conversion/panollava.py",
           'overlap = _first(recorded["view_overlap"], recorded["model_overlap"], 0.5)',
           'overlap = _first(recorded["model_overlap"], recorded["view_overlap"], 0.5)',
           (LEGACY,), "the model overlap taken over the overlap the views were sampled with"),
    Mutant("convert-stitching", "conversion", "modeling_panovlm/conversion/panollava.py",
           'stitching_mode="drop_overlap",  # what PanoLLaVA\'s training effectively used',
           'stitching_mode="concat",',
           (LEGACY,), "converted checkpoints stitch otherwise than PanoLLaVA trained them"),
    Mutant("convert-projector-key", "conversion", "modeling_panovlm/conversion/panollava.py",
           '    ("projector.linear.", "model.multi_modal_projector."),\n',
           '    ("projector.linear.", "model.vicreg_projector.mlp.0."),\n',
           (LEGACY,), "the projector's weights land in the VICReg head"),
]
