"""Every stage under DDP and FSDP2 with two CPU processes (gloo), through `torchrun` and `accelerate launch`.

`examples/train.py` runs the three stages from a run file, and the Python API (`run_stage`) a resumed run; the
weights are compared with a single process that sees the same global batches, the stage outputs with a
single-process run's files, and a sharded run resumed on three processes with the uninterrupted run. Child
processes are this file run as a script (`_child`); success is judged from the ranks' own output, since the gloo
teardown can abort a finished rank (environment note).

Why not bit-exact: the data-parallel gradient is a sum over processes (DDP all-reduce, FSDP2 reduce-scatter of
flat shards) in another order than one process's sum over its batch, so float32 gradients differ by rounding
(~1e-7 relative). The comparisons use SGD, so the weights differ by the learning rate times that: AdamW divides
each coordinate by its own running RMS, and a gradient that is zero in exact arithmetic but float noise (the VICReg
head's output bias, which every VICReg term cancels) steps by +-lr whichever sign the noise takes.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_panovlm  # noqa: F401  (registers the Auto classes)
from configuration_panovlm import build_view_layout
from modeling_panovlm.testing.synthetic_panoramas import write_synthetic_dataset
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training.losses import VICRegWeights, overlap_pairs, overlap_vicreg_loss
from modeling_panovlm.training.runner import StageOptions, run_stage


ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"
# One OpenMP thread per process: the processes share two cores, and tiny models gain nothing from more.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
STAGES = ("vision", "resampler", "finetune")
FSDP2 = {"fsdp": True, "fsdp_config": {"version": 2}}
# float32 SGD: weights of 2 processes vs 1 differ by lr x gradient rounding (see the module docstring).
ATOL, RTOL = 1e-6, 1e-5
NO_LOADING_PROBLEMS = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
# Options of every stage of the equivalence runs; `batch_size` is per process (2 processes x 1 = one process x 2).
RUN = dict(
    max_steps=2, logging_steps=1, warmup_steps=0, save_steps=1, save_total_limit=None, learning_rate=0.1,
    lora_r=4, lora_alpha=8, lora_dropout=0.0, eval_steps=2,
)
VICREG_MODE = {"mlp": "pairwise", "bimamba": "batchwise"}


def torchrun(processes: int) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", processes]


def accelerate_launch(processes: int, *flags: str) -> list:
    # On CPU, `--multi_gpu` (or `--use_fsdp`) is what starts several processes (`--cpu` runs one).
    return [sys.executable, "-m", "accelerate.commands.launch", *(flags or ["--multi_gpu"]), "--num_processes",
            processes, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "0"]


def launch(command: list) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, env=ENV)
    return f"exit code {result.returncode}\n{result.stdout}{result.stderr}"


def weights(directory: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (directory / "adapter_config.json").exists() else "model.safetensors"
    return load_file(directory / name)


def assert_close(actual: dict, expected: dict, context: str) -> None:
    assert actual.keys() == expected.keys(), context
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=ATOL, rtol=RTOL, msg=f"{context}: {key}")


def moved(trained: dict[str, torch.Tensor], start: Path) -> float:
    """Largest change of a stage's weights from the model it started from (of the LoRA B matrices, zeros at first)."""
    if "lora_B" in " ".join(trained):
        return max(v.abs().max().item() for k, v in trained.items() if "lora_B" in k)
    initial = weights(start)
    return max((trained[k] - initial[k]).abs().max().item() for k in trained)


def logged(directory: Path, key: str) -> list[float]:
    history = json.loads((directory / "trainer_state.json").read_text())["log_history"]
    return [entry[key] for entry in history if key in entry]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny mlp and bimamba checkpoints, six training rows (two scenes x three) and three test rows."""
    root = tmp_path_factory.mktemp("distributed")
    for resampler in VICREG_MODE:
        build_tiny_checkpoint(root / resampler, resampler_type=resampler)
    train, test = write_synthetic_dataset(root / "data", num=3, height=64, test_fraction=0.34, num_objects=1)
    return root, train, test


@pytest.fixture(scope="module")
def single(workspace):
    """`{resampler: {stage: output dir}}` of the three stages chained in this (single) process, batches of 2."""
    root, train, test = workspace
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    outputs = {}
    try:
        for resampler, mode in VICREG_MODE.items():
            model, outputs[resampler] = str(root / resampler), {}
            for stage in STAGES:
                output = root / "single" / resampler / stage
                run_stage(StageOptions(
                    stage=stage, model=model, train_csv=str(train), eval_csv=str(test), output_dir=str(output),
                    batch_size=2, vicreg_mode=mode, trainer_args={"optim": "sgd"}, **RUN,
                ))
                outputs[resampler][stage], model = output, str(output)
    finally:
        torch.set_num_threads(threads)
    return outputs


# Every launcher runs both parallelisms, and every parallelism both resamplers (with both VICReg modes).
# FSDP2 is asked for in the run file's trainer_args (`fsdp`, `fsdp_config`), or by accelerate's launcher flags
# (here with sharded checkpoints, whose stage outputs and checkpoints must still hold ordinary weights).
LAUNCHER = {("mlp", "fsdp2"): "torchrun", ("mlp", "ddp"): "accelerate", ("bimamba", "fsdp2"): "accelerate-fsdp",
            ("bimamba", "ddp"): "torchrun"}
ACCELERATE_FSDP = ("--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                   "--fsdp_state_dict_type", "SHARDED_STATE_DICT")


@pytest.fixture(scope="module")
def launched(workspace):
    """Runs `examples/train.py` over the three stages for (resampler, parallelism) on two processes, once each;
    returns `(run directory, combined output of the ranks)`."""
    root, train, test = workspace
    runs = {}

    def run(resampler: str, parallelism: str) -> tuple[Path, str]:
        if (resampler, parallelism) not in runs:
            directory = root / f"{resampler}-{parallelism}"
            launcher = LAUNCHER[resampler, parallelism]
            trainer_args = {"optim": "sgd", **(FSDP2 if parallelism == "fsdp2" and launcher == "torchrun" else {})}
            run_file = directory / "stages.yaml"
            directory.mkdir()
            run_file.write_text(yaml.safe_dump({
                "model": str(root / resampler), "train_csv": str(train), "eval_csv": str(test),
                "output_dir": str(directory), "batch_size": 1, "trainer_args": trainer_args, **RUN,
                "stages": [{"stage": "vision", "vicreg_mode": VICREG_MODE[resampler]}, {"stage": "resampler"},
                           {"stage": "finetune"}],
            }))
            starter = {"torchrun": torchrun(2), "accelerate": accelerate_launch(2),
                       "accelerate-fsdp": accelerate_launch(2, *ACCELERATE_FSDP)}[launcher]
            runs[resampler, parallelism] = directory, launch([*starter, TRAIN, "--config", run_file])
        return runs[resampler, parallelism]

    return run


@pytest.mark.parametrize("resampler,parallelism", list(LAUNCHER), ids=[f"{r}-{p}-{launcher}" for (r, p), launcher in LAUNCHER.items()])
def test_every_stage_on_two_processes_ends_with_the_weights_of_one_process(
    workspace, single, launched, resampler, parallelism
):
    directory, log = launched(resampler, parallelism)
    for stage in STAGES:
        assert log.count(f"stage {stage} done") == 2, log[-6000:]  # both ranks finished it
    if parallelism == "fsdp2":
        # Sharded for real: accelerate's FSDP2 path wrapped what `_no_split_modules` names, each rank holds half.
        units = [line for line in log.splitlines() if "FSDP2 units:" in line]
        assert len(units) == 2 * len(STAGES), log[-6000:]
        # (the finetune stage's modules_to_save holds a second, trainable resampler: BiMambaBlock x4)
        for name in ("SiglipEncoderLayer x2", "Qwen3DecoderLayer x2") + (("BiMambaBlock x",) if resampler == "bimamba" else ()):
            assert all(name in line for line in units), units
        for line in (line for line in log.splitlines() if "this process holds" in line):
            held, total = (int(n.replace(",", "")) for n in line.split("holds ")[1].split(" parameters")[0].split(" of "))
            assert abs(held - total / 2) < 0.01 * total, line
    else:
        assert "FSDP2" not in log and log.count("trainable weights identical on all 2 ranks") == 2 * len(STAGES)

    for stage in STAGES:
        output, reference = directory / stage, single[resampler][stage]
        checkpoint = output / "checkpoint-1"
        # FSDP's own files for resuming: full (pytorch_model_fsdp.bin) or sharded (pytorch_model_fsdp_0/)
        assert any(p.name.startswith("pytorch_model_fsdp") for p in checkpoint.iterdir()) == (parallelism == "fsdp2")
        # ... next to ordinary weights (gathered, also from sharded state dicts), those of one process at that step.
        assert_close(weights(checkpoint), weights(reference / "checkpoint-1"), f"{resampler} {parallelism} {checkpoint}")
        assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 2
        assert logged(output, "eval_loss"), f"{stage}: no evaluation"
        actual, expected = weights(output), weights(reference)
        assert_close(actual, expected, f"{resampler} {parallelism} {stage}")
        start = workspace[0] / resampler if stage == "vision" else single[resampler][STAGES[STAGES.index(stage) - 1]]
        assert moved(expected, start) > 1e-3  # the stage trained, so the comparison can fail
        # Losses (and the vision stage's VICReg terms) logged from both ranks average to the single process's.
        for key in ("loss", "vicreg_invariance", "vicreg_variance", "vicreg_covariance") if stage == "vision" else ("loss",):
            assert logged(output, key) == pytest.approx(logged(reference, key), rel=1e-5), (stage, key)


@pytest.mark.parametrize("resampler", list(VICREG_MODE))
def test_fsdp2_ddp_and_one_process_agree_and_write_the_same_checkpoints(single, launched, resampler):
    sharded, _ = launched(resampler, "fsdp2")
    replicated, _ = launched(resampler, "ddp")
    for stage in STAGES:
        fsdp, ddp, one = sharded / stage, replicated / stage, single[resampler][stage]
        assert_close(weights(fsdp), weights(ddp), f"{resampler} {stage} FSDP2 vs DDP")
        # The same files as a single process's output (tied embeddings saved once), loading cleanly on their own.
        assert sorted(p.name for p in fsdp.iterdir() if p.is_file()) == sorted(p.name for p in one.iterdir() if p.is_file())
        model, info = AutoModelForImageTextToText.from_pretrained(fsdp, output_loading_info=True)
        assert {k: list(v) for k, v in info.items()} == NO_LOADING_PROBLEMS, fsdp
        AutoProcessor.from_pretrained(fsdp)
        assert model.lm_head.weight is model.get_input_embeddings().weight


# --- resume --------------------------------------------------------------------------------------------------------


STATE_DICT_TYPES = {"full": "FULL_STATE_DICT", "sharded": "SHARDED_STATE_DICT"}


@pytest.fixture(scope="module")
def sharded_resume(workspace, single):
    """The finetune stage (LoRA + modules_to_save, AdamW) sharded over 2 processes for 4 steps of 6 rows, and the
    same run resumed from its `checkpoint-2` on 3 processes (6 rows a step either way), through `run_stage`, with
    full and with sharded FSDP checkpoints. Returns `({format: (uninterrupted, resumed)}, logs of the 2 launches)`."""
    root, train, _ = workspace
    options = dict(
        stage="finetune", model=str(single["bimamba"]["resampler"]), train_csv=str(train), max_steps=4, save_steps=2,
        save_total_limit=None, logging_steps=1, warmup_steps=0, learning_rate=1e-3, lora_r=4, lora_alpha=8,
        lora_dropout=0.0,
    )
    runs, uninterrupted, resumed = {}, [], []
    for name, state_dict_type in STATE_DICT_TYPES.items():
        full, again = root / "resume" / name / "full", root / "resume" / name / "resumed"
        fsdp = {**FSDP2, "fsdp_config": {**FSDP2["fsdp_config"], "state_dict_type": state_dict_type}}
        uninterrupted.append({**options, "trainer_args": fsdp, "batch_size": 3, "output_dir": str(full)})
        resumed.append({**options, "trainer_args": fsdp, "batch_size": 2, "output_dir": str(again),
                        "resume_from_checkpoint": str(again / "checkpoint-2")})
        runs[name] = full, again
    logs = [launch([*torchrun(2), __file__, json.dumps(uninterrupted)])]
    for full, again in runs.values():
        again.mkdir(parents=True)
        shutil.copytree(full / "checkpoint-2", again / "checkpoint-2")
    refused = [  # refused with a clear error, before the real resumes in the same processes
        {**options, "trainer_args": FSDP2, "batch_size": 2, "output_dir": str(root / "resume" / "refused"),
         "resume_from_checkpoint": str(single["bimamba"]["finetune"] / "checkpoint-1"),
         "expect_error": "was written without FSDP"},
        {**options, "batch_size": 2, "output_dir": str(root / "resume" / "fsdp1"),
         "trainer_args": {"fsdp": True, "fsdp_config": {"version": 1, "sync_module_states": False}},
         "expect_error": "on CPU fsdp_config {'version': 2}"},  # accelerate would train it as DDP, silently
    ]
    logs.append(launch([*torchrun(3), __file__, json.dumps(refused + resumed)]))
    return runs, logs


@pytest.mark.parametrize("checkpoint_format", list(STATE_DICT_TYPES))
def test_a_sharded_run_resumed_on_three_processes_ends_with_the_weights_of_the_uninterrupted_run(
    sharded_resume, checkpoint_format
):
    runs, (two, three) = sharded_resume
    assert two.count("finished") == 2 and three.count("finished") == 3, (two + three)[-6000:]
    assert three.count("refused: ") == 6, three[-6000:]  # both errors, on each of the 3 ranks
    full, resumed = runs[checkpoint_format]
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 4
    expected, actual = weights(full), weights(resumed)
    assert any(not torch.equal(expected[k], v) for k, v in weights(full / "checkpoint-2").items())  # it trained on
    # AdamW here (its state is what resuming restores); 3 processes sum the gradients in another order than 2.
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4, msg=key)
    assert logged(resumed, "loss")[2:] == pytest.approx(logged(full, "loss")[2:], rel=1e-5)


def test_a_sharded_checkpoint_is_refused_by_a_single_process(workspace, single, sharded_resume, tmp_path):
    _, train, _ = workspace
    full, _ = sharded_resume[0]["full"]
    with pytest.raises(ValueError, match="only supported when using PyTorch FSDP"):
        run_stage(StageOptions(
            stage="finetune", model=str(single["bimamba"]["resampler"]), train_csv=str(train),
            output_dir=str(tmp_path), max_steps=4, resume_from_checkpoint=str(full / "checkpoint-2"),
        ))


# --- VICReg batchwise ----------------------------------------------------------------------------------------------


def test_batchwise_vicreg_matches_a_hand_computed_reference():
    layout = build_view_layout("e2p", 90.0, 0.5)  # 8 strip views sharing half their columns with the next
    embeddings = torch.randn(2, layout.num_views, 2, 4, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    weights = VICRegWeights(25.0, 25.0, 1.0)
    loss, terms = overlap_vicreg_loss(embeddings, layout, weights, mode="batchwise")

    # By hand, in float64 and loops: the k = 2 shared columns of every view and its right neighbour.
    x = embeddings.double()
    pairs, k = [], 2
    for b in range(2):
        for v in range(8):
            left = [x[b, v, r, 4 - k + c] for r in range(2) for c in range(k)]
            right = [x[b, (v + 1) % 8, r, c] for r in range(2) for c in range(k)]
            pairs.append((left, right))
    invariance = sum(sum(float(((a - b) ** 2).sum()) for a, b in zip(left, right)) / (len(left) * 3) for left, right in pairs) / len(pairs)
    pooled = [t for left, right in pairs for t in left] + [t for left, right in pairs for t in right]
    n = len(pooled)
    means = [sum(float(t[d]) for t in pooled) / n for d in range(3)]
    variance = sum(max(0.0, 1.0 - (sum((float(t[d]) - means[d]) ** 2 for t in pooled) / n + 1e-4) ** 0.5) for d in range(3)) / 3
    cov = [[sum((float(t[i]) - means[i]) * (float(t[j]) - means[j]) for t in pooled) / (n - 1) for j in range(3)] for i in range(3)]
    covariance = sum(cov[i][j] ** 2 for i in range(3) for j in range(3) if i != j) / 3

    assert n == 2 * 16 * 2 * k
    assert terms["invariance"].item() == pytest.approx(invariance, rel=1e-5)
    assert terms["variance"].item() == pytest.approx(variance, rel=1e-5)
    assert terms["covariance"].item() == pytest.approx(covariance, rel=1e-5)
    assert loss.item() == pytest.approx(25 * invariance + 25 * variance + covariance, rel=1e-5)
    # Pairwise takes the statistics of each strip on its own: another loss on the same embeddings.
    assert overlap_vicreg_loss(embeddings, layout, weights, mode="pairwise")[0].item() != pytest.approx(loss.item())
    left, right = overlap_pairs(embeddings, layout)
    assert left.shape == (16, 2 * k, 3)


def test_vicreg_mode_is_checked_where_it_is_given(workspace):
    root, train, _ = workspace
    with pytest.raises(ValueError, match="vicreg_mode must be one of"):
        StageOptions(stage="vision", model="m", train_csv="t", output_dir="o", vicreg_mode="global")
    with pytest.raises(ValueError, match="VICReg mode must be one of"):
        overlap_vicreg_loss(torch.zeros(1, 9, 2, 4, 3), build_view_layout("anyres_e2p", 90.0, 0.5), mode="batch")


# --- child process -------------------------------------------------------------------------------------------------


def _child(actions: list[dict]) -> None:
    """Run `run_stage` for each action on this rank; an action with `expect_error` must raise a ValueError
    containing it. Ends as the environment note prescribes (gloo's teardown can abort a finished process)."""
    import logging

    import torch.distributed as dist

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for action in actions:
        expected = action.pop("expect_error", None)
        try:
            run_stage(StageOptions(**action))
        except ValueError as error:
            if expected is None or expected not in str(error):
                raise
            print(f"rank {dist.get_rank()} refused: {error}", flush=True)
        else:
            assert expected is None, f"{action['output_dir']}: no error, expected {expected!r}"
    print(f"rank {dist.get_rank()} finished", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
