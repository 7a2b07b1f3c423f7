"""Turn a `transformers` Llama-style causal LM into an NSA model: `to_nsa(model, config)`.

Each decoder layer's `self_attn` (q/k/v/o projections, the model's RoPE) becomes an
`NSALlamaAttention` around `nsa_torch.NSAAttention`: its q and o projections are the dense ones,
each branch's k and v projections start as copies of the dense k and v (so the branches can
diverge in continued pre-training), phi is "mean" by default ("mlp" or any registered phi by
name), and the gate MLP starts with only the selected branch on (`gates="slc"`: last layer's
weight 0, bias +gate_logit for slc and -gate_logit for cmp and win). With n * l' >= T and
w >= T the selected branch sees every earlier token, so the converted model's logits equal the
dense model's up to sigmoid(-gate_logit) ~ 4e-18 at the default 40. That gate is saturated, so
its gradients vanish: for continued pre-training pass a smaller `gate_logit` (e.g. 4), or
`gates="equal"` (every gate at sigmoid(0) = 1/2).

Why a module swap and not transformers' `AttentionInterface`: a function registered there gets
q, k, v after the model's own projections and RoPE, and a mask; NSA needs what it is not given:
one key/value projection per branch, the gate MLP on the layer's input, phi over the raw keys,
and a decode state (raw and compressed streams) that is not a key/value cache. So the module is
swapped; it keeps the dense attention's call (hidden_states, position_embeddings, attention_mask,
cache, ...) -> (output, None) and rotates by the model's own cos/sin, so RoPE variants carry over.

Cache: given any transformers `Cache` (generate()'s default `DynamicCache` included), each NSA
layer installs an `NSACacheLayer` at its index, which holds an `nsa_torch.NSACache` (compressed
tokens, selection, window) instead of dense keys/values and reports the sequence length to the
model; generation with the cache equals generation without (`use_cache=False`). Not supported,
each raising `UnsupportedError`: padded batches (an attention mask with zeros: NSA here attends
causally over the whole row), beam search (cache reordering) and cropping (assisted decoding).
A forward with several new tokens on a non-empty cache runs them as single decode steps.
"""

from __future__ import annotations

from typing import Any

import torch
from nsa_spec.config import NSAConfig
from nsa_spec.errors import InvalidInputError, UnsupportedError
from torch import Tensor, nn
from transformers.cache_utils import Cache, CacheLayerMixin

from nsa_torch.cache import NSACache
from nsa_torch.module import NSAAttention

GATE_INITS = ("slc", "equal")
SLC = 1  # branch order cmp, slc, win


class NSACacheLayer(CacheLayerMixin):
    """One layer's slot in a transformers `Cache`: an `NSACache` in place of dense keys/values."""

    is_compileable = False
    is_croppable = False

    def __init__(self) -> None:
        super().__init__()
        self.nsa = NSACache()

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        raise UnsupportedError("an NSA cache layer takes no dense keys/values (NSALlamaAttention fills it)")

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedError("an NSA cache layer takes no dense keys/values (NSALlamaAttention fills it)")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.nsa.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.nsa.reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise UnsupportedError("beam search is not supported by NSA layers: their cache cannot be reordered")

    def offload(self) -> None:
        raise UnsupportedError("cache offloading is not supported by NSA layers")

    def prefetch(self) -> None:
        raise UnsupportedError("cache offloading is not supported by NSA layers")


def nsa_cache(cache: Cache, layer_idx: int) -> NSACache:
    """The NSACache of layer `layer_idx` in `cache`, installing an NSACacheLayer in an empty slot."""
    layers = cache.layers
    while len(layers) <= layer_idx:
        if cache.layer_class_to_replicate is None:
            raise UnsupportedError(
                f"the cache has {len(layers)} layers and no layer class to add layer {layer_idx}")
        layers.append(cache.layer_class_to_replicate())
    slot = layers[layer_idx]
    if isinstance(slot, NSACacheLayer):
        return slot.nsa
    if getattr(slot, "is_initialized", False) or slot.get_seq_length():
        raise UnsupportedError(
            f"cache layer {layer_idx} already holds dense keys/values ({type(slot).__name__}); an NSA layer "
            "needs an empty slot: pass a new cache"
        )
    layers[layer_idx] = NSACacheLayer()
    return layers[layer_idx].nsa


class NSALlamaAttention(nn.Module):
    """Drop-in for a Llama-style attention module: (hidden_states, position_embeddings, ...) ->
    (output, None), computed by `self.nsa` (an `NSAAttention`) with the model's cos/sin."""

    def __init__(self, nsa: NSAAttention, layer_idx: int) -> None:
        super().__init__()
        self.nsa = nsa
        self.layer_idx = layer_idx

    def forward(
        self, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor] | None = None,
        attention_mask: Tensor | None = None, cache: Cache | None = None, **kwargs: Any,
    ) -> tuple[Tensor, None]:
        if position_embeddings is None:
            raise InvalidInputError("position_embeddings (cos, sin) are required: the host model makes them")
        cos, sin = position_embeddings
        for old_name in ("past_key_values", "past_key_value"):  # transformers < 5.40 may still pass these
            cache = kwargs.get(old_name) if cache is None else cache
        state = None if cache is None else nsa_cache(cache, self.layer_idx)
        if state is None or state.length == 0 or hidden_states.shape[1] == 1:
            return self.nsa(hidden_states, cache=state, rotary=(cos, sin)), None
        steps = [
            self.nsa(hidden_states[:, t : t + 1], cache=state, rotary=(cos[:, t : t + 1], sin[:, t : t + 1]))
            for t in range(hidden_states.shape[1])
        ]
        return torch.cat(steps, 1), None


def _copy(target: nn.Linear, source: nn.Linear) -> None:
    target.weight.copy_(source.weight)
    if (target.bias is None) != (source.bias is None):
        raise InvalidInputError("q/k/v/o biases of the NSA layer and the dense layer differ")
    if target.bias is not None:
        target.bias.copy_(source.bias)


def _reject_padding(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.dim() == 2 and not bool(mask.all()):
        raise UnsupportedError(
            "padded batches are not supported by the NSA conversion (attention_mask has zeros): NSA attends "
            "causally over the whole row; run unpadded sequences, one length per batch"
        )


@torch.no_grad()
def nsa_from_dense(dense: nn.Module, model_config: Any, config: NSAConfig, phi: str = "mean",
                   gates: str = "slc", gate_logit: float = 40.0, gate_hidden: int | None = None,
                   phi_hidden: int | None = None, backend: str | None = None) -> NSAAttention:
    """An NSAAttention whose q/o are `dense`'s and whose every branch's k/v start as `dense`'s k/v."""
    if gates not in GATE_INITS:
        raise InvalidInputError(f"gates must be one of {GATE_INITS}: gates={gates!r}")
    heads, width = model_config.num_attention_heads, model_config.hidden_size
    head_dim = getattr(model_config, "head_dim", None) or width // heads
    weight = dense.q_proj.weight
    nsa = NSAAttention(
        width, heads, num_kv_heads=model_config.num_key_value_heads, head_dim=head_dim, config=config,
        phi=phi, phi_hidden=phi_hidden, gate_hidden=gate_hidden, backend=backend,
        bias=dense.q_proj.bias is not None,
    ).to(device=weight.device, dtype=weight.dtype)
    _copy(nsa.q_proj, dense.q_proj)
    _copy(nsa.o_proj, dense.o_proj)
    for stream in nsa.k_proj:
        _copy(nsa.k_proj[stream], dense.k_proj)
        _copy(nsa.v_proj[stream], dense.v_proj)
    last = nsa.gate[-1]
    last.weight.zero_()
    logits = torch.full((nsa.num_heads, 3), -gate_logit if gates == "slc" else 0.0)
    logits[:, SLC] = gate_logit if gates == "slc" else 0.0
    last.bias.copy_(logits.flatten())
    return nsa


def to_nsa(model: nn.Module, config: NSAConfig, phi: str = "mean", gates: str = "slc",
           gate_logit: float = 40.0, gate_hidden: int | None = None, phi_hidden: int | None = None,
           backend: str | None = None) -> nn.Module:
    """Replace every decoder layer's `self_attn` of a Llama-style `model` (in place) by NSA; returns it.

    `model` is a `LlamaForCausalLM` or any model whose `model.model.layers[i].self_attn` has
    q_proj, k_proj, v_proj, o_proj and takes the model's (cos, sin). `config` holds NSA's block
    sizes and gate kind; `phi`, `gates`, `gate_logit`: see the module docstring.
    """
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise InvalidInputError(
            f"model must have .model.layers[i].self_attn (Llama-style): got {type(model).__name__}")
    for index, layer in enumerate(layers):
        dense = layer.self_attn
        if isinstance(dense, NSALlamaAttention):
            raise InvalidInputError(f"layer {index} is already NSA: convert a dense model once")
        nsa = nsa_from_dense(dense, model.config, config, phi=phi, gates=gates, gate_logit=gate_logit,
                             gate_hidden=gate_hidden, phi_hidden=phi_hidden, backend=backend)
        layer.self_attn = NSALlamaAttention(nsa, getattr(dense, "layer_idx", index))
    inner.register_forward_pre_hook(_reject_padding, with_kwargs=True)
    return model
