"""`examples/demo.py --quick`: the README's main job runs end to end (tiny checkpoint, exact reload, synthetic
data, three stages, adapter loaded with the Auto classes) and reports its figures. Learning itself is not checked
here (a few steps per stage); the full demo's figures are in the README."""

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_every_stage_and_writes_its_figures(tmp_path):
    command = [sys.executable, ROOT / "examples" / "demo.py", "--quick", "--num-panoramas", "12", "--output-dir", tmp_path]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0 missing/unexpected/mismatched keys, bit-identical logits: True" in result.stdout
    figures = json.loads((tmp_path / "demo_results.json").read_text())
    assert figures["reload_bit_identical"] is True
    assert 0.0 <= figures["accuracy_before"] <= 1.0 and 0.0 <= figures["accuracy_after"] <= 1.0
    assert figures["questions"] > 0
    for stage in ("vision", "resampler", "finetune"):
        assert figures[stage]["steps"] == 4
        assert (tmp_path / stage / "training_curves.png").stat().st_size > 0
    assert (tmp_path / "finetune" / "adapter_config.json").is_file()
