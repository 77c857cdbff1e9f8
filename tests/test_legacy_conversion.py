"""PanoLLaVA -> PanoVLM conversion on synthetic predecessor runs built here from a tiny PanoVLM: PanoLLaVA's key
names (vision tower under `vision_backbone.encoder.`, LM under `language_model.`, duplicate aliases,
`vision_backbone.norm.*`, a BiMamba resampler with expand 1.75, projector, VICReg head), a Lightning `.ckpt`,
`checkpoint_metadata.json` complete / truncated exactly as PanoLLaVA wrote it / absent, `best.ckpt` / `last.ckpt`
links or timestamped files only, and a `lora_weights/` PEFT folder with the LM PEFT-wrapped in the checkpoint."""

import json
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from modeling_panovlm.conversion.legacy_run import LegacyConversionError, load_legacy_run, salvage_json
from modeling_panovlm.conversion.panollava import plan_conversion, write_conversion
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint


CLI = Path(__file__).resolve().parents[1] / "examples" / "convert_panollava_checkpoint.py"
PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the panorama."}]}]
# PanoVLM key prefix -> PanoLLaVA's, and PanoLLaVA's second registrations of the same tensors.
LEGACY_PREFIXES = (
    ("model.vision_tower.", "vision_backbone.encoder."),
    ("model.vision_feature_norm.", "vision_backbone.norm."),
    ("model.resampler.", "resampler_module.resampler."),
    ("model.multi_modal_projector.", "projector.linear."),
    ("model.vicreg_projector.", "vicreg_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
ALIASES = (("resampler_module.resampler.", "resampler."), ("projector.linear.", "vision_to_language_projection."))


class PydanticLike:
    """Stands in for the pydantic object that made PanoLLaVA's json.dump stop half-way."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, panorama):
    """A tiny PanoVLM shaped like PanoLLaVA's default (BiMamba, expand 1.75, e2p), its towers' configs on disk
    (the text config with a padded vocabulary, as PanoLLaVA's resize left it) and reference logits."""
    root = tmp_path_factory.mktemp("tiny")
    model, processor = build_tiny_checkpoint(
        resampler_type="bimamba", crop_strategy="e2p", seed=4, resampler_config={"expand": 1.75}
    )
    model.config.vision_config.save_pretrained(root / "vision")
    text_config = model.config.text_config.to_dict()
    text_config["vocab_size"] += 8
    (root / "text").mkdir()
    (root / "text" / "config.json").write_text(json.dumps(text_config))
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
    inputs = processor(images=panorama, text=text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    return {"model": model, "root": root, "inputs": inputs, "logits": logits}


def legacy_state_dict(model, lm_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """`model`'s tensors under PanoLLaVA's names with Lightning's `model.` prefix; `lm_state` replaces the language
    model's (e.g. a PEFT-wrapped causal LM's state dict)."""
    legacy = {}
    for key, tensor in model.state_dict().items():
        if lm_state is not None and (key.startswith("model.language_model.") or key == "lm_head.weight"):
            continue
        ours, theirs = next((o, t) for o, t in LEGACY_PREFIXES if key.startswith(o))
        legacy[theirs + key.removeprefix(ours)] = tensor.clone()
    for key, tensor in (lm_state or {}).items():
        legacy["language_model." + key] = tensor.clone()
    for canonical, alias in ALIASES:
        legacy.update({alias + k.removeprefix(canonical): t.clone() for k, t in legacy.items() if k.startswith(canonical)})
    return {"model." + key: tensor for key, tensor in legacy.items()}


def peft_language_model(model) -> PeftModel:
    """PanoLLaVA's finetune LM: the causal LM wrapped by PEFT (LoRA on q/v), lora_B non-zero."""
    lm = AutoModelForCausalLM.from_config(model.config.text_config)
    lm.model.load_state_dict(model.model.language_model.state_dict())
    lm.lm_head.load_state_dict(model.lm_head.state_dict())
    peft_lm = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(5)
    for name, parameter in peft_lm.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_()
    return peft_lm.eval()


def write_run(run_dir: Path, state_dict, hparams, metadata: str = "complete", layout: str = "links", **overrides):
    """A PanoLLaVA stage directory. `metadata`: complete / truncated / absent; `layout`: best+last links, a plain
    last.ckpt, or timestamped files only (the newest is the real one)."""
    run_dir.mkdir(parents=True)
    checkpoint = {"state_dict": state_dict, "hyper_parameters": hparams, "datamodule_hyper_parameters": {
        "crop_strategy": "e2p", "fov_deg": 90.0, "overlap_ratio": 0.5, "image_size": (32, 32), "max_text_length": 64}}
    name = "siglip_bimamba_e2p_train_epoch01_loss2.4910.ckpt"
    older = {"state_dict": {"model.stale": torch.zeros(1)}, "hyper_parameters": {}}
    if layout == "links":
        torch.save(checkpoint, run_dir / name)
        torch.save(older, run_dir / "stale.ckpt")
        (run_dir / "best.ckpt").symlink_to(name)
        (run_dir / "last.ckpt").symlink_to("stale.ckpt")
    elif layout == "last":
        torch.save(checkpoint, run_dir / "last.ckpt")
    else:
        torch.save(older, run_dir / "siglip_bimamba_e2p_train_epoch00_loss3.1000.ckpt")
        torch.save(checkpoint, run_dir / name)
        os.utime(run_dir / "siglip_bimamba_e2p_train_epoch00_loss3.1000.ckpt", (1_000_000, 1_000_000))
    resampler_config = {"depth": 2, "hidden_dim": 64, "dropout": 0.0, "expand": 1.75, "d_state": 8, "d_conv": 4,
                        "norm_first": True, "use_ln": True, "num_views": 8, **overrides}
    content = {
        "experiment_name": "tiny", "stage": "finetune", "stage_canonical": "finetune",
        "model_config": {"vision_name": hparams["vision_name"], "language_model_name": hparams["language_model_name"],
                         "resampler_type": "bimamba", "latent_dimension": 64, "image_size": [32, 32],
                         "max_text_length": 64, "vicreg_loss_weight": 1.0, "overlap_ratio": 0.5,
                         "resampler_config": resampler_config if metadata == "complete" else PydanticLike(),
                         "resampler_hidden_dim": None},
        "training_config": {"learning_rate": 5e-5, "crop_strategy": "e2p", "fov_deg": 90.0, "overlap_ratio": 0.5},
    }
    if metadata != "absent":
        with (run_dir / "checkpoint_metadata.json").open("w", encoding="utf-8") as file:
            try:  # PanoLLaVA's MetadataCallback, verbatim in effect: the dump stops at the pydantic object
                json.dump(content, file, indent=2, ensure_ascii=False)
            except TypeError:
                pass
    return run_dir


def hparams_for(tiny, **changes) -> dict:
    return {"stage": "finetune", "lr": 5e-5, "use_lora": False, "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
            "vision_name": str(tiny["root"] / "vision"), "language_model_name": str(tiny["root"] / "text"),
            "resampler_type": "bimamba", "latent_dimension": 64, "model_overlap_ratio": 0.5, **changes}


@pytest.mark.parametrize(
    ("metadata", "layout", "lora"), [("complete", "links", True), ("truncated", "timestamped", False), ("absent", "last", False)]
)
def test_run_converts_to_an_identical_panovlm(tmp_path, tiny, metadata, layout, lora):
    model = tiny["model"]
    peft_lm = peft_language_model(model) if lora else None
    state = legacy_state_dict(model, peft_lm.state_dict() if lora else None)
    run_dir = write_run(tmp_path / "run", state, hparams_for(tiny, use_lora=lora), metadata, layout)
    if lora:
        peft_lm.save_pretrained(run_dir / "lora_weights", safe_serialization=False)

    run = load_legacy_run(run_dir)
    real = "last.ckpt" if layout == "last" else "siglip_bimamba_e2p_train_epoch01_loss2.4910.ckpt"
    assert run.metadata_status == metadata and run.checkpoint.resolve().name == real
    if metadata == "truncated":
        assert run.metadata["model_config"]["overlap_ratio"] == 0.5 and "resampler_config" not in run.metadata["model_config"]
    conversion = plan_conversion(run, image_token_id=model.config.image_token_id)
    report = conversion.report
    assert report.complete, (report.unused, report.missing, report.mismatched)
    assert {row.name for row in report.rows if row.disagrees} == {"text.vocab_size"}  # the padded vocabulary
    used = {row.name: row.used for row in report.rows}
    assert {k: used[f"resampler.{k}"] for k in ("hidden_dim", "depth", "expand", "d_state", "d_conv", "dt_rank")} == {
        "hidden_dim": 64, "depth": 2, "expand": 1.75, "d_state": 8, "d_conv": 4, "dt_rank": 4}
    if metadata == "complete":  # sizes inferred from shapes equal the recorded ones
        recorded = {row.name: row.recorded for row in report.rows}
        assert recorded["resampler.expand"] == 1.75 and recorded["resampler.hidden_dim"] == 64
    # PanoLLaVA's second copies of the resampler and projector, and the checkpoint's copy of the LoRA tensors.
    copies = [k for k in state if k.startswith(("model.resampler.", "model.vision_to_language")) or ".lora_" in k]
    assert len(report.aliases) == len(copies)

    output = write_conversion(conversion, tmp_path / "converted")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converted")]
    converted, info = AutoModelForImageTextToText.from_pretrained(output, output_loading_info=True)
    assert all(not v for v in info.values()), info
    reference = model.state_dict()
    assert all(torch.equal(tensor, reference[key]) for key, tensor in converted.state_dict().items())
    assert converted.config.training_stage == "finetune" and converted.config.resampler_config.expand == 1.75
    with torch.no_grad():
        assert torch.equal(converted.eval()(**tiny["inputs"]).logits, tiny["logits"])
    assert (output / "adapter").exists() == lora
    if lora:
        adapter_config = json.loads((output / "adapter" / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == str(output)
        with_adapter = PeftModel.from_pretrained(converted, output / "adapter").eval()
        adapter = get_peft_model_state_dict(with_adapter)
        prefix, ours = "base_model.model.model.", "base_model.model.model.language_model."
        source = {ours + k.removeprefix(prefix): t for k, t in get_peft_model_state_dict(peft_lm).items()}
        assert sorted(adapter) == sorted(source) and all(torch.equal(adapter[k], t) for k, t in source.items())
        ids = tiny["inputs"]["input_ids"][:, -6:]  # text only: the LoRA'd LM must behave exactly as PanoLLaVA's
        with torch.no_grad():
            assert torch.allclose(with_adapter(input_ids=ids).logits, peft_lm(input_ids=ids).logits, atol=1e-6)


def test_disagreements_are_reported_and_the_weights_decide(tmp_path, tiny):
    state = legacy_state_dict(tiny["model"])
    run_dir = write_run(tmp_path / "run", state, hparams_for(tiny), expand=2.0, hidden_dim=80, d_state=8)
    report = plan_conversion(load_legacy_run(run_dir), image_token_id=tiny["model"].config.image_token_id).report
    rows = {row.name: row for row in report.rows if row.disagrees}
    assert set(rows) == {"resampler.expand", "resampler.hidden_dim", "text.vocab_size"}
    assert (rows["resampler.expand"].recorded, rows["resampler.expand"].observed, rows["resampler.expand"].used) == (2.0, 1.75, 1.75)
    assert rows["resampler.hidden_dim"].used == 64 and report.complete


def test_the_views_overlap_decides_when_the_run_stitched_with_another(tmp_path, tiny):
    """PanoLLaVA sampled the views with the image-processing overlap but stitched with the model's (seed spec §4.1):
    the converted geometry is the one of the views the weights were trained on, and the disagreement is reported."""
    state = legacy_state_dict(tiny["model"])
    run_dir = write_run(tmp_path / "run", state, hparams_for(tiny))
    path = run_dir / "checkpoint_metadata.json"
    metadata = json.loads(path.read_text())
    metadata["training_config"]["overlap_ratio"] = 0.25
    path.write_text(json.dumps(metadata))
    conversion = plan_conversion(load_legacy_run(run_dir), image_token_id=tiny["model"].config.image_token_id)
    assert conversion.config.overlap_ratio == 0.25 and conversion.config.num_views == 6
    (row,) = [row for row in conversion.report.rows if row.name.startswith("overlap_ratio")]
    assert (row.recorded, row.observed, row.used) == (0.25, 0.5, 0.25) and row.disagrees


def test_cli_prints_the_table_and_fails_on_unmapped_keys(tmp_path, tiny, monkeypatch, capsys):
    state = legacy_state_dict(tiny["model"])
    state["model.text_projection.weight"] = torch.zeros(64, 64)  # no PanoVLM counterpart
    del state["model.vision_backbone.encoder.post_layernorm.weight"]
    fake_hub = hparams_for(tiny, vision_name="org/not-downloaded-vision", language_model_name="org/not-downloaded-lm")
    bad = write_run(tmp_path / "bad", state, fake_hub, metadata="absent")
    good = write_run(tmp_path / "good", legacy_state_dict(tiny["model"]), fake_hub, metadata="absent")
    towers = ["--vision-config", str(tiny["root"] / "vision"), "--text-config", str(tiny["root"] / "text" / "config.json")]
    token = ["--image-token-id", str(tiny["model"].config.image_token_id)]

    def convert(run_dir, output) -> int:
        argv = [str(CLI), "--checkpoint-dir", str(run_dir), "--output-dir", str(output), *towers, *token]
        monkeypatch.setattr(sys, "argv", argv)
        try:
            runpy.run_path(str(CLI), run_name="__main__")
        except SystemExit as exit_:
            return exit_.code
        return 0

    assert convert(bad, tmp_path / "out-bad") == 1
    table = capsys.readouterr()
    assert "unused          1" in table.out and "text_projection.weight" in table.out
    assert "missing         1" in table.out and "model.vision_tower.post_layernorm.weight" in table.out
    assert "vision_backbone.encoder.* -> model.vision_tower.*" in table.out and "FAILED" in table.err
    assert not (tmp_path / "out-bad").exists()

    assert convert(good, tmp_path / "out-good") == 0
    printed = capsys.readouterr().out
    assert "DISAGREES" in printed and f"wrote {tmp_path / 'out-good'}" in printed
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "out-good").config.model_type == "panovlm"


def test_clear_errors_for_runs_that_cannot_be_converted(tmp_path, tiny):
    model = tiny["model"]
    nameless = write_run(tmp_path / "nameless", legacy_state_dict(model), hparams_for(tiny, vision_name=None, language_model_name=None), "absent")
    with pytest.raises(LegacyConversionError, match="--vision-config"):
        plan_conversion(load_legacy_run(nameless))

    state = legacy_state_dict(model)
    state = {k: v for k, v in state.items() if ".resampler." not in k and not k.startswith("model.resampler.")}
    state["model.resampler_module.resampler.bert.embeddings.word_embeddings.weight"] = torch.zeros(2, 64)
    qformer = write_run(tmp_path / "qformer", state, hparams_for(tiny, resampler_type="qformer"), "absent")
    with pytest.raises(LegacyConversionError, match="qformer has no PanoVLM counterpart"):
        plan_conversion(load_legacy_run(qformer))

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": {"config": PydanticLike()}}, pickled / "last.ckpt")
    with pytest.raises(LegacyConversionError, match="weights_only=True"):
        load_legacy_run(pickled)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .ckpt"):
        load_legacy_run(tmp_path / "empty")

    state = legacy_state_dict(model)
    state["model.resampler.input_proj.bias"] = state["model.resampler.input_proj.bias"] + 1
    diverged = write_run(tmp_path / "diverged", state, hparams_for(tiny), "absent")
    report = plan_conversion(load_legacy_run(diverged), image_token_id=model.config.image_token_id).report
    assert report.mismatched == ["resampler.input_proj.bias differs from resampler_module.resampler.input_proj.bias, which it duplicates"]


def test_mlp_resampler_layers_are_renumbered(tmp_path, tiny):
    model, _ = build_tiny_checkpoint(resampler_type="mlp", crop_strategy="e2p", seed=6, resampler_config={"depth": 3})
    state = legacy_state_dict(model)
    # PanoLLaVA's MLP blocks are [Linear, LayerNorm, GELU]; PanoVLM's add a Dropout, so indices 4, 5, 8 were 3, 4, 6.
    for ours, theirs in ((4, 3), (5, 4), (8, 6)):
        for prefix in ("model.resampler_module.resampler.mlp.", "model.resampler.mlp."):
            for suffix in ("weight", "bias"):
                state[f"{prefix}{theirs}.{suffix}"] = state.pop(f"{prefix}{ours}.{suffix}")
    run = load_legacy_run(write_run(tmp_path / "run", state, hparams_for(tiny, resampler_type="mlp"), "absent"))
    conversion = plan_conversion(run, image_token_id=model.config.image_token_id)
    assert conversion.report.complete and conversion.config.resampler_config.depth == 3
    reference = model.state_dict()
    assert all(torch.equal(tensor, reference[key]) for key, tensor in conversion.state_dict.items())


def test_truncated_json_is_salvaged_up_to_the_cut():
    text = '{\n  "a": "x, {y}",\n  "b": {\n    "c": "q\\"uote",\n    "d": [1, 2],\n    "e": '
    assert salvage_json(text) == {"a": "x, {y}", "b": {"c": 'q"uote', "d": [1, 2]}}
    assert salvage_json('{"only": ') == {}
