"""The gradient oracle: the same reference run under `jax.numpy` in float64.

Selection (Eq. 11) is piecewise constant, so gradients are taken with the selected blocks held
fixed: the indices come from a NumPy forward (or the caller), then `jax.vjp` differentiates the
reference written once in `reference/`. Needs the extra `nsa-spec[grad]`. Importing this module
turns on JAX's float64 mode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nsa_spec.config import NSAConfig
from nsa_spec.contract import ARRAYS, NSAGrads, NSAInputs
from nsa_spec.errors import UnsupportedError
from nsa_spec.reference.nsa import nsa_attention, nsa_forward

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - exercised where jax is absent
    raise UnsupportedError(
        "the gradient oracle needs jax: pip install 'nsa-spec[grad]'"
    ) from exc

jax.config.update("jax_enable_x64", True)



def nsa_attention_grads(
    inputs: NSAInputs, config: NSAConfig, grad_o: np.ndarray, indices: np.ndarray | None = None
) -> NSAGrads:
    """Gradients of sum(o * grad_o) for every array of the kernel contract, in float64."""
    if indices is None:
        indices = nsa_attention(inputs, config).indices
    primals = tuple(jnp.asarray(np.asarray(getattr(inputs, n), dtype=np.float64)) for n in ARRAYS)

    def forward(*arrays: Any) -> Any:
        changed = inputs.replace(**dict(zip(ARRAYS, arrays, strict=True)))
        return nsa_attention(changed, config, indices, jnp).o

    _, vjp = jax.vjp(forward, *primals)
    grads = vjp(jnp.asarray(np.asarray(grad_o, dtype=np.float64)))
    return NSAGrads(**{n: np.asarray(g) for n, g in zip(ARRAYS, grads, strict=True)})


def nsa_forward_grads(
    q: Any, k_raw: Any, v_raw: Any, k_slc: Any, v_slc: Any, k_win: Any, v_win: Any, gates: Any,
    config: NSAConfig, grad_o: np.ndarray, phi: str = "mean", phi_params: Any = None,
    cu_seqlens: Any = None, indices: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], Any]:
    """Gradients of sum(o * grad_o) from the raw cmp stream, phi included.

    Returns ({"q", "k_raw", "v_raw", "k_slc", "v_slc", "k_win", "v_win", "gates": grad},
    phi_params' gradients in the same nesting, or None).
    """
    names = ("q", "k_raw", "v_raw", "k_slc", "v_slc", "k_win", "v_win", "gates")
    arrays = (q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates)
    if indices is None:
        indices = nsa_forward(
            *arrays, config, phi, phi_params, cu_seqlens
        ).indices
    primals = tuple(jnp.asarray(np.asarray(a, dtype=np.float64)) for a in arrays)
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(np.asarray(p, dtype=np.float64)), phi_params)

    def forward(arrs: Any, prm: Any) -> Any:
        return nsa_forward(*arrs, config, phi, prm, cu_seqlens, indices, jnp).o

    _, vjp = jax.vjp(forward, primals, params)
    g_arrays, g_params = vjp(jnp.asarray(np.asarray(grad_o, dtype=np.float64)))
    grads = {n: np.asarray(g) for n, g in zip(names, g_arrays, strict=True)}
    return grads, jax.tree_util.tree_map(np.asarray, g_params)
