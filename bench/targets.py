"""What the runner times: NSA backends (through the `nsa.backends` registry), dense baselines
(torch SDPA with one backend forced), fla-core's `parallel_nsa` when it is installed, and
flash-nsa's `flash_nsa_varlen_func` when its source is carried (`bench.flash_nsa_peer`).

`target.prepare(case, device)` allocates random inputs (never zeros) on the device and returns a
`Prepared` thunk; nothing it allocates is timed. `unsupported(case, device)` says, before any
allocation, why a target cannot run a case (None when it can).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from nsa_spec.backends import capabilities as caps
from nsa_spec.backends.registry import backends, load_failures
from nsa_spec.contract import DecodeCache, NSAInputs

from bench import cost
from bench.workloads import Case

DENSE_BACKENDS = {"sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-flash": "FLASH_ATTENTION", "sdpa-math": "MATH"}
FLA_NAME = "fla-nsa"
FLASH_NSA_NAME = "flash-nsa"
FLASH_ATTN_NAME = "flash-attn"
SEED = 20250216


@dataclass
class Prepared:
    """A thunk to time, the tensors whose .grad the timer resets, a note for the results, a
    factory of the context the runner enters around the whole measurement (entering it per call
    can cost more than a small kernel: torch's `sdpa_kernel` takes tens of milliseconds on the
    CPU build), and the inputs the thunk reads where a test needs them."""

    fn: Callable[[], Any]
    grad_to_none: list[Any] = field(default_factory=list)
    note: str = ""
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    inputs: dict[str, Any] = field(default_factory=dict)


class Target:
    """Base of every timed implementation: `kind` is "nsa", "dense" or "external"; `modes` are
    the workload modes it has an equivalent of (no rows are made for the others)."""

    name: str
    kind: str
    needs_gate: bool = False
    modes: tuple[str, ...] = ("fwd", "fwdbwd", "decode", "selection")

    def unsupported(self, case: Case, device: str) -> str | None:
        raise NotImplementedError

    def prepare(self, case: Case, device: str) -> Prepared:
        raise NotImplementedError

    def model_blocks(self, case: Case) -> cost.Blocks:
        """Block sizes the FLOP/byte model uses for this target's rows."""
        return case.blocks


# ---- random data ----------------------------------------------------------------------------


class _Torch:
    """Random torch tensors on one device, from one seeded generator."""

    def __init__(self, device: str, dtype: str):
        import torch

        self.torch = torch
        self.device = device
        self.dtype = getattr(torch, dtype)
        self.gen = torch.Generator(device=device).manual_seed(SEED)

    def randn(self, *shape: int) -> Any:
        return self.torch.randn(shape, generator=self.gen, device=self.device, dtype=self.dtype)

    def gates(self, *shape: int) -> Any:
        return self.torch.sigmoid(self.randn(*shape))

    def lengths(self, batch: int, length: int) -> Any:
        return self.torch.full((batch,), length, dtype=self.torch.long, device=self.device)


class _Numpy:
    """Random NumPy arrays (CPU)."""

    def __init__(self, device: str, dtype: str):
        self.rng = np.random.default_rng(SEED)
        self.dtype = dtype

    def randn(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape).astype(self.dtype)

    def gates(self, *shape: int) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.randn(*shape)))

    def lengths(self, batch: int, length: int) -> np.ndarray:
        return np.full(batch, length, dtype=np.int64)


def _random_indices(case: Case, n: int, chunk: int = 4096) -> np.ndarray:
    """Valid selections [B, T, H, n] (int64): each query's current block plus n - 1 distinct
    random earlier blocks (every block while at most n exist), ascending, -1 padded."""
    B, T, H, l_slc = case.batch, case.seqlen, case.heads_kv, case.config.slc_len
    rng = np.random.default_rng(SEED)
    n_blocks = (T - 1) // l_slc + 1
    j = np.arange(n_blocks)
    out = np.empty((B, T, H, n), dtype=np.int64)
    for lo in range(0, T, chunk):
        current = (np.arange(lo, min(lo + chunk, T)) // l_slc)[None, :, None, None]
        keys = rng.random((B, current.shape[1], H, n_blocks))
        keys = np.where(j == current, -1.0, np.where(j < current, keys, np.inf))  # current first
        order = np.argsort(keys, axis=-1)[..., :n]
        taken = np.arange(order.shape[-1]) < np.minimum(current + 1, n)
        picked = np.sort(np.where(taken, order, n_blocks), axis=-1)
        picked = np.where(picked == n_blocks, -1, picked)
        pad = n - picked.shape[-1]
        out[:, lo : lo + chunk] = np.concatenate([picked, np.full((*picked.shape[:-1], pad), -1)], -1)
    return out


# ---- NSA backends -----------------------------------------------------------------------------


class NSATarget(Target):
    """A backend registered under `nsa.backends`, called through the backend protocol."""

    kind = "nsa"
    needs_gate = True

    def __init__(self, name: str):
        self.name = name

    def _backend(self) -> Any:
        return backends().get(self.name)

    def _problem(self, case: Case, device: str) -> caps.Problem:
        op = {"fwd": "forward", "fwdbwd": "backward", "decode": "decode", "selection": "forward"}
        cc = None
        if device == "cuda":
            import torch

            cc = torch.cuda.get_device_capability()
        b = self._backend()
        return caps.Problem(
            op=op[case.mode], array_api=b.capabilities.array_api, device=device, dtype=case.dtype,
            heads_q=case.heads_q, heads_kv=case.heads_kv, dk=case.dk, dv=case.dv,
            config=case.config, compute_capability=cc,
        )

    def unsupported(self, case: Case, device: str) -> str | None:
        b = self._backend()
        if b is None:
            failed = load_failures().get(self.name)
            return f"backend {self.name!r} failed to load: {failed}" if failed else (
                f"backend {self.name!r} is not installed (known: {sorted(backends())})"
            )
        why = b.unavailable_reason()
        if why is not None:
            return f"unavailable: {why}"
        reasons = b.not_supported_reasons(self._problem(case, device))
        if case.mode == "fwdbwd" and not reasons:
            reasons = b.not_supported_reasons(
                caps.Problem(**{**self._problem(case, device).__dict__, "op": "forward"})
            )
        if case.mode == "selection" and self.name not in SELECTION_STAGES:
            reasons = [*reasons, f"no selected-attention stage adapter for backend {self.name!r}"]
        return "; ".join(reasons) or None

    def _alloc(self, device: str, dtype: str) -> Any:
        api = self._backend().capabilities.array_api
        if api == "torch":
            return _Torch(device, dtype)
        if api == "numpy":
            return _Numpy(device, dtype)
        raise NotImplementedError(f"no random-input allocator for array_api={api!r}")

    def prepare(self, case: Case, device: str) -> Prepared:
        b, r, cfg = self._backend(), self._alloc(device, case.dtype), case.config
        B, T, HQ, H, dk, dv = case.batch, case.seqlen, case.heads_q, case.heads_kv, case.dk, case.dv
        if case.mode == "decode":
            n = int(cost.n_cmp(T, case.blocks))
            l, w = cfg.cmp_len, cfg.window
            cache = DecodeCache(  # layout v2, filled to capacity T; rings of l raw and w win rows
                k_raw=r.randn(B, l, H, dk), v_raw=r.randn(B, l, H, dv), k_cmp=r.randn(B, n, H, dk),
                v_cmp=r.randn(B, n, H, dv), k_slc=r.randn(B, T, H, dk), v_slc=r.randn(B, T, H, dv),
                k_win=r.randn(B, w, H, dk), v_win=r.randn(B, w, H, dv), lengths=r.lengths(B, T),
            )
            q, gates = r.randn(B, 1, HQ, dk), r.gates(B, 1, HQ, 3)
            return Prepared(lambda: b.decode(cache, q, gates, cfg))
        if case.mode == "selection":
            return SELECTION_STAGES[self.name](case, r, device)
        n = int(cost.n_cmp(T, case.blocks))
        inputs = NSAInputs(
            q=r.randn(B, T, HQ, dk), k_cmp=r.randn(B, n, H, dk), v_cmp=r.randn(B, n, H, dv),
            k_slc=r.randn(B, T, H, dk), v_slc=r.randn(B, T, H, dv), k_win=r.randn(B, T, H, dk),
            v_win=r.randn(B, T, H, dv), gates=r.gates(B, T, HQ, 3),
        )
        if case.mode == "fwd":
            return Prepared(lambda: b.forward(inputs, cfg))
        grad_o = r.randn(B, T, HQ, dv)
        return Prepared(lambda: b.backward(inputs, cfg, b.forward(inputs, cfg), grad_o),
                        note="forward then backward through the backend protocol")


def _numpy_selection(case: Case, r: Any, device: str) -> Prepared:
    from nsa_spec.reference.select import selected_attention

    B, T, H = case.batch, case.seqlen, case.heads_kv
    q, k, v = r.randn(B, T, case.heads_q, case.dk), r.randn(B, T, H, case.dk), r.randn(B, T, H, case.dv)
    idx = _random_indices(case, case.blocks.n)
    return Prepared(lambda: [selected_attention(q[b], k[b], v[b], idx[b], case.config) for b in range(B)])


def _torch_selection(case: Case, r: Any, device: str) -> Prepared:
    """nsa-torch's selected branch as its forward runs it: keys/values as whole blocks in the
    compute dtype, queries in chunks of `CHUNK_BYTES` of gathered keys and scores; per chunk the
    gather plan, the block gather and the attention are timed."""
    from nsa_torch.ops.nsa import CHUNK_BYTES, compute_dtype
    from nsa_torch.ops.select import gather_blocks, selected_attention, selected_keys, selection_blocks

    torch, cfg = r.torch, case.config
    B, T, HQ, H, dk, dv, n = (case.batch, case.seqlen, case.heads_q, case.heads_kv, case.dk, case.dv,
                              case.blocks.n)
    work = compute_dtype(r.dtype)
    q = r.randn(B, T, H, HQ // H, dk).to(work)
    k, v = (selection_blocks(r.randn(B, T, H, d).to(work), cfg) for d in (dk, dv))
    n_blocks = k.shape[0] // (B * H)
    idx = torch.as_tensor(_random_indices(case, n), device=device)
    positions = torch.arange(T, device=device)
    scale = cfg.softmax_scale(dk)
    per_query = B * q.element_size() * n * cfg.slc_len * (H * (dk + dv) + 3 * HQ)
    step = max(1, CHUNK_BYTES[device] // per_query)

    def run() -> list[Any]:
        outs = []
        for t0 in range(0, T, step):
            ids, allowed = selected_keys(idx[:, t0 : t0 + step], positions[t0 : t0 + step], cfg)
            k_sel, v_sel = gather_blocks(k, ids, n_blocks), gather_blocks(v, ids, n_blocks)
            outs.append(selected_attention(q[:, t0 : t0 + step], k_sel, v_sel, allowed, scale)[0])
        return outs

    return Prepared(run, note=f"nsa_torch.ops.select, {step} queries per chunk, {work} math",
                    inputs={"q": q, "k_blocks": k, "v_blocks": v, "indices": idx})


SELECTION_STAGES: dict[str, Callable[[Case, Any, str], Prepared]] = {
    "numpy": _numpy_selection,
    "torch": _torch_selection,
}


# ---- dense baselines ----------------------------------------------------------------------------


def _is_no_kernel(exc: BaseException) -> bool:
    return "No available kernel" in str(exc) or "not supported" in str(exc).lower()


class DenseTarget(Target):
    """torch `scaled_dot_product_attention` with one SDPA backend forced (no fallback).

    Prefill: dense causal attention, GQA expanded to HQ heads by `repeat_interleave` outside the
    timed call (the gradient of the expanded K/V is what backward produces). Decode: one query
    over S keys, no mask; native GQA (`enable_gqa=True`) when the backend accepts it, else
    expanded, and the row's note says which.
    """

    kind = "dense"
    modes = ("fwd", "fwdbwd", "decode")

    def __init__(self, name: str):
        self.name = name

    def _sdpa(self) -> tuple[Any, Any, Any]:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention

        return scaled_dot_product_attention, sdpa_kernel, getattr(SDPBackend, DENSE_BACKENDS[self.name])

    def unsupported(self, case: Case, device: str) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        if self.name != "sdpa-math" and device != "cuda":
            return f"{self.name} needs a CUDA device (device={device})"
        if self.name != "sdpa-math" and case.dtype not in ("bfloat16", "float16"):
            return f"{self.name} needs bfloat16 or float16 (dtype={case.dtype})"
        return None

    def prepare(self, case: Case, device: str) -> Prepared:
        sdpa, kernel, backend = self._sdpa()
        r = _Torch(device, case.dtype)
        B, T, HQ, H, dk, dv, G = (case.batch, case.seqlen, case.heads_q, case.heads_kv, case.dk,
                                  case.dv, case.group_size)
        if case.mode == "decode":
            return self._decode(case, r, sdpa, lambda: kernel(backend))
        q = r.randn(B, HQ, T, dk)
        k = r.randn(B, H, T, dk).repeat_interleave(G, dim=1)
        v = r.randn(B, H, T, dv).repeat_interleave(G, dim=1)
        note = f"GQA expanded to {HQ} heads outside the timed call"
        if case.mode == "fwd":
            return Prepared(lambda: sdpa(q, k, v, is_causal=True), note=note, context=lambda: kernel(backend))
        for x in (q, k, v):
            x.requires_grad_(True)
        grad_o = r.randn(B, HQ, T, dv)
        return Prepared(lambda: sdpa(q, k, v, is_causal=True).backward(grad_o), grad_to_none=[q, k, v],
                        note=note, context=lambda: kernel(backend))

    def _decode(self, case: Case, r: _Torch, sdpa: Any, context: Any) -> Prepared:
        B, S, HQ, H, G = case.batch, case.seqlen, case.heads_q, case.heads_kv, case.group_size
        q = r.randn(B, HQ, 1, case.dk)
        k, v = r.randn(B, H, S, case.dk), r.randn(B, H, S, case.dv)
        try:
            with context():
                sdpa(q, k, v, enable_gqa=True)
        except RuntimeError as exc:
            if not _is_no_kernel(exc):
                raise
            reason = str(exc).strip().splitlines()[0][:160]
            k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
            return Prepared(lambda: sdpa(q, k, v), context=context,
                            note=f"GQA expanded to {HQ} heads (enable_gqa refused: {reason})")
        return Prepared(lambda: sdpa(q, k, v, enable_gqa=True), context=context,
                        note="native GQA (enable_gqa=True)")


# ---- FlashAttention -----------------------------------------------------------------------------


def _flash_attn_module() -> tuple[str, Any] | None:
    """(module name, module) of the FlashAttention interface installed: FA3/FA4's
    `flash_attn_interface` first, else flash-attn 2's `flash_attn`; None when neither imports."""
    for name in ("flash_attn_interface", "flash_attn"):
        if importlib.util.find_spec(name) is not None:
            return name, importlib.import_module(name)
    return None


class FlashAttnTarget(Target):
    """FlashAttention's `flash_attn_func` (the dense kernel most users run), native GQA: prefill
    causal over [B, T, H, d] K/V, decode one query over S keys (`flash_attn_with_kvcache`)."""

    kind = "dense"
    name = FLASH_ATTN_NAME
    modes = ("fwd", "fwdbwd", "decode")

    def unsupported(self, case: Case, device: str) -> str | None:
        if _flash_attn_module() is None:
            return "flash-attn is not installed (neither flash_attn_interface nor flash_attn imports)"
        if device != "cuda":
            return f"flash-attn needs a CUDA device (device={device})"
        if case.dtype not in ("bfloat16", "float16"):
            return f"flash-attn needs bfloat16 or float16 (dtype={case.dtype})"
        return None

    def prepare(self, case: Case, device: str) -> Prepared:
        module_name, fa = _flash_attn_module()
        r = _Torch(device, case.dtype)
        B, T, HQ, H, dk, dv = case.batch, case.seqlen, case.heads_q, case.heads_kv, case.dk, case.dv
        note = f"{module_name}, native GQA"

        def first(out: Any) -> Any:  # FA3's interface returns (out, lse)
            return out[0] if isinstance(out, tuple) else out

        if case.mode == "decode":
            q = r.randn(B, 1, HQ, dk)
            k, v = r.randn(B, T, H, dk), r.randn(B, T, H, dv)
            lengths = r.lengths(B, T).to(r.torch.int32)
            return Prepared(lambda: fa.flash_attn_with_kvcache(q, k, v, cache_seqlens=lengths), note=note)
        q, k, v = r.randn(B, T, HQ, dk), r.randn(B, T, H, dk), r.randn(B, T, H, dv)
        if case.mode == "fwd":
            return Prepared(lambda: fa.flash_attn_func(q, k, v, causal=True), note=note)
        for x in (q, k, v):
            x.requires_grad_(True)
        grad_o = r.randn(B, T, HQ, dv)
        return Prepared(lambda: first(fa.flash_attn_func(q, k, v, causal=True)).backward(grad_o),
                        grad_to_none=[q, k, v], note=note)


# ---- fla-core ----------------------------------------------------------------------------------


class FlaTarget(Target):
    """fla-core's `fla.ops.nsa.parallel_nsa` (Triton), a public NSA kernel with its own config.

    For `selection` it gets our indices and no gates, and then runs only its selected branch,
    whose semantics are ours (blocks of l', keys clamped to <= t, -1 entries skipped)."""

    kind = "external"
    name = FLA_NAME
    modes = ("fwd", "fwdbwd", "selection")
    NOTE = (
        "fla parallel_nsa: one shared k/v for every branch; compression is mean pooling with "
        "l = d = l' (no overlap) inside the timed call; no sliding window (fla needs flash-attn "
        "for it, absent); the FLOP/byte model is evaluated with those block sizes"
    )

    def unsupported(self, case: Case, device: str) -> str | None:
        if importlib.util.find_spec("fla") is None:
            return "fla-core is not installed (bench/README.md: carry its wheel)"
        if device != "cuda":
            return "fla parallel_nsa needs a CUDA device"
        G = case.group_size
        if G < 16 or G & (G - 1):
            return f"fla parallel_nsa needs G = HQ/H a power of 2 >= 16: G={G}"
        return None

    def model_blocks(self, case: Case) -> cost.Blocks:
        if case.mode == "selection":
            return case.blocks
        s = case.config.slc_len
        return cost.Blocks(l=s, d=s, l_slc=s, n=case.config.top_n, w=0)

    def prepare(self, case: Case, device: str) -> Prepared:
        from fla.ops.nsa import parallel_nsa

        r = _Torch(device, case.dtype)
        B, T, HQ, H, cfg = case.batch, case.seqlen, case.heads_q, case.heads_kv, case.config
        q, k, v = r.randn(B, T, HQ, case.dk), r.randn(B, T, H, case.dk), r.randn(B, T, H, case.dv)
        if case.mode == "selection":
            n = case.blocks.n
            idx = r.torch.as_tensor(_random_indices(case, n), device=device)
            return Prepared(
                lambda: parallel_nsa(q, k, v, block_indices=idx, block_counts=n, block_size=cfg.slc_len),
                note="fla parallel_nsa selected branch alone (block_indices given, no gates, no window)",
            )
        g_cmp, g_slc = r.gates(B, T, HQ), r.gates(B, T, HQ)

        def call() -> Any:
            return parallel_nsa(q, k, v, g_cmp, g_slc, None, block_counts=cfg.top_n,
                                block_size=cfg.slc_len, window_size=0)

        if case.mode == "fwd":
            return Prepared(call, note=self.NOTE)
        for x in (q, k, v):
            x.requires_grad_(True)
        grad_o = r.randn(B, T, HQ, case.dv)
        return Prepared(lambda: call().backward(grad_o), grad_to_none=[q, k, v], note=self.NOTE)


# ---- flash-nsa ---------------------------------------------------------------------------------


def _power_of_2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _flash_nsa_head_dim(dk: int) -> bool:
    """flash-nsa splits a head dim that is not a power of 2 into two powers of 2, p/2 + rest
    (p the next power of 2), e.g. 192 = 128 + 64."""
    if _power_of_2(dk):
        return True
    return _power_of_2(dk - (1 << (dk - 1).bit_length()) // 2)


class FlashNSATarget(Target):
    """flash-nsa's `flash_nsa_varlen_func` (GitHub mdy666/Scalable-Flash-Native-Sparse-Attention,
    Triton), the function its `NSACore` calls on one GPU: q [B*T, HQ, dk], one k [B*T, H, dk] and
    v [B*T, H, dv] for every branch, gate logits [B*T, HQ, 3], packed with cu_seqlens. Inside the
    call: mean-pooling compression of k and v, compressed attention, top-n selection, selected
    attention, the window (stubbed: `bench.flash_nsa_peer`), the sigmoid-gated combine."""

    kind = "external"
    name = FLASH_NSA_NAME
    modes = ("fwd", "fwdbwd")

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}  # source root -> module, or why it failed to import

    def _module(self) -> Any:
        from bench import flash_nsa_peer

        root = flash_nsa_peer.source_root()
        key = str(root)
        if key not in self._loaded:
            try:
                self._loaded[key] = flash_nsa_peer.load(root)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                self._loaded[key] = f"flash-nsa failed to import from {root}: {type(exc).__name__}: {first}"
        return self._loaded[key]

    def unsupported(self, case: Case, device: str) -> str | None:
        from bench import flash_nsa_peer

        why = flash_nsa_peer.missing_reason(flash_nsa_peer.source_root())
        if why:
            return why
        if device != "cuda":
            return "flash-nsa needs a CUDA device"
        module = self._module()
        if isinstance(module, str):
            return module
        cfg = case.config
        l, d, l_slc = cfg.cmp_len, cfg.cmp_stride, cfg.slc_len
        if not _power_of_2(d) or l % d or l_slc % d or l_slc < l:
            return f"flash-nsa needs d a power of 2 dividing l and l', and l' >= l: l={l} d={d} l'={l_slc}"
        if case.dtype not in ("bfloat16", "float16"):
            return f"flash-nsa needs bfloat16 or float16 (dtype={case.dtype})"
        if not _power_of_2(case.dv) or not _flash_nsa_head_dim(case.dk):
            return (f"flash-nsa needs dv a power of 2 and dk a power of 2 or p/2 + a power of 2: "
                    f"dk={case.dk} dv={case.dv}")
        return None

    def model_blocks(self, case: Case) -> cost.Blocks:
        return replace(case.blocks, w=0)

    def note(self, case: Case) -> str:
        c = case.config
        return (
            "flash-nsa flash_nsa_varlen_func: window branch stubbed: flash-attn not installed "
            "(its output and gradients are zeros; w = 0 in the FLOP/byte model); one shared k/v "
            f"for every branch; compression inside the timed call, phi = mean pooling "
            f"(l={c.cmp_len}, d={c.cmp_stride}, no weights); gates are sigmoid of logits inside its "
            "combine; top-n on its own fp16 block scores, forced blocks 1 initial + 2 local; "
            "inputs packed [B*T, H, d] with cu_seqlens, its NSAHelper metadata set outside the "
            "timed call"
        )

    def prepare(self, case: Case, device: str) -> Prepared:
        from bench import flash_nsa_peer

        module, r, cfg = self._module(), _Torch(device, case.dtype), case.config
        B, T, HQ, H, dk, dv = case.batch, case.seqlen, case.heads_q, case.heads_kv, case.dk, case.dv
        q, k, v = r.randn(B * T, HQ, dk), r.randn(B * T, H, dk), r.randn(B * T, H, dv)
        logits = r.randn(B * T, HQ, 3)
        cu_seqlens = r.torch.arange(0, (B + 1) * T, T, dtype=r.torch.int32, device=device)
        flash_nsa_peer.configure(module, cfg.cmp_len, cfg.cmp_stride, cfg.slc_len, cfg.top_n, cfg.window,
                                 cu_seqlens)
        scale = cfg.softmax_scale(dk)

        def call() -> Any:
            return module.flash_nsa_varlen_func(q, k, v, logits, None, None, scale)

        note = self.note(case)
        if case.mode == "fwd":
            return Prepared(call, note=note, inputs={"q": q, "k": k, "v": v, "logits": logits})
        for x in (q, k, v, logits):
            x.requires_grad_(True)
        grad_o = r.randn(B * T, HQ, dv)
        return Prepared(lambda: call().backward(grad_o), grad_to_none=[q, k, v, logits], note=note,
                        inputs={"q": q, "k": k, "v": v, "logits": logits})


def get(name: str) -> Target:
    """The target called `name`: a dense baseline (SDPA, flash-attn), fla, flash-nsa, or a registered
    NSA backend."""
    if name in DENSE_BACKENDS:
        return DenseTarget(name)
    if name == FLA_NAME:
        return FlaTarget()
    if name == FLASH_NSA_NAME:
        return FlashNSATarget()
    if name == FLASH_ATTN_NAME:
        return FlashAttnTarget()
    return NSATarget(name)
