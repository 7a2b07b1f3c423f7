"""The composition, as `nsa_spec.reference.nsa`: the three branches and the gated combine.

`nsa_attention` is the kernel contract (compressed tokens given); `nsa_forward` starts from the
raw cmp stream and applies phi first. Queries are processed in chunks sized so the largest
temporaries stay near `chunk_bytes`; under autograd each chunk is checkpointed (recomputed in
backward), so neither forward nor backward memory grows as T^2. Selection is computed before
the differentiable pass so the recomputation uses the very same blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from nsa_spec.blocks import n_cmp, n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import NSAInputs, NSAOutput
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from nsa_torch.ops.attention import attention_probs
from nsa_torch.ops.combine import combine
from nsa_torch.ops.compress import cmp_visible, compress, compressed_attention
from nsa_torch.ops.select import (
    gather_blocks,
    importance_scores,
    overlap_rows,
    selected_attention,
    selected_keys,
    selection_blocks,
    top_n,
)
from nsa_torch.ops.window import window_attention
from nsa_torch.tensors import host_cu_seqlens, packed_sequences, prepare

CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 4 * 2**30}
"""Default budget per device type for one chunk's largest temporaries (gathered keys/values and
scores). On a GPU it is large, to keep kernels busy. On a CPU it keeps each temporary under
glibc's 32 MiB mmap ceiling, so freed chunks are reused instead of being mapped and page-faulted
anew: measured at T=8192, 64 MiB takes 12x fewer page faults and half the time of 512 MiB."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float runs its softmax and accumulations in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_size(B: int, HQ: int, H: int, dk: int, dv: int, n_keys_cmp: int, config: NSAConfig,
               itemsize: int, chunk_bytes: int) -> int:
    """Queries per chunk so that gathered selected keys/values plus three score-sized
    temporaries of every branch fit `chunk_bytes`."""
    gathered = H * config.top_n * config.slc_len * (dk + dv)
    scores = 3 * HQ * (n_keys_cmp + config.top_n * config.slc_len + 2 * config.window)
    return max(1, chunk_bytes // (B * itemsize * (gathered + scores)))


def _select(q: Tensor, t0: int, k_cmp: Tensor, rows: tuple[Tensor, Tensor], config: NSAConfig,
            scale: float) -> Tensor:
    """Selected blocks of queries t0 .. t0 + C - 1 (no gradient): [B, C, H, n]."""
    C = q.shape[1]
    n_vis = min(n_cmp(t0 + C, config), k_cmp.shape[2])
    positions = torch.arange(t0, t0 + C, device=q.device)
    allowed = cmp_visible(positions, n_vis, config)[None, :, None, None, :]
    p, _ = attention_probs(q, k_cmp[:, :, :n_vis], allowed, scale, may_be_empty=t0 + 1 < config.cmp_len)
    return top_n(importance_scores(p, rows), positions, config)


def _chunk(q: Tensor, gates: Tensor, t0: int, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor,
           v_slc: Tensor, k_win: Tensor, v_win: Tensor, indices: Tensor | None,
           rows: tuple[Tensor, Tensor], config: NSAConfig, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """All three branches and the combine for one chunk: o [B, C, H, G, dv], lse [..., 3], indices."""
    o_cmp, lse_cmp, p = compressed_attention(q, k_cmp, v_cmp, t0, config, scale)
    positions = torch.arange(t0, t0 + q.shape[1], device=q.device)
    if indices is None:
        indices = top_n(importance_scores(p.detach(), rows), positions, config)
    block_ids, allowed = selected_keys(indices, positions, config)
    n_blocks = k_slc.shape[0] // (q.shape[0] * q.shape[2])  # k_slc is [B * H * n_blocks, l', dk]
    k_sel, v_sel = (gather_blocks(x, block_ids, n_blocks) for x in (k_slc, v_slc))
    o_slc, lse_slc = selected_attention(q, k_sel, v_sel, allowed, scale)
    o_win, lse_win = window_attention(q, k_win, v_win, t0, config, scale)
    o = combine(o_cmp, o_slc, o_win, gates)
    return o, torch.stack([lse_cmp, lse_slc, lse_win], dim=-1), indices


def _sequence(a: dict[str, Tensor], config: NSAConfig, indices: Tensor | None,
              chunk_bytes: int) -> tuple[Tensor, Tensor, Tensor]:
    """One batch of equal-length sequences: contract-layout tensors -> o, lse [B, T, HQ, 3], indices."""
    q = a["q"]
    B, T, HQ, dk = q.shape
    H, dv = a["k_slc"].shape[2], a["v_slc"].shape[3]
    G = HQ // H
    work = compute_dtype(q.dtype)
    scale = config.softmax_scale(dk)
    qg = q.to(work).reshape(B, T, H, G, dk)
    gates = a["gates"].to(work).reshape(B, T, H, G, 3)
    k_cmp, v_cmp, k_win, v_win = (
        a[name].to(work).permute(0, 2, 1, 3).contiguous() for name in ("k_cmp", "v_cmp", "k_win", "v_win")
    )
    k_slc, v_slc = (selection_blocks(a[name].to(work), config) for name in ("k_slc", "v_slc"))
    rows = overlap_rows(k_cmp.shape[2], n_slc_blocks(T, config), config, qg)
    step = chunk_size(B, HQ, H, dk, dv, k_cmp.shape[2], config, qg.element_size(), chunk_bytes)
    differentiable = torch.is_grad_enabled() and any(x.requires_grad for x in a.values())
    outs, lses, idxs = [], [], []
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        q_c, g_c = qg[:, t0:t1], gates[:, t0:t1]
        idx = None if indices is None else indices[:, t0:t1].to(device=q.device, dtype=torch.long)
        if differentiable:
            if idx is None:
                with torch.no_grad():
                    idx = _select(q_c, t0, k_cmp, rows, config, scale)
            o, lse, idx = checkpoint(
                _chunk, q_c, g_c, t0, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, idx, rows,
                config, scale, use_reentrant=False,
            )
        else:
            o, lse, idx = _chunk(
                q_c, g_c, t0, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, idx, rows, config, scale
            )
        outs.append(o.reshape(B, t1 - t0, HQ, dv))
        lses.append(lse.reshape(B, t1 - t0, HQ, 3))
        idxs.append(idx)
    return torch.cat(outs, 1).to(q.dtype), torch.cat(lses, 1), torch.cat(idxs, 1)


def nsa_attention(inputs: NSAInputs, config: NSAConfig, indices: Tensor | None = None,
                  chunk_bytes: int | None = None) -> NSAOutput:
    """NSA attention on the kernel contract -> `NSAOutput` (o in q's dtype; lse in float32, or
    float64 for float64 inputs; indices long). Differentiable with respect to every input.

    `indices` [B, T, H, n], when given, replaces Eq. 11's selection. `chunk_bytes` defaults to
    `CHUNK_BYTES` of q's device type.
    """
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES.get(inputs.q.device.type, CHUNK_BYTES["cpu"])
    inputs = prepare(inputs, config)
    cu = inputs.cu_seqlens
    arrays = inputs.arrays()
    if indices is not None:
        indices = torch.as_tensor(indices, device=inputs.q.device).long()
    if cu is None:
        o, lse, idx = _sequence(arrays, config, indices, chunk_bytes)
        return NSAOutput(o=o, lse=lse, indices=idx)
    outs = [
        _sequence(piece, config, None if indices is None else indices[:, lo:hi], chunk_bytes)
        for lo, hi, piece in packed_sequences(arrays, cu, config)
    ]
    o, lse, idx = (torch.cat(parts, 1) for parts in zip(*outs, strict=True))
    return NSAOutput(o=o, lse=lse, indices=idx)


def compress_inputs(
    q: Tensor, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
    v_win: Tensor, gates: Tensor, config: NSAConfig, phi: Any = "mean", phi_params: Any = None,
    cu_seqlens: Any = None,
) -> NSAInputs:
    """Apply phi to the raw cmp stream k_raw/v_raw [B, T, H, .] -> kernel-contract `NSAInputs`.

    `phi_params` is {"k": params, "v": params} for a parametrised phi, None for `mean`. Packed
    sequences are compressed one by one: no block spans two sequences.
    """
    pk = None if phi_params is None else phi_params["k"]
    pv = None if phi_params is None else phi_params["v"]
    cu = host_cu_seqlens(cu_seqlens)
    if cu is None:
        k_cmp, v_cmp = compress(k_raw, config, phi, pk), compress(v_raw, config, phi, pv)
    else:
        pieces = [(int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)]
        k_cmp = torch.cat([compress(k_raw[:, lo:hi], config, phi, pk) for lo, hi in pieces], 1)
        v_cmp = torch.cat([compress(v_raw[:, lo:hi], config, phi, pv) for lo, hi in pieces], 1)
    return NSAInputs(q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, cu_seqlens)


def nsa_forward(
    q: Tensor, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
    v_win: Tensor, gates: Tensor, config: NSAConfig, phi: Any = "mean", phi_params: Any = None,
    cu_seqlens: Any = None, indices: Tensor | None = None,
) -> NSAOutput:
    """NSA from the raw cmp stream: `compress_inputs` then `nsa_attention`."""
    inputs = compress_inputs(
        q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates, config, phi, phi_params, cu_seqlens
    )
    return nsa_attention(inputs, config, indices)
