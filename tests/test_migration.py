"""Moving from PanoLLaVA: `panovlm migrate-config` on each shape of PanoLLaVA's shipped configs (checked field by field
against the reference notes' tables: §2.3 resampler resolution, §4.1 what reached the model, §4.5 stage
hyper-parameters), the mapping table, a translated run file that trains from tiny stand-in towers, and a synthetic
PanoLLaVA run directory evaluated (and asked) through `--checkpoint-dir` with the same predictions as converting it
first and evaluating the converted directory."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from configuration_panovlm.configuration_panovlm import PanoVLMConfig
from modeling_panovlm.cli import evaluate as evaluate_cli
from modeling_panovlm.cli import infer as infer_cli
from modeling_panovlm.cli import migrate_config as migrate_cli
from modeling_panovlm.conversion.config_migration import format_mapping_table, migrate_config
from modeling_panovlm.conversion.legacy_run import LegacyConversionError, load_legacy_run
from modeling_panovlm.conversion.migration_tables import flatten
from modeling_panovlm.conversion.panollava import plan_conversion, write_conversion
from modeling_panovlm.conversion.run_cache import convert_run_dir, is_legacy_run_dir
from modeling_panovlm.testing.synthetic_panoramas import write_synthetic_dataset
from modeling_panovlm.testing.tiny_checkpoint import tiny_config
from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer
from processing_panovlm.processing_panovlm import DEFAULT_USER_TEMPLATE, PanoVLMProcessor
from tests import panollava_configs as shapes
from tests.cli_runner import run_cli
from tests.test_legacy_conversion import legacy_state_dict, write_run


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
QWEN3, SIGLIP2, SIGLIP = "Qwen/Qwen3-0.6B", "google/siglip2-so400m-patch16-256", "google/siglip-base-patch16-224"
BIMAMBA_PRESET = {"latent_dimension": 768, "hidden_dim": 1024, "depth": 4, "dropout": 0.05, "d_state": 64, "d_conv": 4,
                  "norm_first": True}
MLP_1024 = {"resampler_type": "mlp", "latent_dimension": 768, "hidden_dim": 1024, "depth": 2, "use_ln": True,
            "dropout": 0.0}
LATER = {"resampler": (1.0, 1e-4, 4, 4, 128), "finetune": (1.0, 2e-6, 4, 4, 128)}  # epochs, lr, batch, accumulation, text
VISION = (3.0, 1e-4, 8, 2, 32)
# Per shape: towers, resampler config, view/PE settings, and (stage, epochs, lr, batch, accumulation, text length).
EXPECTED = {
    "default": (SIGLIP2, {"resampler_type": "bimamba", **BIMAMBA_PRESET, "expand": 1.75}, "anyres_e2p", 0.5, True,
                [("finetune", 1.0, 5e-5, 1, 4, 128)]),
    "anyres_e2p": (SIGLIP2, {"resampler_type": "bimamba", **BIMAMBA_PRESET, "expand": 2.0}, "anyres_e2p", 0.5, True,
                   [(name, *values) for name, values in LATER.items()]),
    "anyres_e2p_mlp": (SIGLIP2, MLP_1024, "anyres_e2p", 0.5, True, [(name, *values) for name, values in LATER.items()]),
    "resize": (SIGLIP, MLP_1024, "resize", 0.5, True, [(name, *values) for name, values in LATER.items()]),
    "cubemap": (SIGLIP, MLP_1024, "cubemap", 0.0, True, [(name, *values) for name, values in LATER.items()]),
    "sliding_window": (SIGLIP, MLP_1024, "sliding_window", 0.5, True,
                       [("vision", *VISION)] + [(name, *values) for name, values in LATER.items()]),
    "panovlm": (SIGLIP2, {"resampler_type": "bimamba", **BIMAMBA_PRESET, "expand": 1.75}, "anyres_e2p", 0.5, False,
                [("vision", 3.0, 5e-4, 8, 1, 32), ("resampler", 1.0, 1e-4, 1, 4, 128), ("finetune", 1.0, 5e-5, 1, 4, 256)]),
}


@pytest.mark.parametrize("shape", sorted(shapes.SHAPES))
def test_each_shipped_config_translates_to_what_panollava_trained(shape):
    vision, resampler, crop, overlap, pe, stages = EXPECTED[shape]
    migration = migrate_config(shapes.SHAPES[shape]())
    args, run = migration.model_args, migration.run_file
    assert (args["vision_model_name_or_path"], args["text_model_name_or_path"]) == (vision, QWEN3)
    assert args["resampler_config"] == resampler
    config = args["config"]
    # The model's stitching came from models: (drop_overlap), never image_processing's "concat".
    assert (config["crop_strategy"], config["overlap_ratio"], config["stitching_mode"]) == (crop, overlap, "drop_overlap")
    assert config["use_panorama_pe"] is pe and config.get("panorama_pe_type") == ("panollava" if pe else None)
    assert config["vision_feature_norm"] is True
    assert (config["vicreg_projector_dim"], config["vicreg_projector_depth"]) == (768, 2)
    assert config.get("vertical_crop_ratio", 1.0) == 1.0  # only e2p cropped its views vertically
    PanoVLMConfig(resampler_config=args["resampler_config"], **config)  # a valid PanoVLM config
    # Stages in training.stages order, with the stage blocks' values (string learning rates converted).
    assert [(s["stage"], s["num_train_epochs"], s["learning_rate"], s["batch_size"], s["gradient_accumulation_steps"],
             s["max_length"]) for s in run["stages"]] == stages
    for entry in run["stages"]:
        assert entry["warmup_steps"] == pytest.approx(0.1 * entry["gradient_accumulation_steps"])
        if entry["stage"] == "vision":
            assert (entry["vicreg_invariance"], entry["vicreg_variance"], entry["vicreg_covariance"]) == (25.0, 25.0, 1.0)
            assert entry["vicreg_mode"] == "pairwise"
            assert entry.get("vision_trainable_blocks", 0) == (0 if shape == "panovlm" else 2)
    assert (run["lora_r"], run["lora_alpha"], run["lora_dropout"]) == (32, 64, 0.1)
    assert run["lora_modules"] == shapes.LORA_TARGETS
    assert run["system_prompt"] == args["system_prompt"] == shapes.SYSTEM
    assert run["user_template"] == DEFAULT_USER_TEMPLATE
    assert (run["train_csv"], run["eval_csv"]) == ("data/quic360/train.csv", "data/quic360/valid.csv")
    assert run["dataloader_num_workers"] == 8 and run.get("eval_batch_size") == (None if shape == "panovlm" else 2)
    assert run["evaluation_max_new_tokens"] == args["generation"]["max_new_tokens"] == 128
    assert args["generation"] == {"max_new_tokens": 128, "min_new_tokens": 5, "temperature": 0.6, "top_p": 0.95,
                                       "top_k": 20, "repetition_penalty": 1.1, "length_penalty": 1.0, "do_sample": True}
    assert migration.test_csv == "data/quic360/test.csv"
    assert run["early_stopping_patience"] == 2 and run["eval_strategy"] == "epoch" and run["adam_beta2"] == 0.98


@pytest.mark.parametrize("shape", sorted(shapes.SHAPES))
def test_every_source_key_has_a_row_and_effective_values_are_explained(shape):
    source = shapes.SHAPES[shape]()
    migration = migrate_config(source)
    table = format_mapping_table(migration)
    rows = {row.source: row for row in migration.rows}
    for key in flatten(source):  # each key has its row, or its block's (a stage block training.stages does not run)
        row = next((row for row in rows if key == row or key.startswith(row + ".")), None)
        assert row is not None and row in table, key
    assert not [row for row in migration.rows if row.note.startswith("UNKNOWN")]
    ignored = rows["image_processing.stitching_mode"]
    assert ignored.target is None and "models:" in ignored.note
    assert rows["models.stitching_mode (absent)"].used == "drop_overlap"
    if shape in ("default",):
        expand = rows["models.resampler_config.expand (absent)"]
        assert expand.used == 1.75 and "1.75, not the 2.0" in expand.note
    if source["models"]["resampler_type"] == "mlp":
        assert rows["models.resampler_config.depth (absent)"].used == 2 and "class default" in rows[
            "models.resampler_config.depth (absent)"].note
    assert "CHANGED ON PURPOSE" in rows["lora.use_lora"].note
    if "vision" in source["training"]["stages"] and "vicreg_similarity_weight" in source["training"]["stage_configs"]["vision"]:
        assert "never read" in rows["training.stage_configs.vision.vicreg_similarity_weight"].note


def test_flat_fields_the_predecessor_path_and_refusals():
    config = shapes.default_yaml()
    config["models"].update(resampler_hidden_dim=512, resampler_depth=3)
    args = migrate_config(config).model_args
    assert args["resampler_config"] == {"resampler_type": "bimamba", **BIMAMBA_PRESET, "expand": 1.75,
                                             "hidden_dim": 512, "depth": 3}
    config = shapes.anyres_e2p_yaml()
    config["models"]["resampler_config"] = {"hidden_dim": 512}  # the BiMamba class defaults fill the rest
    resampler = migrate_config(config).model_args["resampler_config"]
    assert (resampler["depth"], resampler["dropout"], resampler["expand"], resampler["hidden_dim"]) == (2, 0.1, 2.0, 512)
    config = shapes.default_yaml()
    config["generation"]["temperature"] = 0.0  # PanoLLaVA then decoded greedily
    assert migrate_config(config).model_args["generation"] == {"max_new_tokens": 128, "min_new_tokens": 5,
                                                               "repetition_penalty": 1.1, "length_penalty": 1.0,
                                                               "do_sample": False}
    config = shapes.sliding_yaml()
    config["image_processing"]["crop_strategy"] = "e2p"
    assert migrate_config(config).model_args["config"]["vertical_crop_ratio"] == 0.9
    for change, message in (
        (lambda c: c["models"].update(resampler_type="perceiver"), "perceiver was accepted"),
        (lambda c: c["training"]["stage_configs"]["finetune"].pop("lr"), "has no lr"),
        (lambda c: c["training"].update(stages=["pretrain"]), "unknown stage"),
        (lambda c: c["training"]["stage_configs"]["finetune"].update(lr="fast"), r"finetune\.lr must be a number, got 'fast'"),
        (lambda c: c["training"]["stage_configs"]["finetune"].update(epochs="two"), r"finetune\.epochs must be a number"),
        (lambda c: c["training"]["stage_configs"]["finetune"].update(batch_size=2.5), r"finetune\.batch_size must be a whole number, got 2\.5"),
        (lambda c: c["image_processing"].update(overlap_ratio="half"), r"image_processing\.overlap_ratio must be a number"),
        (lambda c: c["generation"].update(max_new_tokens="many"), r"generation\.max_new_tokens must be a whole number"),
        (lambda c: c["image_processing"].update(fov_deg=400.0), "not valid"),
    ):
        config = shapes.default_yaml()
        change(config)
        with pytest.raises(LegacyConversionError, match=message):
            migrate_config(config)


# ---- the command, and training from the translated run file ----------------------------------------------------------
@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """Tiny stand-ins for the towers a PanoLLaVA config names: a SigLIP vision tower and a Qwen3 causal LM with its
    tokenizer, saved as model directories."""
    root = tmp_path_factory.mktemp("towers")
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tokenizer)
    torch.manual_seed(0)
    AutoModel.from_config(config.vision_config).save_pretrained(root / "vision")
    AutoModelForCausalLM.from_config(config.text_config).save_pretrained(root / "text")
    tokenizer.save_pretrained(root / "text")
    write_synthetic_dataset(root / "data", num=3, height=64, test_fraction=0.34, num_objects=1)
    return root


def tiny_panollava_config(towers: Path, runs: Path) -> dict:
    """configs/silding.yaml (three stages, MLP) on the tiny towers and synthetic tables."""
    config = shapes.sliding_yaml()
    config["models"].update(vision_name=str(towers / "vision"), language_model_name=str(towers / "text"),
                            resampler_config={"latent_dimension": 64, "hidden_dim": 64})
    config["paths"].update(runs_dir=str(runs), csv_train=str(towers / "data" / "train.csv"),
                           csv_val=str(towers / "data" / "test.csv"), csv_test=str(towers / "data" / "test.csv"))
    del config["training"]["stage_configs"]["vision"]["data"], config["data"]
    return config


def test_migrated_run_file_builds_from_the_towers_and_trains(towers, tmp_path, capsys):
    source = tmp_path / "silding.yaml"
    source.write_text(yaml.safe_dump(tiny_panollava_config(towers, tmp_path / "runs")))
    run_file = tmp_path / "run.yaml"
    status, out, err = run_cli(migrate_cli, [source, "--output", run_file, "--build"], capsys)
    assert status == 0, err
    assert "image_processing.stitching_mode" in out and "NOT CARRIED OVER" in out and "built the start checkpoint" in out
    written = yaml.safe_load(run_file.read_text())
    start = Path(written["model"])
    assert start == tmp_path / "runs" / "silding_1" / "start" and (start / "processor_config.json").is_file()
    model_args = yaml.safe_load((tmp_path / "run.model.yaml").read_text())
    assert model_args["resampler_config"]["hidden_dim"] == 64
    built = AutoModelForImageTextToText.from_pretrained(start)
    assert built.config.crop_strategy == "sliding_window" and built.config.panorama_pe_type == "panollava"
    assert built.generation_config.top_k == 20 and built.generation_config.do_sample is True
    # The file as written trains (a step per stage), each stage starting from the previous one's output.
    command = [sys.executable, "-m", "modeling_panovlm.cli", "train", "--config", run_file, "--max-steps", "1",
               "--batch-size", "2", "--eval-batch-size", "2", "--dataloader-num-workers", "0", "--quiet"]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    for stage in ("vision", "resampler", "finetune"):
        assert (start.parent / stage / "stage_summary.json").is_file(), stage
    # Written files are never silently replaced.
    status, _, err = run_cli(migrate_cli, [source, "--output", run_file], capsys)
    assert status == 2 and "--overwrite" in err
    status, _, err = run_cli(migrate_cli, [tmp_path / "missing.yaml", "--output", tmp_path / "x.yaml"], capsys)
    assert status == 2 and "does not exist" in err


# ---- PanoLLaVA run directories in evaluate and infer -----------------------------------------------------------------
@pytest.fixture(scope="module")
def legacy_run(towers, tmp_path_factory):
    """A PanoLLaVA finetune run directory of a tiny BiMamba e2p model whose towers are the tiny stand-ins."""
    from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("legacy")
    model, _ = build_tiny_checkpoint(resampler_type="bimamba", crop_strategy="e2p", seed=3,
                                     resampler_config={"expand": 1.75})
    hparams = {"stage": "finetune", "vision_name": str(towers / "vision"), "language_model_name": str(towers / "text"),
               "resampler_type": "bimamba", "latent_dimension": 64, "model_overlap_ratio": 0.5}
    return write_run(root / "run", legacy_state_dict(model), hparams, metadata="truncated", layout="timestamped")


def test_checkpoint_dir_of_a_panollava_run_evaluates_as_its_conversion(towers, legacy_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PANOVLM_CONVERTED_CACHE", str(tmp_path / "cache"))
    assert is_legacy_run_dir(legacy_run) and not is_legacy_run_dir(towers / "vision")
    table = towers / "data" / "test.csv"
    common = ["--max-samples", 2, "--max-new-tokens", 4, "--metrics-style", "panollava"]
    status, out, err = run_cli(evaluate_cli, ["--checkpoint-dir", legacy_run, "--csv-input", table, *common,
                                               "--output-dir", tmp_path / "direct"], capsys)
    assert status == 0, err
    converted = Path(out.split("converted it into ")[1].split()[0])
    assert converted.parent == tmp_path / "cache" and (converted / "processor_config.json").is_file()

    # By hand: convert with the converter, give the directory the tiny LM's processor, evaluate it.
    from transformers import AutoTokenizer

    conversion = plan_conversion(load_legacy_run(legacy_run), image_token_id=build_tiny_tokenizer().convert_tokens_to_ids("<|image_pad|>"))
    by_hand = write_conversion(conversion, tmp_path / "by-hand")
    PanoVLMProcessor.from_model_config(conversion.config, AutoTokenizer.from_pretrained(towers / "text")).save_pretrained(by_hand)
    status, _, err = run_cli(evaluate_cli, ["--model", by_hand, "--csv", table, *common, "--output-dir",
                                             tmp_path / "manual"], capsys)
    assert status == 0, err

    def predictions(directory: Path) -> list[dict]:
        with open(directory / "predictions.csv", newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    assert predictions(tmp_path / "direct") == predictions(tmp_path / "manual") and predictions(tmp_path / "manual")
    # Again: the conversion is reused; and infer accepts the run directory too, answering as the converted model.
    status, out, err = run_cli(evaluate_cli, ["--checkpoint-dir", legacy_run, "--csv-input", table, *common,
                                               "--output-dir", tmp_path / "again"], capsys)
    assert status == 0 and f"reused its conversion into {converted}" in out, err
    image = towers / "data" / predictions(tmp_path / "manual")[0]["url"]
    answers = []
    towers_flags = ["--vision-config", towers / "vision", "--text-config", towers / "text"]  # the recorded towers, named
    for model_flag in (["--checkpoint-dir", legacy_run, *towers_flags], ["--model", by_hand]):
        status, out, err = run_cli(infer_cli, [*model_flag, "--image", image, "--prompt", "location",
                                                "--max-new-tokens", 4], capsys)
        assert status == 0, err
        answers.append(out.strip().splitlines()[-1])
    assert answers[0] == answers[1]


def test_panollava_flags_refuse_what_cannot_work(legacy_run, towers, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PANOVLM_CONVERTED_CACHE", str(tmp_path / "cache"))
    table = towers / "data" / "test.csv"
    status, _, err = run_cli(evaluate_cli, ["--checkpoint-dir", legacy_run, "--model", legacy_run, "--csv", table,
                                             "--output-dir", tmp_path / "x"], capsys)
    assert status == 2 and "not both" in err
    status, _, err = run_cli(evaluate_cli, ["--model", legacy_run, "--csv", table], capsys)
    assert status == 2 and "--output-dir" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    torch.save({"state_dict": {"model.something.weight": torch.zeros(1)}, "hyper_parameters": {
        "vision_name": str(towers / "vision"), "language_model_name": str(towers / "text")}}, broken / "last.ckpt")
    status, _, err = run_cli(evaluate_cli, ["--checkpoint-dir", broken, "--csv-input", table, "--output-dir",
                                             tmp_path / "y"], capsys)
    assert status == 2 and "does not convert" in err and not list((tmp_path / "cache").glob("broken-*"))
    with pytest.raises(LegacyConversionError, match="neither a bimamba nor an mlp"):
        convert_run_dir(broken, cache=tmp_path / "cache")
    status, _, err = run_cli(evaluate_cli, ["--checkpoint-dir", legacy_run.parent, "--csv-input", table], capsys)
    assert status == 2 and f"give one of {legacy_run}" in err  # the experiment directory, not a stage run
    status, _, err = run_cli(evaluate_cli, ["--model", towers / "text", "--vision-config", towers / "vision", "--csv",
                                             table, "--output-dir", tmp_path / "z"], capsys)
    assert status == 2 and "is not a PanoLLaVA run" in err
    status, _, err = run_cli(infer_cli, ["--image", table, "--prompt", "x"], capsys)
    assert status == 2 and "--model (or --checkpoint-dir)" in err


def test_config_flag_completes_what_the_run_does_not_record(legacy_run, towers, tmp_path, monkeypatch, capsys):
    """`--config` (the run's training YAML) gives the PE, vertical crop and stitching the checkpoint does not
    record, the test table when --csv-input is not given, and --output-dir defaults to PanoLLaVA's results dir."""
    monkeypatch.setenv("PANOVLM_CONVERTED_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    config = tiny_panollava_config(towers, tmp_path / "runs")
    config["image_processing"]["crop_strategy"] = "e2p"
    config["models"].update(resampler_type="bimamba", resampler_config={"latent_dimension": 64, "hidden_dim": 64})
    (tmp_path / "e2p.yaml").write_text(yaml.safe_dump(config))
    argv = ["--checkpoint-dir", legacy_run, "--config", tmp_path / "e2p.yaml", "--max-samples", 1, "--max-new-tokens", 2,
            "--metrics-style", "panollava"]
    status, out, err = run_cli(evaluate_cli, argv, capsys)
    assert status == 0, err
    converted = Path(out.split("converted it into ")[1].split()[0])
    saved = PanoVLMConfig.from_pretrained(converted)
    assert (saved.use_panorama_pe, saved.panorama_pe_type, saved.vertical_crop_ratio) == (True, "panollava", 0.9)
    assert (tmp_path / "results" / "eval_results" / "run" / "predictions.csv").is_file()
    config["image_processing"]["crop_strategy"] = "sliding_window"  # not what the run was trained with
    (tmp_path / "sliding.yaml").write_text(yaml.safe_dump(config))
    status, _, err = run_cli(evaluate_cli, [*argv[:2], "--config", tmp_path / "sliding.yaml", *argv[4:]], capsys)
    assert status == 2 and "was trained with 'e2p'" in err


def test_the_best_checkpoint_is_the_lowest_validation_loss(tmp_path):
    """PanoLLaVA's layout: its ModelCheckpoint wrote the best as `..._epoch{EE}_loss{L}.ckpt` plus a newer
    `last.ckpt`, and no `best.ckpt`; the converter takes the lowest recorded loss, as PanoLLaVA's stage chaining did."""
    from modeling_panovlm.conversion.legacy_run import find_checkpoint

    for name in ("siglip2_bimamba_anyres-e2p_train_epoch00_loss2.4910.ckpt", "x_epoch01_loss2.5100.ckpt",
                 "x_epoch02_loss1e-1.ckpt", "last.ckpt"):
        torch.save({}, tmp_path / name)
    assert find_checkpoint(tmp_path).name == "x_epoch02_loss1e-1.ckpt"
    (tmp_path / "x_epoch02_loss1e-1.ckpt").unlink()
    assert find_checkpoint(tmp_path).name == "siglip2_bimamba_anyres-e2p_train_epoch00_loss2.4910.ckpt"
    (tmp_path / "best.ckpt").symlink_to("x_epoch01_loss2.5100.ckpt")  # an explicit best wins
    assert find_checkpoint(tmp_path).name == "best.ckpt"


# The towers' published shapes (no weights needed): image tokens per panorama of each translated config.
TOWER_CONFIGS = {
    SIGLIP2: {"model_type": "siglip_vision_model", "image_size": 256, "patch_size": 16, "hidden_size": 1152,
              "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16},
    SIGLIP: {"model_type": "siglip_vision_model", "image_size": 224, "patch_size": 16, "hidden_size": 768,
             "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
}


@pytest.mark.parametrize(("shape", "views", "tokens"), [
    # PanoLLaVA's counts (reference §2.7): resize 196 and sliding 882 alike; anyres_e2p 1280 there (its global view
    # stitched as the first strip view) vs 256 + 1152 here; cubemap 490 there (half of every later face dropped as if
    # faces overlapped) vs every face token here.
    ("default", 9, 1408), ("anyres_e2p", 9, 1408), ("anyres_e2p_mlp", 9, 1408), ("panovlm", 9, 1408),
    ("resize", 1, 196), ("cubemap", 4, 784), ("sliding_window", 8, 882),
])
def test_translated_configs_with_the_real_tower_shapes(shape, views, tokens):
    args = migrate_config(shapes.SHAPES[shape]()).model_args
    config = PanoVLMConfig(vision_config=TOWER_CONFIGS[args["vision_model_name_or_path"]],
                           text_config={"model_type": "qwen3", "hidden_size": 1024, "vocab_size": 151936},
                           resampler_config=args["resampler_config"], **args["config"])
    assert (config.num_views, config.num_image_tokens) == (views, tokens)
