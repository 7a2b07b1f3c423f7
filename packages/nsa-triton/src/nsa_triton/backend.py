"""Backend "triton": the kernels of `nsa_triton.ops` under the `nsa.backends` group.

Forward, backward and a batched decode step on the cache layout v2 (deterministic: no atomics).
Runs on CUDA; on the CPU only through Triton's interpreter, claimed when TRITON_INTERPRET=1 is set
at construction time.
"""

from __future__ import annotations

from typing import Any

import torch
from nsa_spec.backends.capabilities import Capabilities, Preference, Problem
from nsa_spec.config import NSAConfig
from nsa_spec.contract import DecodeCache, DecodeResult, NSAGrads, NSAInputs, NSAOutput
from nsa_spec.errors import InvalidInputError
from nsa_torch.backend import TorchBackend
from nsa_torch.tensors import capability_reasons

from nsa_triton.ops.decode import MAX_GROUP
from nsa_triton.ops.nsa import BLOCKWISE_DQ_MAX_GROUP, BLOCKWISE_MAX_GROUP
from nsa_triton.ops.online import interpreted
from nsa_triton.ops.select import TOP_N_MAX_BLOCKS
from nsa_triton.ops.selected_blockwise import MAX_BLOCK, MAX_ROW_BYTES

DTYPES = ("float32", "bfloat16", "float16")
HEAD_DIMS = frozenset(range(1, 257))
PREFERENCES = (
    Preference(
        20, devices=frozenset({"cuda"}),
        reason="H200: faster than the eager torch backend at every length measured, e.g. "
        "NSAAttention forward at T=16k, 16 heads: 3.86 vs 56.4 ms; a decode step at S=64k, batch 16, "
        "CUDA-graph captured: 0.162 ms (cuDNN dense 0.483 ms in the same run, the eager torch backend "
        "2.867 ms in an earlier one)",
    ),
)


class TritonBackend:
    """Triton kernels: the selected branch per (token, kv head) over its n blocks (G > 8) or block
    by block over the rows that selected each block (G <= 8), a causal band for the window, a tiled
    pass for the compressed branch and one that ranks its block scores as it computes them; their
    backward from the forward's saved lse, indices and branch outputs; a batched decode step."""

    name = "triton"
    priority = 5

    def __init__(self) -> None:
        devices = {"cuda", "cpu"} if interpreted() else {"cuda"}
        self.capabilities = Capabilities(
            array_api="torch",
            devices=frozenset(devices),
            dtypes=frozenset(DTYPES),
            ops=frozenset({"forward", "backward", "decode"}),
            head_dims=HEAD_DIMS,
            deterministic=True,
            min_compute_capability=(8, 0),
            preferences=PREFERENCES,
            saves=frozenset({"lse", "indices", "branch_o"}),
            backward_needs=frozenset({"lse", "indices", "branch_o"}),
            notes={
                "all": "forward, backward and decode; softmax and accumulation in float32, float32 "
                "inputs multiply in IEEE float32; the forward saves the three branch outputs "
                "(float32 [B, T, HQ, 3, dv]) for the backward",
                "decode": "cache layout v2 (per-sequence lengths, window ring), split over programs "
                "flash-decoding style, no host synchronisation (CUDA-graph capturable); tested against "
                "the float64 reference (tests/test_decode.py: float32, G 1/2/4/32, dk != dv, exact ties, "
                "NaN-poisoned unused rows, reads) under the interpreter and compiled on an H200, and by "
                f"the conformance decode cases; G <= {MAX_GROUP}",
                "selected": "block by block (each key block read once for the rows that chose it) for "
                f"G <= {BLOCKWISE_MAX_GROUP} in the forward and G <= {BLOCKWISE_DQ_MAX_GROUP} in dq, "
                "token by token above: the faster one on an H200 at T = 32k (compare_selected.py, "
                f"prefill-groups); block by block only where its tiles fit: l' <= {MAX_BLOCK} and "
                f"(padded dk + dv) * itemsize <= {MAX_ROW_BYTES} bytes, token by token otherwise",
                "top_n": "for G >= 2, importance scores then top-n in chunks of query tokens (at "
                "most 256 MiB of float32 block scores at a time); for G = 1 or rows of more than "
                f"{TOP_N_MAX_BLOCKS} blocks, in one pass (a running top-n per token, no score matrix): "
                "the faster form for each on an H200; the decode step holds a row of at most "
                f"{TOP_N_MAX_BLOCKS} block scores",
                "cpu": "only under Triton's interpreter (TRITON_INTERPRET=1 at construction)",
                "sm90": "measured on an H200 (bench/results/nvidia-h200); sm_80/sm_89 compile through "
                "Triton but have not been run here",
            },
        )

    def unavailable_reason(self) -> str | None:
        """None when Triton imports (the kernels need it), else why not."""
        try:
            import triton  # noqa: F401
        except ImportError as err:
            return f"triton cannot be imported: {err}"
        return None

    def not_supported_reasons(self, problem: Problem) -> list[str]:
        """The capability rules `problem` breaks, a missing CUDA device, and (decode) more selection
        blocks than its top-n program holds or a group larger than one tile."""
        reasons = capability_reasons(self.capabilities, problem)
        blocks = -(-problem.tokens // problem.config.slc_len)
        if problem.op == "decode" and blocks > TOP_N_MAX_BLOCKS:
            reasons.append(
                f"T={problem.tokens} makes {blocks} selection blocks of l'={problem.config.slc_len}; "
                f"the decode step's top-n program holds at most {TOP_N_MAX_BLOCKS}"
            )
        if problem.op == "decode" and problem.group_size > MAX_GROUP:
            reasons.append(
                f"group size G=HQ/H={problem.group_size}: the decode step holds a group in one tile, "
                f"G <= {MAX_GROUP} supported"
            )
        return reasons

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
        """o, lse and selected indices."""
        from nsa_triton.ops.nsa import nsa_attention

        with torch.no_grad():
            return nsa_attention(inputs, config)

    def backward(self, inputs: NSAInputs, config: NSAConfig, out: NSAOutput, grad_o: Any) -> NSAGrads:
        """Gradients of sum(o * grad_o) from the forward's lse, indices and branch_o."""
        from nsa_triton.ops.nsa import nsa_attention_backward

        with torch.no_grad():
            return nsa_attention_backward(inputs, config, out, grad_o)

    def decode(self, cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
        """One step from each sequence's newest token (position lengths[b] - 1) over the v2 cache:
        q [B, 1, HQ, dk], gates [B, 1, HQ, 3] (activated) -> o [B, 1, HQ, dv], lse, indices
        [B, 1, H, n] and reads [B, H] (rows loaded)."""
        from nsa_triton.ops.decode import decode_attention

        for name, x, last in (("q", q, q.shape[-1]), ("gates", gates, 3)):
            if x.dim() != 4 or x.shape[1] != 1 or x.shape[3] != last:
                raise InvalidInputError(
                    f"{name} must hold one token per sequence, [B, 1, HQ, {'dk' if name == 'q' else 3}]: "
                    f"{name}.shape={tuple(x.shape)}"
                )
        with torch.no_grad():
            o, lse, indices, reads = decode_attention(
                q[:, 0], gates[:, 0], cache.k_cmp, cache.v_cmp, cache.k_slc, cache.v_slc, cache.k_win,
                cache.v_win, cache.lengths, config, config.softmax_scale(q.shape[-1]),
            )
        out = NSAOutput(o=o[:, None], lse=lse[:, None], indices=indices[:, None].long())
        return DecodeResult(out=out, reads=reads)

    asarray = TorchBackend.asarray
    to_numpy = TorchBackend.to_numpy
