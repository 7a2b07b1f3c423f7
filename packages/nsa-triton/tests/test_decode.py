"""The decode step (`nsa_triton.ops.decode`) against the float64 reference, on caches in layout v2
built here from full-length streams, unused rows poisoned with NaN. On CPU the kernels run under
Triton's interpreter (conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nsa_spec import InvalidInputError, NSAConfig, NSAInputs, UnsupportedError
from nsa_spec import reference as ref
from nsa_spec.blocks import n_cmp
from nsa_spec.counters import tokens_read_exact
from nsa_spec.reference.compress import compress
from nsa_triton.backend import TritonBackend
from nsa_triton.ops.decode import DecodeTiles, decode_attention

CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=3, window=16)
WIDE = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=5, window=40)
ODD = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=12, top_n=4, window=20)
SPLIT = DecodeTiles(programs=64, split_keys=8, cmp_tokens=8, win_keys=16, merge_rows=2)
"""Small tiles: several splits per branch, compressed tiles of 8 tokens in 16 rows, merges of
several steps (the last one partial)."""
FUSED = DecodeTiles(programs=64, split_keys=8, cmp_tokens=8, win_keys=16, merge_rows=2, fuse_select=True)
"""SPLIT with the selection done by every selected-branch program (no select launch)."""
FEW = DecodeTiles(programs=4, split_keys=8, cmp_tokens=8, win_keys=16)
"""Small tiles, few splits: several compressed tiles, window tiles and selected blocks per split."""
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def streams(rng, B, C, HQ, H, dk, dv):
    """Full-length streams of C positions per sequence, float64 holding float32 values."""
    shapes = {"q": (B, C, HQ, dk), "k_raw": (B, C, H, dk), "v_raw": (B, C, H, dv), "k_slc": (B, C, H, dk),
              "v_slc": (B, C, H, dv), "k_win": (B, C, H, dk), "v_win": (B, C, H, dv)}
    out = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    out["gates"] = rng.uniform(size=(B, C, HQ, 3))
    return {name: x.astype(np.float32).astype(np.float64) for name, x in out.items()}


def v2_cache(s, lengths, config, extra_cmp=1):
    """The layout-v2 tensors of sequences holding lengths[b] tokens of the streams `s`, every row a
    sequence does not hold set to NaN; k_cmp/v_cmp rounded to float32 (what the kernels see)."""
    B, C, H = s["k_slc"].shape[:3]
    w, cap = config.window, n_cmp(C, config) + extra_cmp
    cache = {}
    for kind in ("k", "v"):
        d = s[f"{kind}_slc"].shape[3]
        cmp_rows = np.full((B, cap, H, d), np.nan)
        slc_rows = np.full((B, C, H, d), np.nan)
        win_rows = np.full((B, w, H, d), np.nan)
        for b, S in enumerate(lengths):
            N = n_cmp(S, config)
            cmp_rows[b, :N] = compress(s[f"{kind}_raw"][b : b + 1, :S], config)[0]
            slc_rows[b, :S] = s[f"{kind}_slc"][b, :S]
            for p in range(max(0, S - w), S):
                win_rows[b, p % w] = s[f"{kind}_win"][b, p]
        cache[f"{kind}_cmp"] = cmp_rows.astype(np.float32).astype(np.float64)
        cache[f"{kind}_slc"], cache[f"{kind}_win"] = slc_rows, win_rows
    return cache


def expected(s, cache, lengths, config):
    """The reference forward of each sequence at its last position -> o, lse, indices per b."""
    out = []
    for b, S in enumerate(lengths):
        N = n_cmp(S, config)
        inputs = NSAInputs(
            s["q"][b : b + 1, :S], cache["k_cmp"][b : b + 1, :N], cache["v_cmp"][b : b + 1, :N],
            s["k_slc"][b : b + 1, :S], s["v_slc"][b : b + 1, :S], s["k_win"][b : b + 1, :S],
            s["v_win"][b : b + 1, :S], s["gates"][b : b + 1, :S],
        )
        want = ref.nsa_attention(inputs, config)
        out.append((want.o[0, -1], want.lse[0, -1], want.indices[0, -1]))
    return out


def run(s, cache, lengths, config, tiles=None, dtype=torch.float32):
    def t(x):
        return torch.from_numpy(np.ascontiguousarray(x)).to(DEVICE, dtype)

    last = np.asarray(lengths) - 1
    rows = np.arange(len(lengths))
    q, gates = s["q"][rows, last], s["gates"][rows, last]
    return decode_attention(
        t(q), t(gates), *(t(cache[n]) for n in ("k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win")),
        torch.tensor(lengths, dtype=torch.int64, device=DEVICE), config, config.softmax_scale(q.shape[-1]),
        tiles,
    )


def close(got, want):
    np.testing.assert_allclose(got.double().cpu().numpy(), want, rtol=2e-5, atol=2e-5)


def check(got, want, lengths, config):
    o, lse, idx, reads = got
    assert not torch.isnan(o).any()
    for b, S in enumerate(lengths):
        o_ref, lse_ref, idx_ref = want[b]
        np.testing.assert_array_equal(idx[b].cpu().numpy(), idx_ref)
        close(o[b], o_ref)
        finite = np.isfinite(lse_ref)
        np.testing.assert_array_equal(np.isfinite(lse[b].cpu().numpy()), finite)
        close(lse[b][torch.from_numpy(finite)], lse_ref[finite])
        assert reads[b].tolist() == [tokens_read_exact(S, config)] * reads.shape[1]
    assert reads.dtype == torch.int64 and idx.dtype == torch.int32


@pytest.mark.parametrize(
    ("HQ", "H", "dk", "dv", "lengths", "config", "tiles"),
    [(2, 2, 16, 8, [1, 37, 200], CFG, None), (2, 2, 16, 8, [1, 37, 200], CFG, SPLIT),
     (4, 2, 8, 16, [8, 64, 129], CFG, SPLIT), (4, 1, 16, 8, [5, 150, 191], CFG, None),
     (4, 1, 16, 8, [7, 97, 203], WIDE, SPLIT), (8, 2, 8, 16, [16, 40, 180], WIDE, None),
     (4, 1, 8, 16, [2, 100, 207], WIDE, FEW), (4, 2, 16, 8, [11, 60, 199], ODD, None),
     (4, 2, 16, 8, [11, 60, 199], ODD, FEW), (32, 1, 8, 16, [3, 80, 190], WIDE, SPLIT),
     (4, 2, 8, 16, [8, 64, 129], CFG, FUSED), (4, 1, 16, 8, [7, 97, 203], WIDE, FUSED)],
    ids=["G1-default", "G1-split", "G2-split", "G4-default", "G4-wide-split", "G4-wide-default",
         "G4-wide-few", "G2-odd-default", "G2-odd-few", "G32-wide-split", "G2-fused", "G4-wide-fused"],
)
def test_decode_matches_reference(HQ, H, dk, dv, lengths, config, tiles):
    """Three sequences of their own lengths (below l, at block edges, long): o, lse, indices at the
    last position equal the reference forward, reads the exact count, no NaN from unused rows."""
    s = streams(np.random.default_rng(sum(lengths) + HQ), len(lengths), 210, HQ, H, dk, dv)
    cache = v2_cache(s, lengths, config)
    check(run(s, cache, lengths, config, tiles), expected(s, cache, lengths, config), lengths, config)


@pytest.mark.parametrize("tiles", [None, SPLIT, FUSED], ids=["default", "split", "fused"])
def test_ties_go_to_the_lower_block(tiles):
    """q = 0: every compressed token gets the same weight, so every full block ties exactly; the
    free slots go to the lowest-numbered blocks (Eq. 11's rule), as in the reference."""
    lengths = [200, 131, 70]
    s = streams(np.random.default_rng(3), 3, 200, 4, 2, 8, 8)
    s["q"][:] = 0.0
    cache = v2_cache(s, lengths, WIDE)
    got = run(s, cache, lengths, WIDE, tiles)
    check(got, expected(s, cache, lengths, WIDE), lengths, WIDE)
    for b, S in enumerate(lengths):
        c = (S - 1) // WIDE.slc_len
        assert got[2][b].tolist() == [[0, 1, 2, c - 1, c]] * 2


def test_backend_decode_reads_the_v2_cache():
    """`TritonBackend.decode` on the v2 fields (k_cmp .. v_win, lengths) with [B, 1, ...] q/gates."""
    lengths = [3, 90, 150]
    s = streams(np.random.default_rng(4), 3, 160, 4, 2, 8, 16)
    cache = v2_cache(s, lengths, CFG)
    fields = {n: torch.from_numpy(x).to(DEVICE, torch.float32) for n, x in cache.items()}
    v2 = SimpleNamespace(**fields, lengths=torch.tensor(lengths, device=DEVICE))
    last, rows = np.asarray(lengths) - 1, np.arange(3)
    q = torch.from_numpy(s["q"][rows, last][:, None]).to(DEVICE, torch.float32)
    gates = torch.from_numpy(s["gates"][rows, last][:, None]).to(DEVICE, torch.float32)
    result = TritonBackend().decode(v2, q, gates, CFG)
    want = expected(s, cache, lengths, CFG)
    assert result.out.o.shape == (3, 1, 4, 16) and result.out.indices.shape == (3, 1, 2, CFG.top_n)
    for b, S in enumerate(lengths):
        np.testing.assert_array_equal(result.out.indices[b, 0].cpu().numpy(), want[b][2])
        close(result.out.o[b, 0], want[b][0])
        assert result.reads[b].tolist() == [tokens_read_exact(S, CFG)] * 2
    assert "decode" in TritonBackend().capabilities.ops


def test_invalid_cache_shapes_raise():
    s = streams(np.random.default_rng(5), 1, 40, 2, 1, 8, 8)
    cache = v2_cache(s, [40], CFG)
    cache["k_win"] = cache["k_win"][:, :-1]
    with pytest.raises(InvalidInputError, match=r"k_win must have shape \[1, 16, 1, 8\]"):
        run(s, cache, [40], CFG)
    cache = v2_cache(s, [30], CFG, extra_cmp=-1)
    with pytest.raises(InvalidInputError, match=r"C_cmp >= N_cmp\(C\) = 9"):
        run(s, cache, [30], CFG)
    wide = streams(np.random.default_rng(5), 1, 40, 64, 1, 8, 8)
    with pytest.raises(UnsupportedError, match=r"G=HQ/H=64 > 32"):
        run(wide, v2_cache(wide, [40], CFG), [40], CFG)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA graphs need a CUDA device (on the CPU the kernels run under Triton's interpreter)",
)
def test_cuda_graph_replays_new_lengths():
    """Captured once, replayed with other lengths and queries written into the same tensors: the
    same result as an eager step on them (the grid does not depend on the lengths' values)."""
    C, HQ, H, dk, dv = 400, 8, 2, 64, 32
    s = streams(np.random.default_rng(6), 3, C, HQ, H, dk, dv)
    first, second = [5, 200, 400], [399, 17, 260]
    caches = v2_cache(s, [C] * 3, CFG)
    tensors = {n: torch.from_numpy(x).cuda().float() for n, x in caches.items()}
    names = ("k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win")

    def inputs(lengths):
        last, rows = np.asarray(lengths) - 1, np.arange(3)
        return (torch.from_numpy(s["q"][rows, last]).cuda().float(),
                torch.from_numpy(s["gates"][rows, last]).cuda().float(), torch.tensor(lengths).cuda())

    q, gates, lengths = inputs(first)
    window = {}
    for b, S in enumerate(second):  # the second lengths' window rings, written before the replay
        win = v2_cache({k: v[b : b + 1] for k, v in s.items()}, [S], CFG)
        window[b] = {n: torch.from_numpy(win[n][0]).cuda().float() for n in ("k_win", "v_win")}

    def step():
        return decode_attention(q, gates, *(tensors[n] for n in names), lengths, CFG, CFG.softmax_scale(dk))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for b in range(3):
        for n in ("k_win", "v_win"):
            tensors[n][b].copy_(window[b][n])
    q2, gates2, lengths2 = inputs(second)
    q.copy_(q2)
    gates.copy_(gates2)
    lengths.copy_(lengths2)
    graph.replay()
    eager = step()
    for got, want in zip(captured, eager, strict=True):
        assert torch.equal(got, want)
    cache2 = {**caches, **{n: np.stack([window[b][n].cpu().double().numpy() for b in range(3)])
                           for n in ("k_win", "v_win")}}
    check(captured, expected(s, cache2, second, CFG), second, CFG)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_step_tracks_the_float32_step(dtype):
    """bf16/fp16 caches: o in that dtype, within its rounding of the float32 step on the same values;
    reads exact (indices may differ at near-ties, so they are not compared)."""
    lengths = [9, 120, 201]
    s = streams(np.random.default_rng(7), 3, 210, 4, 2, 16, 8)
    cache = v2_cache(s, lengths, WIDE)
    o, lse, _, reads = run(s, cache, lengths, WIDE, SPLIT, dtype)
    o32, lse32, _, reads32 = run(s, cache, lengths, WIDE, SPLIT, torch.float32)
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert torch.equal(reads, reads32)
    err = ((o.float() - o32).norm() / o32.norm()).item()
    assert err < 2e-2, err  # inputs and o round to 2^-8 (bf16); measured 5.8e-3 bf16, 4.7e-4 fp16
    assert torch.allclose(lse, lse32, atol=1e-2)  # measured 2.2e-3 (bf16)
