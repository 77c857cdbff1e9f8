"""Perceiver and Q-Former resamplers: shapes, agreement with an explicit softmax(QK^T/sqrt(d))V reference,
permutation invariance, view independence, gradients, activation checkpointing, initialisation, bf16."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from configuration_panovlm.configuration_panovlm import PanoVLMResamplerConfig
from modeling_panovlm.resampler_attention import ResamplerAttention
from modeling_panovlm.resampler_perceiver import PerceiverResampler
from modeling_panovlm.resampler_qformer import QFormerResampler


KINDS = ("perceiver", "qformer")
QUERY_PARAM = {"perceiver": "latents", "qformer": "query_tokens"}


def make_config(kind: str, **overrides) -> PanoVLMResamplerConfig:
    # Deliberately mismatched widths: heads * dim_head != hidden_dim != latent_dimension != input_dim.
    fields = {
        "resampler_type": kind,
        "hidden_dim": 32,
        "latent_dimension": 24,
        "dropout": 0.0,
        "depth": 2,
        "num_latents": 6,
        "heads": 3,
        "dim_head": 8,
        "ff_mult": 2,
        "num_query_tokens": 5,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    fields.update(overrides)
    return PanoVLMResamplerConfig(**fields)


def make_resampler(kind: str, input_dim: int = 20, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = PerceiverResampler if kind == "perceiver" else QFormerResampler
    return cls(make_config(kind, **overrides), input_dim)


def randomise_(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values everywhere (LayerNorm scales/shifts, biases) so the references exercise every tensor."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * 0.3 + (1.0 if param.ndim == 1 else 0.0))
    return module


# ---- independent reference --------------------------------------------------------------------------------------
def reference_attention(attn, queries, context, num_heads, head_dim):
    q = queries @ attn.q_proj.weight.T
    k = context @ attn.k_proj.weight.T
    v = context @ attn.v_proj.weight.T
    heads = []
    for h in range(num_heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(head_dim)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., cols])
    return torch.cat(heads, dim=-1) @ attn.o_proj.weight.T + attn.o_proj.bias


def layer_norm(norm, x):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def feed_forward(ff, x):
    return F.gelu(x @ ff.fc1.weight.T + ff.fc1.bias) @ ff.fc2.weight.T + ff.fc2.bias


def reference_resampler(kind, model, config, x):
    context = x @ model.input_proj.weight.T + model.input_proj.bias
    queries = getattr(model, QUERY_PARAM[kind]).unsqueeze(0).repeat(x.shape[0], 1, 1)
    for layer in model.layers:
        if kind == "perceiver":
            lat = layer_norm(layer.latents_norm, queries)
            keys = torch.cat([layer_norm(layer.context_norm, context), lat], dim=1)
            queries = queries + reference_attention(layer.attn, lat, keys, config.heads, config.dim_head)
            queries = queries + feed_forward(layer.ff, layer_norm(layer.ff_norm, queries))
        else:
            heads, head_dim = config.num_attention_heads, config.hidden_dim // config.num_attention_heads
            normed = layer_norm(layer.self_attn_norm, queries)
            queries = queries + reference_attention(layer.self_attn, normed, normed, heads, head_dim)
            normed, ctx = layer_norm(layer.cross_attn_norm, queries), layer_norm(layer.context_norm, context)
            queries = queries + reference_attention(layer.cross_attn, normed, ctx, heads, head_dim)
            queries = queries + feed_forward(layer.ff, layer_norm(layer.ff_norm, queries))
    return layer_norm(model.norm, queries) @ model.output_proj.weight.T + model.output_proj.bias


# ---- tests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "shape, overrides",
    [
        ((1, 1, 20), {}),
        ((3, 17, 20), {"num_latents": 9, "num_query_tokens": 9}),
        ((2, 64, 48), {"depth": 1, "num_hidden_layers": 3, "heads": 1, "dim_head": 40, "num_attention_heads": 2}),
    ],
)
def test_output_shape(kind, shape, overrides):
    n, s, input_dim = shape
    model = make_resampler(kind, input_dim, **overrides).eval()
    out = model(torch.randn(n, s, input_dim))
    config = make_config(kind, **overrides)
    assert out.shape == (n, config.num_output_tokens(s), config.latent_dimension)
    assert out.shape[1] == (config.num_latents if kind == "perceiver" else config.num_query_tokens)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_matches_explicit_softmax(implementation):
    torch.manual_seed(0)
    config = PanoVLMResamplerConfig()
    config._attn_implementation = implementation
    attn = randomise_(ResamplerAttention(config, hidden_dim=12, num_heads=3, head_dim=5, dropout=0.0)).double()
    queries, context = torch.randn(2, 4, 12, dtype=torch.float64), torch.randn(2, 7, 12, dtype=torch.float64)
    expected = reference_attention(attn, queries, context, num_heads=3, head_dim=5)
    torch.testing.assert_close(attn(queries, context), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_resampler_matches_reference(kind):
    model = randomise_(make_resampler(kind)).double().eval()
    x = torch.randn(3, 11, 20, dtype=torch.float64)
    expected = reference_resampler(kind, model, make_config(kind), x)
    torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_invariant_to_token_order(kind):
    model = randomise_(make_resampler(kind)).double().eval()
    x = torch.randn(2, 13, 20, dtype=torch.float64)
    permuted = x[:, torch.randperm(13, generator=torch.Generator().manual_seed(1))]
    assert not torch.equal(permuted, x)
    torch.testing.assert_close(model(permuted), model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_views_are_independent(kind):
    model = make_resampler(kind).double().eval()
    x = torch.randn(3, 10, 20, dtype=torch.float64)
    changed = x.clone()
    changed[1] = torch.randn(10, 20, dtype=torch.float64)
    out, out_changed = model(x), model(changed)
    assert not torch.allclose(out[1], out_changed[1])  # the output does depend on the view's tokens ...
    torch.testing.assert_close(out[[0, 2]], out_changed[[0, 2]], rtol=0, atol=1e-12)  # ... and only on them
    torch.testing.assert_close(model(x[2:3]), out[2:3], rtol=1e-12, atol=1e-12)


def test_qformer_query_self_attention_is_bidirectional():
    # The predecessor's BertModel(is_decoder=True) made it causal: the first query never saw the last one.
    model = make_resampler("qformer").double().eval()
    x = torch.randn(1, 8, 20, dtype=torch.float64)
    before = model(x)
    with torch.no_grad():
        model.query_tokens[-1] += torch.randn(32, dtype=torch.float64)
    assert not torch.allclose(model(x)[:, 0], before[:, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    model = make_resampler(kind).train()
    x = torch.randn(2, 9, 20, requires_grad=True)
    (model(x) * torch.randn(2, 1, 24)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert getattr(model, QUERY_PARAM[kind]).grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_only_in_training(kind):
    model = make_resampler(kind, dropout=0.3)
    x = torch.randn(2, 9, 20)
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_same_gradients(kind, use_reentrant):
    # The reentrant variant only propagates gradients through positional tensors: it checks that the layers
    # receive the vision tokens positionally (a keyword argument would cut input_proj off from the gradient).
    x = torch.randn(2, 9, 20)
    weights = torch.randn(2, 1, 24)

    def gradients(model):
        torch.manual_seed(123)  # same dropout masks; checkpointing replays the RNG state on recompute
        inputs = x.clone().requires_grad_()
        (model(inputs) * weights).sum().backward()
        return {"input": inputs.grad, **{n: p.grad for n, p in model.named_parameters()}}

    expected = gradients(make_resampler(kind, dropout=0.2).train())

    model = make_resampler(kind, dropout=0.2).train()
    calls = []

    def counting_checkpoint(function, *args):
        calls.append(function)
        return checkpoint(function, *args, use_reentrant=use_reentrant)

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == 2
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = counting_checkpoint
    actual = gradients(model)
    assert len(calls) == len(layers)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_init_weights_respects_loaded_tensors(kind):
    model = make_resampler(kind, num_latents=64, num_query_tokens=64)
    queries = getattr(model, QUERY_PARAM[kind])
    assert 0.01 < queries.std() < 0.03  # standalone construction already initialises them
    with torch.no_grad():
        queries.zero_()
    model.init_weights_(0.5)
    assert abs(queries.mean().item()) < 0.05 and 0.45 < queries.std().item() < 0.55

    with torch.no_grad():
        queries.fill_(3.0)
    queries._is_hf_initialized = True
    model.init_weights_(0.5)
    assert torch.all(queries == 3.0)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_forward(kind):
    model = make_resampler(kind).eval()
    x = torch.randn(2, 16, 20)
    expected = model(x)
    out = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert (out.float() - expected).abs().max() < 0.05 * expected.abs().max()
