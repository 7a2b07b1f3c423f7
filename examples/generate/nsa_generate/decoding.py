"""Greedy decoding: a prefill into one cache per block, then one step per token, eager or replayed
from a CUDA graph; and the cache-free reference that re-runs the whole prefix for every token.

Each step feeds the last token and takes the argmax of its logits. A CUDA graph captures one
whole-model step on static buffers: the input ids [B, 1], the logits [B, vocab] and every layer's
cache storage, fixed at its capacity (`NSACache(growable=False)`, `DenseCache`); each replay
appends one token per sequence and writes the next ids into the input buffer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from nsa_spec.errors import InvalidInputError, UnsupportedError
from nsa_torch import NSACache
from nsa_torch.dispatch import backend_for, problem_for
from nsa_train.dense_cache import DenseCache
from nsa_train.model import LM
from torch import Tensor
from tqdm import tqdm


@dataclass
class Generation:
    """tokens [B, n] and their logits [B, n, vocab] (the first from the prefill), with timings:
    `prefill_s` (prompt to first token), `decode_s` over `decode_steps` timed steps, `capture_s`
    (graph warm-up step and capture; 0 eager)."""

    tokens: Tensor
    logits: Tensor
    prefill_s: float
    decode_s: float
    decode_steps: int
    capture_s: float = 0.0


def make_caches(model: LM, capacity: int) -> list[NSACache | DenseCache]:
    """One cache per block, `capacity` tokens per sequence, fixed storage."""
    if model.cfg.attention == "nsa":
        return [NSACache(capacity=capacity, growable=False) for _ in model.blocks]
    return [DenseCache(capacity) for _ in model.blocks]


def nsa_backends(model: LM, batch: int, prompt_len: int, new_tokens: int) -> dict[str, str]:
    """The backends dispatch picks for the NSA layers' prefill ("forward") and last decode step
    (empty for dense attention)."""
    if model.cfg.attention != "nsa":
        return {}
    layer = model.blocks[0].attn
    p = next(model.parameters())
    q = torch.empty(batch, 1, layer.num_heads, layer.head_dim, dtype=p.dtype, device=p.device)
    sizes = {"forward": prompt_len, "decode": prompt_len + new_tokens - 1}
    return {op: backend_for(problem_for(op, q, layer.num_kv_heads, layer.v_head_dim, layer.config,
                                        tokens=tokens), layer.backend).name
            for op, tokens in sizes.items()}


def require_cuda(device: torch.device) -> None:
    """Raise `UnsupportedError` unless `device` is a CUDA device (CUDA graphs run only there)."""
    if device.type != "cuda":
        raise UnsupportedError(
            f"--cuda-graph needs a CUDA device: device={device.type!r} (CUDA graphs capture GPU "
            "work only; run without --cuda-graph, or on a GPU)"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GraphStep:
    """One decode step of the whole model captured in a CUDA graph: `replay()` reads `ids` [B, 1],
    appends to the caches, writes `logits` [B, vocab] and the next greedy ids back into `ids`."""

    def __init__(self, model: LM, caches: list, ids: Tensor) -> None:
        require_cuda(ids.device)
        # The graph replays into the model's weights and the caches' storage: keep them alive.
        self.model, self.caches, self.ids = model, caches, ids.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model(self.ids, caches=caches)[:, -1]
            self.ids.copy_(self.logits.argmax(-1, keepdim=True))

    def replay(self) -> None:
        self.graph.replay()


def generate(model: LM, prompt: Tensor, new_tokens: int, cuda_graph: bool = False,
             progress: bool = False) -> Generation:
    """Greedily generate `new_tokens` after `prompt` [B, T] (ids on the model's device).

    With `cuda_graph` the first decode step runs eagerly (the graph's warm-up, on a side stream),
    then one step is captured and replayed for the rest; `decode_s` times the replays only.
    """
    if new_tokens < 1:
        raise InvalidInputError(f"new_tokens must be >= 1: new_tokens={new_tokens}")
    device = prompt.device
    if cuda_graph:
        require_cuda(device)
    B, T = prompt.shape
    caches = make_caches(model, T + new_tokens)  # the graph's capture counts one step more on the host
    tokens = torch.empty(B, new_tokens, dtype=torch.long, device=device)
    logits = torch.empty(B, new_tokens, model.head.out_features, dtype=torch.float32, device=device)
    bar = tqdm(total=new_tokens, desc=f"{model.cfg.attention} decode", unit="tok", disable=not progress)
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        logits[:, 0] = model(prompt, caches=caches)[:, -1].float()
        tokens[:, 0] = logits[:, 0].argmax(-1)
        _sync(device)
        prefill_s = time.perf_counter() - start
        bar.update(1)
        first, capture_s, graph = 1, 0.0, None
        if cuda_graph and new_tokens > 2:
            start = time.perf_counter()
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                logits[:, 1] = model(tokens[:, :1], caches=caches)[:, -1].float()
                tokens[:, 1] = logits[:, 1].argmax(-1)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = GraphStep(model, caches, tokens[:, 1:2])
            _sync(device)
            capture_s = time.perf_counter() - start
            bar.update(1)
            first = 2
        start = time.perf_counter()
        for i in range(first, new_tokens):
            if graph is None:
                logits[:, i] = model(tokens[:, i - 1 : i], caches=caches)[:, -1].float()
                tokens[:, i] = logits[:, i].argmax(-1)
            else:
                graph.replay()
                logits[:, i] = graph.logits.float()
                tokens[:, i] = graph.ids[:, 0]
            bar.update(1)
        _sync(device)
        decode_s = time.perf_counter() - start
    bar.close()
    return Generation(tokens, logits, prefill_s, decode_s, new_tokens - first, capture_s)


def generate_without_cache(model: LM, prompt: Tensor, new_tokens: int) -> Generation:
    """The reference: every token from a full forward over the prompt and the tokens so far."""
    ids, steps = prompt, []
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(new_tokens):
            step = model(ids)[:, -1].float()
            steps.append(step)
            ids = torch.cat([ids, step.argmax(-1, keepdim=True)], 1)
    elapsed = time.perf_counter() - start
    return Generation(ids[:, prompt.shape[1]:], torch.stack(steps, 1), 0.0, elapsed, new_tokens)
