"""The example command lines run and write what they promise."""

import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_build_tiny_checkpoint_cli(tmp_path):
    out = tmp_path / "tiny"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "build_tiny_checkpoint.py"), "--output-dir", str(out), "--resampler", "qformer", "--crop-strategy", "cubemap"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 views" in result.stdout and "qformer" in result.stdout
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.resampler_config.resampler_type == "qformer" and model.config.crop_strategy == "cubemap"
    assert processor.num_image_tokens == model.config.num_image_tokens
