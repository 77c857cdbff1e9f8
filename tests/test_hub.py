"""Hub round trip against a real HTTP server (`tests/hub_server.py`): `modeling_panovlm.hub.push_to_hub` (model,
processor and card in one commit), the inherited `processor.push_to_hub` (keeps the card) and an adapter push from
one process, then `from_pretrained(repo)` in a fresh process gives identical logits, processor outputs and adapter
weights; `snapshot_download`, then an offline reload with `HF_HUB_OFFLINE=1`. The pushed cards' metadata is parsed
and checked, and their "How to load" snippets run as written (and fail without `import modeling_panovlm`).

The client code runs in subprocesses because `HF_ENDPOINT` is read when `huggingface_hub` is imported.
"""

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from peft import get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForImageTextToText

from configuration_panovlm.configuration_panovlm import PanoVLMConfig
from modeling_panovlm.evaluation import write_evaluation_outputs
from modeling_panovlm.evaluation.metrics import read_predictions
from modeling_panovlm.hub import build_adapter_card, build_model_card, hub_repo_id, write_adapter_card
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
card = {"license": "apache-2.0", "training_data": args["training_data"], "metrics": args["metrics"]}
push_to_hub(args["repo"], model, processor, **card)
processor.push_to_hub(args["repo"])  # transformers' own method: updates the processor, keeps our card
peft_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(args["model_dir"]), args["adapter_dir"])
try:
    push_adapter_to_hub(peft_model, args["adapter_repo"])
    local_base_refused = None
except ValueError as error:
    local_base_refused = str(error)
push_adapter_to_hub(peft_model, args["adapter_repo"], base_model_repo_id=args["repo"], **card)
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


# Runs the "How to load" snippets of the pushed cards as written, after checking that the model card's snippet fails
# without its `import modeling_panovlm` (as the Hub's generic transformers snippet does).
SNIPPETS = """
import json, sys
args = json.loads(sys.argv[1])
report = {}
try:
    exec(args["model"].replace("import modeling_panovlm", "pass"), {})
    report["without_import"] = "loaded"
except Exception as error:
    report["without_import"] = type(error).__name__
for name in ("model", "adapter"):
    namespace = {}
    exec(args[name], namespace)
    report[name] = type(namespace["model"]).__name__
    report[name + "_processor"] = type(namespace["processor"]).__name__
print(json.dumps(report))
"""

METRICS_ROWS = read_predictions(Path(__file__).parent / "fixtures" / "caption_predictions.csv")[:12]


def front_matter(card_text: str) -> dict:
    """The card's YAML metadata, parsed with PyYAML (independently of huggingface_hub)."""
    match = re.match(r"---\n(.*?)\n---\n", card_text, re.S)
    assert match, card_text[:200]
    return yaml.safe_load(match.group(1))


def load_snippet(card_text: str) -> str:
    """The first Python block of the card's "How to load" section."""
    section = card_text.split("## How to load", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def check_model_index(meta: dict, summary: dict, name: str) -> None:
    """model-index holds every computed score of metrics.json, by protocol, and nothing else."""
    [entry] = meta["model-index"]
    assert entry["name"] == name
    [result] = entry["results"]
    assert result["task"]["type"] == "image-text-to-text"
    recorded = {(m["name"], m["args"]["protocol"], m["args"]["tokenizer"]): m["value"] for m in result["metrics"]}
    expected = {
        (f"{metric} ({protocol})", protocol, summary["tokenizer"]): value
        for protocol, scores in summary["protocols"].items()
        for metric, value in scores["scores"].items()
        if value is not None
    }
    assert expected and recorded == expected


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
    summary = write_evaluation_outputs(tmp_path / "eval", METRICS_ROWS, tokenizer="python")
    args = {
        "model_dir": str(model_dir),
        "adapter_dir": str(adapter_dir),
        "repo": REPO,
        "adapter_repo": ADAPTER_REPO,
        "training_data": ["tester/pano-captions", "data/train.csv"],
        "metrics": str(tmp_path / "eval" / "metrics.json"),
    }
    pushed = _run(PUSH, args, hub.client_env(tmp_path / "push-home"), tmp_path)
    assert "base_model_repo_id" in pushed["local_base_refused"]

    files = hub.files(REPO)
    assert {"README.md", "config.json", "generation_config.json", "model.safetensors", "processor_config.json"} <= set(files)
    assert hub.is_lfs(REPO, "model.safetensors") and not hub.is_lfs(REPO, "config.json")
    card_text = files["README.md"].decode()
    meta = front_matter(card_text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"
    assert "panovlm" in meta["tags"] and "custom_code" not in meta["tags"]
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["tester/pano-captions"]  # not the local file
    block = meta["panovlm"]
    assert block["resampler"]["type"] == "mlp" and block["training_stage"] == "finetune"
    assert block["resampler"]["hidden_dim"] == model.config.resampler_config.hidden_dim
    assert block["view_layout"]["crop_strategy"] == "anyres_e2p" and block["view_layout"]["views"] == 9
    assert block["view_layout"]["image_tokens"] == model.config.num_image_tokens
    assert block["vision_tower"]["model_type"] == "siglip_vision_model" and block["language_model"]["model_type"] == "qwen3"
    check_model_index(meta, summary, "tiny-panovlm")
    card = ModelCard(card_text)  # huggingface_hub reads the same metadata back
    assert card.data.license == "apache-2.0" and len(card.data.eval_results) == len(meta["model-index"][0]["results"][0]["metrics"])
    assert "trust_remote_code" not in card.text and "pip install panovlm" in card.text
    for section in ("## Install", "## How to load", "## Training", "## Evaluation", "## Limitations", "## Licence"):
        assert section in card.text, section
    assert "`data/train.csv`" in card.text and "| BLEU-4 |" in card.text
    adapter_files = hub.files(ADAPTER_REPO)
    assert json.loads(adapter_files["adapter_config.json"])["base_model_name_or_path"] == REPO
    assert not [name for name, data in adapter_files.items() if recorded_base.encode() in data]
    adapter_text = adapter_files["README.md"].decode()
    adapter_meta = front_matter(adapter_text)
    assert adapter_meta["base_model"] == REPO and adapter_meta["library_name"] == "peft"
    assert adapter_meta["license"] == "apache-2.0" and adapter_meta["datasets"] == ["tester/pano-captions"]
    assert adapter_meta["panovlm"]["training_stage"] == "finetune" and adapter_meta["panovlm"]["lora"]["r"] == 4
    assert adapter_meta["panovlm"]["resampler"] == block["resampler"]  # the base model's facts
    check_model_index(adapter_meta, summary, "tiny-panovlm-lora")
    snippets = {"model": load_snippet(card_text), "adapter": load_snippet(adapter_text)}
    assert snippets["model"].startswith("import modeling_panovlm") and f'"{REPO}"' in snippets["model"]

    pull = {"repo": REPO, "adapter_repo": ADAPTER_REPO, "image": str(image), "text": text, "expected": str(expected)}
    home = tmp_path / "pull-home"
    assert _run(SNIPPETS, snippets, hub.client_env(home), tmp_path) == {
        "without_import": "ValueError",
        "model": "PanoVLMForConditionalGeneration",
        "model_processor": "PanoVLMProcessor",
        "adapter": "PeftModelForCausalLM",
        "adapter_processor": "PanoVLMProcessor",
    }
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
    meta = front_matter(str(card))
    assert {"custom_code", "extra", "panovlm"} <= set(meta["tags"])
    assert 'from_pretrained("someone/pano", trust_remote_code=True)' in card.text
    assert "base_model" not in meta and "license" not in meta and "model-index" not in meta  # nothing recorded
    assert "No licence was chosen" in card.text and "No evaluation was recorded" in card.text
    assert "Data: not named" in card.text and "randomly initialised" in card.text  # no training stage recorded

    config.vision_config._name_or_path = "google/siglip2-so400m-patch16-256"
    config.text_config._name_or_path = "/models/local-qwen3"
    config.training_stage = "resampler"
    card = build_model_card(config, "someone/pano", license="mit", training_data="org/captions")
    meta = front_matter(str(card))
    assert meta["base_model"] == ["google/siglip2-so400m-patch16-256"] and meta["license"] == "mit"
    assert meta["datasets"] == ["org/captions"] and meta["panovlm"]["language_model"]["name"] == "/models/local-qwen3"
    assert meta["panovlm"]["training_stage"] == "resampler" and "randomly initialised" not in card.text
    assert "[`org/captions`](https://huggingface.co/datasets/org/captions)" in card.text

    snapshot = "/home/u/.cache/huggingface/hub/models--org--pano-model/snapshots/" + "a" * 40
    assert hub_repo_id(snapshot) == "org/pano-model"
    assert hub_repo_id("org/pano-model") == "org/pano-model"
    assert hub_repo_id("/abs/path/model") is None and hub_repo_id(None) is None


@pytest.mark.parametrize(
    ("layout", "poles"),
    [
        (dict(crop_strategy="anyres_e2p", fov_deg=90.0), "pitch -45° to 45°; above and below, the model sees\n  only the downscaled global view"),
        (dict(crop_strategy="e2p", fov_deg=120.0, overlap_ratio=0.25), "pitch -60° to 60°; above and below, the model sees\n  nothing"),
        (dict(crop_strategy="resize"), None),
    ],
)
def test_model_card_limitations_follow_the_view_layout(layout, poles):
    card = build_model_card(PanoVLMConfig(**layout), "someone/pano")  # views of 224 px, the default
    limitations = card.text.split("## Limitations", 1)[1].split("## Licence")[0]
    if poles is None:  # the whole panorama is one view
        assert "Poles" not in limitations and "360° per pixel" not in limitations
    else:
        assert poles in limitations
    fov = 360 if layout["crop_strategy"] == "resize" else layout["fov_deg"]
    assert f"each view has 224 px for {fov:g}°, about {fov / 224:.2f}° per pixel" in limitations


def test_adapter_card_of_a_local_adapter_names_its_base_by_path_only(tmp_path):
    model, _ = build_tiny_checkpoint(tmp_path / "base", resampler_type="perceiver", training_stage="resampler")
    base = AutoModelForImageTextToText.from_pretrained(tmp_path / "base")
    get_peft_model(base, lm_lora_config(r=4, lora_alpha=8)).save_pretrained(tmp_path / "adapter")
    summary = write_evaluation_outputs(tmp_path / "eval", METRICS_ROWS, metrics_style="panollava")
    readme = write_adapter_card(
        tmp_path / "adapter", license="apache-2.0", training_data=str(tmp_path / "train.csv"),
        metrics=tmp_path / "eval" / "metrics.json",
    )
    text = readme.read_text(encoding="utf-8")
    meta = front_matter(text)
    assert "base_model" not in meta  # a local path is no Hub id; the text names it
    assert f'AutoModelForImageTextToText.from_pretrained("{tmp_path / "base"}")' in text
    assert meta["panovlm"]["resampler"]["type"] == "perceiver" and meta["panovlm"]["training_stage"] == "finetune"
    assert meta["panovlm"]["view_layout"]["image_tokens"] == model.config.num_image_tokens
    assert meta["panovlm"]["lora"]["r"] == 4 and "datasets" not in meta
    check_model_index(meta, summary, "adapter")
    assert "`panollava` metrics style" in text and "`whitespace` tokenizer" in text
    assert "More Information Needed" not in text  # PEFT's template is gone


def test_cards_refuse_a_metrics_file_they_cannot_read(tmp_path, tiny_mlp):
    bad = tmp_path / "metrics.json"
    bad.write_text('{"metrics_style": "coco",')  # cut off mid-write
    with pytest.raises(ValueError, match=r"metrics.json is not valid JSON"):
        build_model_card(tiny_mlp[0].config, "someone/pano", metrics=bad)
    bad.write_text(json.dumps({"metrics_style": "coco", "tokenizer": "python", "data": {}}))
    with pytest.raises(ValueError, match=r"metrics.json: no 'protocols'"):
        build_model_card(tiny_mlp[0].config, "someone/pano", metrics=bad)
    scores = {"grouped": {"units": 3, "scores": {"BLEU-4": "high"}, "unavailable": {}}}
    with pytest.raises(ValueError, match=r"protocols.grouped.scores.BLEU-4 must be a number or null, got 'high'"):
        build_adapter_card("a", "me/base", {}, metrics={"metrics_style": "coco", "tokenizer": "python", "data": {},
                                                        "protocols": scores})
