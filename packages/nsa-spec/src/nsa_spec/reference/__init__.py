"""The float64 reference, one module per stage; docstrings are the normative text."""

from nsa_spec.reference.attention import attend, attention_probs
from nsa_spec.reference.combine import combine, gate_activation
from nsa_spec.reference.compress import PHIS, compress, compressed_attention, init_mlp_params, register_phi
from nsa_spec.reference.decode import (
    append,
    decode_attention,
    decode_step,
    emits,
    empty_cache,
    from_streams,
    join,
    prefill,
    resize,
    select,
)
from nsa_spec.reference.nsa import compress_inputs, nsa_attention, nsa_forward
from nsa_spec.reference.select import (
    importance_scores,
    is_valid_top_n,
    selected_attention,
    selected_mask,
    top_n,
)
from nsa_spec.reference.window import window_attention, window_mask

__all__ = [
    "PHIS", "append", "attend", "attention_probs", "combine", "compress", "compress_inputs",
    "compressed_attention", "decode_attention", "decode_step", "emits", "empty_cache", "from_streams",
    "gate_activation", "importance_scores", "init_mlp_params", "is_valid_top_n", "join",
    "nsa_attention", "nsa_forward", "prefill", "register_phi", "resize", "select",
    "selected_attention", "selected_mask", "top_n", "window_attention", "window_mask",
]
