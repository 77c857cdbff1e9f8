"""Inference: the CLI (plain and streaming; the training prompt format; several prompts from one vision encoding),
the view picture, footprint geometry, and the README snippet."""

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from configuration_panovlm.view_layout import ViewSpec
from modeling_panovlm.cli import infer as infer_cli
from modeling_panovlm.evaluation import greedy_generation_config
from modeling_panovlm.modeling_panovlm import PanoVLMForConditionalGeneration
from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from processing_panovlm.image_processing_panovlm import PanoVLMImageProcessor
from processing_panovlm.processing_panovlm import DEFAULT_USER_TEMPLATE
from processing_panovlm.visualization.views import (
    VIEW_COLOURS,
    draw_view_footprints,
    render_view_overview,
    view_footprint,
)
from tests.cli_runner import run_cli


ROOT = Path(__file__).resolve().parents[1]
W, H = 400, 200


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved tiny checkpoint named like the README's, next to a panorama.jpg."""
    root = tmp_path_factory.mktemp("infer")
    build_tiny_checkpoint(root / "tiny-panovlm")
    render_panorama([SceneObject("red", "circle", 0.0), SceneObject("blue", "square", 180.0)], height=64).save(
        root / "pano.jpg"
    )
    return root


def test_infer_cli_streams_the_same_answer_and_saves_the_views(checkpoint):
    command = [
        sys.executable,
        str(ROOT / "examples" / "infer.py"),
        "--model",
        str(checkpoint / "tiny-panovlm"),
        "--image",
        str(checkpoint / "pano.jpg"),
        "--prompt",
        "What is behind the camera?",
        "--max-new-tokens",
        "6",
    ]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=300)
    streamed = subprocess.run(
        command + ["--stream", "--show-views", str(checkpoint / "views.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0 and streamed.returncode == 0, plain.stderr[-2000:] + streamed.stderr[-2000:]
    answer = plain.stdout.strip()
    assert answer and streamed.stdout.strip().endswith(answer)
    assert Image.open(checkpoint / "views.png").width == 1024


def test_footprint_of_a_front_view_is_where_the_sampler_looks():
    front = ViewSpec("perspective", yaw_deg=0.0, pitch_deg=0.0, hfov_deg=90.0, vfov_deg=90.0)
    (line,) = view_footprint(front, 17, W, H)  # odd: a border pixel sits exactly on the top middle
    # Edge pixel centres sit on the nominal fov: +/-45 degrees = +/-W/8 around the centre column W/2 - 0.5.
    assert line[:, 0].min() == pytest.approx(W / 2 - 0.5 - W / 8) and line[:, 0].max() == pytest.approx(
        W / 2 - 0.5 + W / 8
    )
    assert line[:, 1].min() == pytest.approx(H / 4 - 0.5) and line[:, 1].max() == pytest.approx(3 * H / 4 - 0.5)
    assert np.allclose(line[0], line[-1])  # closed


def test_footprint_is_cut_at_the_seam_and_loops_around_a_pole():
    behind = ViewSpec("perspective", yaw_deg=180.0, pitch_deg=0.0, hfov_deg=90.0, vfov_deg=90.0)
    lines = view_footprint(behind, 16, W, H)
    assert len(lines) >= 2
    points = np.concatenate(lines)
    assert points[:, 0].min() == -0.5 and points[:, 0].max() == W - 0.5  # reaches both seam edges, never wraps across
    for line in lines:
        assert np.abs(np.diff(line[:, 0])).max() < W / 4
    up = ViewSpec("perspective", yaw_deg=30.0, pitch_deg=90.0, hfov_deg=90.0, vfov_deg=90.0)
    points = np.concatenate(view_footprint(up, 16, W, H))
    assert points[:, 0].min() == -0.5 and points[:, 0].max() == W - 0.5
    assert points[:, 1].max() < H / 2 * (1 - math.atan(math.sqrt(0.5)) / (math.pi / 2)) + 1  # stays above ~35 deg


def test_overview_draws_each_footprint_in_its_colour():
    panorama = Image.new("RGB", (W, H), (0, 0, 0))
    front = ViewSpec("perspective", yaw_deg=0.0, pitch_deg=0.0, hfov_deg=90.0, vfov_deg=90.0)
    drawn = np.asarray(draw_view_footprints(panorama, (front,), 16, line_width=1))
    assert tuple(drawn[H // 2, round(W / 2 - 0.5 - W / 8)]) == VIEW_COLOURS[0]  # the left edge, on the horizon
    assert tuple(drawn[H // 2, W // 2]) == (0, 0, 0)
    processor = PanoVLMImageProcessor(crop_strategy="cubemap", image_size=32, fov_deg=90.0, overlap_ratio=0.0)
    overview = render_view_overview(render_panorama([], height=64), processor, display_width=512, columns=2)
    assert overview.width == 512 and overview.height > 256 + 2 * 200


def test_readme_streaming_snippet_runs(checkpoint, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Evaluation and inference", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    monkeypatch.chdir(checkpoint)
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out

    # What it must print: the greedy answer, computed here by an argmax loop over full forward passes (no cache,
    # no generate), as the snippet prepares its inputs.
    model = AutoModelForImageTextToText.from_pretrained(checkpoint / "tiny-panovlm").eval()
    processor = AutoProcessor.from_pretrained(checkpoint / "tiny-panovlm")
    prompt = processor.apply_chat_template(processor.build_messages("What is behind the camera?"), add_generation_prompt=True)
    inputs = dict(processor(images=str(checkpoint / "pano.jpg"), text=prompt, return_tensors="pt"))
    prompt_length, answer = inputs["input_ids"].shape[1], []
    with torch.no_grad():
        for _ in range(32):
            token = int(model(**inputs).logits[0, -1].argmax())
            if token == processor.tokenizer.eos_token_id:
                break
            answer.append(token)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([[token]])], dim=1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
    assert inputs["input_ids"].shape[1] > prompt_length
    assert printed == processor.decode(answer, skip_special_tokens=True)


def test_infer_sends_the_training_prompt_unless_verbatim(checkpoint, monkeypatch, capsys):
    """`--prompt "red object"` is wrapped in the saved user template after the saved system prompt, as training on a
    caption table did; `--verbatim` sends it as the whole user turn."""
    sent = []
    original = infer_cli.generate_from_features

    def recording(model, processor, prompts, *args, **kwargs):
        sent.extend(prompts)
        return original(model, processor, prompts, *args, **kwargs)

    monkeypatch.setattr(infer_cli, "generate_from_features", recording)
    processor = AutoProcessor.from_pretrained(checkpoint / "tiny-panovlm")
    argv = ["--model", checkpoint / "tiny-panovlm", "--image", checkpoint / "pano.jpg", "--max-new-tokens", 2]
    for extra, verbatim in (([], False), (["--verbatim"], True)):
        sent.clear()
        status, _, err = run_cli(infer_cli, [*argv, "--prompt", "red object", *extra], capsys)
        assert status == 0, err
        messages = processor.build_messages("red object", verbatim=verbatim)
        expected = processor.apply_chat_template(messages, add_generation_prompt=True)
        assert sent == [processor.expand_image_tokens(expected)]
    assert DEFAULT_USER_TEMPLATE.replace("{query}", "red object") not in sent[0] and "\nred object<|im_end|>" in sent[0]
    sent.clear()
    status, _, err = run_cli(infer_cli, [*argv, "--prompt", "red object", "--system-prompt", "", "--user-template", "Find the {query}."], capsys)
    assert status == 0, err
    assert sent[0].startswith("<|im_start|>user\n") and "Find the red object.<|im_end|>" in sent[0]


def test_infer_answers_several_prompts_from_one_vision_encoding(checkpoint, monkeypatch, capsys):
    encodings = []
    original = PanoVLMForConditionalGeneration.get_image_features

    def counting(self, pixel_values, **kwargs):
        encodings.append(pixel_values.shape[0])
        return original(self, pixel_values, **kwargs)

    monkeypatch.setattr(PanoVLMForConditionalGeneration, "get_image_features", counting)
    questions = checkpoint / "questions.txt"
    questions.write_text("What is behind the camera?\n\n  Which direction is the red object?  \n", encoding="utf-8")
    argv = ["--model", checkpoint / "tiny-panovlm", "--image", checkpoint / "pano.jpg", "--max-new-tokens", 6]
    argv += ["--prompt", "red object", "--prompts-file", questions]
    status, out, err = run_cli(infer_cli, argv, capsys)
    assert status == 0, err
    assert encodings == [1]  # one panorama encoded once for the three prompts
    prompts = ["red object", "What is behind the camera?", "Which direction is the red object?"]
    blocks = out.strip().split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [f"Q: {prompt}" for prompt in prompts]
    answers = [block.split("\nA: ", 1)[1] for block in blocks]

    # The same answers as plain generate on the same batch, each prompt with the panorama.
    encodings.clear()
    model = AutoModelForImageTextToText.from_pretrained(checkpoint / "tiny-panovlm").eval()
    processor = AutoProcessor.from_pretrained(checkpoint / "tiny-panovlm")
    texts = [processor.apply_chat_template(processor.build_messages(p), add_generation_prompt=True) for p in prompts]
    inputs = processor(images=[str(checkpoint / "pano.jpg")] * 3, text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, generation_config=greedy_generation_config(model, 6))
    expected = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answers == [text.strip() for text in expected]

    encodings.clear()
    status, streamed, err = run_cli(infer_cli, [*argv, "--stream"], capsys)
    assert status == 0, err
    assert encodings == [1]
    assert [block.split("\nA: ", 1)[1].strip() for block in streamed.strip().split("\n\n")] == answers


def test_prompts_files_that_hold_no_usable_question_are_refused(checkpoint, tmp_path, capsys):
    argv = ["--model", checkpoint / "tiny-panovlm", "--image", checkpoint / "pano.jpg", "--prompts-file"]
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9?".encode("latin-1"))
    for name, message in (("blank.txt", "holds no question"), ("latin1.txt", "is not UTF-8 text"), ("none.txt", "does not exist")):
        status, _, err = run_cli(infer_cli, [*argv, tmp_path / name], capsys)
        assert status == 2 and f"{tmp_path / name} " in err and message in err


def test_an_error_while_streaming_is_raised_not_waited_for(checkpoint, monkeypatch, capsys):
    def failing(*args, **kwargs):
        raise RuntimeError("generation failed half-way")

    monkeypatch.setattr(infer_cli, "generate_from_features", failing)
    argv = ["--model", checkpoint / "tiny-panovlm", "--image", checkpoint / "pano.jpg", "--prompt", "red object", "--stream"]
    with pytest.raises(RuntimeError, match="generation failed half-way"):
        infer_cli.main([str(arg) for arg in argv])
