"""`StageOptions`: everything one training stage needs, as a `transformers.TrainingArguments` subclass.

Like TRL's `SFTConfig`, the stage's own options (which stage, the model it starts from, its data, LoRA and VICReg
settings) sit next to every `TrainingArguments` field, so `HfArgumentParser` turns the one dataclass into the
`panovlm train` flags and run-file keys, and `run_stage` hands the object to the Trainer as its `args`. PanoVLM's
defaults differ from the Trainer's where the stages need it (learning rate, warm-up, logging every 10 steps, one
epoch, raw table columns kept for the collator). Out-of-range values are refused here, naming the flag and the
valid range, before any model is loaded.
"""

import json
from dataclasses import dataclass, field, fields
from types import UnionType
from typing import Literal, Union, get_args, get_origin, get_type_hints

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from modeling_panovlm.evaluation.generation import DEFAULT_MAX_NEW_TOKENS
from modeling_panovlm.evaluation.metrics import TOKENIZERS

from .lora import DEFAULT_LORA_MODULES
from .losses import VICREG_MODES
from .stages import STAGES


StageName = Literal[tuple(STAGES)]
MetricsTokenizer = Literal[TOKENIZERS]
VICRegMode = Literal[VICREG_MODES]


def flag(name: str) -> str:
    """The command-line flag of an option: `max_steps` -> `--max-steps`."""
    return "--" + name.replace("_", "-")


@dataclass
class DataOptions:
    """The training and evaluation tables and what the collator does with them."""

    _argument_group_name = "data"

    train_csv: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "Caption table(s) to train on, concatenated: any source of processing_panovlm.data (CSV/TSV, "
            "JSON Lines, Parquet, WebDataset shards, globs, a saved dataset, a Hub dataset id); see the data "
            "source options below."
        },
    )
    eval_csv: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "Caption table(s) for eval_loss every --eval-steps and, after the last stage, a caption "
            "evaluation (see --evaluate-after-training)."
        },
    )
    augment: bool = field(
        default=True,
        metadata={
            "help": "Random yaw roll and colour jitter of training panoramas; --no-augment for captions that name "
            "directions, which a roll would contradict. Evaluation rows are never augmented."
        },
    )
    yaw_roll_probability: float = field(default=0.5, metadata={"help": "Chance of a random yaw roll per panorama."})
    max_roll_fraction: float = field(default=0.3, metadata={"help": "Largest roll, as a fraction of the width."})
    brightness: float = field(default=0.2, metadata={"help": "Colour jitter: brightness factor range."})
    contrast: float = field(default=0.2, metadata={"help": "Colour jitter: contrast factor range."})
    saturation: float = field(default=0.2, metadata={"help": "Colour jitter: saturation factor range."})
    hue: float = field(default=0.1, metadata={"help": "Colour jitter: hue shift range, at most 0.5."})
    max_length: int | None = field(
        default=None,
        metadata={"help": "Longest tokenized prompt + caption; captions are cut, never the image tokens."},
    )


@dataclass
class StageOptions(TrainingArguments, DataOptions):
    """One stage of PanoVLM training. Field names are the `panovlm train` flags (`--max-steps`) and run-file keys
    (`max_steps`); every `TrainingArguments` field is one too.

    `trainer_args` passes further `TrainingArguments` fields as one mapping (e.g. `{"fsdp": "full_shard"}`).
    """

    _argument_group_name = "stage"

    stage: StageName | None = field(
        default=None,
        metadata={
            "help": "Stage to train: vision (overlap VICReg between neighbouring views; trains the resampler and the "
            "VICReg head), resampler (captions, language model frozen; trains resampler and projector) or finetune "
            "(LoRA adapters on the language model through PEFT). With --config: run only this stage of the file."
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint directory or Hub id the stage starts from. With --config: where the first stage "
            "starts (later stages start from the previous stage's output)."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory the stage writes: the model (or adapter), processor, checkpoint-N folders, data "
            "report, trainer state, training curves and train.log. With --config: the run directory, each stage "
            "writing <output-dir>/<stage>."
        },
    )
    max_steps: int = field(
        default=-1,
        metadata={"help": "Optimizer steps to train: at least 1, or -1 to train --num-train-epochs epochs."},
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs to train when --max-steps is -1."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (AdamW), > 0."})
    module_learning_rates: dict[str, float] | str | None = field(
        default_factory=dict,
        metadata={
            "help": "JSON object of per-module learning rates, keyed by parameter-name prefix, e.g. "
            '\'{"model.multi_modal_projector": 1e-4}\'; other trainable tensors use --learning-rate.'
        },
    )
    batch_size: int = field(default=4, metadata={"help": "Training panoramas per device and step."})
    eval_batch_size: int = field(default=4, metadata={"help": "Evaluation panoramas per device and step."})
    weight_decay: float = field(
        default=0.05, metadata={"help": "AdamW weight decay (biases, norms and SSM/query parameters get none)."}
    )
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: steps, or below 1 a fraction of the total steps."}
    )
    logging_steps: float = field(
        default=10, metadata={"help": "Log the loss every N steps (below 1: a fraction of the total steps)."}
    )
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoint-N folders (the best one is always kept)."}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass (every resampler type supports it)."},
    )
    vision_trainable_blocks: int = field(
        default=0,
        metadata={
            "help": "Vision stage: also train the last N blocks of the vision tower (0 to the tower's block count)."
        },
    )
    vicreg_invariance: float = field(default=25.0, metadata={"help": "Vision stage: VICReg invariance weight."})
    vicreg_variance: float = field(default=25.0, metadata={"help": "Vision stage: VICReg variance weight."})
    vicreg_covariance: float = field(default=1.0, metadata={"help": "Vision stage: VICReg covariance weight."})
    vicreg_mode: VICRegMode = field(
        default="pairwise",
        metadata={
            "help": "Vision stage: VICReg variance and covariance of each pair of neighbouring strips (pairwise, "
            "PanoLLaVA's) or of all the strips of the (global) batch as one set (batchwise)."
        },
    )
    lora_r: int = field(default=32, metadata={"help": "Finetune stage: LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "Finetune stage: LoRA alpha (scaling alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Finetune stage: LoRA dropout, in [0, 1)."})
    lora_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_MODULES),
        metadata={"help": "Finetune stage: Linear layers of the language model's decoder layers that get LoRA."},
    )
    lora_modules_to_save: list[str] = field(
        default_factory=lambda: ["resampler", "multi_modal_projector"],
        metadata={
            "help": "Finetune stage: modules trained in full and saved with the adapter (in a run file, [] for none)."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System prompt to train with, saved with the processor (evaluation and inference then use it). "
            'Default: the one saved with --model\'s processor; "" for none.'
        },
    )
    user_template: str | None = field(
        default=None,
        metadata={
            "help": "User turn around each query, with a {query} field, saved with the processor. Default: the one "
            "saved with --model's processor."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop when eval_loss has not improved for N evaluations and keep the best checkpoint as the "
            "output (needs --eval-csv)."
        },
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "With --early-stopping-patience: smallest eval_loss decrease that counts."}
    )
    evaluate_after_training: bool = field(
        default=True,
        metadata={
            "help": "With --eval-csv: after the last stage, generate captions for the table and score them "
            "(predictions.csv, metrics.json, report.md in <output-dir>/evaluation)."
        },
    )
    evaluation_max_samples: int | None = field(
        default=None, metadata={"help": "That evaluation: only the first N (image, query) groups."}
    )
    evaluation_max_new_tokens: int = field(
        default=DEFAULT_MAX_NEW_TOKENS, metadata={"help": "That evaluation: longest generated caption, in tokens."}
    )
    metrics_tokenizer: MetricsTokenizer = field(
        default="java-ptb",
        metadata={
            "help": "That evaluation: PTB tokenizer of the coco metrics, java-ptb (needs Java) or python (a "
            "pure-Python re-creation, within about 1%%; recorded in metrics.json)."
        },
    )
    trainer_args: dict | str | None = field(
        default_factory=dict,
        metadata={
            "help": 'JSON object of further TrainingArguments fields, e.g. \'{"fsdp": "full_shard"}\' (each is also '
            "a flag of its own)."
        },
    )
    # Derived from the options above, so not options themselves: the batch sizes and checkpointing have PanoVLM's
    # names (--batch-size, --gradient-checkpointing), and the collator needs the raw table columns.
    per_device_train_batch_size: int = field(default=4, init=False)
    per_device_eval_batch_size: int = field(default=4, init=False)
    activation_checkpointing: bool | None = field(default=None, init=False)
    gradient_checkpointing_kwargs: dict | None = field(default=None, init=False)
    remove_unused_columns: bool = field(default=False, init=False)
    # Without an accelerator, accelerate only sets up data parallelism over CPU processes (gloo) when told to use the
    # CPU; otherwise each rank of `torchrun` / `accelerate launch --multi_gpu` trains alone on all the data.
    use_cpu: bool | None = field(
        default=None, metadata={"help": "Train on the CPU (true/false; unset: when no accelerator is present)."}
    )
    dataloader_pin_memory: bool | None = field(
        default=None, metadata={"help": "Pin DataLoader memory (true/false; unset: with CUDA)."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DDP's find_unused_parameters (each stage uses every trainable tensor)."}
    )

    def __post_init__(self):
        missing = [name for name in ("stage", "model", "train_csv", "output_dir") if not getattr(self, name)]
        if missing:
            raise ValueError(f"no value for {', '.join(flag(name) for name in missing)}")
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {list(STAGES)}, got {self.stage!r}")
        if self.vicreg_mode not in VICREG_MODES:
            raise ValueError(f"--vicreg-mode must be one of {list(VICREG_MODES)}, got {self.vicreg_mode!r}")
        if self.metrics_tokenizer not in TOKENIZERS:
            raise ValueError(f"--metrics-tokenizer must be one of {list(TOKENIZERS)}, got {self.metrics_tokenizer!r}")
        self.module_learning_rates = _json_object(self.module_learning_rates, "module_learning_rates")
        self.trainer_args = _json_object(self.trainer_args, "trainer_args")
        self._check_types()
        for name in ("train_csv", "eval_csv"):  # one table given as a one-item list (as flags give it) is that table
            if isinstance(getattr(self, name), list) and len(getattr(self, name)) == 1:
                setattr(self, name, getattr(self, name)[0])
        self._check_ranges()
        for key, value in self.trainer_args.items():
            if key not in _PASSABLE:
                reason = (
                    f"it is the option {flag(key)}" if key in _OPTIONS
                    else "PanoVLM derives it from its own options" if key in _OWN
                    else "it is not a TrainingArguments field"
                )
                raise ValueError(f"--trainer-args cannot set {key!r}: {reason}")
            setattr(self, key, value)
        self.per_device_train_batch_size = self.batch_size
        self.per_device_eval_batch_size = self.eval_batch_size
        self.activation_checkpointing = self.gradient_checkpointing
        if self.use_cpu is None:
            self.use_cpu = not torch.accelerator.is_available()
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available()
        if self.label_names is None:  # the vision stage has no labels; its loss comes from the view embeddings
            self.label_names = [] if STAGES[self.stage].loss == "overlap_vicreg" else ["labels"]
        if self.eval_csv and IntervalStrategy(self.eval_strategy) == IntervalStrategy.NO:
            self.eval_strategy = IntervalStrategy.STEPS
        if self.early_stopping_patience is not None:
            if not self.eval_csv:
                raise ValueError("--early-stopping-patience watches eval_loss: give --eval-csv too")
            # Checkpoints are saved whenever eval_loss improves, and the best one becomes the stage's output.
            self.load_best_model_at_end = True
            self.metric_for_best_model = self.metric_for_best_model or "eval_loss"
            self.save_strategy = "best"
        super().__post_init__()

    def _check_types(self) -> None:
        """PanoVLM's own options, checked for Python callers (the parser types the command line and run files)."""
        hints = get_type_hints(StageOptions)
        literal = {"stage", "vicreg_mode", "metrics_tokenizer"}  # checked by value
        for name in sorted(_OPTIONS - literal - {"module_learning_rates", "trainer_args"}):
            value, kind = getattr(self, name), hints[name]
            members = get_args(kind) if get_origin(kind) in (Union, UnionType) else (kind,)
            allowed = tuple(get_origin(member) or member for member in members)
            allowed += (int,) if float in allowed else ()
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                expected = " or ".join(sorted({t.__name__ for t in allowed}))
                raise TypeError(f"{flag(name)} must be {expected}, got {type(value).__name__} {value!r}")

    def _check_ranges(self) -> None:
        checks = [
            ("max_steps", self.max_steps == -1 or self.max_steps >= 1, "-1 (train --num-train-epochs) or at least 1"),
            ("num_train_epochs", self.num_train_epochs > 0, "> 0"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "at least 1"),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, "at least 1"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("max_grad_norm", self.max_grad_norm >= 0, ">= 0"),
            ("logging_steps", self.logging_steps > 0, "> 0"),
            ("save_steps", self.save_steps > 0, "> 0"),
            ("eval_steps", self.eval_steps is None or self.eval_steps > 0, "> 0"),
            ("save_total_limit", self.save_total_limit is None or self.save_total_limit >= 1, "at least 1"),
            ("vision_trainable_blocks", self.vision_trainable_blocks >= 0, "between 0 and the tower's block count"),
            ("vicreg_invariance", self.vicreg_invariance >= 0, ">= 0"),
            ("vicreg_variance", self.vicreg_variance >= 0, ">= 0"),
            ("vicreg_covariance", self.vicreg_covariance >= 0, ">= 0"),
            ("lora_r", self.lora_r >= 1, "at least 1"),
            ("lora_alpha", self.lora_alpha > 0, "> 0"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)"),
            ("yaw_roll_probability", 0 <= self.yaw_roll_probability <= 1, "in [0, 1]"),
            ("max_roll_fraction", 0 <= self.max_roll_fraction <= 1, "in [0, 1]"),
            ("brightness", self.brightness >= 0, ">= 0"),
            ("contrast", self.contrast >= 0, ">= 0"),
            ("saturation", self.saturation >= 0, ">= 0"),
            ("hue", 0 <= self.hue <= 0.5, "in [0, 0.5]"),
            ("max_length", self.max_length is None or self.max_length >= 1, "at least 1"),
            ("dataloader_num_workers", self.dataloader_num_workers >= 0, ">= 0"),
            ("early_stopping_patience", self.early_stopping_patience is None or self.early_stopping_patience >= 1, "at least 1"),
            ("early_stopping_threshold", self.early_stopping_threshold >= 0, ">= 0"),
            ("evaluation_max_samples", self.evaluation_max_samples is None or self.evaluation_max_samples >= 1, "at least 1"),
            ("evaluation_max_new_tokens", self.evaluation_max_new_tokens >= 1, "at least 1"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise ValueError(f"{flag(name)} must be {valid}, got {getattr(self, name)!r}")
        for prefix, rate in self.module_learning_rates.items():
            if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
                raise ValueError(f"--module-learning-rates: the rate of {prefix!r} must be a number > 0, got {rate!r}")


# The options StageOptions declares itself (its own and the data options), and the other TrainingArguments fields,
# which --trainer-args may set.
_OWN = frozenset(vars(StageOptions)["__annotations__"]) | frozenset(vars(DataOptions)["__annotations__"])
_OPTIONS = frozenset(f.name for f in fields(StageOptions) if f.init) & _OWN
_PASSABLE = frozenset(f.name for f in fields(TrainingArguments) if f.init and f.name not in _OWN)


def _json_object(value: dict | str | None, name: str) -> dict:
    """A mapping option given as a dict (Python, run files) or a JSON string (command line)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"{flag(name)} must be a JSON object, got {value!r} ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag(name)} must be a JSON object, got {value!r}")
    return value


__all__ = ["DataOptions", "StageOptions", "flag"]
