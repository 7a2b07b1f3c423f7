"""The forward of backend "cuda": triton's composition (`nsa_triton.ops.nsa.nsa_attention`:
compressed branch, importance scores with top-n, window fused with the gated combine) with the selected
branch on this package's kernel. Nothing else is duplicated."""

from __future__ import annotations

from nsa_spec.config import NSAConfig
from nsa_spec.contract import NSAInputs, NSAOutput
from nsa_triton.ops import nsa as triton_nsa

from nsa_cuda.ops.select import selected_attention

COMPOSED_STAGES = {
    "compress": "triton", "importance_top_n": "triton", "selected": "cuda",
    "window+combine": "triton",
}
"""Which backend computes each forward stage (shown by `python -m nsa_spec.info`)."""


def nsa_attention(inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
    """NSA forward on the kernel contract -> `NSAOutput` with lse, indices and branch_o filled (as
    triton's, so triton's backward takes it)."""
    return triton_nsa.nsa_attention(inputs, config, selected=selected_attention)
