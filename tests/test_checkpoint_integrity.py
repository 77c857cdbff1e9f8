"""Checkpoints are written as a whole or not at all, and loading refuses what would load silently wrong.

The kill tests SIGKILL a process that keeps saving, at random moments, and check every time that the directory
loads, strictly, to exactly the old or exactly the new model.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForImageTextToText

from configuration_panovlm.atomic_files import atomic_directory, is_staging_name, write_text_atomically
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two saved tiny models that differ in weights and in a config field (`pe_temperature`)."""
    root = tmp_path_factory.mktemp("models")
    first, processor = build_tiny_checkpoint(root / "a", resampler_type="mlp", seed=0)
    second, _ = build_tiny_checkpoint(root / "b", resampler_type="mlp", seed=1, pe_temperature=500.0)
    return root / "a", root / "b"


def _same_as(directory: Path, reference: Path) -> bool:
    loaded, expected = load_file(directory / "model.safetensors"), load_file(reference / "model.safetensors")
    return loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


# ---- the atomic directory ------------------------------------------------------------------------------------------


def test_atomic_directory_replaces_carries_over_and_sets_modes(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as staging:
        (staging / "model.bin").write_text("old weights")
        (staging / "processor.json").write_text("processor")
        (staging / "sub").mkdir()
        (staging / "sub" / "note.txt").write_text("kept")
    os.umask(0o077)  # a restrictive umask must not make checkpoints private
    try:
        with atomic_directory(target, replaces=lambda name: name.endswith(".bin")) as staging:
            (staging / "model-new.bin").write_text("new weights")
    finally:
        os.umask(0o022)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "model-new.bin", "processor.json", "sub", "sub/note.txt"
    ]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 and stat.S_IMODE((target / "sub").stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in target.rglob("*") if p.is_file())
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging debris


def test_a_failed_write_leaves_the_directory_and_no_debris(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as staging:
        (staging / "weights").write_text("complete")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(target) as staging:
            (staging / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_staging_left_by_a_killed_process_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".ckpt.staging-{dead.stdout.strip()}-abcdef"
    abandoned.mkdir()
    (abandoned / "weights").write_text("half")
    write_text_atomically(tmp_path / "ckpt" / "file.txt", "x")
    with atomic_directory(tmp_path / "ckpt"):
        pass
    assert not abandoned.exists() and not any(is_staging_name(p.name) for p in tmp_path.rglob("*"))


def test_a_directory_is_deleted_whole_or_not_at_all(tmp_path, monkeypatch):
    from configuration_panovlm import atomic_files

    doomed = tmp_path / "checkpoint-2"
    doomed.mkdir()
    for name in ("model.safetensors", "config.json", "trainer_state.json"):
        (doomed / name).write_text(name)

    def killed_midway(path):  # the process dies after the first file is gone
        next(Path(path).iterdir()).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_files.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_files.remove_directory_atomically(doomed)
    monkeypatch.undo()
    assert not doomed.exists()  # never a checkpoint-2 missing its weights
    [left] = [p for p in tmp_path.iterdir() if is_staging_name(p.name)]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left.rename(tmp_path / f".checkpoint-2.staging-{dead.stdout.strip()}-abcdef")  # as if by a killed process
    atomic_files.remove_abandoned_staging(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_trainer_checkpoint_rotation_keeps_the_newest_complete_checkpoints(two_models, tmp_path):
    from modeling_panovlm.testing.synthetic_panoramas import write_synthetic_dataset
    from modeling_panovlm.training.runner import StageOptions, run_stage

    train_csv, _ = write_synthetic_dataset(tmp_path / "data", num=2, height=64, test_fraction=0.5, num_objects=1)
    output = tmp_path / "resampler"
    run_stage(StageOptions(
        stage="resampler", model=str(two_models[0]), train_csv=str(train_csv), output_dir=str(output),
        max_steps=4, batch_size=2, save_steps=1, save_total_limit=2, report_to="none",
    ))
    checkpoints = sorted(p.name for p in output.iterdir() if p.name.startswith(("checkpoint-", ".checkpoint-")))
    assert checkpoints == ["checkpoint-3", "checkpoint-4"]
    for name in checkpoints:
        AutoModelForImageTextToText.from_pretrained(output / name)


def test_model_and_processor_saves_keep_each_others_files(two_models, tmp_path):
    first, _ = two_models
    model = AutoModelForImageTextToText.from_pretrained(first)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(first)
    target = tmp_path / "out"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    model.save_pretrained(target)  # again: the processor stays
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja"} <= names
    assert stat.S_IMODE((target / "model.safetensors").stat().st_mode) == 0o644
    assert AutoProcessor.from_pretrained(target).num_image_tokens == model.config.num_image_tokens


# ---- kills ------------------------------------------------------------------------------------------------------


SAVER = """
import sys
from transformers import AutoModelForImageTextToText
import modeling_panovlm  # noqa: F401

first, second, target = sys.argv[1:4]
models = [AutoModelForImageTextToText.from_pretrained(path) for path in (second, first)]
print("ready", flush=True)
while True:
    for model in models:
        model.save_pretrained(target)
"""


def test_a_kill_at_any_moment_of_save_pretrained_leaves_the_old_or_the_new_model(two_models, tmp_path):
    first, second = two_models
    script = tmp_path / "saver.py"
    script.write_text(textwrap.dedent(SAVER))
    target = tmp_path / "target"
    AutoModelForImageTextToText.from_pretrained(first).save_pretrained(target)
    rng = random.Random(0)
    seen = set()
    for attempt in range(12):
        saver = subprocess.Popen(
            [sys.executable, str(script), str(first), str(second), str(target)], stdout=subprocess.PIPE, text=True
        )
        assert saver.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        config = AutoConfig.from_pretrained(target)
        model = AutoModelForImageTextToText.from_pretrained(target)  # strict: a mix of two saves would not load
        reference = second if config.pe_temperature == 500.0 else first
        assert _same_as(target, reference), f"kill {attempt}: config of {reference.name}, other weights"
        assert model.config.pe_temperature == config.pe_temperature
        seen.add(reference.name)
    assert seen == {"a", "b"}, f"the kills only ever hit one model ({seen}); the test did not exercise both"


CONCURRENT = """
import sys
from transformers import AutoModelForImageTextToText
import modeling_panovlm  # noqa: F401

source, target = sys.argv[1:3]
model = AutoModelForImageTextToText.from_pretrained(source)
for _ in range(5):
    model.save_pretrained(target)
"""


def test_concurrent_saves_to_one_directory_end_with_one_complete_model(two_models, tmp_path):
    first, second = two_models
    script = tmp_path / "concurrent_saver.py"  # not "concurrent.py": it would shadow the stdlib package
    script.write_text(textwrap.dedent(CONCURRENT))
    target = tmp_path / "target"
    savers = [
        subprocess.Popen([sys.executable, str(script), str(source), str(target)], stderr=subprocess.PIPE, text=True)
        for source in (first, second)
    ]
    errors = [saver.communicate(timeout=300)[1] for saver in savers]
    assert [saver.returncode for saver in savers] == [0, 0], "\n".join(error[-3000:] for error in errors)
    config = AutoConfig.from_pretrained(target)
    assert _same_as(target, second if config.pe_temperature == 500.0 else first)
    assert [p.name for p in tmp_path.iterdir() if is_staging_name(p.name)] == []


# ---- strict loading ---------------------------------------------------------------------------------------------


def test_missing_extra_and_reshaped_tensors_are_refused_by_name(two_models, tmp_path):
    first, _ = two_models
    weights = load_file(first / "model.safetensors")
    broken = tmp_path / "broken"
    AutoModelForImageTextToText.from_pretrained(first).save_pretrained(broken)
    missing = next(key for key in weights if key.startswith("model.resampler."))
    save_file({k: v for k, v in weights.items() if k != missing} | {"model.extra.weight": torch.zeros(2)},
              broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"missing keys \['{missing}'\].*unexpected keys \['model.extra.weight'\]"):
        AutoModelForImageTextToText.from_pretrained(broken)
    loose = AutoModelForImageTextToText.from_pretrained(broken, strict=False)  # the explicit opt-out
    assert loose is not None


def test_a_config_missing_a_field_is_refused_by_name(two_models, tmp_path):
    first, _ = two_models
    edited = tmp_path / "edited"
    AutoModelForImageTextToText.from_pretrained(first).save_pretrained(edited)
    config = json.loads((edited / "config.json").read_text())
    del config["pe_temperature"], config["resampler_config"]["depth"]
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"lacks \['pe_temperature', 'resampler_config.depth'\]"):
        AutoModelForImageTextToText.from_pretrained(edited)


def test_weights_that_contradict_the_config_name_both_shapes(two_models, tmp_path):
    first, _ = two_models
    edited = tmp_path / "edited"
    AutoModelForImageTextToText.from_pretrained(first).save_pretrained(edited)
    config = json.loads((edited / "config.json").read_text())
    config["resampler_config"]["hidden_dim"] *= 2
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"mismatched keys \['model.resampler.mlp.0.bias: checkpoint \(64,\), config \(128,\)'"):
        AutoModelForImageTextToText.from_pretrained(edited)


def test_a_missing_model_directory_says_so():
    from modeling_panovlm import PanoVLMForConditionalGeneration
    from processing_panovlm import PanoVLMProcessor

    for cls in (PanoVLMForConditionalGeneration, PanoVLMProcessor):
        with pytest.raises(FileNotFoundError, match="model directory out/no/such/run does not exist"):
            cls.from_pretrained("out/no/such/run")


# ---- adapters ------------------------------------------------------------------------------------------------------


def test_an_adapter_on_another_base_of_the_same_architecture_is_flagged(two_models, tmp_path, caplog):
    from peft import get_peft_model

    from modeling_panovlm.adapter_identity import base_fingerprint, record_adapter_base, recorded_adapter_base
    from modeling_panovlm.training.lora import lm_lora_config

    first, second = two_models
    base = AutoModelForImageTextToText.from_pretrained(first)
    fingerprint = base_fingerprint(base)
    assert fingerprint == base_fingerprint(AutoModelForImageTextToText.from_pretrained(first, dtype=torch.bfloat16))
    get_peft_model(base, lm_lora_config(r=4, lora_alpha=8)).save_pretrained(tmp_path / "adapter")
    record_adapter_base(tmp_path / "adapter", fingerprint, str(first))
    assert recorded_adapter_base(tmp_path / "adapter") == (fingerprint, str(first))

    with caplog.at_level("WARNING"):
        AutoModelForImageTextToText.from_pretrained(first).load_adapter(tmp_path / "adapter")
    assert "trained on the base model" not in caplog.text
    other = AutoModelForImageTextToText.from_pretrained(first)
    other.load_state_dict(AutoModelForImageTextToText.from_pretrained(second).state_dict(), strict=False)
    with caplog.at_level("WARNING"):
        other.load_adapter(tmp_path / "adapter")
    assert f"trained on the base model {first}" in caplog.text


def test_the_finetune_stage_records_its_base_in_the_adapter(two_models, tmp_path, caplog):
    from modeling_panovlm.adapter_identity import base_fingerprint, recorded_adapter_base
    from modeling_panovlm.testing.synthetic_panoramas import write_synthetic_dataset
    from modeling_panovlm.training.runner import StageOptions, run_stage

    first, second = two_models
    train_csv, _ = write_synthetic_dataset(tmp_path / "data", num=2, height=64, test_fraction=0.5, num_objects=1)
    adapter = run_stage(StageOptions(
        stage="finetune", model=str(first), train_csv=str(train_csv), output_dir=str(tmp_path / "finetune"),
        max_steps=1, batch_size=2, lora_r=4, lora_alpha=8, report_to="none",
    ))
    assert recorded_adapter_base(adapter) == (base_fingerprint(AutoModelForImageTextToText.from_pretrained(first)), str(first))
    with caplog.at_level("WARNING"):
        AutoModelForImageTextToText.from_pretrained(second).load_adapter(str(adapter))
    assert f"trained on the base model {first}" in caplog.text
    # The evaluation / inference loader applies it with PeftModel.from_pretrained: it checks too.
    from modeling_panovlm.evaluation import load_model_and_processor

    caplog.clear()
    with caplog.at_level("WARNING"):
        load_model_and_processor(first, adapter, device="cpu")
    assert "trained on the base model" not in caplog.text
    with caplog.at_level("WARNING"):
        load_model_and_processor(second, adapter, device="cpu")
    assert f"trained on the base model {first}" in caplog.text
