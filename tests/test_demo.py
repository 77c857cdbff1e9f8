"""`panovlm demo --quick`: the README's main job runs end to end (tiny checkpoint, exact reload, synthetic data,
three stages, adapter loaded with the Auto classes), reports its figures, and prints what a person can read: a
few lines, progress bars, no warnings from PanoVLM's calls; the details go to demo.log. Learning itself is not
checked by the quick run (a few steps per stage); the full demo's learning test runs only with RUN_SLOW=1 (minutes
on a CPU; `tools/mutation.py --full-demo` runs it for the training mutants)."""

import json
import os
import re
import subprocess
import sys

from PIL import Image
from transformers.testing_utils import slow

from modeling_panovlm.evaluation import group_rows
from modeling_panovlm.testing.synthetic_panoramas import PLACE_PHRASES
from processing_panovlm.data.captions import load_caption_table


def scored_questions(test_csv) -> int:
    """Held-out (image, query) groups the demo scores: colour queries ("red object") and place queries ("left")."""
    return sum(g.query.endswith(" object") or g.query in PLACE_PHRASES for g in group_rows(load_caption_table(test_csv)))


def run_demo(output_dir, *extra) -> tuple[subprocess.CompletedProcess, dict]:
    command = [sys.executable, "-m", "modeling_panovlm.cli", "demo", *extra, "--output-dir", output_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=3600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((output_dir / "demo_results.json").read_text())


def test_quick_demo_runs_every_stage_prints_a_few_lines_and_writes_its_figures(tmp_path):
    result, figures = run_demo(tmp_path, "--quick", "--num-panoramas", "12")
    terminal = result.stdout + result.stderr
    # tqdm redraws a bar with carriage returns; a terminal shows each bar on one line.
    assert len(terminal.splitlines()) < 100, terminal[-3000:]
    # No warning from PanoVLM's calls (a logged WARNING, a Python `...Warning:`, a deprecation notice); library
    # warnings go to demo.log, and one line says how many there were.
    warnings = [line for line in terminal.splitlines() if re.search(r"WARNING|\w+Warning:|deprecat", line)]
    assert warnings == []
    assert "0 missing/unexpected/mismatched keys, bit-identical logits: True" in result.stdout
    stage_lines = [line for line in result.stdout.splitlines() if line.startswith("4. stage ")]
    assert [line.split(",")[0] for line in stage_lines] == [f"4. stage {s}: 4 steps" for s in ("vision", "resampler", "finetune")]
    assert "| after training  |" in result.stdout
    log = (tmp_path / "demo.log").read_text()
    assert "step 4: loss" in log and "***** Running training" in log
    assert figures["reload_bit_identical"] is True
    # Every held-out colour / place question is scored, and an accuracy is a count of right answers among them.
    questions = scored_questions(tmp_path / "data" / "test.csv")
    assert figures["questions"] == questions > 0
    for accuracy in (figures["accuracy_before"], figures["accuracy_after"]):
        right = accuracy * questions
        assert abs(right - round(right)) < 1e-9 and 0 <= round(right) <= questions
    for stage in ("vision", "resampler", "finetune"):
        assert figures[stage]["steps"] == 4 and figures[stage]["first_loss"] > 0
        assert (tmp_path / stage / "training_curves.png").stat().st_size > 0
    with Image.open(tmp_path / "training_curves.png") as image:
        assert image.format == "PNG"
    assert (tmp_path / "finetune" / "adapter_config.json").is_file()


@slow
def test_full_demo_learns_well_above_chance(tmp_path):
    """The README's figures: the untrained model does not answer (about 0 %), the trained one answers most held-out
    questions (about 98 %; chance 25 %)."""
    _, figures = run_demo(tmp_path)
    assert figures["questions"] == scored_questions(tmp_path / "data" / "test.csv") >= 50
    assert figures["accuracy_before"] <= 0.35
    assert figures["accuracy_after"] >= 0.8
    for stage in ("vision", "resampler", "finetune"):
        assert figures[stage]["last_loss"] < figures[stage]["first_loss"], stage
