"""The shapes of PanoLLaVA's shipped experiment configs (seed era), as parsed mappings, for the migration tests.

Restated from the reference notes (`panollava-seed-system.md` §4.1, §4.5): the same blocks, keys and values as
`configs/{default,anyres_e2p,anyres_e2p_mlp,resize,cubemap,silding,panovlm}.yaml`. Learning rates such as `5e-4`
are strings, as YAML 1.1 (PyYAML) reads them.
"""

from __future__ import annotations

import copy


SYSTEM = "You are a helpful assistant. Describe the panorama image."
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VICREG_STAGE = {"vicreg_loss_weight": 1.0, "vicreg_mode": "pairwise", "vision_trainable_blocks": 2,
                "vicreg_similarity_weight": 25.0, "vicreg_variance_weight": 25.0, "vicreg_covariance_weight": 1.0,
                "debug_vicreg_loss": True, "max_text_length": 32}
IMAGE_PROCESSING = {"crop_strategy": "anyres_e2p", "overlap_ratio": 0.5, "stitching_mode": "concat",
                    "stitch_target_to_view_width": True, "stitch_interp": "linear", "fov_deg": 90.0,
                    "use_vision_processor": True, "anyres_max_patches": 9, "normalize": True}
DATA = {"train": ["data/quic360/train.csv"], "val": ["data/quic360/valid.csv"], "csv_test": "data/quic360/test.csv",
        "max_text_length": "auto", "auto_max_text_length_cap": 256}
LORA = {"use_lora": True, "rank": 32, "alpha": 64, "dropout": 0.1, "target_modules": LORA_TARGETS,
        "save_lora_only": False}


def _common(name: str, stages: list[str], vision_lr: str, vision_accumulation: int, later_batch: int, finetune_lr: str):
    return {
        "experiment": {"name": name, "description": "PanoLLaVA multi-stage training", "version": "1.0"},
        "environment": {"cuda_visible_devices": "1", "wandb_project": "panollava-training"},
        "paths": {"runs_dir": "runs", "csv_train": "data/quic360/train.csv", "csv_val": "data/quic360/valid.csv",
                  "csv_test": "data/quic360/test.csv"},
        "models": {"vision_name": "google/siglip2-so400m-patch16-256", "language_model_name": "Qwen/Qwen3-0.6B",
                   "resampler_type": "bimamba", "use_projection_positional_encoding": True},
        "image_processing": dict(IMAGE_PROCESSING),
        "training": {
            "stages": stages, "num_workers": 8, "eval_batch_size": 2, "system_msg": SYSTEM, "wandb_project": None,
            "cache_cleanup_interval": 1000,
            "stage_configs": {
                "vision": {"epochs": 3, "lr": vision_lr, "batch_size": 8, "accumulate_grad_batches": vision_accumulation,
                           **VICREG_STAGE, "data": {"csv_train": ["data/quic360/train.csv"],
                                                    "csv_val": ["data/quic360/valid.csv"]}},
                "resampler": {"epochs": 1, "lr": "1e-4", "batch_size": later_batch, "accumulate_grad_batches": 4,
                              "vicreg_loss_weight": 0.0, "vision_trainable_blocks": 0, "max_text_length": 128},
                "finetune": {"epochs": 1, "lr": finetune_lr, "batch_size": later_batch, "accumulate_grad_batches": 4,
                             "vicreg_loss_weight": 0.0, "vision_trainable_blocks": 0, "max_text_length": 128},
            },
        },
        "generation": {"max_new_tokens": 128},
        "data": copy.deepcopy(DATA),
        "system_messages": {"default": SYSTEM},
        "lora": copy.deepcopy(LORA),
    }


def default_yaml() -> dict:
    """configs/default.yaml: BiMamba without resampler_config (so expand 1.75), finetune only."""
    config = _common("only_finetune", ["finetune"], "5e-4", 1, 1, "5e-5")
    del config["environment"]["cuda_visible_devices"]
    config["training"]["auto_eval"] = {"enabled": False, "stage": "finetune", "checkpoint": "last",
                                       "csv": "data/quic360/test.csv"}
    config["training"]["stage_configs"]["vision"]["data"]["csv_train"] += [
        "data/train_stanford_dummy_anno.csv", "data/train_zind_dummy_anno.csv"]
    return config


def anyres_e2p_yaml() -> dict:
    """configs/anyres_e2p.yaml: BiMamba with a full resampler_config (expand 2), resampler + finetune."""
    config = _common("anyres_e2p_1", ["resampler", "finetune"], "1e-4", 2, 4, "2e-6")
    config["models"]["resampler_config"] = {"latent_dimension": 768, "hidden_dim": 1024, "depth": 4, "expand": 2,
                                            "d_state": 64, "d_conv": 4, "use_ln": True, "dropout": 0.05,
                                            "norm_first": True, "enable_cross_view": False}
    config["training"]["prefix"] = "siglip2-so400m_Qwen306_bimamba_anyres-e2p_PE"
    config["training"]["deepspeed"] = {"enabled": False, "strategy": {"stage": 2}}
    return config


def mlp_yaml(name: str, crop: str, vision: str, stages: list[str]) -> dict:
    """anyres_e2p_mlp / resize / cubemap / silding: MLP with resampler_config {latent_dimension, hidden_dim}."""
    config = anyres_e2p_yaml()
    config["experiment"]["name"] = name
    config["models"].update(vision_name=vision, resampler_type="mlp",
                            resampler_config={"latent_dimension": 768, "hidden_dim": 1024})
    config["image_processing"]["crop_strategy"] = crop
    config["training"]["stages"] = stages
    if crop != "anyres_e2p":
        config["paths"]["runs_dir"] = "ablation"
        del config["training"]["prefix"]
    return config


def anyres_e2p_mlp_yaml() -> dict:
    return mlp_yaml("anyres_e2p_mlp_1", "anyres_e2p", "google/siglip2-so400m-patch16-256", ["resampler", "finetune"])


def resize_yaml() -> dict:
    return mlp_yaml("resize_1", "resize", "google/siglip-base-patch16-224", ["resampler", "finetune"])


def cubemap_yaml() -> dict:
    return mlp_yaml("cubemap_1", "cubemap", "google/siglip-base-patch16-224", ["resampler", "finetune"])


def sliding_yaml() -> dict:
    return mlp_yaml("silding_1", "sliding_window", "google/siglip-base-patch16-224", ["vision", "resampler", "finetune"])


def panovlm_yaml() -> dict:
    """configs/panovlm.yaml: no PE, BiMamba expand 1.75, VICReg head 768/2/768, text 256 in finetune, three stages."""
    config = _common("auto", ["vision", "resampler", "finetune"], "5.0e-4", 1, 1, "5.0e-5")
    config["environment"] = {"cuda_visible_devices": "0,1", "wandb_project": "panollava-training",
                             "output_dir": "runs/siglip2_qwen3_anyres"}
    models = config["models"]
    del models["use_projection_positional_encoding"]
    models.update(resampler_config={"latent_dimension": 768, "depth": 4, "hidden_dim": 1024, "use_ln": True,
                                    "dropout": 0.05, "d_state": 64, "d_conv": 4, "expand": 1.75, "norm_first": True,
                                    "enable_cross_view": False},
                  use_vicreg_projector=True, vicreg_projector_dim=768, vicreg_projector_depth=2,
                  vicreg_projector_hidden=768, resampler_num_views=8, max_text_length=256, use_text_projection=False)
    config["image_processing"]["anyres_patch_size"] = 336
    training = config["training"]
    training.update(prefix="panovlm", wandb_project="panollava-training", empty_cache_each_step=250)
    del training["eval_batch_size"], training["cache_cleanup_interval"]
    stages = training["stage_configs"]
    stages["vision"] = {"epochs": 3, "lr": 5.0e-4, "batch_size": 8, "accumulate_grad_batches": 1,
                        "vicreg_loss_weight": 1.0, "max_text_length": 32,
                        "data": {"csv_train": ["data/quic360/train.csv", "data/train_stanford_dummy_anno.csv",
                                               "data/train_zind_dummy_anno.csv"], "csv_val": ["data/quic360/valid.csv"]}}
    for name, length, lr in (("resampler", 128, 1.0e-4), ("finetune", 256, 5.0e-5)):
        stages[name] = {"epochs": 1, "lr": lr, "batch_size": 1, "accumulate_grad_batches": 4, "vicreg_loss_weight": 0.0,
                        "max_text_length": length,
                        "data": {"csv_train": "data/quic360/train.csv", "csv_val": "data/quic360/valid.csv"}}
    config["data"] = {"csv_test": "data/quic360/test.csv", "max_text_length": "auto"}
    return config


SHAPES = {
    "default": default_yaml,
    "anyres_e2p": anyres_e2p_yaml,
    "anyres_e2p_mlp": anyres_e2p_mlp_yaml,
    "resize": resize_yaml,
    "cubemap": cubemap_yaml,
    "sliding_window": sliding_yaml,
    "panovlm": panovlm_yaml,
}
