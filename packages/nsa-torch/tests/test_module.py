"""NSAAttention, NSACache and the functional API: gradients, cache equivalence, dispatch, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from nsa_spec import InvalidInputError, NSAConfig, UnsupportedError
from nsa_spec.backends import register, select_backend, unregister
from nsa_spec.contract import CACHE_ARRAYS
from nsa_spec.reference import compress_inputs
from nsa_spec.reference import nsa_attention as ref_nsa_attention
from nsa_spec.reference.decode import used_rows
from nsa_torch import NSAAttention, NSACache, TorchBackend, nsa_attention, register_phi
from nsa_torch.dispatch import problem_for
from nsa_torch.phi import PHIS, MeanPhi
from nsa_torch.rope import apply_rope

CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=4, window=24)


def layer(**kwargs) -> NSAAttention:
    torch.manual_seed(0)
    options = {"num_kv_heads": 2, "config": CFG} | kwargs
    return NSAAttention(32, 4, **options).double()


@pytest.mark.parametrize("shared_kv", [False, True])
def test_gradients_reach_every_parameter(shared_kv, one_thread):
    module = layer(shared_kv=shared_kv, phi="mlp")
    x = torch.randn(2, 70, 32, dtype=torch.float64)
    module(x).square().sum().backward()
    names = {name for name, _ in module.named_parameters()}
    streams = ("shared",) if shared_kv else ("cmp", "slc", "win")
    for s in streams:
        assert {f"k_proj.{s}.weight", f"v_proj.{s}.weight"} <= names
    assert {"phi_k.w1", "phi_k.pos", "phi_v.w2", "gate.0.weight", "gate.2.weight", "q_proj.weight"} <= names
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("phi", "gate", "prompt"), [("mlp", "sigmoid", 40), ("mean", "softmax", 3)])
def test_prefill_then_decode_equals_full_forward(phi, gate, prompt, one_thread):
    module = layer(phi=phi, config=dataclasses.replace(CFG, gate=gate))
    x = torch.randn(2, 77, 32, dtype=torch.float64)

    def run(prompt_len: int) -> tuple[torch.Tensor, NSACache]:
        cache = NSACache()
        steps = [module(x[:, :prompt_len], cache=cache)]
        steps += [module(x[:, t : t + 1], cache=cache) for t in range(prompt_len, x.shape[1])]
        return torch.cat(steps, 1), cache

    with torch.no_grad():
        full = module(x)
        y, cache = run(prompt)
        y_steps, cache_steps = run(1)
    assert cache.length == cache_steps.length == 77
    torch.testing.assert_close(y, full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y_steps, full, rtol=1e-10, atol=1e-12)
    used = used_rows(cache.state.replace(lengths=cache.state.lengths.numpy()), CFG)
    for name in CACHE_ARRAYS:
        rows = torch.from_numpy(np.flatnonzero(used[name][0]))  # capacities differ: compare used rows
        a, b = getattr(cache.state, name)[:, rows], getattr(cache_steps.state, name)[:, rows]
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_cache_counts_reads_and_follows_emission_schedule(one_thread):
    module = layer(phi="mean")
    cache = NSACache()
    with torch.no_grad():
        module(torch.randn(1, 10, 32, dtype=torch.float64), cache=cache)
        assert cache.capacity == 10 and cache.reads is None
        for length in range(11, 41):
            module(torch.randn(1, 1, 32, dtype=torch.float64), cache=cache)
            n_cmp = (length - 8) // 4 + 1
            assert cache.lengths.tolist() == [length] and cache.length == length
            assert cache.capacity == {True: 20, False: 40}[length <= 20]  # doubles when full
            assert cache.state.k_cmp.shape[1] == (cache.capacity - 8) // 4 + 1
            assert cache.state.k_win.shape[1] == CFG.window
            assert cache.reads.shape == (1, 2)
            assert cache.reads.tolist() == [[n_cmp + length + min(CFG.window, length)] * 2]


def test_rope_matches_rotation_and_is_relative():
    x = torch.randn(1, 5, 2, 8, dtype=torch.float64)
    y = torch.randn(1, 5, 2, 8, dtype=torch.float64)
    pos = torch.arange(5)
    rx, ry = apply_rope(x, pos, 100.0), apply_rope(y, pos, 100.0)
    sx, sy = apply_rope(x, pos + 7, 100.0), apply_rope(y, pos + 7, 100.0)
    torch.testing.assert_close((rx[:, 3] * ry[:, 1]).sum(-1), (sx[:, 3] * sy[:, 1]).sum(-1))
    torch.testing.assert_close(rx[:, 0], x[:, 0])
    torch.testing.assert_close(rx.norm(dim=-1), x.norm(dim=-1))


def _contract_inputs(dtype=torch.float64, requires_grad=False):
    rng = np.random.default_rng(0)
    B, T, HQ, H, dk, dv = 1, 50, 4, 2, 8, 6
    raw = compress_inputs(
        rng.standard_normal((B, T, HQ, dk)), rng.standard_normal((B, T, H, dk)),
        rng.standard_normal((B, T, H, dv)), rng.standard_normal((B, T, H, dk)),
        rng.standard_normal((B, T, H, dv)), rng.standard_normal((B, T, H, dk)),
        rng.standard_normal((B, T, H, dv)), rng.uniform(size=(B, T, HQ, 3)), CFG,
    )
    tensors = {n: torch.tensor(x, dtype=dtype, requires_grad=requires_grad) for n, x in raw.arrays().items()}
    return raw, tensors


class _WrappedTorch(TorchBackend):
    """The eager backend under another name, to drive the autograd.Function path."""

    name = "wrapped-torch"
    priority = -1


def test_functional_matches_reference_and_other_backend_path_has_same_gradients():
    raw, t = _contract_inputs(requires_grad=True)
    want = ref_nsa_attention(raw, CFG)
    out = nsa_attention(**t, config=CFG, return_aux=True)
    np.testing.assert_allclose(out.o.detach().numpy(), want.o, rtol=1e-12, atol=1e-12)
    grad_o = torch.randn_like(out.o)
    direct = torch.autograd.grad(out.o, list(t.values()), grad_o)
    register(_WrappedTorch())
    try:
        o = nsa_attention(**t, config=CFG, backend="wrapped-torch")
        wrapped = torch.autograd.grad(o, list(t.values()), grad_o)
    finally:
        unregister("wrapped-torch")
    torch.testing.assert_close(o, out.o)
    for a, b in zip(direct, wrapped, strict=True):
        torch.testing.assert_close(a, b)


def test_low_precision_runs_and_stays_close():
    raw, t = _contract_inputs(dtype=torch.bfloat16)
    want = ref_nsa_attention(raw, CFG)
    out = nsa_attention(**t, config=CFG, return_aux=True)
    assert out.o.dtype == torch.bfloat16 and out.lse.dtype == torch.float32
    assert torch.isfinite(out.o).all()
    np.testing.assert_allclose(out.o.float().numpy(), want.o, atol=0.05)


@pytest.mark.parametrize("phi", ["mlp", "mean"])
def test_autocast_runs_in_the_autocast_dtype(phi, one_thread):
    """Under autocast the projections give bfloat16 while phi's and the gates' float32 parameters
    would promote k_cmp, v_cmp and the gates (once a dtype mismatch the kernel contract refused)."""
    torch.manual_seed(0)
    layer = NSAAttention(32, 4, num_kv_heads=2, head_dim=8, config=CFG, phi=phi, backend="torch")
    x = torch.randn(2, 40, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, aux = layer(x, return_aux=True)
    assert y.dtype == aux.o.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    # bfloat16 keeps 8 bits of mantissa: measured max |y - y_float32| 0.0029 (mlp) / 0.0034 (mean) for
    # outputs up to 0.9, i.e. about one bfloat16 step; 0.01 leaves ~3x of that and fails a wrong dtype path.
    torch.testing.assert_close(y.float(), layer(x), atol=0.01, rtol=0.01)


def test_register_phi_makes_a_new_compression_available():
    name = "test-max"
    register_phi(name, lambda block_len, dim, hidden: _MaxPhi())
    try:
        module = layer(phi=name)
        assert torch.isfinite(module(torch.randn(1, 20, 32, dtype=torch.float64))).all()
        with pytest.raises(InvalidInputError, match="already registered"):
            register_phi(name, lambda block_len, dim, hidden: MeanPhi())
    finally:
        PHIS.pop(name)


class _MaxPhi(torch.nn.Module):
    def forward(self, blocks):
        return blocks.amax(dim=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_kv_heads": 3}, "num_kv_heads must divide num_heads"),
        ({"head_dim": 7}, "head_dim must be even"),
        ({"phi": "nope"}, "phi must be one of"),
    ],
)
def test_bad_module_arguments_raise(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        layer(**kwargs)


def test_bad_calls_raise():
    module = layer()
    with pytest.raises(InvalidInputError, match=r"x must have shape \[B, T, d_model\]"):
        module(torch.randn(4, 32, dtype=torch.float64))
    cache = NSACache()
    module(torch.randn(1, 5, 32, dtype=torch.float64), cache=cache)
    with pytest.raises(InvalidInputError, match="one token per call"):
        module(torch.randn(1, 2, 32, dtype=torch.float64), cache=cache)
    with pytest.raises(UnsupportedError, match="'nope' is not available"):
        layer(backend="nope")(torch.randn(1, 5, 32, dtype=torch.float64))
    with pytest.raises(UnsupportedError, match="arrays are 'torch', this backend takes 'numpy'"):
        layer(backend="numpy")(torch.randn(1, 5, 32, dtype=torch.float64))


def test_bad_contract_inputs_raise():
    _, t = _contract_inputs()
    with pytest.raises(InvalidInputError, match="k_win must have shape"):
        nsa_attention(**(t | {"k_win": t["k_win"][:, :-1]}), config=CFG)
    with pytest.raises(InvalidInputError, match="gates must have q's dtype"):
        nsa_attention(**(t | {"gates": t["gates"].float()}), config=CFG)
    with pytest.raises(InvalidInputError, match="cu_seqlens must start at 0"):
        nsa_attention(**t, config=CFG, cu_seqlens=torch.tensor([0, 10, 49]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_problem_without_cuda_is_refused():
    problem = dataclasses.replace(problem_for("forward", torch.zeros(1, 4, 4, 8), 2, 8, CFG), device="cuda")
    with pytest.raises(UnsupportedError, match=r"torch\.cuda\.is_available\(\) is False"):
        select_backend(problem, "torch")


def test_rotary_tables_equal_the_layers_own_rope(one_thread):
    """`rotary=(cos, sin)` (a host model's RoPE) at positions 0..T-1 equals the layer's own RoPE."""
    module = layer(phi="mean")
    x = torch.randn(2, 30, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dk = module.head_dim
    inv_freq = module.rope_base ** (-torch.arange(0, dk, 2, dtype=torch.float64) / dk)
    angles = torch.arange(30, dtype=torch.float64)[:, None] * inv_freq
    angles = torch.cat([angles, angles], -1)[None]
    torch.testing.assert_close(module(x, rotary=(angles.cos(), angles.sin())), module(x), atol=1e-12, rtol=0)
    with pytest.raises(InvalidInputError, match=r"rotary cos must have shape \[B or 1, T, head_dim\]"):
        module(x, rotary=(angles.cos()[:, :5], angles.sin()[:, :5]))
