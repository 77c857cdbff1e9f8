"""`panovlm demo --quick`: the README's main job runs end to end (tiny checkpoint, exact reload, synthetic data,
three stages, adapter loaded with the Auto classes), reports its figures, and prints what a person can read: a
few lines, progress bars, no warnings from PanoVLM's calls; the details go to demo.log. Learning itself is not
checked here (a few steps per stage); the full demo's figures are in the README."""

import json
import os
import re
import subprocess
import sys

from PIL import Image


def test_quick_demo_runs_every_stage_prints_a_few_lines_and_writes_its_figures(tmp_path):
    command = [sys.executable, "-m", "modeling_panovlm.cli", "demo", "--quick", "--num-panoramas", "12", "--output-dir", tmp_path]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
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
    figures = json.loads((tmp_path / "demo_results.json").read_text())
    assert figures["reload_bit_identical"] is True
    assert 0.0 <= figures["accuracy_before"] <= 1.0 and 0.0 <= figures["accuracy_after"] <= 1.0
    assert figures["questions"] > 0
    for stage in ("vision", "resampler", "finetune"):
        assert figures[stage]["steps"] == 4 and figures[stage]["first_loss"] > 0
        assert (tmp_path / stage / "training_curves.png").stat().st_size > 0
    with Image.open(tmp_path / "training_curves.png") as image:
        assert image.format == "PNG"
    assert (tmp_path / "finetune" / "adapter_config.json").is_file()
