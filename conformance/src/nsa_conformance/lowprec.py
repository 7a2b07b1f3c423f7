"""The naive low-precision computation that `tolerances.py` measures backends against.

"Naive" means the float64 reference's own code run with every input, intermediate and output
rounded to the backend's dtype: NumPy float32 / float16 arrays go through the reference as they
are; bfloat16 is emulated with `BF16Array`, float32 storage rounded to 8 mantissa bits (round to
nearest even) after every operation, so products are accumulated exactly and rounded once, as a
bf16 matmul with float32 accumulation does. Gradients are the JAX reference run in the dtype.
For float64 the naive computation is the oracle itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from nsa_spec import grad  # noqa: F401  (turns on JAX float64 before any jnp array exists)
from nsa_spec.blocks import cmp_cu_seqlens, n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import ARRAYS, NSAInputs, NSAOutput
from nsa_spec.reference.compress import compressed_attention
from nsa_spec.reference.nsa import nsa_attention
from nsa_spec.reference.select import importance_scores

DTYPES = ("float64", "float32", "bfloat16", "float16")


def round_bf16(x: Any) -> np.ndarray:
    """Round to the nearest bfloat16 (ties to even), returned as float32; NaN stays NaN."""
    x32 = np.array(x, dtype=np.float32, ndmin=1)
    bits = x32.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000))
    out = np.where(np.isnan(x32), x32, rounded.view(np.float32))
    return out.reshape(np.shape(x))


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """Float64 values of `x` rounded to `dtype`."""
    if dtype == "bfloat16":
        return round_bf16(x).astype(np.float64)
    return np.asarray(x).astype(dtype).astype(np.float64)


def plain(x: Any) -> Any:
    if isinstance(x, BF16Array):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(plain(v) for v in x)
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, (np.ndarray, np.generic)) and np.issubdtype(x.dtype, np.floating):
        return round_bf16(x).view(BF16Array)
    return x


class BF16Array(np.ndarray):
    """Float32 storage whose every ufunc and NumPy function result is rounded to bfloat16."""

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return _wrap(getattr(ufunc, method)(*plain(inputs), **plain(kwargs)))

    def __array_function__(self, func: Callable, types: Any, args: Any, kwargs: Any) -> Any:
        return _wrap(func(*plain(args), **plain(kwargs)))


def as_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """`x` as an array that computes naively in `dtype`."""
    if dtype == "bfloat16":
        return round_bf16(x).view(BF16Array)
    return np.asarray(x, dtype=dtype)


def _cast(inputs: NSAInputs, dtype: str) -> NSAInputs:
    return inputs.replace(**{n: as_dtype(np.asarray(getattr(inputs, n)), dtype) for n in ARRAYS})


def _f64(x: Any) -> np.ndarray:
    return np.asarray(plain(x), dtype=np.float64)


def naive_forward(inputs: NSAInputs, config: NSAConfig, indices: np.ndarray, dtype: str) -> NSAOutput:
    """The reference forward on the backend's selection, computed naively in `dtype` (float64 out)."""
    if dtype == "float64":
        return nsa_attention(inputs, config, indices)
    with np.errstate(all="ignore"):
        out = nsa_attention(_cast(inputs, dtype), config, indices)
    return NSAOutput(o=_f64(out.o), lse=_f64(out.lse), indices=np.asarray(indices))


def spans(inputs: NSAInputs, config: NSAConfig) -> list[tuple[int, int, int, int, int]]:
    """(batch, start, stop, cmp start, cmp stop) of every sequence, as the reference walks them."""
    B, T = np.shape(inputs.q)[:2]
    if inputs.cu_seqlens is None:
        return [(b, 0, T, 0, int(np.shape(inputs.k_cmp)[1])) for b in range(B)]
    cu = np.asarray(inputs.cu_seqlens, dtype=np.int64)
    cc = cmp_cu_seqlens(cu, config)
    return [(0, int(cu[i]), int(cu[i + 1]), int(cc[i]), int(cc[i + 1])) for i in range(len(cu) - 1)]


def block_scores(inputs: NSAInputs, config: NSAConfig, dtype: str = "float64") -> list[np.ndarray]:
    """Eq. 8-10 group-summed block scores [T_seq, H, blocks] per sequence, computed in `dtype`."""
    a = inputs if dtype == "float64" else _cast(inputs, dtype)
    out = []
    with np.errstate(all="ignore"):
        for b, lo, hi, clo, chi in spans(inputs, config):
            _, _, p = compressed_attention(a.q[b, lo:hi], a.k_cmp[b, clo:chi], a.v_cmp[b, clo:chi], config)
            out.append(_f64(importance_scores(p, n_slc_blocks(hi - lo, config), config)))
    return out


def naive_grads(
    inputs: NSAInputs, config: NSAConfig, grad_o: np.ndarray, indices: np.ndarray, dtype: str
) -> dict[str, np.ndarray]:
    """Gradients of sum(o * grad_o) by the JAX reference run in low-precision `dtype`, selection fixed.

    Returned as float64. (For float64 the naive gradients are the oracle's.)
    """
    import jax
    import jax.numpy as jnp

    jdt = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}[dtype]

    def grads(primals: tuple[Any, ...], cotangent: Any) -> Any:
        def forward(*arrays: Any) -> Any:
            replaced = inputs.replace(**dict(zip(ARRAYS, arrays, strict=True)))
            return nsa_attention(replaced, config, indices, jnp).o

        return jax.vjp(forward, *primals)[1](cotangent)

    primals = tuple(jnp.asarray(np.asarray(getattr(inputs, n), dtype=np.float64), dtype=jdt) for n in ARRAYS)
    # One compiled program instead of eager op-by-op dispatch: several times cheaper on CPU.
    out = jax.jit(grads)(primals, jnp.asarray(np.asarray(grad_o, dtype=np.float64), dtype=jdt))
    return {n: np.asarray(g.astype(jnp.float64)) for n, g in zip(ARRAYS, out, strict=True)}
