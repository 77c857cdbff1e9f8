"""General VLMs as baselines: a tiny LLaVA built from its config and saved here is evaluated by the same code, on the
same table, as a PanoVLM (the panorama as one resized image, through LLaVA's own processor and chat template), and
answers `infer`."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from modeling_panovlm.cli import evaluate as evaluate_cli
from modeling_panovlm.cli import infer as infer_cli
from modeling_panovlm.evaluation import generate_captions, greedy_generation_config, group_rows
from modeling_panovlm.evaluation.baseline import OneImagePrompting, panorama_as_one_image
from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.testing.tiny_tokenizer import build_tiny_tokenizer
from processing_panovlm.data.captions import load_caption_table
from processing_panovlm.processing_panovlm import DEFAULT_SYSTEM_PROMPT, DEFAULT_USER_TEMPLATE
from tests.cli_runner import run_cli
from tests.test_cli_eval import QUICK_SCORING


# A ChatML template of the kind LLaVA checkpoints ship: content parts, the image as its placeholder token.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|image_pad|>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_llava(output_dir: Path) -> None:
    """A randomly initialised LLaVA (2-layer CLIP tower at 32 px, 2-layer Qwen2 LM) and its processor, saved."""
    tokenizer = build_tiny_tokenizer()
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_index=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    build_tiny_llava(root / "llava")
    build_tiny_checkpoint(root / "panovlm")
    (root / "images").mkdir()
    render_panorama([SceneObject("red", "circle", 0.0)], height=64).save(root / "images" / "a.jpg")
    render_panorama([SceneObject("blue", "square", 90.0)], height=64, seed=1).save(root / "images" / "b.jpg")
    with open(root / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "query", "annotation"])
        writer.writerows(
            [
                ("images/a.jpg", "location", "a red circle in front"),
                ("images/b.jpg", "location", "a blue square on the right"),
                ("images/a.jpg", "people", "nobody"),
                ("images/gone.jpg", "location", "lost"),
            ]
        )
    return root


def test_the_panorama_is_resized_whole(workspace):
    path = workspace / "images" / "a.jpg"
    picture = panorama_as_one_image(path, (48, 40))
    expected = Image.open(path).convert("RGB").resize((48, 40), Image.Resampling.BICUBIC)
    assert picture.size == (48, 40) and np.array_equal(np.asarray(picture), np.asarray(expected))


def test_a_general_vlm_is_scored_on_the_same_table_by_the_same_code(workspace, tmp_path, capsys):
    common = ["--csv", workspace / "test.csv", "--max-new-tokens", 4, "--batch-size", 2, *QUICK_SCORING]
    status, _, err = run_cli(evaluate_cli, ["--model", workspace / "llava", *common, "--output-dir", tmp_path / "llava"], capsys)
    assert status == 0, err
    status, _, err = run_cli(evaluate_cli, ["--model", workspace / "panovlm", *common, "--output-dir", tmp_path / "pano"], capsys)
    assert status == 0, err
    llava, pano = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("llava", "pano"))
    assert llava["generation"]["model_type"] == "llava" and pano["generation"]["model_type"] == "panovlm"
    assert llava["data"] == pano["data"]  # the same rows scored, the same one dropped
    assert llava["data"]["dropped_by_reason"] == {"image file not found": 1}
    assert llava["generation"]["prompting"] == {
        "input": "the panorama as one 448x448 image, through the model's own processor",
        "system_prompt": DEFAULT_SYSTEM_PROMPT,
        "user_template": DEFAULT_USER_TEMPLATE,
    }
    assert llava["think"]["removed"] is False  # a Qwen2 language model: nothing to strip by default
    assert list(llava["protocols"]) == list(pano["protocols"]) == ["per-row"]

    # The predictions are what LLaVA's own processor and generate give for the resized panorama and the prompt.
    model = AutoModelForImageTextToText.from_pretrained(workspace / "llava").eval()
    processor = AutoProcessor.from_pretrained(workspace / "llava")
    with open(tmp_path / "llava" / "predictions.csv", newline="") as handle:
        predicted = {(row["url"], row["query"]): row["prediction"] for row in csv.DictReader(handle)}
    prompting = OneImagePrompting()
    for (url, query), prediction in predicted.items():
        text = processor.apply_chat_template(prompting.messages(query), add_generation_prompt=True)
        image = panorama_as_one_image(workspace / url, (448, 448))
        inputs = processor(images=image, text=text, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, generation_config=greedy_generation_config(model, 4))
        expected = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert prediction == expected, (url, query)


def test_baseline_prompt_and_image_size_flags(workspace, tmp_path, capsys):
    argv = ["--model", workspace / "llava", "--csv", workspace / "test.csv", "--output-dir", tmp_path, *QUICK_SCORING]
    argv += ["--max-new-tokens", 2, "--system-prompt", "", "--user-template", "Tell me: {query}", "--baseline-image-size", "96x48"]
    status, _, err = run_cli(evaluate_cli, argv, capsys)
    assert status == 0, err
    prompting = json.loads((tmp_path / "metrics.json").read_text())["generation"]["prompting"]
    assert prompting["system_prompt"] is None and prompting["user_template"] == "Tell me: {query}"
    assert "one 96x48 image" in prompting["input"]
    status, _, err = run_cli(
        evaluate_cli,
        ["--model", workspace / "panovlm", "--csv", workspace / "test.csv", "--output-dir", tmp_path, "--baseline-image-size", 64],
        capsys,
    )
    assert status == 2 and "--baseline-image-size is for general VLMs" in err


def test_a_general_vlm_without_a_chat_template_is_refused_before_generating(workspace, tmp_path, capsys):
    model = AutoModelForImageTextToText.from_pretrained(workspace / "llava")
    processor = AutoProcessor.from_pretrained(workspace / "llava")
    processor.chat_template = processor.tokenizer.chat_template = None
    model.save_pretrained(tmp_path / "llava")
    processor.save_pretrained(tmp_path / "llava")
    for command, argv in (
        (evaluate_cli, ["--csv", workspace / "test.csv", "--output-dir", tmp_path / "out"]),
        (infer_cli, ["--image", workspace / "images" / "a.jpg", "--prompt", "q"]),
    ):
        status, _, err = run_cli(command, ["--model", tmp_path / "llava", *argv], capsys)
        assert status == 2 and "processor of this llava model has no chat template" in err
    assert not (tmp_path / "out").exists()


def test_the_one_image_messages_follow_the_prompt_settings():
    prompting = OneImagePrompting(system_prompt=None, user_template="About {query}:")
    assert prompting.messages("the sky") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "About the sky:"}]}
    ]
    assert prompting.messages("Describe it.", verbatim=True)[0]["content"][1]["text"] == "Describe it."
    with pytest.raises(ValueError, match="exactly once"):
        OneImagePrompting(user_template="no field")


def test_generate_captions_refuses_one_image_settings_for_a_panovlm(workspace):
    model = AutoModelForImageTextToText.from_pretrained(workspace / "panovlm")
    processor = AutoProcessor.from_pretrained(workspace / "panovlm")
    groups = group_rows(load_caption_table(workspace / "test.csv"))[:1]
    with pytest.raises(ValueError, match="a PanoVLM is asked in its processor's prompt format"):
        generate_captions(model, processor, groups, one_image=OneImagePrompting(), show_progress=False)


def test_infer_asks_a_general_vlm_several_questions(workspace, capsys):
    argv = ["--model", workspace / "llava", "--image", workspace / "images" / "a.jpg", "--max-new-tokens", 3]
    status, out, err = run_cli(infer_cli, [*argv, "--prompt", "red object", "--prompt", "blue object"], capsys)
    assert status == 0, err
    assert out.startswith("Q: red object\nA: ") and "\nQ: blue object\nA: " in out
    status, streamed, err = run_cli(infer_cli, [*argv, "--prompt", "red object", "--prompt", "blue object", "--stream"], capsys)
    assert status == 0 and streamed == out, err
    status, _, err = run_cli(infer_cli, [*argv, "--prompt", "x", "--show-views", "v.png"], capsys)
    assert status == 2 and "--show-views draws a PanoVLM's views" in err
