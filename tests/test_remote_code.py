"""The flat remote-code export: generated from the library sources, it loads with `trust_remote_code=True` in a
process that cannot import the PanoVLM packages, from a directory and through the local Hub, and gives logits
bit-identical to the library's. Import forms the exporter cannot rewrite are refused."""

import ast
import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from modeling_panovlm.hub.remote_code import (
    CONFIG_AUTO_MAP,
    LIBRARY_PACKAGES,
    PROCESSOR_AUTO_MAP,
    UnsupportedImportError,
    _rewrite_imports,
    export_remote_code,
    render_remote_code,
)
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint

from .hub_server import LocalHub


REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED_MODULES = {
    "adapter_identity.py",
    "atomic_files.py",
    "checkpointing.py",
    "config_keys.py",
    "configuration_panovlm.py",
    "equirect.py",
    "image_loading.py",
    "image_features.py",
    "image_processing_panovlm.py",
    "local_paths.py",
    "modeling_panovlm.py",
    "outputs.py",
    "panorama.py",
    "processing_panovlm.py",
    "resampler_attention.py",
    "resampler_bimamba.py",
    "resampler_mlp.py",
    "resampler_perceiver.py",
    "resampler_qformer.py",
    "resampler_registry.py",
    "resamplers.py",
    "selective_scan.py",
    "towers.py",
    "view_coverage.py",
    "view_layout.py",
}
PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which way is the red circle?"}]}]

# Runs with the PanoVLM packages made unimportable (they are installed editable, so leaving the repository off
# sys.path is not enough: a meta-path finder in front of the editable finder refuses them).
BLOCKED_LOAD = """
import importlib.abc, json, os, sys

class RefusePanoVLM(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {packages}:
            raise ImportError(f"{{name}} is blocked: remote code must not need the PanoVLM library")
        return None

sys.meta_path.insert(0, RefusePanoVLM())
sys.path = [p for p in sys.path if p not in ("", ".") and os.path.realpath(p) != {repo_root!r}]

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

report = {{}}
for case in json.loads(sys.argv[1]):
    expected = torch.load(case["expected"], weights_only=True)
    model, info = AutoModelForImageTextToText.from_pretrained(case["source"], trust_remote_code=True, output_loading_info=True)
    processor = AutoProcessor.from_pretrained(case["source"], trust_remote_code=True)
    inputs = processor(images=Image.open(case["image"]), text=case["text"], return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**inputs).logits
    report[case["source"]] = {{
        "classes": [type(obj).__module__.split(".")[0] for obj in (model, processor, processor.image_processor)],
        "loading_info": {{k: sorted(map(str, v)) for k, v in info.items()}},
        "inputs_equal": sorted(inputs) == sorted(expected["inputs"])
        and all(torch.equal(inputs[k], expected["inputs"][k]) for k in inputs),
        "logits_equal": torch.equal(logits, expected["logits"]),
    }}
try:
    import modeling_panovlm
    report["library_importable"] = True
except ImportError:
    report["library_importable"] = False
report["library_modules_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in {packages})
print(json.dumps(report))
""".format(packages=set(LIBRARY_PACKAGES), repo_root=str(REPO_ROOT))

PUSH_EXPORTED = """
import sys
from modeling_panovlm.hub import push_to_hub
from transformers import AutoModelForImageTextToText, AutoProcessor

directory, repo = sys.argv[1:3]
model = AutoModelForImageTextToText.from_pretrained(directory)
push_to_hub(repo, model, AutoProcessor.from_pretrained(directory), export_remote_code=True)
"""


def _run(args: list[str], tmp_path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_rendered_modules_are_flat_self_contained_and_minimal():
    files = render_remote_code()
    assert set(files) == EXPECTED_MODULES
    for name, source in files.items():
        tree = ast.parse(source, filename=name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {alias.name.split(".")[0] for alias in node.names} & set(LIBRARY_PACKAGES), name
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] not in LIBRARY_PACKAGES, (name, node.module)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 1 and f"{node.module}.py" in files, (name, node.module)
        defined = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert "push_to_hub" not in defined, f"{name} overrides push_to_hub (the library's hub tooling is not exported)"
    # The optional CUDA kernels are imported inside try/except ImportError only, which transformers' check skips.
    scan = ast.parse(files["selective_scan.py"])
    guarded = {
        id(node)
        for block in ast.walk(scan)
        if isinstance(block, ast.Try) and all(handler.type.id == "ImportError" for handler in block.handlers)
        for node in block.body
    }
    optional = [
        node
        for node in ast.walk(scan)
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in {"mamba_ssm", "causal_conv1d"}
    ]
    assert len(optional) == 2 and all(id(node) in guarded for node in optional)


@pytest.mark.parametrize(
    "statement",
    [
        "import modeling_panovlm.resampler_bimamba",
        "from modeling_panovlm import bimamba",
        "from configuration_panovlm.view_layout.sub import X",
        "from . import resampler_bimamba",
        "from .sub.module import X",
        "from ..configuration_panovlm import X",
        "x = 1; from configuration_panovlm.view_layout import ViewLayout",
    ],
)
def test_unsupported_import_forms_are_refused(statement):
    with pytest.raises(UnsupportedImportError, match="fake.py:1"):
        _rewrite_imports("modeling_panovlm.fake", statement + "\n", Path("fake.py"))


def test_supported_import_forms_are_rewritten_to_siblings():
    source = textwrap.dedent(
        """
        from configuration_panovlm.view_layout import (
            ViewLayout,
            build_view_layout as layout,
        )
        from .resampler_bimamba import BiMambaResampler


        def lazy():
            from processing_panovlm.equirect import sample_views  # noqa
        """
    )
    rewritten, dependencies = _rewrite_imports("modeling_panovlm.fake", source, Path("fake.py"))
    assert "from .view_layout import ViewLayout, build_view_layout as layout\n" in rewritten
    assert "    from .equirect import sample_views\n" in rewritten
    assert "from .resampler_bimamba import BiMambaResampler" in rewritten and "configuration_panovlm" not in rewritten
    assert sorted(dependencies) == [
        "configuration_panovlm.view_layout",
        "modeling_panovlm.resampler_bimamba",
        "processing_panovlm.equirect",
    ]


def test_export_loads_without_the_library_from_a_directory_and_through_the_hub(tmp_path, panorama, monkeypatch, capsys):
    image = tmp_path / "pano.png"
    panorama.save(image)
    cases = []
    for resampler, crop in (("bimamba", "e2p"), ("perceiver", "anyres_e2p")):
        directory = tmp_path / f"{resampler}-{crop}"
        model, processor = build_tiny_checkpoint(directory, resampler_type=resampler, crop_strategy=crop, seed=3)
        text = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
        inputs = processor(images=panorama, text=text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        expected = tmp_path / f"{resampler}.pt"
        torch.save({"inputs": dict(inputs), "logits": logits}, expected)
        cases.append({"source": str(directory), "expected": str(expected), "image": str(image), "text": text})

    # One directory through the command line, the other through the library function.
    cli = REPO_ROOT / "examples" / "export_remote_code.py"
    monkeypatch.setattr(sys, "argv", [str(cli), cases[0]["source"]])
    runpy.run_path(str(cli), run_name="__main__")
    printed = capsys.readouterr().out
    assert "modeling_panovlm.py" in printed and "trust_remote_code=True" in printed
    written = export_remote_code(cases[1]["source"])
    assert set(written) == EXPECTED_MODULES | {"config.json", "processor_config.json"}
    for case in cases:
        directory = Path(case["source"])
        assert json.loads((directory / "config.json").read_text())["auto_map"] == CONFIG_AUTO_MAP
        processor_config = json.loads((directory / "processor_config.json").read_text())
        assert processor_config["auto_map"] == {"AutoProcessor": PROCESSOR_AUTO_MAP["AutoProcessor"]}
        assert processor_config["image_processor"]["auto_map"] == PROCESSOR_AUTO_MAP
        assert not [p for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}")], "staging left"

    with LocalHub() as hub:
        env = hub.client_env(tmp_path / "hf-home")
        _run(["-c", PUSH_EXPORTED, cases[0]["source"], "tester/pano-remote"], tmp_path, env)
        hub_files = hub.files("tester/pano-remote")
        assert EXPECTED_MODULES <= set(hub_files)
        assert "custom_code" in hub_files["README.md"].decode()
        through_hub = {**cases[0], "source": "tester/pano-remote"}
        env["HF_MODULES_CACHE"] = str(tmp_path / "modules-cache")
        result = _run(["-c", BLOCKED_LOAD, json.dumps([*cases, through_hub])], tmp_path, env)
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report.pop("library_importable") is False and report.pop("library_modules_loaded") == []
    assert set(report) == {case["source"] for case in cases} | {"tester/pano-remote"}
    for source, outcome in report.items():
        assert outcome["classes"] == ["transformers_modules"] * 3, source
        assert outcome["loading_info"] == {
            "error_msgs": [],
            "missing_keys": [],
            "mismatched_keys": [],
            "unexpected_keys": [],
        }, source
        assert outcome["inputs_equal"] and outcome["logits_equal"], source


def test_export_refuses_a_directory_without_panovlm_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither config.json nor processor_config.json"):
        export_remote_code(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match="not 'panovlm'"):
        export_remote_code(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_reexport_removes_stale_generated_modules_and_keeps_other_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "panovlm"}))
    (tmp_path / "custom.py").write_text("# the user's own file\n")
    (tmp_path / "retired_module.py").write_text(
        "# Generated by modeling_panovlm.hub.remote_code from modeling_panovlm/retired_module.py; edit the PanoVLM library\n"
    )
    written = export_remote_code(tmp_path)
    assert set(written) == EXPECTED_MODULES | {"config.json"}
    assert sorted(p.name for p in tmp_path.glob("*.py")) == sorted(EXPECTED_MODULES | {"custom.py"})
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == CONFIG_AUTO_MAP
