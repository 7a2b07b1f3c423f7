"""Registered workloads: named lists of cases, each case one shape timed on every target.

`prefill-paper`, `prefill-groups`, `decode-paper` and `selection` (bench/README.md describes
them). Sizes can be overridden from the command line; `Overrides` carries those choices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from nsa_spec.config import NSAConfig

from bench import cost

PAPER = NSAConfig(cmp_len=32, cmp_stride=16, slc_len=64, top_n=16, window=512)
SEQLENS = (8192, 16384, 32768, 65536, 131072)
ITEMSIZE = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
MODES = ("fwd", "fwdbwd", "decode", "selection")


@dataclass(frozen=True)
class Case:
    """One shape of one workload, in one mode.

    `seqlen` is T (queries) for prefill and selection, S (cache length) for decode; `selected`
    is L, the tokens each query selects, for the selection workload.
    """

    workload: str
    mode: str
    batch: int
    seqlen: int
    heads_q: int
    heads_kv: int
    dk: int
    dv: int
    dtype: str
    config: NSAConfig
    selected: int | None = None

    @property
    def group_size(self) -> int:
        """G = HQ / H."""
        return self.heads_q // self.heads_kv

    @property
    def case_id(self) -> str:
        """Readable id, e.g. `fwd-B1-T8192-HQ64-H4-dk128-dv128-bfloat16`."""
        length = f"S{self.seqlen}" if self.mode == "decode" else f"T{self.seqlen}"
        parts = [self.mode, f"B{self.batch}", length, f"HQ{self.heads_q}", f"H{self.heads_kv}",
                 f"dk{self.dk}", f"dv{self.dv}", self.dtype]
        if self.selected is not None:
            parts.append(f"L{self.selected}")
        return "-".join(parts)

    @property
    def shape(self) -> cost.Shape:
        """The shape the cost model takes."""
        return cost.Shape(self.batch, self.seqlen, self.heads_q, self.heads_kv, self.dk, self.dv,
                          ITEMSIZE[self.dtype])

    @property
    def blocks(self) -> cost.Blocks:
        """Block sizes; the selection workload selects L / l' blocks per query."""
        b = cost.Blocks.from_config(self.config)
        if self.selected is not None:
            b = replace(b, n=self.selected // self.config.slc_len)
        return b

    def nsa_cost(self, blocks: cost.Blocks | None = None) -> cost.Cost:
        """The model's cost of this case for NSA (optionally with other block sizes)."""
        b = self.blocks if blocks is None else blocks
        s = self.shape
        if self.mode == "fwd":
            return cost.nsa_forward(s, b)
        if self.mode == "fwdbwd":
            return cost.nsa_forward(s, b) + cost.nsa_backward(s, b)
        if self.mode == "decode":
            return cost.nsa_decode(s, b)
        return cost.nsa_selection(s, b)

    def dense_cost(self) -> cost.Cost:
        """The model's cost of dense causal attention on the same shape."""
        s = self.shape
        if self.mode == "fwdbwd":
            return cost.dense_forward(s) + cost.dense_backward(s)
        if self.mode == "decode":
            return cost.dense_decode(s)
        return cost.dense_forward(s)

    @property
    def ideal_basis(self) -> str:
        """What the ideal speedup over dense is a ratio of: bytes for decode, FLOPs otherwise."""
        return "bytes" if self.mode == "decode" else "flops"

    def ideal_speedup(self) -> float:
        """Dense over NSA, in FLOPs (prefill, selection) or minimum bytes (decode)."""
        nsa, dense = self.nsa_cost(), self.dense_cost()
        if self.ideal_basis == "bytes":
            return dense.total_bytes / nsa.total_bytes
        return dense.total_flops / nsa.total_flops


@dataclass(frozen=True)
class Overrides:
    """Sizes chosen on the command line; None keeps the workload's default."""

    seqlens: Sequence[int] | None = None
    batches: Sequence[int] | None = None
    groups: Sequence[int] | None = None
    selected: Sequence[int] | None = None
    modes: Sequence[str] | None = None
    heads_q: int | None = None
    heads_kv: int | None = None
    head_dim: int | None = None
    dtype: str | None = None
    config: NSAConfig | None = None


@dataclass(frozen=True)
class Workload:
    """A named family of cases with default sizes."""

    name: str
    description: str
    modes: tuple[str, ...]
    build: Callable[[Workload, Overrides], list[Case]] = field(repr=False)

    def cases(self, overrides: Overrides = Overrides()) -> list[Case]:
        """Every case, modes outermost, then sizes ascending."""
        self._modes(overrides)
        return self.build(self, overrides)

    def _base(self, o: Overrides, mode: str) -> Case:
        dim = o.head_dim or 128
        return Case(
            workload=self.name, mode=mode, batch=1, seqlen=0, heads_q=o.heads_q or 64,
            heads_kv=o.heads_kv or 4, dk=dim, dv=dim, dtype=o.dtype or "bfloat16",
            config=o.config or PAPER,
        )

    def _modes(self, o: Overrides) -> tuple[str, ...]:
        modes = tuple(o.modes) if o.modes else self.modes
        wrong = [m for m in modes if m not in self.modes]
        if wrong:
            raise ValueError(f"workload {self.name!r} has modes {self.modes}: got {wrong}")
        return modes


def _prefill(w: Workload, o: Overrides) -> list[Case]:
    return [replace(w._base(o, mode), seqlen=T) for mode in w._modes(o) for T in (o.seqlens or SEQLENS)]


def _groups(w: Workload, o: Overrides) -> list[Case]:
    out = []
    for mode in w._modes(o):
        for G in o.groups or (1, 2, 4, 8, 16):
            base = w._base(o, mode)
            if base.heads_q % G:
                raise ValueError(f"group size G={G} must divide HQ={base.heads_q}")
            for T in o.seqlens or SEQLENS:
                out.append(replace(base, heads_kv=base.heads_q // G, seqlen=T))
    return out


def _decode(w: Workload, o: Overrides) -> list[Case]:
    return [
        replace(w._base(o, "decode"), batch=B, seqlen=S)
        for B in o.batches or (1, 16, 64)
        for S in o.seqlens or SEQLENS
    ]


def _selection(w: Workload, o: Overrides) -> list[Case]:
    out = []
    base = w._base(o, "selection")
    l_slc = base.config.slc_len
    for L in o.selected or (64, 128, 256, 512, 1024):
        if L % l_slc:
            raise ValueError(f"selected tokens L must be a multiple of l'={l_slc}: L={L}")
        for T in o.seqlens or (16384,):
            out.append(replace(base, seqlen=T, selected=L))
    return out


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "prefill-paper",
            "bf16 prefill, B=1, HQ=64, H=4, dk=dv=128, l=32 d=16 l'=64 n=16 w=512, gates; "
            "T = 8k..128k; forward and forward+backward",
            ("fwd", "fwdbwd"), _prefill,
        ),
        Workload(
            "prefill-groups",
            "prefill-paper at G = 1, 2, 4, 8, 16 with HQ=64 and dk=128 fixed (H = HQ/G)",
            ("fwd", "fwdbwd"), _groups,
        ),
        Workload(
            "decode-paper",
            "one new token over a cache of S = 8k..128k tokens, batch 1, 16, 64; paper sizes",
            ("decode",), _decode,
        ),
        Workload(
            "selection",
            "the selected branch alone, indices given; L = 64..1024 tokens per query (n = L/64 "
            "blocks of l'=64), T = 16k",
            ("selection",), _selection,
        ),
    )
}


def get(name: str) -> Workload:
    """The workload called `name`."""
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; known: {sorted(WORKLOADS)}")
    return WORKLOADS[name]
