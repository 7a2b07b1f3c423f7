"""NSACache storage: preallocated, grown geometrically (never copied per step), a fixed capacity,
sequences of different lengths decoding together, select and join."""

from __future__ import annotations

import pytest
import torch
from nsa_spec import InvalidInputError, NSAConfig
from nsa_torch import NSAAttention, NSACache

CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=3, window=12)


@pytest.fixture
def module() -> NSAAttention:
    torch.manual_seed(0)
    return NSAAttention(32, 4, num_kv_heads=2, config=CFG, phi="mlp").double().eval()


def pointers(cache: NSACache) -> list[int]:
    s = cache.state
    return [x.data_ptr() for x in (s.k_raw, s.k_cmp, s.v_slc, s.k_win, s.lengths)]


def test_storage_grows_geometrically_and_steps_do_not_copy(module, one_thread):
    x = torch.randn(1, 40, 32, dtype=torch.float64)
    cache = NSACache(capacity=12)
    with torch.no_grad():
        module(x[:, :5], cache=cache)
        seen = []
        for t in range(5, 40):
            before = (cache.capacity, pointers(cache))
            module(x[:, t : t + 1], cache=cache)
            if cache.capacity == before[0]:
                assert pointers(cache) == before[1], f"step at t={t} copied the storage"
            seen.append(cache.capacity)
    assert sorted(set(seen)) == [12, 24, 48]


def test_fixed_capacity_keeps_one_storage_and_refuses_to_overflow(module, one_thread):
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    cache = NSACache(capacity=12, growable=False)
    with torch.no_grad():
        full = module(x)
        module(x[:, :10], cache=cache)
        ptrs = pointers(cache)
        steps = [module(x[:, t : t + 1], cache=cache) for t in (10, 11)]
        assert pointers(cache) == ptrs and cache.capacity == 12
        torch.testing.assert_close(torch.cat(steps, 1), full[:, 10:12], rtol=1e-10, atol=1e-12)
        full_error = r"cache is full.*needs 13 tokens.*capacity=12.*growable=False"
        with pytest.raises(InvalidInputError, match=full_error):
            module(x[:, 12:13], cache=cache)
        assert cache.length == 12
        with pytest.raises(InvalidInputError, match=r"needs 13 tokens.*capacity=12"):
            module(x, cache=NSACache(capacity=12, growable=False))
    with pytest.raises(InvalidInputError, match=r"growable=False needs a capacity.*capacity=None"):
        NSACache(growable=False)
    with pytest.raises(InvalidInputError, match=r"capacity must be an int >= 1 or None: capacity=0"):
        NSACache(capacity=0)


def filled(module: NSAAttention, x: torch.Tensor, capacity: int | None = None) -> NSACache:
    cache = NSACache(capacity=capacity)
    with torch.no_grad():
        module(x, cache=cache)
    return cache


def test_sequences_of_different_lengths_decode_together(module, one_thread):
    """Prompts of 3, 30 and 17 tokens joined into one cache: every step of every sequence equals
    that sequence's own full forward (its own positions, its own compressed tokens)."""
    lengths, steps = (3, 30, 17), 8
    xs = [torch.randn(1, S + steps, 32, dtype=torch.float64) for S in lengths]
    cache = filled(module, xs[0][:, : lengths[0]])
    cache.join(*(filled(module, x[:, :S], capacity=S + 2) for x, S in zip(xs[1:], lengths[1:], strict=True)))
    assert cache.lengths.tolist() == list(lengths) and cache.length == 30
    with torch.no_grad():
        fulls = [module(x) for x in xs]
        for s in range(steps):
            token = torch.cat([x[:, S + s : S + s + 1] for x, S in zip(xs, lengths, strict=True)])
            y = module(token, cache=cache)
            for b, (full, S) in enumerate(zip(fulls, lengths, strict=True)):
                torch.testing.assert_close(y[b, 0], full[0, S + s], rtol=1e-10, atol=1e-12)
    assert cache.lengths.tolist() == [S + steps for S in lengths]
    assert cache.reads.shape == (3, 2)
    cache.select([2, 0])
    assert cache.lengths.tolist() == [17 + steps, 3 + steps] and cache.reads.shape == (2, 2)
    extra = torch.randn(2, 1, 32, dtype=torch.float64)
    with torch.no_grad():
        y = module(extra, cache=cache)
        for b, i in enumerate((2, 0)):
            own = module(torch.cat([xs[i], extra[b : b + 1]], 1))
            torch.testing.assert_close(y[b, 0], own[0, -1], rtol=1e-10, atol=1e-12)


def test_select_and_join_refuse_misuse(module, one_thread):
    cache = filled(module, torch.randn(2, 10, 32, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match=r"ints in 0\.\.1.*batch_indices=\[0, 2\]"):
        cache.select([0, 2])
    with pytest.raises(InvalidInputError, match="select needs a filled cache"):
        NSACache().select([0])
    with pytest.raises(InvalidInputError, match="join needs filled caches"):
        cache.join(NSACache())
    torch.manual_seed(1)
    other = NSAAttention(32, 4, num_kv_heads=1, config=CFG).double()
    with pytest.raises(InvalidInputError, match="cache was filled with kv heads H=2, this call has H=1"):
        cache.join(filled(other, torch.randn(1, 10, 32, dtype=torch.float64)))
    fixed = NSACache(capacity=10, growable=False)
    with torch.no_grad():
        module(torch.randn(1, 4, 32, dtype=torch.float64), cache=fixed)
    with pytest.raises(InvalidInputError, match=r"cache is full.*needs 12 tokens.*capacity=10"):
        fixed.join(filled(module, torch.randn(1, 12, 32, dtype=torch.float64)))
    fixed.join(cache)
    assert fixed.capacity == 10 and fixed.lengths.tolist() == [4, 10, 10]
    with pytest.raises(InvalidInputError, match="cache was filled with batch size B=3, this call has B=2"), \
            torch.no_grad():
        module(torch.randn(2, 1, 32, dtype=torch.float64), cache=fixed)


def test_inference_mode_and_no_grad_steps_share_one_cache(module, one_thread):
    cache = NSACache(capacity=4)
    with torch.inference_mode():
        module(torch.randn(1, 4, 32, dtype=torch.float64), cache=cache)
        module(torch.randn(1, 1, 32, dtype=torch.float64), cache=cache)  # grows inside inference mode
    with torch.no_grad():
        module(torch.randn(1, 1, 32, dtype=torch.float64), cache=cache)
    assert cache.length == 6
