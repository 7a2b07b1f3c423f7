"""Per-op dispatch through the functional API and the module, the explanation of a choice, and
the custom op (`torch.ops.nsa.attention`): fake implementation, autograd, torch.compile."""

from __future__ import annotations

import pytest
import torch
from nsa_spec import NSAConfig, UnsupportedError
from nsa_spec.backends import Capabilities, Preference, register, unregister
from nsa_spec.blocks import n_cmp
from nsa_torch import NSAAttention, TorchBackend, explain, nsa_attention

CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=4, window=24)
NAMES = ("q", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win", "gates")


def contract_inputs(T: int = 50, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    B, HQ, H, dk, dv, N = 1, 4, 2, 8, 4, n_cmp(T, CFG)
    shapes = [(B, T, HQ, dk), (B, N, H, dk), (B, N, H, dv), (B, T, H, dk), (B, T, H, dv), (B, T, H, dk),
              (B, T, H, dv)]
    arrays = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    arrays.append(torch.rand((B, T, HQ, 3), generator=g, dtype=torch.float64))
    return {n: x.requires_grad_(requires_grad) for n, x in zip(NAMES, arrays, strict=True)}


class Recording(TorchBackend):
    """The eager backend under another name, preferred on the CPU, recording the ops it ran;
    its forward saves the branch outputs (all zeros) that its own backward would need."""

    def __init__(self, name: str, priority: int, needs: frozenset[str]):
        self.name, self.priority, self.calls = name, 0, []
        self.capabilities = Capabilities(
            array_api="torch", devices=frozenset({"cpu"}), dtypes=frozenset({"float64"}),
            preferences=(Preference(priority, devices=frozenset({"cpu"}), min_tokens=40),),
            saves=frozenset({"lse", "indices"}), backward_needs=needs,
        )

    def forward(self, inputs, config):
        self.calls.append("forward")
        return super().forward(inputs, config)

    def backward(self, inputs, config, out, grad_o):
        self.calls.append("backward")
        return super().backward(inputs, config, out, grad_o)


@pytest.fixture
def recording(monkeypatch):
    """'fwd-only-compatible' wins the forward on the CPU at T >= 40, but its backward needs
    branch outputs nobody saves, so torch must take the backward."""
    for var in ("NSA_BACKEND", "NSA_BACKEND_FORWARD", "NSA_BACKEND_BACKWARD", "NSA_BACKEND_DECODE"):
        monkeypatch.delenv(var, raising=False)
    fake = Recording("recording", 50, frozenset({"indices", "branch_o"}))
    register(fake)
    yield fake
    unregister("recording")


def test_forward_and_backward_dispatch_separately(recording):
    t = contract_inputs(requires_grad=True)
    nsa_attention(**t, config=CFG).sum().backward()
    assert recording.calls == ["forward"]  # the backward went to torch, which accepts its outputs
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in t.values())
    ex = explain(t["q"], t["k_slc"], t["v_slc"], CFG)
    assert ex.chosen("forward") == "recording" and ex.chosen("backward") == "torch"
    backward = {c.name: c for c in ex.candidates["backward"]}
    assert "needs the forward's ['branch_o']" in backward["recording"].reasons[-1]
    assert str(ex).splitlines()[1] == "  recording: CHOSEN (rank 50)"


def test_a_backend_yields_below_its_minimum_length(recording):
    nsa_attention(**contract_inputs(T=30), config=CFG)
    assert recording.calls == []  # T=30 < min_tokens=40: torch (priority 10) wins
    nsa_attention(**contract_inputs(T=40), config=CFG)
    assert recording.calls == ["forward"]


def test_user_overrides_per_op_by_argument_and_environment(recording, monkeypatch):
    t = contract_inputs(requires_grad=True)
    nsa_attention(**t, config=CFG, backend={"forward": "torch"}).sum().backward()
    assert recording.calls == []
    monkeypatch.setenv("NSA_BACKEND_FORWARD", "torch")
    nsa_attention(**contract_inputs(), config=CFG)
    assert recording.calls == []
    with pytest.raises(UnsupportedError, match=r"backend 'recording' cannot run this backward of B=1, "
                       r"T=50, .* needs the forward's \['branch_o'\]"):
        nsa_attention(**t, config=CFG, backend="recording")


def test_refusal_names_the_problem():
    t = {n: x.float() for n, x in contract_inputs().items()}
    with pytest.raises(UnsupportedError, match=r"backend 'numpy' cannot run this forward of B=1, T=50, "
                       r"HQ=4, H=2 \(G=2\), dk=8, dv=4, float32 torch on cpu"):
        nsa_attention(**t, config=CFG, backend="numpy")


def test_the_call_is_one_custom_op_with_a_faithful_fake():
    t = contract_inputs(requires_grad=True)
    o = nsa_attention(**t, config=CFG)
    assert o.grad_fn.name().startswith("torch::autograd::CppNode") or "nsa" in o.grad_fn.name().lower()
    args = (*t.values(), None, [8, 4, 16, 4, 24], CFG.softmax_scale(8), "sigmoid", "torch", "torch")
    torch.library.opcheck(torch.ops.nsa.attention.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_module_has_no_graph_break_and_matches_eager(compiler, one_thread):
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = NSAAttention(32, 4, num_kv_heads=2, config=CFG).double()
    x = torch.randn(2, 70, 32, dtype=torch.float64)
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True, backend=compiler)
    y = compiled(x)
    torch.testing.assert_close(y, eager, rtol=1e-12, atol=1e-12)
    if compiler == "aot_eager":  # inductor's backward compile would double the test time
        expected = torch.autograd.grad(eager.square().sum(), list(layer.parameters()))
        got = torch.autograd.grad(y.square().sum(), list(layer.parameters()))
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
