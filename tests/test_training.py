"""Stage training in-process: trainable sets, complete outputs, the LoRA adapter contract, resume, curves, the data
report, the collator, augmentation and the VICReg overlap loss.

One module-scoped chain trains a tiny checkpoint through all three stages (vision -> resampler -> finetune), each
stage starting from the previous one's output directory; most tests inspect what it wrote.
"""

import csv
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainingArguments

import modeling_panovlm  # noqa: F401  (registers the Auto classes)
from configuration_panovlm import build_view_layout
from modeling_panovlm import hub
from modeling_panovlm.testing.synthetic_panoramas import write_synthetic_dataset
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training import (
    STAGES,
    PanoVLMStageCallback,
    PanoVLMTrainer,
    apply_stage,
    vision_tower_blocks,
)
from modeling_panovlm.training.lora import lm_lora_config
from modeling_panovlm.training.losses import (
    VICRegWeights,
    overlap_pairs,
    overlap_vicreg_loss,
)
from modeling_panovlm.training.runner import (
    StageOptions,
    _check_ranks_in_sync,
    prepare_table,
    run_stage,
)
from processing_panovlm.data.augmentation import PanoramaAugmentation
from processing_panovlm.data.captions import load_caption_table
from processing_panovlm.data.collator import IGNORE_INDEX, PanoVLMDataCollator
from processing_panovlm.image_loading import load_panorama
from processing_panovlm.processing_panovlm import PanoVLMProcessor


FIELDS = ["url", "query", "annotation"]
VISION_STEPS, RESAMPLER_STEPS, FINETUNE_STEPS = 40, 4, 4
COMMON = dict(batch_size=2, eval_batch_size=4, logging_steps=1, warmup_steps=0, save_total_limit=None)


def write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def changed_modules(before: dict, after: dict) -> set[str]:
    """Top-level modules (`model.resampler`, ...) with at least one tensor that differs."""
    assert before.keys() == after.keys()
    return {".".join(k.split(".")[:2]) for k in before if not torch.equal(before[k], after[k])}


def log_history(directory: Path) -> list[dict]:
    return json.loads((directory / "trainer_state.json").read_text())["log_history"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train several times faster on one thread here: two OpenMP threads on two shared cores spin
    against the data pipeline. Restored afterwards, so other modules keep their settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny checkpoint and a small synthetic dataset (3 training scenes x 5 rows, 1 test scene x 5 rows)."""
    root = tmp_path_factory.mktemp("training")
    build_tiny_checkpoint(root / "tiny")
    train_csv, test_csv = write_synthetic_dataset(root / "data", num=4, height=64, test_fraction=0.25, num_objects=2)
    six = write_rows(root / "data" / "six.csv", read_rows(train_csv)[:6])
    return SimpleNamespace(root=root, tiny=root / "tiny", data=root / "data", train=train_csv, test=test_csv, six=six)


@pytest.fixture(scope="module")
def runs(workspace):
    """The three stages chained in-process. The resampler stage's table has a missing image, a corrupt image and an
    empty annotation; the finetune stage starts from a relative base path and evaluates on the test split while a
    spy records what the collator loads."""
    root = workspace.root
    (workspace.data / "images" / "broken.png").write_bytes(
        (workspace.data / "images" / "pano_00000.png").read_bytes()[:300]
    )
    rows = read_rows(workspace.train)
    messy = write_rows(
        workspace.data / "messy.csv",
        rows[:2]
        + [{"url": "images/missing.png", "query": "left", "annotation": "Nothing."}]
        + rows[2:5]
        + [{"url": "images/broken.png", "query": "left", "annotation": "Nothing."}]
        + [{"url": rows[0]["url"], "query": "front", "annotation": "  "}]
        + rows[5:],
    )
    vision = run_stage(
        StageOptions(
            stage="vision", model=str(workspace.tiny), train_csv=str(workspace.train), eval_csv=str(workspace.test),
            output_dir=str(root / "vision"), max_steps=VISION_STEPS, learning_rate=3e-3, save_steps=20, eval_steps=20,
            **COMMON,
        )
    )
    resampler = run_stage(
        StageOptions(
            stage="resampler", model=str(vision), train_csv=str(messy), output_dir=str(root / "resampler"),
            max_steps=RESAMPLER_STEPS, learning_rate=1e-3, save_steps=2, **COMMON,
        )
    )
    loads = []
    original_load = PanoVLMDataCollator.load

    def spy(self, row):
        panorama = original_load(self, row)
        untouched = torch.equal(panorama, load_panorama(row["image"]) / 255.0)
        loads.append((Path(row["image"]).name, row["augment"], untouched))
        return panorama

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PanoVLMDataCollator, "load", spy)
        patch.chdir(root)  # the base is given relative to the working directory, as `train.py --model resampler`
        finetune = run_stage(
            StageOptions(
                stage="finetune", model="resampler", train_csv=str(workspace.train), eval_csv=str(workspace.test),
                output_dir=str(root / "finetune"), max_steps=FINETUNE_STEPS, learning_rate=1e-3, save_steps=2,
                eval_steps=FINETUNE_STEPS, lora_r=8, lora_alpha=16, **COMMON,
            )
        )
    return SimpleNamespace(vision=vision, resampler=resampler, finetune=finetune, messy=messy, finetune_loads=loads)


@pytest.fixture(scope="module")
def sample_inputs(workspace):
    """Processor inputs (one panorama, one prompt) built with the tiny checkpoint's processor."""
    processor = AutoProcessor.from_pretrained(workspace.tiny)
    prompt = processor.apply_chat_template(processor.build_messages("red object"), add_generation_prompt=True)
    image = Image.open(workspace.data / "images" / "pano_00000.png")
    return processor(images=image, text=prompt, return_tensors="pt")


def logits_of(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


# --- trainable sets ------------------------------------------------------------------------------------------------


def test_vision_stage_trains_resampler_and_vicreg_head_and_leaves_the_rest_bit_identical(workspace, runs):
    before, after = weights(workspace.tiny), weights(runs.vision)
    assert any(k.startswith("model.language_model.") for k in before)
    assert changed_modules(before, after) == {"model.resampler", "model.vicreg_projector"}
    trainable = [k for k in before if k.startswith(("model.resampler.", "model.vicreg_projector."))]
    assert all(not torch.equal(before[k], after[k]) for k in trainable)  # every trainable tensor moved


def test_resampler_stage_trains_resampler_and_projector_with_the_lm_frozen(runs):
    before, after = weights(runs.vision), weights(runs.resampler)
    assert changed_modules(before, after) == {"model.resampler", "model.multi_modal_projector"}
    for key in before:
        if key.startswith(("model.language_model.", "model.vision_tower.", "model.vicreg_projector.")):
            assert torch.equal(before[key], after[key]), key


def test_finetune_stage_trains_lora_on_the_lm_and_saves_resampler_and_projector(workspace, runs):
    adapter = load_file(runs.finetune / "adapter_model.safetensors")
    config = json.loads((runs.finetune / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert config["modules_to_save"] == ["resampler", "multi_modal_projector"]
    card = (runs.finetune / "README.md").read_text()  # a PanoVLM adapter card, not PEFT's empty template
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "image-text-to-text"
    assert "base_model" not in meta  # the base is a local directory, not a Hub id: only the text names it
    assert meta["panovlm"]["training_stage"] == "finetune" and meta["panovlm"]["lora"]["r"] == 8
    assert meta["panovlm"]["lora"]["modules_to_save"] == ["resampler", "multi_modal_projector"]
    base_config = AutoModelForImageTextToText.from_pretrained(runs.resampler).config
    assert meta["panovlm"]["resampler"]["type"] == base_config.resampler_config.resampler_type
    assert meta["panovlm"]["view_layout"]["image_tokens"] == base_config.num_image_tokens
    assert f"Data: `{workspace.train}`" in card and "More Information Needed" not in card
    assert not any(".default" in key for key in adapter)
    lora = {k: v for k, v in adapter.items() if ".lora_" in k}
    # 2 decoder layers x 7 projections, an A and a B each; nothing outside the LM's decoder layers.
    assert len(lora) == 2 * 7 * 2
    assert all(k.startswith("base_model.model.model.language_model.layers.") for k in lora)
    # PEFT initialises lora_B to zero: non-zero means the adapters really trained (the predecessor's stayed identity).
    lora_b = {k: v for k, v in lora.items() if ".lora_B." in k}
    assert len(lora_b) == 14 and all(v.abs().max() > 0 for v in lora_b.values())
    # modules_to_save: the trained resampler and projector are stored in full, under their plain names.
    base = weights(runs.resampler)
    saved = {k.removeprefix("base_model.model."): v for k, v in adapter.items() if ".lora_" not in k}
    assert {".".join(k.split(".")[:2]) for k in saved} == {"model.resampler", "model.multi_modal_projector"}
    assert saved.keys() == {k for k in base if k.startswith(("model.resampler.", "model.multi_modal_projector."))}
    assert any(not torch.equal(saved[k], base[k]) for k in saved if "multi_modal_projector" in k)
    assert any(not torch.equal(saved[k], base[k]) for k in saved if "resampler" in k)


def test_apply_stage_sets_exactly_the_stage_trainable_set(tiny_mlp):
    model, _ = tiny_mlp
    model = type(model)(model.config)  # a private copy: apply_stage changes requires_grad in place

    def trainable_modules(counts):
        return set(counts)

    assert trainable_modules(apply_stage(model, STAGES["vision"])) == {"model.resampler", "model.vicreg_projector"}
    counts = apply_stage(model, STAGES["vision"], vision_trainable_blocks=1)
    blocks = vision_tower_blocks(model)
    assert "model.vision_tower" in counts
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert not any(p.requires_grad for p in model.model.language_model.parameters())
    counts = apply_stage(model, STAGES["resampler"])
    assert set(counts) == {"model.resampler", "model.multi_modal_projector"}
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())

    with pytest.raises(ValueError, match="has none attached"):
        apply_stage(model, STAGES["finetune"])
    peft_model = get_peft_model(model, lm_lora_config(r=4, lora_alpha=8, modules_to_save=["resampler"]))
    counts = apply_stage(peft_model, STAGES["finetune"])
    assert set(counts) == {"model.language_model", "model.resampler"}
    # The predecessor froze its adapters after attaching them; the finetune stage refuses that.
    for name, parameter in peft_model.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_(False)
    with pytest.raises(ValueError, match="LoRA tensors are frozen"):
        apply_stage(peft_model, STAGES["finetune"])


def make_trainer(workspace, stage="vision", model=None, optimizers=(None, None), **kwargs):
    """A `PanoVLMTrainer` for one step on six rows, built the way `run_stage` builds it."""
    model = model or AutoModelForImageTextToText.from_pretrained(workspace.tiny)
    processor = AutoProcessor.from_pretrained(workspace.tiny)
    spec = STAGES[stage]
    collator = PanoVLMDataCollator(processor, views_only=spec.loss == "overlap_vicreg")
    table = load_caption_table(workspace.six)
    args = TrainingArguments(
        output_dir=str(workspace.root / f"trainer-{stage}"), max_steps=1, per_device_train_batch_size=2,
        learning_rate=1e-4, weight_decay=0.05, warmup_steps=0, save_strategy="no", report_to="none",
        remove_unused_columns=False, label_names=[] if spec.loss == "overlap_vicreg" else ["labels"], use_cpu=True,
    )
    return PanoVLMTrainer(
        model=model, args=args, data_collator=collator, train_dataset=table, processing_class=processor,
        callbacks=[PanoVLMStageCallback(spec, 0, collator)], stage=spec, optimizers=optimizers, **kwargs,
    )


def test_callback_refuses_an_optimizer_holding_frozen_tensors_or_missing_trainable_ones(workspace):
    # An optimizer built over every tensor before the stage froze the LM and the towers.
    model = AutoModelForImageTextToText.from_pretrained(workspace.tiny)
    everything = torch.optim.AdamW(model.parameters(), lr=1e-4)
    trainer = make_trainer(workspace, model=model, optimizers=(everything, None))
    with pytest.raises(RuntimeError, match=r"does not match stage 'vision': it holds frozen tensors \['model\."):
        trainer.train()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), AutoModelForImageTextToText.from_pretrained(workspace.tiny).parameters()))

    model = AutoModelForImageTextToText.from_pretrained(workspace.tiny)
    resampler_only = torch.optim.AdamW(model.model.resampler.parameters(), lr=1e-4)
    trainer = make_trainer(workspace, model=model, optimizers=(resampler_only, None))
    with pytest.raises(RuntimeError, match=r"holds frozen tensors \[\] and misses trainable ones \['model\.vicreg_projector\."):
        trainer.train()


def test_module_learning_rates_reach_the_optimizer_param_groups(workspace):
    trainer = make_trainer(workspace, module_learning_rates={"model.vicreg_projector": 3e-3})
    trainer.train()
    groups = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    lr_of = {names[id(p)]: group["initial_lr"] for group in groups for p in group["params"]}
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == set(lr_of)
    assert all(lr == 3e-3 for n, lr in lr_of.items() if n.startswith("model.vicreg_projector."))
    assert all(lr == 1e-4 for n, lr in lr_of.items() if n.startswith("model.resampler."))
    decay_of = {names[id(p)]: group["weight_decay"] for group in groups for p in group["params"]}
    assert all(decay_of[n] == 0.0 for n in decay_of if n.endswith("bias"))
    assert any(decay_of[n] == 0.05 for n in decay_of if n.endswith("weight"))

    with pytest.raises(ValueError, match="no trainable parameters"):
        make_trainer(workspace, module_learning_rates={"model.language_model": 1e-3}).create_optimizer()


def test_ranks_in_sync_check_raises_when_ranks_diverge(caplog):
    model = torch.nn.Linear(3, 2)

    def trainer(gather):
        accelerator = SimpleNamespace(num_processes=2, device=torch.device("cpu"), gather=gather)
        return SimpleNamespace(accelerator=accelerator, model=model)

    with caplog.at_level(logging.INFO, logger="modeling_panovlm.training.runner"):
        _check_ranks_in_sync(trainer(lambda t: torch.cat([t, t])))
    assert "identical on all 2 ranks" in caplog.text
    with pytest.raises(RuntimeError, match="differ across the 2 ranks"):
        _check_ranks_in_sync(trainer(lambda t: torch.cat([t, t + 1e-6])))


# --- LoRA targets --------------------------------------------------------------------------------------------------


def test_lora_targets_only_language_model_layers_even_where_names_repeat():
    model, _ = build_tiny_checkpoint(resampler_type="perceiver")
    suffixes = ("q_proj", "k_proj", "v_proj")
    outside = [n for n, _ in model.named_modules() if n.endswith(suffixes) and ".language_model." not in n]
    assert any(".vision_tower." in n for n in outside) and any(".resampler." in n for n in outside)
    # A plain name list (what the predecessor used) would also adapt the vision tower and the resampler ...
    naive = get_peft_model(type(model)(model.config), LoraConfig(r=4, target_modules=list(suffixes)))
    assert any(".vision_tower." in n for n, _ in naive.named_parameters() if "lora_A" in n)
    # ... the LM-anchored config adapts every projection of every decoder layer and nothing else.
    peft_model = get_peft_model(model, lm_lora_config(r=4, lora_alpha=8))
    adapted = {n.removeprefix("base_model.model.").split(".lora_A")[0] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert len(adapted) == model.config.text_config.num_hidden_layers * 7
    assert all(n.startswith("model.language_model.layers.") for n in adapted)


# --- complete outputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage,checkpoints", [("vision", (20, 40)), ("resampler", (2, 4)), ("finetune", (2, 4))]
)
def test_stage_outputs_and_trainer_checkpoints_load_with_the_auto_classes(runs, stage, checkpoints):
    output = getattr(runs, stage)
    directories = [output] + [output / f"checkpoint-{step}" for step in checkpoints]
    assert sorted(p.name for p in output.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in checkpoints]
    for directory in directories:
        model, info = AutoModelForImageTextToText.from_pretrained(directory, output_loading_info=True)
        assert {k: list(v) for k, v in info.items()} == {
            "missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []
        }, directory
        assert isinstance(AutoProcessor.from_pretrained(directory), PanoVLMProcessor)
        if stage == "finetune":
            assert (directory / "adapter_config.json").is_file() and hasattr(model, "peft_config")
            card = (directory / "README.md").read_text()  # checkpoints too get our card, not PEFT's template
            meta = yaml.safe_load(card.split("---\n")[1])
            assert meta["library_name"] == "peft" and meta["panovlm"]["training_stage"] == "finetune", directory
            assert "More Information Needed" not in card, directory
        else:
            assert model.config.training_stage == stage
            assert {"config.json", "generation_config.json", "model.safetensors"} <= {p.name for p in directory.iterdir()}
    if stage != "finetune":  # the last checkpoint holds the final weights, the earlier one does not
        final = weights(output)
        last, first = weights(directories[-1]), weights(directories[1])
        assert all(torch.equal(final[k], last[k]) for k in final)
        assert any(not torch.equal(final[k], first[k]) for k in final)


# --- the finetune adapter ------------------------------------------------------------------------------------------


def test_finetune_adapter_loads_identically_every_way_and_merges(runs, sample_inputs):
    base_logits = logits_of(AutoModelForImageTextToText.from_pretrained(runs.resampler), sample_inputs)
    saved = load_file(runs.finetune / "adapter_model.safetensors")

    peft_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(runs.resampler), runs.finetune)
    state = get_peft_model_state_dict(peft_model)
    assert state.keys() == saved.keys()  # zero missing or extra adapter keys
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    reference = logits_of(peft_model, sample_inputs)
    assert not torch.allclose(reference, base_logits)

    with_adapter = AutoModelForImageTextToText.from_pretrained(runs.resampler)
    info = with_adapter.load_adapter(str(runs.finetune))
    assert not getattr(info, "missing_keys", None) and not getattr(info, "unexpected_keys", None)
    assert torch.equal(logits_of(with_adapter, sample_inputs), reference)

    auto, info = AutoModelForImageTextToText.from_pretrained(runs.finetune, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(logits_of(auto, sample_inputs), reference)

    merged = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(runs.resampler), runs.finetune)
    merged = merged.merge_and_unload()
    keys = merged.state_dict().keys()
    assert not [k for k in keys if "lora_" in k or "modules_to_save" in k or "original_module" in k or "base_layer" in k]
    assert keys == AutoModelForImageTextToText.from_pretrained(runs.resampler).state_dict().keys()
    torch.testing.assert_close(logits_of(merged, sample_inputs), reference, atol=1e-4, rtol=1e-4)


def test_adapter_of_a_relative_base_records_its_absolute_path_and_loads_from_anywhere(
    runs, sample_inputs, monkeypatch, tmp_path
):
    # The finetune stage was given `resampler`, relative to the run directory: the adapter and its checkpoints
    # record the absolute path, so they load from any working directory.
    for directory in (runs.finetune, runs.finetune / f"checkpoint-{FINETUNE_STEPS}"):
        recorded = json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert recorded == str(runs.resampler.resolve()), directory
    reference = logits_of(
        PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(runs.resampler), runs.finetune),
        sample_inputs,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    auto, info = AutoModelForImageTextToText.from_pretrained(runs.finetune, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(logits_of(auto, sample_inputs), reference)


def test_adapter_records_the_previous_stage_and_is_pushed_with_a_hub_base(runs, monkeypatch, tmp_path):
    recorded = json.loads((runs.finetune / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(runs.resampler.resolve())  # what run_stage writes: where the stage started

    uploaded = tmp_path / "uploaded"

    class FakeApi:  # captures what push_adapter_to_hub would upload
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, uploaded)
            return SimpleNamespace(repo_id=repo_id)

    monkeypatch.setattr(hub.push, "HfApi", FakeApi)
    peft_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(runs.resampler), runs.finetune)
    with pytest.raises(ValueError, match="not a Hub repository"):
        hub.push_adapter_to_hub(peft_model, "me/pano-lora")
    assert not uploaded.exists()
    hub.push_adapter_to_hub(peft_model, "me/pano-lora", base_model_repo_id="me/pano-base")
    config = json.loads((uploaded / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "me/pano-base"
    for path in uploaded.rglob("*"):
        if path.suffix in (".json", ".md"):
            assert str(runs.resampler) not in path.read_text(), path
    pushed, local = load_file(uploaded / "adapter_model.safetensors"), load_file(runs.finetune / "adapter_model.safetensors")
    assert pushed.keys() == local.keys() and all(torch.equal(pushed[k], local[k]) for k in local)


# --- curves, logs, data report, augmentation of evaluation rows ---------------------------------------------------


@pytest.mark.parametrize("stage,steps", [("vision", VISION_STEPS), ("resampler", RESAMPLER_STEPS), ("finetune", FINETUNE_STEPS)])
def test_training_curves_png_and_trainer_state(runs, stage, steps):
    output = getattr(runs, stage)
    with Image.open(output / "training_curves.png") as image:
        image.verify()
    with Image.open(output / "training_curves.png") as image:
        assert image.format == "PNG" and image.size == (900, 420)
        assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 3  # axes, text and curves, not blank
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    losses = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in losses] == list(range(1, steps + 1))
    if stage == "vision":
        assert all({"vicreg_invariance", "vicreg_variance", "vicreg_covariance"} <= set(e) for e in losses)
    if stage in ("vision", "finetune"):  # both were given an evaluation table
        evaluations = [entry for entry in state["log_history"] if "eval_loss" in entry]
        assert evaluations and all(torch.isfinite(torch.tensor(e["eval_loss"])) for e in evaluations)


def test_vicreg_loss_falls_over_the_vision_stage(runs):
    losses = [entry["loss"] for entry in log_history(runs.vision) if "loss" in entry]
    assert len(losses) == VISION_STEPS
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.95 * first, (first, last)
    # Each logged loss is the weighted sum of the logged terms of the same steps (25 / 25 / 1), also right after the
    # evaluations at steps 20 and 40: evaluation batches do not leak into the training terms.
    for entry in log_history(runs.vision):
        if "loss" in entry:
            terms = 25 * entry["vicreg_invariance"] + 25 * entry["vicreg_variance"] + entry["vicreg_covariance"]
            assert terms == pytest.approx(entry["loss"], rel=1e-4), entry["step"]


def test_data_report_lists_every_dropped_row_with_its_reason(workspace, runs):
    report = json.loads((runs.resampler / "train_data_report.json").read_text())
    total = len(read_rows(runs.messy))
    assert report["rows"] == total and report["kept"] == total - 3 and report["dropped"] == 3
    assert report["dropped_by_reason"] == {
        "image file not found": 1, "truncated or corrupt image": 1, "empty annotation": 1
    }
    assert [(r["row"], r["reason"]) for r in report["dropped_rows"]] == [
        (3, "image file not found"), (7, "truncated or corrupt image"), (8, "empty annotation")
    ]
    evaluation = json.loads((runs.finetune / "eval_data_report.json").read_text())
    assert evaluation["dropped"] == 0 and evaluation["rows"] == len(read_rows(workspace.test))


def test_prepare_table_reports_empty_annotations_only_where_text_is_needed(workspace, tmp_path):
    rows = read_rows(workspace.six)[:3]
    rows[1]["annotation"] = ""
    table_csv = write_rows(workspace.data / "one_empty.csv", rows)
    kept = prepare_table(str(table_csv), tmp_path / "lm", "train", needs_text=True, augment=True)
    assert kept["row"] == [1, 3] and kept["augment"] == [True, True]
    report = json.loads((tmp_path / "lm" / "train_data_report.json").read_text())
    assert report["dropped_rows"][0]["row"] == 2 and report["dropped_rows"][0]["reason"] == "empty annotation"
    # The vision stage reads no text: the row stays and nothing is reported.
    kept = prepare_table(str(table_csv), tmp_path / "vision", "eval", needs_text=False, augment=False)
    assert kept["row"] == [1, 2, 3] and kept["augment"] == [False] * 3
    assert json.loads((tmp_path / "vision" / "eval_data_report.json").read_text())["dropped"] == 0

    bad = write_rows(workspace.data / "all_bad.csv", [{"url": "images/nope.png", "query": "left", "annotation": "x"}])
    with pytest.raises(ValueError, match="no usable rows left .*train_data_report.json"):
        prepare_table(str(bad), tmp_path / "bad", "train", needs_text=True, augment=True)


def test_evaluation_rows_are_never_augmented_during_a_stage(runs):
    evaluation = [load for load in runs.finetune_loads if load[0] == "pano_00003.png"]  # the test split's scene
    training = [load for load in runs.finetune_loads if load[0] != "pano_00003.png"]
    assert evaluation and training
    assert all(augment is False and untouched for _, augment, untouched in evaluation)
    assert all(augment is True for _, augment, _ in training)
    assert any(not untouched for _, _, untouched in training)  # the training rows were augmented


# --- resume ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["resampler", "finetune"])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(workspace, tmp_path, monkeypatch, stage):
    # Two epochs of 3 steps (augmentation depends on the epoch), resumed in the second epoch.
    options = dict(
        stage=stage, model=str(workspace.tiny), train_csv=str(workspace.six), max_steps=6, save_steps=2,
        learning_rate=1e-3, lora_r=4, lora_alpha=8, **COMMON,
    )
    augmented = []  # (row, epoch) of every augmentation drawn
    original = PanoramaAugmentation.__call__

    def spy(self, panorama, row, epoch=0):
        augmented.append((row, epoch))
        return original(self, panorama, row, epoch)

    monkeypatch.setattr(PanoramaAugmentation, "__call__", spy)
    full = run_stage(StageOptions(output_dir=str(tmp_path / "full"), **options))
    full_draws, augmented[:] = list(augmented), []
    resumed = run_stage(
        StageOptions(output_dir=str(tmp_path / "resumed"), resume_from_checkpoint=str(full / "checkpoint-4"), **options)
    )
    assert sorted(full_draws) == [(row, epoch) for row in range(1, 7) for epoch in (0, 1)]
    assert augmented == full_draws[-4:]  # steps 5 and 6: the same rows with the same (epoch 1) augmentation

    name = "adapter_model.safetensors" if stage == "finetune" else "model.safetensors"
    expected, actual = load_file(full / name), load_file(resumed / name)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    at_checkpoint = load_file(full / "checkpoint-4" / name)
    assert any(not torch.equal(expected[k], at_checkpoint[k]) for k in expected)  # the resumed run trained on
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 6
    logged = {e["step"]: e["loss"] for e in log_history(full) if "loss" in e}
    assert {e["step"]: e["loss"] for e in log_history(resumed) if "loss" in e and e["step"] > 4} == {
        5: logged[5], 6: logged[6]
    }


# --- collator ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def caption_rows(workspace):
    """Three training rows of different prompt and answer lengths."""
    table = load_caption_table(workspace.train)
    rows = [table[0], table[2], table[4]]  # a colour query, a direction query, the whole-scene caption
    return [{**row, "augment": True} for row in rows]


def test_collator_masks_prompt_image_and_padding_and_keeps_the_answer(tiny_mlp, caption_rows):
    _, processor = tiny_mlp
    tokenizer = processor.tokenizer
    batch = PanoVLMDataCollator(processor)(caption_rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["pixel_values"].shape[0] == len(caption_rows)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) == 3 and max(lengths) == batch["input_ids"].shape[1]
    for index, row in enumerate(caption_rows):
        ids, labels, mask, length = batch["input_ids"][index], batch["labels"][index], batch["attention_mask"][index], lengths[index]
        assert mask[:length].all() and not mask[length:].any()  # padded on the right
        assert (ids[length:] == tokenizer.pad_token_id).all() and (labels[length:] == IGNORE_INDEX).all()
        assert int((ids == processor.image_token_id).sum()) == processor.num_image_tokens
        assert (labels[ids == processor.image_token_id] == IGNORE_INDEX).all()
        # The unlabelled prefix is exactly the generation prompt, tokenised as at inference.
        prompt = processor.apply_chat_template(processor.build_messages(row["query"]), add_generation_prompt=True)
        prompt_ids = processor(images=Image.open(row["image"]), text=prompt)["input_ids"][0]
        assert ids[: len(prompt_ids)].tolist() == list(prompt_ids)
        assert (labels[: len(prompt_ids)] == IGNORE_INDEX).all()
        target = labels[len(prompt_ids) : length]
        assert (target == ids[len(prompt_ids) : length]).all()
        assert tokenizer.decode(target) == row["annotation"] + "<|im_end|>\n"


def test_collator_truncates_only_the_answer_and_never_image_tokens(tiny_mlp, caption_rows):
    _, processor = tiny_mlp
    tokenizer = processor.tokenizer
    full = PanoVLMDataCollator(processor)(caption_rows)
    long_row = max(range(3), key=lambda i: int(full["attention_mask"][i].sum()))
    prompt_length = int((full["labels"][long_row] == IGNORE_INDEX).logical_and(full["attention_mask"][long_row] == 1).sum())
    tail = tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    max_length = prompt_length + len(tail) + 3
    assert int(full["attention_mask"][long_row].sum()) > max_length  # the long answer really has to be cut
    batch = PanoVLMDataCollator(processor, max_length=max_length)(caption_rows)
    assert batch["input_ids"].shape[1] <= max_length
    for index in range(3):
        ids, labels = batch["input_ids"][index], batch["labels"][index]
        assert int((ids == processor.image_token_id).sum()) == processor.num_image_tokens
    labels = batch["labels"][long_row]
    target = labels[labels != IGNORE_INDEX].tolist()
    answer = tokenizer(caption_rows[long_row]["annotation"], add_special_tokens=False)["input_ids"]
    assert target == answer[:3] + tail  # the answer is cut, its end-of-turn tokens are kept

    with pytest.raises(ValueError, match="image tokens are never truncated"):
        PanoVLMDataCollator(processor, max_length=processor.num_image_tokens + 4)(caption_rows)


def test_views_only_collator_returns_views_without_text(tiny_mlp, caption_rows):
    _, processor = tiny_mlp
    batch = PanoVLMDataCollator(processor, views_only=True)(caption_rows)
    assert set(batch) == {"pixel_values", "view_yaw_deg", "view_pitch_deg", "view_fov_deg"}
    assert batch["pixel_values"].shape[:2] == (3, processor.image_processor.view_layout.num_views)


# --- augmentation ----------------------------------------------------------------------------------------------------


def roll_only(seed=0):
    return PanoramaAugmentation(1.0, 0.5, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, seed=seed)


def test_yaw_roll_is_a_circular_shift_of_the_columns():
    panorama = torch.rand(3, 8, 32, generator=torch.Generator().manual_seed(0))
    shifts = []
    for row in range(12):
        out = roll_only()(panorama, row=row)
        matches = [s for s in range(32) if torch.equal(out, panorama.roll(s, dims=-1))]
        assert len(matches) == 1, row  # every pixel kept, the columns rotated as a whole
        shifts.append(matches[0])
    assert len(set(shifts)) > 3
    shift = next(s for s in shifts if s)
    out = roll_only()(panorama, row=shifts.index(shift))
    assert torch.equal(out[..., shift:], panorama[..., : 32 - shift])
    assert torch.equal(out[..., :shift], panorama[..., 32 - shift :])  # the columns leaving one edge wrap around


def test_augmentation_is_a_pure_function_of_seed_epoch_and_row():
    panorama = torch.rand(3, 8, 32, generator=torch.Generator().manual_seed(1))
    augmentation = PanoramaAugmentation(seed=7)
    reference = augmentation(panorama, row=3, epoch=1)
    assert torch.equal(PanoramaAugmentation(seed=7)(panorama.clone(), row=3, epoch=1), reference)
    for other in (
        augmentation(panorama, row=4, epoch=1),
        augmentation(panorama, row=3, epoch=2),
        PanoramaAugmentation(seed=8)(panorama, row=3, epoch=1),
    ):
        assert not torch.equal(other, reference)
    assert 0.0 <= reference.min() and reference.max() <= 1.0


def test_collator_never_augments_evaluation_rows(tiny_mlp, caption_rows):
    _, processor = tiny_mlp
    collator = PanoVLMDataCollator(processor, augmentation=PanoramaAugmentation(1.0, 0.5, seed=0))
    row = caption_rows[0]
    raw = load_panorama(row["image"]) / 255.0
    assert torch.equal(collator.load({**row, "augment": False}), raw)
    assert not torch.equal(collator.load({**row, "augment": True}), raw)
    collator.epoch = 1
    assert torch.equal(collator.load({**row, "augment": False}), raw)


# --- VICReg overlap loss ---------------------------------------------------------------------------------------------


def test_overlap_pairs_match_neighbouring_columns_and_wrap_around():
    layout = build_view_layout("e2p", 90.0, 0.5)  # 8 strip views, each sharing half its columns with the next
    views, rows, cols, dim = len(layout.strip_views), 2, 4, 3
    k = layout.overlap_columns(cols)
    assert views == 8 and k == 2
    # Each view's columns hold their circle column index: the right k of view v equal the left k of view v + 1.
    column = (torch.arange(views)[:, None] * (cols - k) + torch.arange(cols)[None]) % (views * (cols - k))
    embeddings = column[None, :, None, :, None].expand(1, views, rows, cols, dim).float()
    left, right = overlap_pairs(embeddings, layout)
    assert left.shape == right.shape == (views, rows * k, dim)
    assert torch.equal(left, right)
    loss, terms = overlap_vicreg_loss(embeddings, layout, VICRegWeights(1.0, 0.0, 0.0))
    assert loss == 0 and terms["invariance"] == 0
    shuffled = embeddings[:, torch.randperm(views, generator=torch.Generator().manual_seed(0))]
    assert overlap_vicreg_loss(shuffled, layout, VICRegWeights(1.0, 0.0, 0.0))[0] > 0


@pytest.mark.parametrize("crop_strategy,fov,overlap", [("cubemap", 90.0, 0.0), ("resize", 90.0, 0.0), ("e2p", 90.0, 0.0)])
def test_vicreg_loss_errors_when_views_do_not_overlap(crop_strategy, fov, overlap):
    layout = build_view_layout(crop_strategy, fov, overlap)
    embeddings = torch.randn(2, layout.num_views, 2, 4, 8)
    with pytest.raises(ValueError, match="no overlap to make consistent"):
        overlap_vicreg_loss(embeddings, layout)
