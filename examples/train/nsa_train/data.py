"""Training and validation batches from one source, chosen by `data.source`.

Sources: `jsonl` (records {"text": ...}), `text` (files split into paragraphs at blank lines),
`tree` (the files of a folder with `data.suffixes`), `site-packages` (the Python source of this
interpreter's installed packages: a real corpus every machine has offline), `needle` (a number
hidden in random words, loss on its digits) and `hf` (Hugging Face `datasets` streaming).

Documents are split into train and validation by a hash of a stable key (the path relative to
the corpus root, with the record or paragraph index), so the split does not depend on the
machine or the order files are found. Local corpora and the needle task are stateless: the batch
of step s on rank r is drawn from a generator seeded by (seed, split, s, r), so a resumed run
reads exactly what the uninterrupted one would. The `hf` stream is read in order and its
position (documents consumed, tokens left over) is part of the checkpoint.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nsa_spec.errors import InvalidInputError

from nsa_train.config import DataConfig
from nsa_train.tokenizer import EOS, IGNORE, encode

SPLITS = {"train": 0, "validation": 1}
EOS_TOKEN = np.array([EOS], np.uint16)
NEEDLE_QUESTION = " Q: what is the secret number? A: "


class DataUnavailableError(RuntimeError):
    """The configured data cannot be read (missing package, unreachable hub, empty split)."""


def is_validation(key: str, val_percent: int) -> bool:
    """Whether the document with stable `key` belongs to validation (sha256 of the key, mod 100)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100 < val_percent


def _walk(root: Path, suffixes: list[str]) -> Iterator[Path]:
    """Files under root ending in one of `suffixes`, in sorted order (stable across machines)."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(tuple(suffixes)):
                yield Path(folder) / name


def site_packages_root() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def documents(cfg: DataConfig) -> Iterator[tuple[str, str]]:
    """(stable key, text) of every document of a local source, up to `max_bytes` of text."""
    if cfg.source in ("tree", "site-packages"):
        root = Path(cfg.path) if cfg.path else site_packages_root() if cfg.source == "site-packages" else None
        if root is None or not root.is_dir():
            raise InvalidInputError(
                f"data.path must be a folder for data.source={cfg.source}: got {cfg.path!r}")
        tops = [root / name for name in cfg.include] if cfg.include else [root]
        for top in tops:
            files = [top] if top.is_file() else _walk(top, cfg.suffixes)
            for file in files:
                yield file.relative_to(root).as_posix(), file.read_text(encoding="utf-8", errors="replace")
    elif cfg.source in ("jsonl", "text"):
        files = sorted(glob.glob(cfg.path)) if cfg.path else []
        if not files:
            raise InvalidInputError(f"data.path must name files (a path or glob) for data.source="
                                    f"{cfg.source}: got {cfg.path!r}, which matches none")
        for file in files:
            name = Path(file).name
            with open(file, encoding="utf-8", errors="replace") as handle:
                if cfg.source == "jsonl":
                    for index, line in enumerate(handle):
                        if line.strip():
                            yield f"{name}:{index}", json.loads(line)["text"]
                else:
                    for index, paragraph in enumerate(handle.read().split("\n\n")):
                        if paragraph.strip():
                            yield f"{name}:{index}", paragraph
    else:
        raise InvalidInputError(f"not a local source: data.source={cfg.source!r}")


def local_corpus(cfg: DataConfig) -> dict[str, np.ndarray]:
    """Token streams per split: the documents' bytes, each followed by EOS, as uint16 (2 bytes a token)."""
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": []}
    total = 0
    for key, text in documents(cfg):
        tokens = encode(text).astype(np.uint16)
        parts["validation" if is_validation(key, cfg.val_percent) else "train"] += [tokens, EOS_TOKEN]
        total += len(tokens)
        if total >= cfg.max_bytes:
            break
    corpus = {}
    for split, pieces in parts.items():
        stream = np.concatenate(pieces) if pieces else np.zeros(0, np.uint16)
        if len(stream) < cfg.seq_len + 1:
            raise DataUnavailableError(
                f"the {split} split of data.source={cfg.source} has {len(stream)} tokens, fewer than "
                f"data.seq_len + 1 = {cfg.seq_len + 1}: add data or change data.val_percent / data.seq_len"
            )
        corpus[split] = stream
    return corpus


def needle_batch(rng: np.random.Generator, batch: int, seq_len: int, digits: int,
                 depth: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ids, targets [batch, seq_len]: random words with "The secret number is N." at `depth`
    (a fraction of the haystack; None: uniform), then the question; targets only on N's digits."""
    ids = np.empty((batch, seq_len), np.int64)
    targets = np.full((batch, seq_len), IGNORE, np.int64)
    for row in range(batch):
        number = "".join(str(d) for d in rng.integers(0, 10, digits))
        needle = encode(f" The secret number is {number}. ")
        tail = np.concatenate([encode(NEEDLE_QUESTION), encode(number)])
        size = seq_len + 1 - len(needle) - len(tail)
        if size < 1:
            raise InvalidInputError(f"data.seq_len is too short for the needle task: seq_len={seq_len}")
        hay = rng.integers(ord("a"), ord("z") + 1, size)
        hay[rng.random(size) < 0.18] = ord(" ")
        at = int((rng.random() if depth is None else depth) * size)
        seq = np.concatenate([hay[:at], needle, hay[at:], tail])
        ids[row], answer = seq[:-1], seq[1:]
        targets[row, -digits:] = answer[-digits:]
    return ids, targets


class HFStream:
    """Hugging Face `datasets` streaming, documents rank::world of the split, read in order."""

    def __init__(self, cfg: DataConfig, split: str, rank: int, world: int) -> None:
        self.cfg, self.split, self.rank, self.world = cfg, split, rank, world
        self.docs = 0  # documents of the split consumed (all ranks' included)
        self.buffer = np.zeros(0, np.int64)
        self.iterator: Iterator[Any] | None = None

    def _open(self) -> Iterator[Any]:
        """The stream after `docs` documents; raises DataUnavailableError after `hf_timeout_s`."""
        cfg = self.cfg
        try:
            import datasets
        except ImportError:
            raise DataUnavailableError(
                "data.source=hf needs the datasets package: pip install datasets") from None
        result: dict[str, Any] = {}

        def load() -> None:
            try:
                stream = datasets.load_dataset(cfg.hf_name, cfg.hf_config, split=self.split, streaming=True)
                iterator = iter(stream.skip(self.docs) if self.docs else stream)
                result["first"], result["iterator"] = next(iterator), iterator
            except BaseException as error:  # reported below, in the caller's thread
                result["error"] = error

        thread = threading.Thread(target=load, daemon=True, name="hf-loader")
        thread.start()
        thread.join(cfg.hf_timeout_s)
        where = f"Hugging Face dataset {cfg.hf_name!r} (config {cfg.hf_config!r}, split {self.split!r})"
        if thread.is_alive():
            raise DataUnavailableError(
                f"{where} gave no document within data.hf_timeout_s={cfg.hf_timeout_s}s; no other data was "
                "used instead: check the network (HF_ENDPOINT, HF_HUB_OFFLINE) or choose a local data.source"
            )
        if "error" in result:
            raise DataUnavailableError(f"{where} could not be read: {result['error']!r}") from result["error"]

        def chain() -> Iterator[Any]:
            yield result["first"]
            yield from result["iterator"]

        return chain()

    def tokens(self, count: int) -> np.ndarray:
        """The next `count` tokens of this rank's documents (each followed by EOS)."""
        if self.iterator is None:
            self.iterator = self._open()
        while len(self.buffer) < count:
            try:
                record = next(self.iterator)
            except StopIteration:
                raise DataUnavailableError(f"the Hugging Face split {self.split!r} ended") from None
            mine = self.docs % self.world == self.rank
            self.docs += 1
            if mine:
                text = encode(record[self.cfg.hf_text_field])
                self.buffer = np.concatenate([self.buffer, text, [EOS]])
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"docs": self.docs, "buffer": torch.from_numpy(self.buffer.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.docs, self.buffer, self.iterator = int(state["docs"]), state["buffer"].numpy().copy(), None


class Batches:
    """`batch(split, index)` -> ids, targets int64 tensors [batch_size, seq_len] for this rank."""

    def __init__(self, cfg: DataConfig, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.cfg, self.batch_size, self.seed, self.rank, self.world = cfg, batch_size, seed, rank, world
        self.corpus: dict[str, np.ndarray] = {}
        self.streams: dict[str, HFStream] = {}
        if cfg.source == "hf":
            if not cfg.hf_name:
                raise InvalidInputError("data.hf_name must name a dataset for data.source=hf: got None")
            self.streams["train"] = HFStream(cfg, cfg.hf_split, rank, world)
            if cfg.hf_val_split:
                self.streams["validation"] = HFStream(cfg, cfg.hf_val_split, rank, world)
        elif cfg.source != "needle":
            self.corpus = local_corpus(cfg)

    def rng(self, split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[split], index, self.rank])

    def batch(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index` of `split` (the step for train, the batch number for validation)."""
        B, T = self.batch_size, self.cfg.seq_len
        if self.cfg.source == "needle":
            ids, targets = needle_batch(self.rng(split, index), B, T, self.cfg.needle_digits)
        elif self.cfg.source == "hf":
            if split not in self.streams:
                raise InvalidInputError("validation of data.source=hf needs data.hf_val_split: got None")
            if split == "validation" and index == 0:
                self.streams[split].load_state_dict({"docs": 0, "buffer": torch.zeros(0, dtype=torch.int64)})
            seq = self.streams[split].tokens(B * (T + 1)).reshape(B, T + 1)
            ids, targets = seq[:, :-1], seq[:, 1:]
        else:
            stream = self.corpus[split]
            starts = self.rng(split, index).integers(0, len(stream) - T, B)
            seq = np.stack([stream[s : s + T + 1] for s in starts]).astype(np.int64)
            ids, targets = seq[:, :-1], seq[:, 1:]
        return torch.from_numpy(np.ascontiguousarray(ids)), torch.from_numpy(np.ascontiguousarray(targets))

    def state_dict(self) -> dict[str, Any]:
        """Position in the data beyond the step number (only streams have one)."""
        return {split: stream.state_dict() for split, stream in self.streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for split, stream_state in state.items():
            self.streams[split].load_state_dict(stream_state)
