"""Invalid input raises `InvalidInputError` naming the argument, the value and the rule."""

from __future__ import annotations

import numpy as np
import pytest
from nsa_spec import InvalidInputError, NSAConfig, NSAInputs, validate_inputs
from nsa_spec.counters import dense_tokens_read, selected_tokens, tokens_read_exact, tokens_read_table4
from nsa_spec.reference import (
    append,
    compress,
    decode_attention,
    empty_cache,
    gate_activation,
    init_mlp_params,
    join,
    nsa_forward,
    prefill,
    register_phi,
    resize,
    select,
)
from spec_cases import STREAMS, Case

CFG = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=3, window=5)
CASE = Case(CFG, B=1, T=10, HQ=4, H=2, dk=3, dv=5)  # N_cmp(10) = 4
RAW = CASE.inputs()
RAW_B2 = {n: np.repeat(a, 2, axis=0) for n, a in RAW.items()}
PARAMS = {
    "k": init_mlp_params(np.random.default_rng(0), 4, 3, 2),
    "v": init_mlp_params(np.random.default_rng(1), 4, 5, 2),
}


def contract(raw=RAW, **changes) -> NSAInputs:
    """Valid kernel-contract inputs from the raw streams `raw`, with some fields replaced."""
    k_cmp, v_cmp = compress(raw["k_raw"], CFG), compress(raw["v_raw"], CFG)
    x = NSAInputs(raw["q"], k_cmp, v_cmp, *(raw[n] for n in ("k_slc", "v_slc", "k_win", "v_win", "gates")))
    return x.replace(**changes)


def forward(phi="mean", phi_params=None, **changes):
    x = {**RAW, **changes}
    return nsa_forward(*(x[n] for n in STREAMS), CFG, phi, phi_params)


def zeros(*shape):
    return np.zeros(shape)


def one_token(**changes):
    tok = {n: RAW[n][:, :1] for n in ("k_raw", "v_raw", "k_slc", "v_slc", "k_win", "v_win")}
    return {**tok, **changes}


def cache_of(T=6):
    return prefill(*(RAW[n][:, :T] for n in STREAMS), CFG)[1]


class Broken:
    """A phi that must not be registered twice."""


# (id, call, fragments the message must contain: the argument, the value, the rule)
CASES = [
    (
        "config-d-divides-l",
        lambda: NSAConfig(cmp_len=30, cmp_stride=16),
        ["cmp_len=30", "cmp_stride=16", "divide"],
    ),
    (
        "config-d-divides-l'",
        lambda: NSAConfig(slc_len=72, cmp_stride=16, cmp_len=32),
        ["slc_len=72", "cmp_stride=16", "divide"],
    ),
    (
        "config-l-le-l'",
        lambda: NSAConfig(cmp_len=64, cmp_stride=16, slc_len=32),
        ["cmp_len=64", "slc_len=32", "<="],
    ),
    ("config-top-n-forced", lambda: NSAConfig(top_n=2), ["top_n=2", ">= 3", "forced"]),
    ("config-window-positive", lambda: NSAConfig(window=0), ["window=0", ">= 1"]),
    ("config-int-field", lambda: NSAConfig(cmp_len=32.0), ["cmp_len=32.0", "must be an int"]),
    ("config-bool-field", lambda: NSAConfig(top_n=True), ["top_n=True", "must be an int"]),
    ("config-scale", lambda: NSAConfig(scale=-1.0), ["scale=-1.0", "finite number > 0"]),
    ("config-scale-nan", lambda: NSAConfig(scale=float("nan")), ["scale=nan", "finite"]),
    ("config-gate", lambda: NSAConfig(gate="relu"), ["gate='relu'", "sigmoid", "softmax"]),
    ("q-ndim", lambda: validate_inputs(contract(q=zeros(10, 4, 3)), CFG), ["q", "4 dims", "(10, 4, 3)"]),
    (
        "q-empty",
        lambda: validate_inputs(contract(q=zeros(1, 10, 0, 3)), CFG),
        ["q", "non-empty", "(1, 10, 0, 3)"],
    ),
    (
        "k_slc-dk",
        lambda: validate_inputs(contract(k_slc=zeros(1, 10, 2, 4)), CFG),
        ["k_slc", "(1, 10, 2, 4)", "[1, 10, H, 3]"],
    ),
    (
        "gqa-divides",
        lambda: validate_inputs(contract(k_slc=zeros(1, 10, 3, 3)), CFG),
        ["HQ=4", "H=3", "divide"],
    ),
    (
        "v_win-dv",
        lambda: validate_inputs(contract(v_win=zeros(1, 10, 2, 4)), CFG),
        ["v_win", "(1, 10, 2, 4)", "(1, 10, 2, 5)", "dv"],
    ),
    (
        "k_win-length",
        lambda: validate_inputs(contract(k_win=zeros(1, 9, 2, 3)), CFG),
        ["k_win", "(1, 9, 2, 3)", "(1, 10, 2, 3)", "[B, T, H, dk]"],
    ),
    (
        "gates-3",
        lambda: validate_inputs(contract(gates=zeros(1, 10, 4, 2)), CFG),
        ["gates", "(1, 10, 4, 2)", "[B, T, HQ, 3]"],
    ),
    (
        "k_cmp-n-cmp",
        lambda: validate_inputs(contract(k_cmp=zeros(1, 5, 2, 3)), CFG),
        ["k_cmp", "(1, 5, 2, 3)", "N_cmp(T)", "(1, 4, 2, 3)"],
    ),
    (
        "v_cmp-dv",
        lambda: validate_inputs(contract(v_cmp=zeros(1, 4, 2, 3)), CFG),
        ["v_cmp", "(1, 4, 2, 3)", "(1, 4, 2, 5)", "N_cmp(T)"],
    ),
    ("not-an-array", lambda: validate_inputs(contract(gates=[[0.5]]), CFG), ["gates", "array", "list"]),
    (
        "cu_seqlens-batch",
        lambda: validate_inputs(contract(RAW_B2, cu_seqlens=np.array([0, 10])), CFG),
        ["cu_seqlens", "B == 1", "B=2"],
    ),
    (
        "cu_seqlens-end",
        lambda: validate_inputs(contract(cu_seqlens=np.array([0, 4, 9])), CFG),
        ["cu_seqlens", "[0, 4, 9]", "end at T=10"],
    ),
    (
        "cu_seqlens-increase",
        lambda: validate_inputs(contract(cu_seqlens=np.array([0, 6, 6, 10])), CFG),
        ["cu_seqlens", "[0, 6, 6, 10]", "strictly increase"],
    ),
    (
        "cu_seqlens-int",
        lambda: validate_inputs(contract(cu_seqlens=np.array([0.0, 10.0])), CFG),
        ["cu_seqlens", "[0.0, 10.0]", "int"],
    ),
    ("k_raw-shape", lambda: forward(k_raw=zeros(1, 9, 2, 3)), ["k_raw", "(1, 9, 2, 3)", "raw cmp stream"]),
    ("v_raw-dv", lambda: forward(v_raw=zeros(1, 10, 2, 3)), ["v_raw", "(1, 10, 2, 3)", "(1, 10, 2, 5)"]),
    ("phi-name", lambda: forward(phi="max"), ["phi='max'", "mean", "mlp"]),
    (
        "phi-mean-params",
        lambda: forward(phi_params={"k": 1, "v": 2}),
        ["phi 'mean'", "phi_params", "got int"],
    ),
    (
        "phi_params-keys",
        lambda: forward(phi="mlp", phi_params={"key": PARAMS["k"]}),
        ["phi_params", "['key']", "'k'"],
    ),
    (
        "phi-mlp-missing",
        lambda: forward(phi="mlp", phi_params={"k": {"w1": 1}, "v": PARAMS["v"]}),
        ["phi 'mlp'", "pos, w1, b1, w2, b2", "['w1']"],
    ),
    (
        "phi-mlp-pos-shape",
        lambda: forward(phi="mlp", phi_params={"k": PARAMS["v"], "v": PARAMS["v"]}),
        ["phi 'mlp'", "pos.shape=(4, 5)", "[4, 3]"],
    ),
    ("phi-register-twice", lambda: register_phi("mean", Broken), ["phi='mean'", "already registered"]),
    ("gate-kind", lambda: gate_activation(zeros(2, 3), "tanh"), ["gate='tanh'", "sigmoid"]),
    (
        "decode-empty-cache",
        lambda: decode_attention(empty_cache(1, 2, 3, 5, 8, CFG), RAW["q"][:, :1], RAW["gates"][:, :1], CFG),
        ["cache", "cache.lengths=[0]", "at least one"],
    ),
    ("cache-capacity-zero", lambda: empty_cache(1, 2, 3, 5, 0, CFG), ["capacity=0", ">= 1"]),
    (
        "cache-win-ring",
        lambda: decode_attention(
            cache_of().replace(k_win=zeros(1, 4, 2, 3)), RAW["q"][:, :1], RAW["gates"][:, :1], CFG
        ),
        ["k_win", "(1, 4, 2, 3)", "ring of w = window rows"],
    ),
    (
        "cache-length-past-capacity",
        lambda: decode_attention(
            cache_of().replace(lengths=np.array([7])), RAW["q"][:, :1], RAW["gates"][:, :1], CFG
        ),
        ["cache.lengths=[7]", "capacity=6"],
    ),
    (
        "prefill-capacity",
        lambda: prefill(*(RAW[n] for n in STREAMS), CFG, capacity=4),
        ["capacity=4", "T=10", "hold the prompt"],
    ),
    ("resize-below-length", lambda: resize(cache_of(), 5, CFG), ["capacity=5", "longest", "[6]"]),
    (
        "join-heads",
        lambda: join([cache_of(), empty_cache(1, 1, 3, 5, 8, CFG)], CFG),
        ["same kv heads", "(2, 3, 5)", "(1, 3, 5)"],
    ),
    ("join-none", lambda: join([], CFG), ["caches=[]", "at least one"]),
    ("select-out-of-range", lambda: select(cache_of(), [0, 1], CFG), ["batch_indices=[0, 1]", "0..0"]),
    ("select-empty", lambda: select(cache_of(), [], CFG), ["batch_indices=[]", "non-empty"]),
    (
        "decode-q-dk",
        lambda: decode_attention(cache_of(), zeros(1, 1, 4, 2), RAW["gates"][:, :1], CFG),
        ["q", "(1, 1, 4, 2)", "[1, 1, HQ, 3]"],
    ),
    (
        "decode-q-tokens",
        lambda: decode_attention(cache_of(), RAW["q"][:, :2], RAW["gates"][:, :1], CFG),
        ["q", "(1, 2, 4, 3)", "[B, 1, HQ, dk]"],
    ),
    (
        "decode-q-gqa",
        lambda: decode_attention(cache_of(), zeros(1, 1, 3, 3), zeros(1, 1, 3, 3), CFG),
        ["q", "(1, 1, 3, 3)", "multiple of the cache's H=2"],
    ),
    (
        "decode-gates",
        lambda: decode_attention(cache_of(), RAW["q"][:, :1], zeros(1, 1, 4, 2), CFG),
        ["gates", "(1, 1, 4, 2)", "[1, 1, 4, 3]"],
    ),
    (
        "append-two-tokens",
        lambda: append(cache_of(), **one_token(k_slc=RAW["k_slc"][:, :2]), config=CFG),
        ["k_slc", "(1, 2, 2, 3)", "one token"],
    ),
    (
        "append-v-dv",
        lambda: append(cache_of(), **one_token(v_win=zeros(1, 1, 2, 3)), config=CFG),
        ["v_win", "(1, 1, 2, 3)", "[1, 1, 2, 5]"],
    ),
    ("counter-length-zero", lambda: tokens_read_exact(0, CFG), ["length=0", ">= 1"]),
    ("counter-length-float", lambda: tokens_read_table4(8192.0, CFG), ["length=8192.0", "int"]),
    ("counter-selected-negative", lambda: selected_tokens(-3, CFG), ["length=-3", ">= 1"]),
    ("counter-dense-bool", lambda: dense_tokens_read(True), ["length=True", "int"]),
]


@pytest.mark.parametrize(("call", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_input_names_argument_value_and_rule(call, fragments):
    with pytest.raises(InvalidInputError) as err:
        call()
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {str(err.value)!r}"


def test_invalid_input_is_a_value_error():
    assert issubclass(InvalidInputError, ValueError)
    with pytest.raises(ValueError, match="top_n"):
        NSAConfig(top_n=1)
