"""`nsa_torch.integrations.transformers` on a tiny random Llama (float64, CPU): with only the
selected branch on and n * l' >= T, w >= T the converted model's logits equal the dense model's;
generation with the NSA cache equals generation without; the unsupported cases raise."""

from __future__ import annotations

import pytest
import torch
from nsa_spec import NSAConfig, UnsupportedError

# The torch and docs sessions install nsa-torch[transformers], so CI runs these; a bare checkout
# without the optional dependency reports them skipped instead of failing at import.
transformers = pytest.importorskip("transformers")

from nsa_torch.integrations.transformers import NSACacheLayer, NSALlamaAttention, to_nsa  # noqa: E402

T = 24
FULL = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=4, window=T)  # n * l' = 32 >= T, w = T
SPARSE = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=3, window=6)  # sparse beyond 24 tokens


def tiny_llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=10000.0,
    )
    return transformers.LlamaForCausalLM(config).double().eval()


@pytest.mark.parametrize("phi", ["mean", "mlp"])
def test_selected_branch_only_equals_dense(phi, one_thread):
    dense = tiny_llama()
    ids = torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dense(ids, labels=ids)
    nsa = to_nsa(tiny_llama(), FULL, phi=phi)
    assert all(isinstance(layer.self_attn, NSALlamaAttention) for layer in nsa.model.layers)
    with torch.no_grad():
        got = nsa(ids, labels=ids)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-8, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-8, rtol=0)


def test_loss_backward_reaches_branch_parameters(one_thread):
    nsa = to_nsa(tiny_llama(), SPARSE, phi="mlp", gates="equal")
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(2))
    nsa.train()
    nsa(ids, labels=ids).loss.backward()
    attn = nsa.model.layers[0].self_attn.nsa
    for name in ("cmp", "slc", "win"):
        assert attn.k_proj[name].weight.grad.abs().sum() > 0
    assert attn.phi_k.w1.grad.abs().sum() > 0 and attn.gate[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("gates", ["slc", "equal"])
def test_generate_with_cache_equals_without(gates, one_thread):
    model = to_nsa(tiny_llama(), SPARSE, gates=gates, gate_logit=3.0)
    prompt = torch.randint(0, 97, (2, 19), generator=torch.Generator().manual_seed(3))
    options = {"max_new_tokens": 17, "do_sample": False, "output_logits": True,
               "return_dict_in_generate": True, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **options)
        uncached = model.generate(prompt, use_cache=False, **options)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=1e-10, rtol=0)
    assert all(isinstance(layer, NSACacheLayer) for layer in cached.past_key_values.layers)
    assert cached.past_key_values.get_seq_length() == 19 + 17 - 1


def test_several_new_tokens_on_a_filled_cache_run_as_decode_steps(one_thread):
    model = to_nsa(tiny_llama(), SPARSE, gates="equal")
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = model(ids).logits
        cache = transformers.DynamicCache(config=model.config)
        first = model(ids[:, :20], cache=cache, use_cache=True).logits
        rest = model(ids[:, 20:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-10, rtol=0)


def test_unsupported_cases_raise(one_thread):
    model = to_nsa(tiny_llama(), SPARSE)
    ids = torch.randint(1, 97, (2, 10), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad(), pytest.raises(UnsupportedError, match="padded batches"):
        model(ids, attention_mask=mask)
    with torch.no_grad(), pytest.raises(UnsupportedError, match="beam search"):
        model.generate(ids, max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0)
