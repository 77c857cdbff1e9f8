"""benchmarks/gpu_check.py must keep running: its reduced CPU mode end to end (tiny towers; no timing asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run_check(tmp_path, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(SCRIPT), "--cpu-reduced", "--output-dir", str(tmp_path), *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)  # a hang guard; ~30 s on an idle 2-core machine


def test_cpu_reduced_mode_writes_every_section(tmp_path):
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check_cpu_reduced.json").read_text())
    markdown = (tmp_path / "gpu_check_cpu_reduced.md").read_text()
    sections = report["sections"]
    assert set(sections) == {"step_and_generation", "attention", "views", "bimamba", "bimamba_share"}
    assert {key: value["resampler_input"][0] for key, value in sections["bimamba_share"].items() if key != "seconds"} == {
        "1_views": 1, "9_views": 9, "17_views": 17}
    assert all(0 < value["share"] for key, value in sections["bimamba_share"].items() if key != "seconds")
    assert not [name for name, section in sections.items() if "error" in section]
    assert report["mode"] == "cpu-reduced" and report["dtype"] == "torch.float32"
    for resampler in ("mlp", "bimamba"):
        row = sections["step_and_generation"][resampler]
        # Same number of image tokens for PanoVLM and LLaVA: 9 views x 16 patch tokens of the reduced tower.
        assert row["image_tokens"] == 9 * 16
        assert row["step_s"]["ours"] > 0 and row["step_s"]["llava"] > 0
        assert row["memory"]["ours"]["parameter_bytes"] > 0 and row["memory"]["llava"]["optimizer_state_bytes"] > 0
        assert row["tokens_per_s"]["ours"] > 0
        assert f"| {resampler} | 144 |" in markdown
    assert set(sections["attention"]) >= {"sdpa", "eager", "flash_attention_2"}
    assert sections["attention"]["flash_attention_2"] == "not run: needs CUDA"
    assert sections["views"]["cuda"] == "not run: no CUDA device"
    assert sections["bimamba"]["scan_mamba_ssm"] == "not run: needs CUDA"
    assert sections["bimamba"]["backend_of_resampler"] == "torch"
    assert "Errors: none." in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="the full mode is what a GPU machine runs")
def test_refuses_full_mode_without_a_gpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    refused = subprocess.run([sys.executable, str(SCRIPT), "--output-dir", str(tmp_path / "full")],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert refused.returncode == 2
    assert "no CUDA device" in refused.stderr
    assert not (tmp_path / "full").exists()
