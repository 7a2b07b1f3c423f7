"""The composition: compress (module level), then the three branches and the gated combine.

`nsa_attention` is the kernel contract (compressed tokens given); `nsa_forward` starts from the
raw cmp stream and applies phi first. Both take `indices` to run on given selected blocks (the
gradient oracle and the near-tie policy need that); otherwise they select per Eq. 11.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nsa_spec.blocks import cmp_cu_seqlens, n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import NSAInputs, NSAOutput, validate_inputs
from nsa_spec.reference.combine import combine
from nsa_spec.reference.compress import compress, compressed_attention, split_phi_params
from nsa_spec.reference.select import importance_scores, selected_attention, top_n
from nsa_spec.reference.window import window_attention


def _one_sequence(
    q: Any, k_cmp: Any, v_cmp: Any, k_slc: Any, v_slc: Any, k_win: Any, v_win: Any, gates: Any,
    config: NSAConfig, indices: np.ndarray | None, xp: Any,
) -> tuple[Any, Any, np.ndarray]:
    """One sequence without batch dim: q [T, HQ, dk] ... -> o [T, HQ, dv], lse [T, HQ, 3], idx [T, H, n]."""
    T = q.shape[0]
    o_cmp, lse_cmp, p_cmp = compressed_attention(q, k_cmp, v_cmp, config, xp)
    if indices is None:
        scores = importance_scores(np.asarray(p_cmp), n_slc_blocks(T, config), config)
        indices = top_n(scores, np.arange(T), config)
    o_slc, lse_slc = selected_attention(q, k_slc, v_slc, indices, config, xp)
    o_win, lse_win = window_attention(q, k_win, v_win, config, xp)
    o = combine(o_cmp, o_slc, o_win, gates)
    return o, xp.stack([lse_cmp, lse_slc, lse_win], axis=-1), np.asarray(indices)


def nsa_attention(
    inputs: NSAInputs, config: NSAConfig, indices: np.ndarray | None = None, xp: Any = np
) -> NSAOutput:
    """NSA attention on the kernel contract (`contract.NSAInputs`) -> `NSAOutput`.

    `indices` [B, T, H, n], when given, replaces Eq. 11's selection.
    """
    B, T = validate_inputs(inputs, config)[:2]
    a = inputs
    if a.cu_seqlens is None:
        spans = [(b, 0, T, 0, a.k_cmp.shape[1]) for b in range(B)]
    else:
        cu = np.asarray(a.cu_seqlens, dtype=np.int64)
        cu_cmp = cmp_cu_seqlens(cu, config)
        spans = [(0, cu[i], cu[i + 1], cu_cmp[i], cu_cmp[i + 1]) for i in range(len(cu) - 1)]
    outs, lses, idxs = [], [], []
    for b, lo, hi, clo, chi in spans:
        o, lse, idx = _one_sequence(
            a.q[b, lo:hi], a.k_cmp[b, clo:chi], a.v_cmp[b, clo:chi], a.k_slc[b, lo:hi],
            a.v_slc[b, lo:hi], a.k_win[b, lo:hi], a.v_win[b, lo:hi], a.gates[b, lo:hi],
            config, None if indices is None else np.asarray(indices)[b, lo:hi], xp,
        )
        outs.append(o)
        lses.append(lse)
        idxs.append(idx)
    if a.cu_seqlens is None:
        return NSAOutput(o=xp.stack(outs), lse=xp.stack(lses), indices=np.stack(idxs))
    return NSAOutput(
        o=xp.concatenate(outs)[None], lse=xp.concatenate(lses)[None], indices=np.concatenate(idxs)[None]
    )


def compress_inputs(
    q: Any, k_raw: Any, v_raw: Any, k_slc: Any, v_slc: Any, k_win: Any, v_win: Any, gates: Any,
    config: NSAConfig, phi: str = "mean", phi_params: Any = None, cu_seqlens: Any = None,
    xp: Any = np,
) -> NSAInputs:
    """Apply phi to the raw cmp stream k_raw/v_raw [B, T, H, .] -> kernel-contract `NSAInputs`.

    `phi_params` is {"k": params, "v": params} for a parametrised phi, None for `mean`.
    Packed sequences (`cu_seqlens`) are compressed one by one: no block spans two sequences.
    """
    raw = NSAInputs(q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates, cu_seqlens)
    validate_inputs(raw, config, raw_cmp=True)
    pk, pv = split_phi_params(phi_params)
    if cu_seqlens is None:
        k_cmp = compress(k_raw, config, phi, pk, xp)
        v_cmp = compress(v_raw, config, phi, pv, xp)
    else:
        cu = np.asarray(cu_seqlens, dtype=np.int64)
        pieces = [(cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
        k_cmp = xp.concatenate([compress(k_raw[:, lo:hi], config, phi, pk, xp) for lo, hi in pieces], axis=1)
        v_cmp = xp.concatenate([compress(v_raw[:, lo:hi], config, phi, pv, xp) for lo, hi in pieces], axis=1)
    return NSAInputs(q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, cu_seqlens)


def nsa_forward(
    q: Any, k_raw: Any, v_raw: Any, k_slc: Any, v_slc: Any, k_win: Any, v_win: Any, gates: Any,
    config: NSAConfig, phi: str = "mean", phi_params: Any = None, cu_seqlens: Any = None,
    indices: np.ndarray | None = None, xp: Any = np,
) -> NSAOutput:
    """NSA from the raw cmp stream: `compress_inputs` then `nsa_attention`."""
    inputs = compress_inputs(
        q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates, config, phi, phi_params, cu_seqlens, xp
    )
    return nsa_attention(inputs, config, indices, xp)
