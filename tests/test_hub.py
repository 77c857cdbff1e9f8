"""Hub round trip against a real HTTP server (`tests/hub_server.py`): `modeling_panovlm.hub.push_to_hub` (model,
processor and card in one commit), the inherited `processor.push_to_hub` (keeps the card) and an adapter push from one process, then `from_pretrained(repo)` in a fresh process gives identical logits,
processor outputs and adapter weights; `snapshot_download`, then an offline reload with `HF_HUB_OFFLINE=1`.

The client code runs in subprocesses because `HF_ENDPOINT` is read when `huggingface_hub` is imported.
"""

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from peft import get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForImageTextToText

from modeling_panovlm.hub import build_model_card, hub_repo_id
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training.lora import lm_lora_config

from .hub_server import LocalHub


REPO, ADAPTER_REPO = "tester/tiny-panovlm", "tester/tiny-panovlm-lora"
PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is behind the camera?"}]}]

PUSH = """
import json, sys
import modeling_panovlm
from modeling_panovlm.hub import push_adapter_to_hub, push_to_hub
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

args = json.loads(sys.argv[1])
model = AutoModelForImageTextToText.from_pretrained(args["model_dir"])
processor = AutoProcessor.from_pretrained(args["model_dir"])
push_to_hub(args["repo"], model, processor)
processor.push_to_hub(args["repo"])  # transformers' own method: updates the processor, keeps our card
peft_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(args["model_dir"]), args["adapter_dir"])
try:
    push_adapter_to_hub(peft_model, args["adapter_repo"])
    local_base_refused = None
except ValueError as error:
    local_base_refused = str(error)
push_adapter_to_hub(peft_model, args["adapter_repo"], base_model_repo_id=args["repo"])
print(json.dumps({"local_base_refused": local_base_refused}))
"""

PULL = """
import json, sys
from pathlib import Path
import torch
import modeling_panovlm
from huggingface_hub import snapshot_download
from peft import PeftModel, get_peft_model_state_dict
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

args = json.loads(sys.argv[1])
expected = torch.load(args["expected"], weights_only=True)
report = {}

def logits_of(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits

processor = AutoProcessor.from_pretrained(args["repo"])
inputs = processor(images=Image.open(args["image"]), text=args["text"], return_tensors="pt")
report["inputs_equal"] = sorted(inputs) == sorted(expected["inputs"]) and all(
    torch.equal(inputs[k], expected["inputs"][k]) for k in inputs
)
model, info = AutoModelForImageTextToText.from_pretrained(args["repo"], output_loading_info=True)
report["loading_info"] = {k: sorted(map(str, v)) for k, v in info.items()}
report["logits_equal"] = torch.equal(logits_of(model, inputs), expected["logits"])
if args["adapter_repo"]:
    base = AutoModelForImageTextToText.from_pretrained(args["repo"])
    peft_model = PeftModel.from_pretrained(base, args["adapter_repo"])
    adapter = get_peft_model_state_dict(peft_model)
    report["adapter_keys_equal"] = sorted(adapter) == sorted(expected["adapter"])
    report["adapter_weights_equal"] = all(torch.equal(adapter[k], expected["adapter"][k]) for k in expected["adapter"])
    report["peft_logits_equal"] = torch.equal(logits_of(peft_model, inputs), expected["adapter_logits"])
    auto = AutoModelForImageTextToText.from_pretrained(args["adapter_repo"])
    report["auto_adapter_logits_equal"] = torch.equal(logits_of(auto, inputs), expected["adapter_logits"])
if args["snapshot"]:
    report["snapshot_files"] = sorted(path.name for path in Path(snapshot_download(args["repo"])).iterdir())
print(json.dumps(report))
"""


def _run(code: str, args: dict, env: dict[str, str], tmp_path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hub():
    with LocalHub() as server:
        yield server


def test_push_then_pull_in_a_fresh_process_and_offline(tmp_path, hub, panorama):
    model_dir, adapter_dir = tmp_path / "tiny", tmp_path / "adapter"
    model, processor = build_tiny_checkpoint(model_dir, resampler_type="mlp", training_stage="finetune")
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
    inputs = processor(images=panorama, text=text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits

    # An adapter trained for one step (so lora_B is non-zero) on a base loaded from a local directory: PEFT records
    # that absolute path as base_model_name_or_path, which the push must replace by the base's repo id.
    base = AutoModelForImageTextToText.from_pretrained(model_dir)
    peft_model = get_peft_model(base, lm_lora_config(r=4, lora_alpha=8))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    peft_model.eval()
    adapter = get_peft_model_state_dict(peft_model)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    with torch.no_grad():
        adapter_logits = peft_model(**inputs).logits
    assert not torch.equal(adapter_logits, logits)
    peft_model.save_pretrained(adapter_dir)
    recorded_base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert os.path.isabs(recorded_base)

    image, expected = tmp_path / "pano.png", tmp_path / "expected.pt"
    panorama.save(image)
    torch.save({"inputs": dict(inputs), "logits": logits, "adapter": adapter, "adapter_logits": adapter_logits}, expected)
    args = {"model_dir": str(model_dir), "adapter_dir": str(adapter_dir), "repo": REPO, "adapter_repo": ADAPTER_REPO}
    pushed = _run(PUSH, args, hub.client_env(tmp_path / "push-home"), tmp_path)
    assert "base_model_repo_id" in pushed["local_base_refused"]

    files = hub.files(REPO)
    assert {"README.md", "config.json", "generation_config.json", "model.safetensors", "processor_config.json"} <= set(files)
    assert hub.is_lfs(REPO, "model.safetensors") and not hub.is_lfs(REPO, "config.json")
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert "panovlm" in card.data.tags and "custom_code" not in card.data.tags
    meta = card.data.panovlm
    assert meta["resampler"]["type"] == "mlp" and meta["training_stage"] == "finetune"
    assert meta["view_layout"]["crop_strategy"] == "anyres_e2p" and meta["view_layout"]["views"] == 9
    assert meta["view_layout"]["image_tokens"] == model.config.num_image_tokens
    assert meta["vision_tower"]["model_type"] == "siglip_vision_model" and meta["language_model"]["model_type"] == "qwen3"
    assert f'from_pretrained("{REPO}")' in card.text and "trust_remote_code" not in card.text
    adapter_files = hub.files(ADAPTER_REPO)
    assert json.loads(adapter_files["adapter_config.json"])["base_model_name_or_path"] == REPO
    assert not [name for name, data in adapter_files.items() if recorded_base.encode() in data]
    assert ModelCard(adapter_files["README.md"].decode()).data.base_model == REPO

    pull = {"repo": REPO, "adapter_repo": ADAPTER_REPO, "image": str(image), "text": text, "expected": str(expected)}
    home = tmp_path / "pull-home"
    online = _run(PULL, {**pull, "snapshot": True}, hub.client_env(home), tmp_path)
    empty_info = {"error_msgs": [], "missing_keys": [], "mismatched_keys": [], "unexpected_keys": []}
    assert online.pop("loading_info") == empty_info
    assert set(online.pop("snapshot_files")) >= set(files)
    assert online == {
        "inputs_equal": True,
        "logits_equal": True,
        "adapter_keys_equal": True,
        "adapter_weights_equal": True,
        "peft_logits_equal": True,
        "auto_adapter_logits_equal": True,
    }

    # Offline, from the cache alone; the endpoint points at a closed port so any network access would fail loudly.
    offline_env = {**hub.client_env(home, offline=True), "HF_ENDPOINT": "http://127.0.0.1:9"}
    offline = _run(PULL, {**pull, "adapter_repo": None, "snapshot": False}, offline_env, tmp_path)
    assert offline == {"inputs_equal": True, "loading_info": empty_info, "logits_equal": True}


def test_model_card_metadata_and_repo_ids(tiny_mlp):
    config = copy.deepcopy(tiny_mlp[0].config)
    card = build_model_card(config, "someone/pano", remote_code=True, tags=["extra"])
    assert {"custom_code", "extra", "panovlm"} <= set(card.data.tags)
    assert 'from_pretrained("someone/pano", trust_remote_code=True)' in card.text
    assert card.data.base_model is None  # the tiny towers record no Hub names

    config.vision_config._name_or_path = "google/siglip2-so400m-patch16-256"
    config.text_config._name_or_path = "/models/local-qwen3"
    card = build_model_card(config, "someone/pano")
    assert card.data.base_model == ["google/siglip2-so400m-patch16-256"]
    assert card.data.panovlm["language_model"]["name"] == "/models/local-qwen3"

    snapshot = "/home/u/.cache/huggingface/hub/models--org--pano-model/snapshots/" + "a" * 40
    assert hub_repo_id(snapshot) == "org/pano-model"
    assert hub_repo_id("org/pano-model") == "org/pano-model"
    assert hub_repo_id("/abs/path/model") is None and hub_repo_id(None) is None
