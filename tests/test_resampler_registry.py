"""One source per extension point: a resampler type defined outside PanoVLM is registered by one call, after which
configs accept its fields, the model builds it, it trains, saves and reloads in a fresh process; everything a type
must tell (fields, token count, FSDP wrapping, weight decay) comes from its two declarations."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from configuration_panovlm import PanoVLMConfig
from configuration_panovlm.resampler_registry import RESAMPLER_SPECS
from modeling_panovlm import RESAMPLERS, register_resampler
from modeling_panovlm.testing.tiny_checkpoint import build_tiny_checkpoint
from modeling_panovlm.training.trainer import no_weight_decay_parameters


PLUGIN = '''
"""A user's own resampler: average-pools each view's tokens in windows of `pool` columns, then projects them."""
import torch
from torch import nn

from modeling_panovlm import register_resampler


class PoolResampler(nn.Module):
    _no_split_modules = ["PoolResampler"]
    no_weight_decay = ("scale",)

    def __init__(self, config, input_dim):
        super().__init__()
        self.pool = config.pool
        self.proj = nn.Linear(input_dim, config.latent_dimension)
        self.scale = nn.Parameter(torch.ones(config.latent_dimension))

    def forward(self, hidden_states):
        n, s, d = hidden_states.shape
        pooled = hidden_states.reshape(n, s // self.pool, self.pool, d).mean(2)
        return self.proj(pooled) * self.scale


register_resampler(
    "pool",
    PoolResampler,
    config_fields={"pool": 2},
    output_tokens=lambda config, n: n // config.pool,
    validate=lambda config: None if config.pool >= 1 else (_ for _ in ()).throw(ValueError("pool must be >= 1")),
)
'''

RELOAD = """
import json, sys
import torch
sys.path.insert(0, sys.argv[2])
import modeling_panovlm
if sys.argv[3] == "with-plugin":
    import pool_resampler  # registers the type, as the user's code would
from transformers import AutoModelForImageTextToText
try:
    model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])
except ValueError as error:
    print(json.dumps({"error": str(error)}))
    raise SystemExit(0)
inputs = torch.load(sys.argv[1] + "/inputs.pt")
with torch.no_grad():
    print(json.dumps({"logits": model(**inputs).logits.sum().item(), "type": type(model.model.resampler).__name__}))
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    directory = tmp_path_factory.mktemp("plugin")
    (directory / "pool_resampler.py").write_text(PLUGIN)
    sys.path.insert(0, str(directory))
    import pool_resampler  # noqa: F401

    yield directory
    sys.path.remove(str(directory))


def test_a_registered_type_trains_saves_and_reloads_in_a_fresh_process(plugin, tmp_path):
    model, processor = build_tiny_checkpoint(resampler_type="mlp", crop_strategy="e2p")
    config = model.config.to_dict()
    config["resampler_config"] = {**config["resampler_config"], "resampler_type": "pool", "pool": 4}
    config = PanoVLMConfig.from_dict(config)
    assert config.resampler_config.pool == 4
    assert config.view_token_grid == (2, 2)  # 16 patch tokens per view pooled in fours
    from modeling_panovlm import PanoVLMForConditionalGeneration

    model = PanoVLMForConditionalGeneration(config)
    assert "PoolResampler" in model._no_split_modules
    assert "model.resampler.scale" in no_weight_decay_parameters(model)

    from processing_panovlm import PanoVLMProcessor

    processor = PanoVLMProcessor.from_model_config(config, processor.tokenizer)
    image = torch.randint(0, 255, (64, 128, 3), dtype=torch.uint8).numpy()
    prompt = processor.apply_chat_template(processor.build_messages("it", "a red circle"))
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    before = model.model.resampler.proj.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.model.resampler.proj.weight)

    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["resampler_config"]["pool"] == 4
    torch.save(dict(inputs), tmp_path / "ckpt" / "inputs.pt")
    with torch.no_grad():
        expected = model.eval()(**inputs).logits.sum().item()
    script = tmp_path / "reload.py"
    script.write_text(textwrap.dedent(RELOAD))

    def reload(mode):
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "ckpt"), str(plugin), mode], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    reloaded = reload("with-plugin")
    assert reloaded["type"] == "PoolResampler" and reloaded["logits"] == pytest.approx(expected, rel=0, abs=1e-4)
    missing = reload("without-plugin")
    assert "resampler_type 'pool' is not registered" in missing["error"] and "register_resampler" in missing["error"]


def test_a_registered_type_checks_its_fields(plugin):
    with pytest.raises(TypeError, match="resampler_config.pool of type 'pool' must be int"):
        PanoVLMConfig(resampler_config={"resampler_type": "pool", "pool": "two"})
    with pytest.raises(ValueError, match="unknown key 'poll' \\(did you mean 'pool'\\?\\)"):
        PanoVLMConfig(resampler_config={"resampler_type": "pool", "poll": 2})
    with pytest.raises(ValueError, match="unknown key 'pool'"):  # another type's field
        PanoVLMConfig(resampler_config={"resampler_type": "mlp", "pool": 2})


def test_a_registered_name_cannot_be_taken_by_another_class():
    from torch import nn

    class Impostor(nn.Module):
        pass

    with pytest.raises(ValueError, match="'mlp' is already registered to MLPResampler"):
        register_resampler("mlp", Impostor)
    assert RESAMPLERS["mlp"].__name__ == "MLPResampler" and set(RESAMPLER_SPECS) >= {"bimamba", "mlp", "perceiver", "qformer"}


def test_built_in_types_declare_what_the_trainer_and_fsdp_read():
    for kind, blocks, queries in (("bimamba", "BiMambaBlock", ("A_log", "D")), ("perceiver", "PerceiverLayer", ("latents",)), ("qformer", "QFormerLayer", ("query_tokens",))):
        model, _ = build_tiny_checkpoint(resampler_type=kind, crop_strategy="e2p")
        assert blocks in model._no_split_modules
        no_decay = no_weight_decay_parameters(model)
        assert all(any(name.endswith("." + q) for name in no_decay) for q in queries)
        assert not any(name.endswith(".weight") and "norm" not in name for name in no_decay if "resampler" in name)
