"""The selected branch's backward against torch autograd of a float64 naive computation, the
index inversion on its own, bitwise determinism, and top-n at small group sizes. On CPU the
kernels run under Triton's interpreter (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nsa_spec import NSAConfig, UnsupportedError
from nsa_torch.ops.select import top_n as torch_top_n
from nsa_triton.ops import select
from nsa_triton.ops.tiles import padded

CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=4, window=24)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_selection(rng, B, T, H, config=CFG) -> torch.Tensor:
    """Valid indices [B, T, H, n]: the forced blocks 0, c-1, c, some others of 0..c, ascending, -1 padded."""
    n = config.top_n
    idx = np.full((B, T, H, n), -1)
    for b in range(B):
        for t in range(T):
            c = t // config.slc_len
            forced = sorted({0, max(c - 1, 0), c})
            for h in range(H):
                others = [j for j in range(c + 1) if j not in forced]
                count = rng.integers(0, min(len(others), n - len(forced)) + 1)
                picked = sorted(forced + list(rng.choice(others, size=count, replace=False)))
                idx[b, t, h, : len(picked)] = picked
    return torch.from_numpy(idx)


def naive_selected(q, k, v, indices, config, scale):
    """o [B, T, HQ, dv] and lse [B, T, HQ] of the selected branch, dense with a mask."""
    T, HQ = q.shape[1:3]
    G = HQ // k.shape[2]
    key_block = torch.arange(T) // config.slc_len
    hit = (indices[..., None] == key_block).any(-2)  # [B, T, H, S]
    causal = torch.arange(T)[None, :] <= torch.arange(T)[:, None]  # [T, S]
    allowed = (hit & causal[None, :, None, :]).repeat_interleave(G, dim=2)  # [B, T, HQ, S]
    s = torch.einsum("bthd,bshd->bths", q, k.repeat_interleave(G, dim=2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    o = torch.einsum("bths,bshd->bthd", torch.softmax(s, -1), v.repeat_interleave(G, dim=2))
    return o, torch.logsumexp(s, -1)


def problem(seed, B, T, HQ, H, dk, dv):
    """float64 tensors holding float32 values: q, k, v, gates [B, T, HQ, 3], grad_o; indices."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=g).float().double()

    q, k, v = normal(B, T, HQ, dk), normal(B, T, H, dk), normal(B, T, H, dv)
    gates = torch.rand(B, T, HQ, 3, generator=g).float().double()
    return q, k, v, gates, normal(B, T, HQ, dv), random_selection(np.random.default_rng(seed), B, T, H)


def run_backward(q, k, v, gates, grad_o, indices, lse, delta, dq0, chunk_tokens):
    """The launcher on float32 copies, with lse, delta and gate passed as strided views."""
    def f32(x):
        return x.to(DEVICE, torch.float32)

    lse_all = torch.zeros((*q.shape[:3], 3), dtype=torch.float32, device=DEVICE)
    lse_all[..., 1] = f32(lse)
    delta_all = torch.zeros_like(lse_all)
    delta_all[..., 1] = f32(delta)
    dq = f32(dq0).clone()
    dk, dv = select.selected_attention_backward(
        f32(q), f32(k), f32(v), indices.to(DEVICE), f32(grad_o), f32(gates)[..., 1], lse_all[..., 1],
        delta_all[..., 1], dq, CFG, CFG.softmax_scale(q.shape[-1]), chunk_tokens=chunk_tokens,
    )
    return dq, dk, dv


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    np.testing.assert_allclose(got.double().cpu().numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("T", "HQ", "H", "dk", "dv", "chunk_tokens", "index_dtype"),
    [(37, 2, 2, 32, 16, select.BWD_CHUNK_TOKENS, torch.int64),
     (100, 4, 2, 32, 16, select.BWD_CHUNK_TOKENS, torch.int32),
     (100, 4, 1, 32, 16, 8, torch.int64), (37, 2, 2, 16, 32, 4, torch.int32)],
    ids=["T37-G1", "T100-G2", "T100-G4-chunk8", "T37-G1-dk16-dv32-chunk4"],
)
def test_backward_matches_autograd(T, HQ, H, dk, dv, chunk_tokens, index_dtype):
    """dq (added to what dq held), dk, dv equal float64 autograd of the naive selected branch."""
    B = 2
    q, k, v, gates, grad_o, indices = problem(T + HQ, B, T, HQ, H, dk, dv)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    o, lse = naive_selected(q, k, v, indices, CFG, CFG.softmax_scale(dk))
    do_c = gates[..., 1:2] * grad_o
    (o * do_c).sum().backward()
    delta = (do_c * o.detach()).sum(-1)
    dq0 = torch.randn(B, T, HQ, dk, generator=torch.Generator().manual_seed(0)).float().double()
    dq, dk_slc, dv_slc = run_backward(q.detach(), k.detach(), v.detach(), gates, grad_o,
                                      indices.to(index_dtype), lse.detach(), delta, dq0, chunk_tokens)
    close(dq, dq0 + q.grad)
    close(dk_slc, k.grad)
    close(dv_slc, v.grad)


def test_backward_is_bitwise_deterministic():
    """Two runs (long lists split into chunks and reduced) give identical bits."""
    B, T, HQ, H, dk, dv = 2, 50, 2, 1, 32, 16
    q, k, v, gates, grad_o, indices = problem(3, B, T, HQ, H, dk, dv)
    o, lse = naive_selected(q, k, v, indices, CFG, CFG.softmax_scale(dk))
    delta = (gates[..., 1:2] * grad_o * o).sum(-1)
    dq0 = torch.zeros(B, T, HQ, dk, dtype=torch.float64)
    first = run_backward(q, k, v, gates, grad_o, indices, lse, delta, dq0, 8)
    second = run_backward(q, k, v, gates, grad_o, indices, lse, delta, dq0, 8)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_selecting_tokens_inverts_indices():
    B, T, H, nb = 2, 45, 3, 3
    indices = random_selection(np.random.default_rng(7), B, T, H)
    offsets, tokens = select.selecting_tokens(indices.to(DEVICE), nb)
    assert offsets.shape == (B, H, nb + 1) and tokens.shape == (B, H, T * CFG.top_n)
    for b in range(B):
        for h in range(H):
            for j in range(nb):
                want = [t for t in range(T) if j in indices[b, t, h].tolist()]
                lo, hi = offsets[b, h, j].item(), offsets[b, h, j + 1].item()
                assert tokens[b, h, lo:hi].tolist() == want


@pytest.mark.parametrize("chunk", [1, 3, 16, 1000])
def test_token_chunks_cover_each_list_in_order(chunk):
    T, nb = 45, 3
    indices = random_selection(np.random.default_rng(chunk), 1, T, 2)
    offsets, _ = select.selecting_tokens(indices, nb)
    pieces, extra = select.token_chunks(offsets, chunk, T * CFG.top_n)
    assert pieces.shape[2] == nb + T * CFG.top_n // chunk
    for h in range(2):
        for j in range(nb):
            rows = [pieces[0, h, j].tolist()]
            lo, hi = extra[0, h, j].tolist()
            rows += [pieces[0, h, nb + e].tolist() for e in range(lo, hi)]
            assert all(blk == j and 0 <= end - start <= chunk for blk, start, end in rows)
            covered = [i for _, start, end in rows for i in range(start, end)]
            assert covered == list(range(offsets[0, h, j].item(), offsets[0, h, j + 1].item()))
        more = pieces[0, h, nb + extra[0, h, -1, 1].item():]
        assert torch.all(more[:, 1] == more[:, 2])


def test_top_n_many_kv_heads():
    """G = 1 with many kv heads (one program per (token, kv head)): nsa_torch's stable-sort picks."""
    B, T, H = 1, 40, 8
    config = NSAConfig(cmp_len=4, cmp_stride=4, slc_len=4, top_n=4)
    nb = -(-T // config.slc_len)
    scores = torch.randint(0, 4, (B, T, H, nb), generator=torch.Generator().manual_seed(1)).float()
    want = torch_top_n(scores, torch.arange(T), config)
    got = select.top_n(scores.to(DEVICE), config)
    np.testing.assert_array_equal(got.cpu().numpy(), want.numpy())


def test_top_n_refuses_rows_too_long():
    scores = torch.zeros((1, 1, 1, select.TOP_N_MAX_BLOCKS + 1), device=DEVICE)
    with pytest.raises(UnsupportedError, match="n_blocks=16385"):
        select.top_n(scores, CFG)


def test_backward_bfloat16_as_close_as_naive_bfloat16():
    """bfloat16 inputs: each gradient's error vs float64 is within the conformance suite's rule
    (nsa_conformance.tolerances: 3x the error of the naive computation in bfloat16, here torch
    autograd, plus 2^-7 of max(1, magnitude))."""
    B, T, HQ, H, dk, dv = 1, 37, 4, 2, 32, 16
    q, k, v, gates, grad_o, indices = problem(11, B, T, HQ, H, dk, dv)
    q, k, v, gates, grad_o = (x.bfloat16().double() for x in (q, k, v, gates, grad_o))
    scale = CFG.softmax_scale(dk)

    def grads(dtype):
        leaves = [x.detach().to(dtype).clone().requires_grad_() for x in (q, k, v)]
        o, lse = naive_selected(*leaves, indices, CFG, scale)
        (o * (gates[..., 1:2] * grad_o).to(dtype)).sum().backward()
        return [x.grad.double() for x in leaves], o.detach().double(), lse.detach().double()

    want, o, lse = grads(torch.float64)
    naive, _, _ = grads(torch.bfloat16)
    delta = (gates[..., 1:2] * grad_o * o).sum(-1)
    lse_all = torch.zeros((B, T, HQ, 3), dtype=torch.float32, device=DEVICE)
    lse_all[..., 1] = lse.to(DEVICE, torch.float32)
    delta_all = torch.zeros_like(lse_all)
    delta_all[..., 1] = delta.to(DEVICE, torch.float32)
    dq = torch.zeros((B, T, HQ, dk), dtype=torch.float32, device=DEVICE)

    def bf16(x):
        return x.to(DEVICE, torch.bfloat16)

    dk_slc, dv_slc = select.selected_attention_backward(
        bf16(q), bf16(k), bf16(v), indices.to(DEVICE), bf16(grad_o), bf16(gates)[..., 1], lse_all[..., 1],
        delta_all[..., 1], dq, CFG, scale,
    )
    for got, ref, low in zip((dq, dk_slc, dv_slc), want, naive, strict=True):
        err = (got.double().cpu() - ref).abs().max().item()
        assert err <= 3 * (low - ref).abs().max().item() + 2**-7 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("elt", [2, 4])
def test_backward_tiles_fit_shared_memory(elt):
    """Every group size 1..32, head dims 16..256 and block length 16..256 get tiles within budget."""
    dims = [16, 32, 64, 128, 256]
    for group in (1, 2, 4, 8, 16, 32):
        for width in {padded(a) + padded(b) for a in dims for b in dims}:
            for block in dims:
                keys, stages = select._dq_tiles(group, width, block, elt)
                assert block % keys == 0
                assert (stages * keys + padded(group)) * width * elt <= select.BWD_SMEM_BUDGET
                keys, bt, gp, stages = select._dkdv_tiles(group, width, block, elt)
                assert block % keys == 0 and bt * gp >= 16 and gp >= group
                assert (stages * bt * gp + keys) * width * elt <= select.BWD_SMEM_BUDGET
