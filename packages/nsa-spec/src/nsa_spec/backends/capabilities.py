"""What a backend supports, as data, and the problem it is asked to solve."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from nsa_spec.config import NSAConfig

OPS = ("forward", "backward", "decode")


def int_ranges(values: Iterable[int]) -> str:
    """Sorted ints with contiguous runs of three or more as lo..hi: {1, 2, 3, 5, 8, 9} -> "1..3, 5, 8, 9"."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    parts = []
    for lo, hi in runs:
        if hi - lo >= 2:
            parts.append(f"{lo}..{hi}")
        else:
            parts.extend(str(v) for v in range(lo, hi + 1))
    return ", ".join(parts)


@dataclass(frozen=True)
class Problem:
    """One call a backend may be asked to run, described without its arrays.

    `array_api` names the array type ("numpy", "torch"); `device` is "cpu" or "cuda";
    `dtype` a NumPy-style name ("float64", "float32", "bfloat16", "float16");
    `compute_capability` is (major, minor) for CUDA devices, else None.
    """

    op: str
    array_api: str
    device: str
    dtype: str
    heads_q: int
    heads_kv: int
    dk: int
    dv: int
    config: NSAConfig
    varlen: bool = False
    compute_capability: tuple[int, int] | None = None
    batch: int = 1
    tokens: int = 1

    @property
    def group_size(self) -> int:
        """G = HQ / H."""
        return self.heads_q // self.heads_kv

    def describe(self) -> str:
        """One line naming the op, shapes, dtype and device, for error messages and reports."""
        c = self.config
        cc = self.compute_capability
        where = self.device if cc is None else f"{self.device} (sm_{cc[0]}{cc[1]})"
        return (
            f"{self.op} of B={self.batch}, T={self.tokens}{' (varlen)' if self.varlen else ''}, "
            f"HQ={self.heads_q}, H={self.heads_kv} (G={self.group_size}), dk={self.dk}, dv={self.dv}, "
            f"{self.dtype} {self.array_api} on {where}, (l, d, l', n, w)="
            f"({c.cmp_len}, {c.cmp_stride}, {c.slc_len}, {c.top_n}, {c.window})"
        )


@dataclass(frozen=True)
class Preference:
    """A dispatch priority for the problems that match every given field (None matches any).

    `min_tokens` lets a backend yield below a length (T for forward/backward, the cache length for
    decode); `reason` says where the rule comes from (a measurement), shown by `info` and `explain`.
    """

    priority: int
    ops: frozenset[str] | None = None
    devices: frozenset[str] | None = None
    dtypes: frozenset[str] | None = None
    min_tokens: int = 0
    reason: str = ""

    def matches(self, problem: Problem) -> bool:
        """Whether this rule applies to `problem`."""
        return (
            (self.ops is None or problem.op in self.ops)
            and (self.devices is None or problem.device in self.devices)
            and (self.dtypes is None or problem.dtype in self.dtypes)
            and problem.tokens >= self.min_tokens
        )

    def describe(self) -> str:
        """The rule as one line."""
        parts = [f"{name}={'|'.join(sorted(v))}" for name, v in
                 (("op", self.ops), ("device", self.devices), ("dtype", self.dtypes)) if v is not None]
        if self.min_tokens:
            parts.append(f"tokens>={self.min_tokens}")
        where = ", ".join(parts) or "every problem"
        return f"priority {self.priority} for {where}" + (f" ({self.reason})" if self.reason else "")


SAVED_OUTPUTS = ("lse", "indices", "branch_o")
"""The `NSAOutput` fields a forward may save for a backward (`Capabilities.saves`/`backward_needs`)."""


@dataclass(frozen=True)
class Capabilities:
    """Everything a backend declares it supports. None in a set-valued field means "any".

    `block_sizes` holds (l, d, l') triples; `notes` maps an architecture ("sm90") or topic to a
    sentence users see in `python -m nsa_spec.info`. `preferences` override the backend's default
    priority for matching problems (first match wins). `saves` names what the forward returns for
    a backward (fields of `NSAOutput`); `backward_needs` what this backend's backward reads: a
    forward of one backend and a backward of another combine only when needs <= saves.
    """

    array_api: str
    devices: frozenset[str]
    dtypes: frozenset[str]
    ops: frozenset[str] = frozenset(OPS)
    head_dims: frozenset[int] | None = None
    group_sizes: frozenset[int] | None = None
    block_sizes: frozenset[tuple[int, int, int]] | None = None
    varlen: bool = True
    deterministic: bool = True
    min_compute_capability: tuple[int, int] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    preferences: tuple[Preference, ...] = ()
    saves: frozenset[str] = frozenset({"lse", "indices"})
    backward_needs: frozenset[str] = frozenset({"indices"})

    def __post_init__(self) -> None:
        for name in ("saves", "backward_needs"):
            unknown = sorted(set(getattr(self, name)) - set(SAVED_OUTPUTS))
            if unknown:
                raise ValueError(f"{name} names {unknown}, not outputs a forward saves: {SAVED_OUTPUTS}")

    def priority_for(self, problem: Problem, default: int) -> int:
        """The first matching preference's priority, else `default` (the backend's `priority`)."""
        return next((p.priority for p in self.preferences if p.matches(problem)), default)

    def reasons(self, problem: Problem) -> list[str]:
        """Why `problem` is outside these capabilities: one line per broken rule, [] if none."""
        out = []
        if problem.op not in self.ops:
            out.append(f"op={problem.op!r} is not supported (supported: {sorted(self.ops)})")
        if problem.array_api != self.array_api:
            out.append(f"arrays are {problem.array_api!r}, this backend takes {self.array_api!r}")
        if problem.device not in self.devices:
            out.append(f"device={problem.device!r} is not supported (supported: {sorted(self.devices)})")
        if problem.dtype not in self.dtypes:
            out.append(f"dtype={problem.dtype!r} is not supported (supported: {sorted(self.dtypes)})")
        if self.head_dims is not None:
            for name in ("dk", "dv"):
                value = getattr(problem, name)
                if value not in self.head_dims:
                    out.append(f"{name}={value} is not supported (supported: {int_ranges(self.head_dims)})")
        if self.group_sizes is not None and problem.group_size not in self.group_sizes:
            out.append(
                f"group size G=HQ/H={problem.group_size} is not supported "
                f"(supported: {int_ranges(self.group_sizes)})"
            )
        c = problem.config
        blocks = (c.cmp_len, c.cmp_stride, c.slc_len)
        if self.block_sizes is not None and blocks not in self.block_sizes:
            out.append(f"(l, d, l')={blocks} is not supported (supported: {sorted(self.block_sizes)})")
        if problem.varlen and not self.varlen:
            out.append("varlen (cu_seqlens) is not supported")
        if self.min_compute_capability is not None and problem.device == "cuda":
            cc = problem.compute_capability
            if cc is None or cc < self.min_compute_capability:
                out.append(
                    f"compute capability {cc} is below the minimum {self.min_compute_capability}"
                )
        return out
