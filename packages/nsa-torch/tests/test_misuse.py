"""Misuse of NSAAttention and NSACache raises InvalidInputError naming the argument and values;
packed sequences (cu_seqlens) through the layer equal each sequence alone and stay isolated."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from nsa_spec import InvalidInputError, NSAConfig, UnsupportedError
from nsa_torch import NSAAttention, NSACache

CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=4, window=24)


def layer(**kwargs) -> NSAAttention:
    torch.manual_seed(0)
    options = {"num_kv_heads": 2, "config": CFG} | kwargs
    return NSAAttention(32, 4, **options).double()


def prefilled(module: NSAAttention, batch: int = 2, length: int = 10) -> NSACache:
    cache = NSACache()
    with torch.no_grad():
        module(torch.randn(batch, length, 32, dtype=torch.float64), cache=cache)
    return cache


def token(batch: int = 2, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(batch, 1, 32, dtype=dtype)


@pytest.mark.parametrize(
    ("other", "batch", "match"),
    [
        ({}, 3, "cache was filled with batch size B=2, this call has B=3"),
        ({"num_kv_heads": 4}, 2, "cache was filled with kv heads H=2, this call has H=4"),
        ({"head_dim": 16}, 2, "cache was filled with key head dim dk=8, this call has dk=16"),
        ({"v_head_dim": 6}, 2, "cache was filled with value head dim dv=8, this call has dv=6"),
        (
            {"config": dataclasses.replace(CFG, window=16)}, 2,
            r"filled with config=NSAConfig\(.*window=24.*\), this call has config=NSAConfig\(.*window=16",
        ),
    ],
)
def test_cache_refuses_a_call_unlike_its_fill(other, batch, match, one_thread):
    cache = prefilled(layer())
    with torch.no_grad(), pytest.raises(InvalidInputError, match=match):
        layer(**other)(token(batch), cache=cache)
    assert cache.length == 10


def test_cache_refuses_another_dtype_or_device(one_thread):
    module = layer()
    cache = prefilled(module)
    with torch.no_grad():
        match = r"filled with dtype=torch\.float64, this call has dtype=torch\.float32"
        with pytest.raises(InvalidInputError, match=match):
            module.float()(token(dtype=torch.float32), cache=cache)
        module.double().to("meta")
        with pytest.raises(InvalidInputError, match="filled with device=cpu, this call has device=meta"):
            module(token().to("meta"), cache=cache)


def test_cache_records_the_first_append_and_a_changed_config(one_thread):
    module = layer()
    cache = NSACache()
    streams = (torch.zeros(2, 1, 2, 8, dtype=torch.float64) for _ in range(6))
    cache.append(*streams, CFG, module.phi_k, module.phi_v)
    assert cache.filled_with.batch == 2 and cache.filled_with.config == CFG
    with torch.no_grad():
        module(token(), cache=cache)
        module.config = dataclasses.replace(CFG, top_n=5)
        with pytest.raises(InvalidInputError, match="this call has config=NSAConfig"):
            module(token(), cache=cache)
    cache.reset()
    assert cache.filled_with is None
    filled = prefilled(layer())
    with pytest.raises(InvalidInputError, match=r"fill needs an empty cache: cache\.length=10"):
        filled.fill(*(filled.state.k_raw for _ in range(8)), CFG)


@pytest.mark.parametrize("config", [{"cmp_len": 8}, "default", 3])
def test_config_must_be_an_nsaconfig(config):
    match = rf"config must be an nsa_spec\.NSAConfig: got {type(config).__name__}"
    with pytest.raises(InvalidInputError, match=match):
        NSAAttention(32, 4, config=config)
    module = layer()
    module.config = config
    with pytest.raises(InvalidInputError, match=r"config must be an nsa_spec\.NSAConfig"):
        module(torch.randn(1, 4, 32, dtype=torch.float64))
    assert NSAAttention(32, 4, config=None).config == NSAConfig()


@pytest.mark.parametrize("name", ["d_model", "num_heads", "num_kv_heads", "head_dim", "v_head_dim",
                                  "phi_hidden", "gate_hidden"])
@pytest.mark.parametrize("value", [0, -4, 8.0, True, "8"])
def test_sizes_must_be_positive_ints(name, value):
    kwargs = {"d_model": 32, "num_heads": 4} | {name: value}
    with pytest.raises(InvalidInputError, match=f"{name} must be a positive int: {name}={value!r}"):
        NSAAttention(**kwargs)


def test_default_head_dim_and_rope_base_are_checked():
    with pytest.raises(InvalidInputError, match=r"head_dim=0 \(default d_model // num_heads\)"):
        NSAAttention(2, 4)
    with pytest.raises(InvalidInputError, match="rope_base must be a finite number > 0: rope_base=0"):
        NSAAttention(32, 4, rope_base=0)


def test_bad_call_arguments_name_them():
    module = layer()
    with pytest.raises(InvalidInputError, match=r"d_model=32: x.shape=\(1, 4, 16\)"):
        module(torch.randn(1, 4, 16, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match=r"cache must be an nsa_torch\.NSACache or None: got dict"):
        module(torch.randn(1, 4, 32, dtype=torch.float64), cache={})


def test_decode_under_grad_is_refused_and_inference_decodes(one_thread):
    module = layer()
    cache = NSACache()
    prompt = module(torch.randn(2, 10, 32, dtype=torch.float64), cache=cache)
    assert prompt.requires_grad  # a prefill under autograd is differentiable
    with pytest.raises(InvalidInputError, match=r"decode steps are inference only.*torch\.no_grad\(\)"):
        module(token(), cache=cache)
    assert cache.length == 10
    with torch.inference_mode():
        assert not module(token(), cache=cache).requires_grad
    with torch.no_grad():
        module(token(), cache=cache)
    module.requires_grad_(False)
    assert not module(token(), cache=cache).requires_grad  # a frozen layer may decode
    assert cache.length == 13


LENGTHS = (5, 37, 20)


def packed_inputs() -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    torch.manual_seed(1)
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    x = torch.randn(1, int(cu[-1]), 32, dtype=torch.float64)
    return x, cu, list(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True))


@pytest.mark.parametrize("phi", ["mlp", "mean"])
def test_packed_sequences_equal_each_sequence_alone(phi, one_thread):
    module = layer(phi=phi)
    x, cu, spans = packed_inputs()
    with torch.no_grad():
        y, aux = module(x, cu_seqlens=cu, return_aux=True)
        alone = torch.cat([module(x[:, lo:hi]) for lo, hi in spans], 1)
    torch.testing.assert_close(y, alone, rtol=1e-12, atol=1e-12)
    assert aux.indices.shape[1] == x.shape[1]


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_packed_sequences_never_see_each_other(poison, one_thread):
    module = layer()
    x, cu, spans = packed_inputs()
    with torch.no_grad():
        clean = module(x, cu_seqlens=cu.tolist())
        lo, hi = spans[1]
        x[:, lo + 3 : hi - 2] = poison
        y = module(x, cu_seqlens=cu)
    for i in (0, 2):
        lo, hi = spans[i]
        assert torch.isfinite(y[:, lo:hi]).all()
        assert torch.equal(y[:, lo:hi], clean[:, lo:hi])


def test_packed_sequences_train(one_thread):
    module = layer()
    x, cu, _ = packed_inputs()
    module(x, cu_seqlens=cu).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_cu_seqlens_are_refused():
    module = layer()
    x = torch.randn(1, 12, 32, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match=r"cu_seqlens must start at 0, end at T=12 .*\[0, 5, 11\]"):
        module(x, cu_seqlens=[0, 5, 11])
    with pytest.raises(InvalidInputError, match=r"cu_seqlens must start at 0.*\[0, 7, 5, 12\]"):
        module(x, cu_seqlens=[0, 7, 5, 12])
    with pytest.raises(InvalidInputError, match=r"cu_seqlens needs B == 1 .*: B=2"):
        module(torch.randn(2, 12, 32, dtype=torch.float64), cu_seqlens=[0, 5, 12])
    with pytest.raises(InvalidInputError, match="cu_seqlens must be an int tensor"):
        module(x, cu_seqlens=torch.tensor([0.0, 12.0]))
    with pytest.raises(UnsupportedError, match="cu_seqlens with a cache is not supported"):
        module(x, cache=NSACache(), cu_seqlens=[0, 5, 12])
