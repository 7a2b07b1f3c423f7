"""The backward kernels of the compressed and window branches and of the gated combine against
torch autograd of a float64 naive computation, at small shapes (on CPU under the interpreter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nsa_spec import NSAConfig
from nsa_spec.blocks import n_cmp
from nsa_spec.contract import NSAInputs
from nsa_triton.ops import nsa
from nsa_triton.ops.attention_grad import BackwardTiles
from nsa_triton.ops.combine import combine_backward
from nsa_triton.ops.compress import compressed_attention_backward
from nsa_triton.ops.window import window_attention_backward

CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=4, window=24)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL_TILES = BackwardTiles(rows=16, keys=16, num_warps=4, num_stages=1)
BF16_ULP = 2.0**-7  # the interpreter rounds float32 -> bfloat16 toward zero: within one ulp
SHAPES = [  # B, T, HQ, H, dk, dv
    (2, 37, 2, 1, 32, 16),
    (2, 100, 4, 1, 16, 32),
    (1, 100, 2, 2, 16, 16),
    (2, 6, 4, 2, 16, 16),
]


def cmp_mask(T: int, N: int, config: NSAConfig) -> torch.Tensor:
    """[T, N]: query t sees compressed token i iff i*d + l <= t + 1."""
    t = torch.arange(T)[:, None]
    return torch.arange(N)[None, :] * config.cmp_stride + config.cmp_len <= t + 1


def win_mask(T: int, config: NSAConfig) -> torch.Tensor:
    """[T, T]: query t sees keys max(0, t - w + 1)..t."""
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (s <= t) & (s > t - config.window)


def naive_attention(q, k, v, mask, scale):
    """float64 (o [B, T, HQ, dv], lse [B, T, HQ]) over keys [B, S, H, d] under mask [T, S]; an
    empty key set gives o = 0, lse = -inf."""
    G = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(G, 2), v.repeat_interleave(G, 2)
    s = torch.einsum("bthd,bshd->bhts", q, k) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.where(mask, torch.exp(s - torch.where(lse.isinf(), 0.0, lse)[..., None]), 0.0)
    return torch.einsum("bhts,bshd->bthd", p, v), lse.transpose(1, 2)


def float32_tensors(rng, *shapes):
    return [torch.from_numpy(rng.standard_normal(s)).float() for s in shapes]


def branch_case(rng, B, T, HQ, H, dk, dv, n_keys, mask, scale):
    """Kernel inputs of one branch and the float64 autograd gradients it must produce."""
    q, k, v, grad_o = float32_tensors(rng, (B, T, HQ, dk), (B, n_keys, H, dk), (B, n_keys, H, dv),
                                      (B, T, HQ, dv))
    gates = torch.from_numpy(rng.uniform(size=(B, T, HQ, 3))).float()
    dq0 = torch.from_numpy(rng.standard_normal((B, T, HQ, dk))).float()
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    o, lse = naive_attention(q64, k64, v64, mask, scale)
    do = gates[..., 0, None].double() * grad_o.double()
    delta = (do * o).sum(-1)
    (o * do).sum().backward()
    lse3 = torch.zeros((B, T, HQ, 3))
    lse3[..., 0] = lse.float()
    delta3 = torch.zeros((B, T, HQ, 3))
    delta3[..., 0] = delta.detach().float()
    args = [x.to(DEVICE) for x in (q, k, v, grad_o, gates[..., 0], lse3[..., 0], delta3[..., 0], dq0)]
    want = (dq0.double() + q64.grad, k64.grad, v64.grad)
    return args, want


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    np.testing.assert_allclose(got.double().cpu().numpy(), want.numpy(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("tiles", [None, SMALL_TILES], ids=["default-tiles", "16x16"])
@pytest.mark.parametrize(("B", "T", "HQ", "H", "dk", "dv"), SHAPES, ids=lambda x: str(x))
def test_compressed_backward_matches_autograd(B, T, HQ, H, dk, dv, tiles):
    N = n_cmp(T, CFG)
    scale = CFG.softmax_scale(dk)
    args, want = branch_case(np.random.default_rng(T + HQ), B, T, HQ, H, dk, dv, N, cmp_mask(T, N, CFG),
                             scale)
    dk_cmp, dv_cmp = compressed_attention_backward(*args, CFG, scale, tiles=tiles)
    assert dk_cmp.shape == (B, N, H, dk) and dv_cmp.shape == (B, N, H, dv)
    close(args[-1], want[0])
    close(dk_cmp, want[1])
    close(dv_cmp, want[2])


@pytest.mark.parametrize("tiles", [None, SMALL_TILES], ids=["default-tiles", "16x16"])
@pytest.mark.parametrize(("B", "T", "HQ", "H", "dk", "dv"), SHAPES, ids=lambda x: str(x))
def test_window_backward_matches_autograd(B, T, HQ, H, dk, dv, tiles):
    scale = CFG.softmax_scale(dk)
    args, want = branch_case(np.random.default_rng(T + HQ), B, T, HQ, H, dk, dv, T, win_mask(T, CFG),
                             scale)
    dk_win, dv_win = window_attention_backward(*args, CFG, scale, tiles=tiles)
    close(args[-1], want[0])
    close(dk_win, want[1])
    close(dv_win, want[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_combine_backward_matches_autograd(dtype):
    B, T, HQ, dv = 2, 37, 4, 24
    rng = np.random.default_rng(3)
    grad_o, branch_o = float32_tensors(rng, (B, T, HQ, dv), (B, T, HQ, 3, dv))
    gates = torch.from_numpy(rng.uniform(size=(B, T, HQ, 3))).to(dtype)
    g64 = gates.double().requires_grad_()
    o = (g64[..., None] * branch_o.double()).sum(-2)
    (o * grad_o.double()).sum().backward()
    grad_gates, delta = combine_backward(grad_o.to(DEVICE), gates.to(DEVICE), branch_o.to(DEVICE))
    assert grad_gates.dtype == dtype and delta.dtype == torch.float32
    close(delta, gates.double() * g64.grad)
    if dtype == torch.float32:
        close(grad_gates, g64.grad)
    else:
        np.testing.assert_allclose(grad_gates.double().cpu().numpy(), g64.grad.numpy(), rtol=BF16_ULP)


def test_backward_from_forward_outputs():
    """The window and compressed backwards fed by the Triton forward's lse and branch outputs
    (strided views of [B, T, HQ, 3]) through combine_backward's delta."""
    B, T, HQ, H, dk, dv = 2, 37, 4, 2, 32, 16
    rng = np.random.default_rng(11)
    N = n_cmp(T, CFG)
    names = ["q", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win", "grad_o"]
    shapes = [(B, T, HQ, dk), (B, N, H, dk), (B, N, H, dv), (B, T, H, dk), (B, T, H, dv), (B, T, H, dk),
              (B, T, H, dv), (B, T, HQ, dv)]
    x = dict(zip(names, float32_tensors(rng, *shapes), strict=True))
    gates = torch.from_numpy(rng.uniform(size=(B, T, HQ, 3))).float()
    grad_o = x.pop("grad_o")
    fwd = nsa.nsa_attention(NSAInputs(**{n: t.to(DEVICE) for n, t in x.items()}, gates=gates.to(DEVICE)),
                            CFG)
    _, delta = combine_backward(grad_o.to(DEVICE), gates.to(DEVICE), fwd.branch_o)
    scale = CFG.softmax_scale(dk)
    for c, keys, mask, backward in [(0, "cmp", cmp_mask(T, N, CFG), compressed_attention_backward),
                                    (2, "win", win_mask(T, CFG), window_attention_backward)]:
        q64, k64, v64 = (t.double().requires_grad_() for t in (x["q"], x[f"k_{keys}"], x[f"v_{keys}"]))
        o, _ = naive_attention(q64, k64, v64, mask, scale)
        (o * gates[..., c, None].double() * grad_o.double()).sum().backward()
        dq = torch.zeros((B, T, HQ, dk), device=DEVICE)
        gk, gv = backward(x["q"].to(DEVICE), x[f"k_{keys}"].to(DEVICE), x[f"v_{keys}"].to(DEVICE),
                          grad_o.to(DEVICE), gates[..., c].to(DEVICE), fwd.lse[..., c], delta[..., c], dq,
                          CFG, scale)
        close(dq, q64.grad)
        close(gk, k64.grad)
        close(gv, v64.grad)


def test_backward_is_bitwise_deterministic():
    B, T, HQ, H, dk, dv = 2, 100, 4, 1, 16, 32
    scale = CFG.softmax_scale(dk)
    N = n_cmp(T, CFG)
    for n_keys, mask, backward in [(N, cmp_mask(T, N, CFG), compressed_attention_backward),
                                   (T, win_mask(T, CFG), window_attention_backward)]:
        args, _ = branch_case(np.random.default_rng(0), B, T, HQ, H, dk, dv, n_keys, mask, scale)
        runs = []
        for _ in range(2):
            dq = args[-1].clone()
            runs.append((dq, *backward(*args[:-1], dq, CFG, scale, tiles=SMALL_TILES)))
        for a, b in zip(*runs, strict=True):
            assert torch.equal(a, b)
