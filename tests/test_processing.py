"""PanoVLMProcessor: placeholder expansion, chat template, batching, named errors, save/load round trip."""

import pytest
import torch
from transformers import AutoProcessor

from modeling_panovlm.testing.synthetic_panoramas import SceneObject, render_panorama
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from processing_panovlm import PanoVLMProcessor
from processing_panovlm.processing_panovlm import DEFAULT_SYSTEM_PROMPT


def user_turn(text, image=True):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def test_chat_template_renders_the_saved_prompt_format(tiny_mlp):
    _, processor = tiny_mlp
    prompt = processor.apply_chat_template(user_turn("the red circle"), add_generation_prompt=True)
    # No system turn given: the saved system prompt; the question is wrapped in the saved user template.
    assert prompt == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n<|image_pad|>\n"
        'In this panoramic image, please provide a concise but detailed description of "the red circle".<|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    assert processor.apply_chat_template(processor.build_messages("the red circle"), add_generation_prompt=True) == prompt
    # A system turn given by the caller replaces the default; verbatim text and text-only turns are not wrapped.
    messages = [{"role": "system", "content": "Be brief."}] + processor.build_messages("Where is it?", verbatim=True)
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|image_pad|>\nWhere is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    text_only = processor.apply_chat_template(user_turn("Hello", image=False), add_generation_prompt=True)
    assert text_only.endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    with_answer = processor.apply_chat_template(processor.build_messages("the red circle", "In front."))
    # Training renders the same prefix as generation: the image sits at the same place in both.
    assert with_answer.startswith(prompt) and with_answer.endswith("In front.<|im_end|>\n")


def test_prompt_format_is_saved_and_restored(tmp_path, panorama):
    _, processor = build_tiny_checkpoint()
    processor.set_prompts("You look at 360-degree photos.", 'Q: "{query}"?')
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert (loaded.system_prompt, loaded.user_template) == ("You look at 360-degree photos.", 'Q: "{query}"?')
    prompt = loaded.apply_chat_template(user_turn("it"), add_generation_prompt=True)
    assert prompt == processor.apply_chat_template(user_turn("it"), add_generation_prompt=True)
    assert "You look at 360-degree photos." in prompt and 'Q: "it"?' in prompt
    processor.set_prompts(None, "{query}")
    assert processor.apply_chat_template(user_turn("it"), add_generation_prompt=True).startswith("<|im_start|>user")
    with pytest.raises(ValueError, match="exactly once"):
        processor.set_prompts("x", "no field")


def test_chat_template_with_images_tokenizes_in_one_call(tiny_mlp, panorama, tmp_path):
    model, processor = tiny_mlp
    path = tmp_path / "pano.png"
    panorama.save(path)
    chats = [
        [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "left"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Just text, no panorama."}]}],
        [{"role": "user", "content": [{"type": "image", "image": panorama}, {"type": "text", "text": "right"}]}],
    ]
    inputs = processor.apply_chat_template(
        chats, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    assert inputs["pixel_values"].shape[0] == 2  # the text-only chat contributes no panorama
    counts = (inputs["input_ids"] == processor.image_token_id).sum(-1).tolist()
    assert counts == [processor.num_image_tokens, 0, processor.num_image_tokens]
    # The path and the PIL image are the same pixels, read by the same loader.
    assert torch.equal(inputs["pixel_values"][0], inputs["pixel_values"][1])
    output = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert output.shape[0] == 3


def test_images_nested_per_prompt(tiny_mlp, panorama):
    _, processor = tiny_mlp
    image_prompt, text_prompt = "<|image_pad|>Describe.", "Nothing to see."
    nested = processor(images=[[panorama], []], text=[image_prompt, text_prompt], padding=True, return_tensors="pt")
    flat = processor(images=[panorama], text=[image_prompt, text_prompt], padding=True, return_tensors="pt")
    assert all(torch.equal(nested[k], flat[k]) for k in flat) and nested["pixel_values"].shape[0] == 1
    with pytest.raises(ValueError, match=r"per prompt as \[0, 1\].*\[1, 0\]"):
        processor(images=[[], [panorama]], text=[image_prompt, text_prompt])
    with pytest.raises(ValueError, match=r"images\[1\] is a single panorama"):
        processor(images=[[panorama], panorama], text=[image_prompt, image_prompt])


def test_file_inputs_go_through_the_panorama_loader(tiny_mlp, tmp_path):
    import numpy as np
    from PIL import Image

    from processing_panovlm import PanoramaImageError

    _, processor = tiny_mlp
    grey16 = (np.linspace(0, 65535, 64 * 128).reshape(64, 128)).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey16).save(path)
    from_path = processor(images=path, text="<|image_pad|>x", return_tensors="pt")["pixel_values"]
    from_string = processor(images=str(path), text="<|image_pad|>x", return_tensors="pt")["pixel_values"]
    from_array = processor(images=grey16, text="<|image_pad|>x", return_tensors="pt")["pixel_values"]
    assert torch.equal(from_path, from_string) and torch.equal(from_path, from_array)
    assert from_path.std() > 0.1  # not saturated, as transformers' load_image makes 16-bit files
    with pytest.raises(PanoramaImageError, match="not found.*missing.png"):
        processor(images=tmp_path / "missing.png", text="<|image_pad|>x")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PanoramaImageError, match="cut.png.*truncated or corrupt"):
        processor(images=str(truncated), text="<|image_pad|>x")


def test_placeholder_expands_to_the_models_token_count(tiny_mlp, panorama):
    model, processor = tiny_mlp
    prompt = processor.apply_chat_template(user_turn("Describe."), add_generation_prompt=True)
    inputs = processor(images=panorama, text=prompt, return_tensors="pt")
    assert processor.num_image_tokens == model.config.num_image_tokens
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == model.config.num_image_tokens
    config = model.config
    assert inputs["pixel_values"].shape == (1, config.num_views, 3, config.view_size, config.view_size)
    assert inputs["view_yaw_deg"][0].tolist() == [v.yaw_deg for v in config.view_layout.views]
    assert sorted(inputs) == ["attention_mask", "input_ids", "pixel_values", "view_fov_deg", "view_pitch_deg", "view_vfov_deg", "view_yaw_deg"]


def test_batch_of_panoramas_with_different_prompt_lengths_pads_left(tiny_mlp, panorama):
    model, processor = tiny_mlp
    other = render_panorama([SceneObject("green", "circle", 45.0)], height=64)
    prompts = [
        processor.apply_chat_template(user_turn("Hi."), add_generation_prompt=True),
        processor.apply_chat_template(user_turn("What is in front of the camera, and what is behind it?"), add_generation_prompt=True),
    ]
    inputs = processor(images=[panorama, other], text=prompts, padding=True, return_tensors="pt")
    assert inputs["pixel_values"].shape[0] == 2
    mask = inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[1, 0] == 1 and mask[:, -1].tolist() == [1, 1]  # left padding
    settings = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    generated = model.generate(**inputs, **settings)
    # Each row generates as it would alone, logit for logit: padding does not leak into the answer.
    for row, image in enumerate([panorama, other]):
        alone = model.generate(**processor(images=image, text=prompts[row], return_tensors="pt"), **settings)
        steps = len(alone.logits)
        torch.testing.assert_close(
            torch.stack(generated.logits, 1)[row, :steps], torch.stack(alone.logits, 1)[0], atol=1e-5, rtol=1e-4
        )
        assert torch.equal(generated.sequences[row, inputs["input_ids"].shape[1] :][:steps], alone.sequences[0, -steps:])


def test_truncating_through_image_tokens_raises(tiny_mlp, panorama):
    _, processor = tiny_mlp
    prompt = processor.apply_chat_template(user_turn("Describe."), add_generation_prompt=True)
    with pytest.raises(ValueError, match="image.*token count|truncation"):
        processor(images=panorama, text=prompt, truncation=True, max_length=20, return_tensors="pt")


def test_per_call_truncation_does_not_leak_into_a_saved_tokenizer(tmp_path, panorama):
    _, processor = build_tiny_checkpoint()
    prompt = processor.apply_chat_template(user_turn("Describe."), add_generation_prompt=True)
    with pytest.raises(ValueError):
        processor(images=panorama, text=prompt, truncation=True, max_length=20)
    processor(images=[panorama, panorama], text=[prompt, prompt + "more"], padding="max_length", max_length=200)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.tokenizer.backend_tokenizer.truncation is None
    inputs = loaded(images=panorama, text=prompt, return_tensors="pt")
    assert inputs["input_ids"].shape[1] == len(processor.tokenizer(prompt).input_ids) + processor.num_image_tokens - 1


@pytest.mark.parametrize(
    "text, images, message",
    [
        ("no placeholder here", 1, r"hold \[0\] image placeholders.*1 panorama\(s\) were passed"),
        ("<|image_pad|> and <|image_pad|>", 1, r"hold \[2\] image placeholders.*1 panorama"),
        ("<|image_pad|> describe", 0, r"hold \[1\] image placeholders.*0 panorama"),
        ("   ", 1, "empty"),
    ],
)
def test_prompt_and_image_mismatches_raise(tiny_mlp, panorama, text, images, message):
    _, processor = tiny_mlp
    with pytest.raises(ValueError, match=message):
        processor(images=[panorama] * images or None, text=text)


def test_wrong_aspect_ratio_is_a_named_error(tiny_mlp):
    from PIL import Image

    from processing_panovlm import PanoramaImageError

    _, processor = tiny_mlp
    with pytest.raises(PanoramaImageError, match="2:1"):
        processor(images=Image.new("RGB", (300, 200)), text="<|image_pad|>Describe.")


def test_processor_round_trip(tmp_path, tiny_mlp, panorama):
    _, processor = tiny_mlp
    processor.save_pretrained(tmp_path)
    assert {"processor_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, PanoVLMProcessor)
    assert loaded.chat_template == processor.chat_template
    assert loaded.view_token_grid == processor.view_token_grid and loaded.stitching_mode == processor.stitching_mode
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.tokenizer.padding_side == "left"
    prompt = processor.apply_chat_template(user_turn("Describe."), add_generation_prompt=True)
    assert loaded.apply_chat_template(user_turn("Describe."), add_generation_prompt=True) == prompt
    a = processor(images=panorama, text=prompt, return_tensors="pt")
    b = loaded(images=panorama, text=prompt, return_tensors="pt")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_processor_and_model_disagreeing_is_caught_by_the_model(tiny_mlp, panorama):
    # A processor built for concat stitching expands to more tokens than the drop_overlap model produces.
    model, processor = tiny_mlp
    concat = PanoVLMProcessor(
        processor.image_processor,
        processor.tokenizer,
        view_token_grid=processor.view_token_grid,
        stitching_mode="concat",
    )
    inputs = concat(images=panorama, text="<|image_pad|>Describe.", return_tensors="pt")
    with pytest.raises(ValueError, match=f"hold \\[144\\] image tokens.*give {model.config.num_image_tokens} features"):
        model(**inputs)


def test_constructor_defaults_and_errors(tiny_mlp):
    _, processor = tiny_mlp
    from_components = PanoVLMProcessor(processor.image_processor, processor.tokenizer)
    side = processor.image_processor.image_size // 16  # a patch-16 tower with a token-preserving resampler
    assert from_components.view_token_grid == [side, side]
    with pytest.raises(ValueError, match="view_token_grid"):
        PanoVLMProcessor(processor.image_processor, processor.tokenizer, view_token_grid=[0, 4])
    with pytest.raises(ValueError, match="single token"):
        PanoVLMProcessor(processor.image_processor, processor.tokenizer, view_token_grid=[4, 4], image_token="<image>")


def test_from_model_config_matches_every_crop_strategy():
    for crop in ("resize", "e2p", "cubemap", "sliding_window"):
        model, processor = build_tiny_checkpoint(resampler_type="mlp", crop_strategy=crop)
        assert processor.num_image_tokens == model.config.num_image_tokens
        assert processor.image_processor.view_layout == model.config.view_layout
