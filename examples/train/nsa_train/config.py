"""The run configuration: a YAML file, then `--set section.key=value` overrides, checked by dataclasses.

Sections: `model`, `data`, `train`, `ops`. An override's value is parsed as YAML (`--set
model.layers=2`, `--set data.include=[yaml,tqdm]`); an unknown section or key raises
`InvalidInputError` naming it and the known ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from nsa_spec.errors import InvalidInputError


@dataclass
class ModelConfig:
    """Decoder-only LM: pre-norm blocks (RMSNorm), SwiGLU MLP, tied embeddings, RoPE attention."""

    attention: str = "nsa"  # "nsa" (nsa_torch.NSAAttention) or "dense" (SDPA, is_causal=True)
    width: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 64
    mlp_hidden: int = 1408
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    # NSA block sizes (nsa_spec.NSAConfig), phi, gate kind and backend (None: automatic dispatch).
    cmp_len: int = 32
    cmp_stride: int = 16
    slc_len: int = 64
    top_n: int = 16
    window: int = 512
    phi: str = "mlp"
    gate: str = "sigmoid"
    backend: str | None = None


@dataclass
class DataConfig:
    """What the model reads: `source` picks one loader in `nsa_train.data.SOURCES`."""

    source: str = "site-packages"  # jsonl | text | tree | site-packages | needle | hf
    path: str | None = None  # file (jsonl, text), folder (tree); site-packages: None = this Python's
    include: list[str] = field(default_factory=list)  # site-packages: top-level names to read; [] = all
    suffixes: list[str] = field(default_factory=lambda: [".py"])  # tree / site-packages file endings
    max_bytes: int = 200_000_000  # stop reading files after this many bytes
    val_percent: int = 2  # files (records) whose hash falls below this percent are validation
    seq_len: int = 4096
    # needle: a number hidden at a random depth of random words; the loss is on its digits only.
    needle_digits: int = 6
    # hf: datasets streaming; a loader that does not answer in hf_timeout_s raises, nothing else is used.
    hf_name: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    hf_val_split: str | None = None
    hf_text_field: str = "text"
    hf_timeout_s: float = 60.0


@dataclass
class TrainConfig:
    """Optimisation: AdamW, linear warm-up then cosine decay to `min_lr`, gradient clipping."""

    steps: int = 20000
    batch_size: int = 8  # sequences per process per step
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 500
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    seed: int = 0
    dtype: str = "bfloat16"  # autocast dtype on CUDA; the CPU always runs float32
    device: str = "auto"  # auto | cpu | cuda
    eval_every: int = 500
    eval_batches: int = 8


@dataclass
class OpsConfig:
    """Operations: run folder, heartbeat, checkpoints, watchdog, progress bar."""

    run_dir: str = "runs/default"
    heartbeat_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    watchdog_s: float = 600.0  # dump every thread's stack when no step finished for this long; 0 = off
    progress: bool = True
    resume: bool = True  # continue from run_dir's latest checkpoint when there is one
    stop_after: int = 0  # checkpoint and exit after this many steps of this process (job chunks); 0 = off
    threads: int = 0  # torch.set_num_threads on the CPU; 0 = leave torch's default


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts of primitives (stored in checkpoints and heartbeats)."""
        return dataclasses.asdict(self)


def _section(cls: type, values: dict[str, Any], name: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidInputError(f"unknown key {name}.{unknown[0]}: {name} has keys {sorted(known)}")
    values = dict(values)
    for key, value in values.items():
        number_like = isinstance(value, (int, str)) and not isinstance(value, bool)
        if known[key].type.startswith("float") and number_like:
            try:
                values[key] = float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                raise InvalidInputError(f"{name}.{key} must be a number: got {value!r}") from None
    return cls(**values)


def from_dict(values: dict[str, Any]) -> RunConfig:
    """A RunConfig from nested dicts; missing keys keep their defaults."""
    sections = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise InvalidInputError(f"unknown config section {unknown[0]!r}: sections are {sorted(sections)}")
    classes = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "ops": OpsConfig}
    return RunConfig(**{name: _section(classes[name], values.get(name) or {}, name) for name in classes})


def apply_override(values: dict[str, Any], override: str) -> None:
    """Apply one `section.key=value` (value parsed as YAML) to nested dicts in place."""
    path, sep, raw = override.partition("=")
    keys = path.strip().split(".")
    if not sep or len(keys) != 2 or not all(keys):
        raise InvalidInputError(f"an override must look like section.key=value: got {override!r}")
    section, key = keys
    values.setdefault(section, {})
    if not isinstance(values[section], dict):
        raise InvalidInputError(f"config section {section!r} must be a mapping: got {values[section]!r}")
    values[section][key] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """The YAML file at `path` (None: all defaults) with `overrides` applied in order."""
    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise InvalidInputError(f"a config file must hold a mapping of sections: {path}")
    for override in overrides:
        apply_override(values, override)
    return from_dict(values)
