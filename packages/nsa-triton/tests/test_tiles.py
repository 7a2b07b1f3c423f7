"""The shared-memory fit of tile plans (`tiles.first_fit`), with a stand-in for a compiled kernel."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from nsa_spec.errors import UnsupportedError
from nsa_triton.ops import tiles


class FakeKernel:
    """Compiles to `needs[BN]` bytes of shared memory; counts its compiles."""

    __name__ = "_fake"
    fn = SimpleNamespace(__module__="tests")
    arg_names = ("X", "T", "BN")
    params = (SimpleNamespace(name="X", is_constexpr=False), SimpleNamespace(name="T", is_constexpr=False),
              SimpleNamespace(name="BN", is_constexpr=True))

    def __init__(self, needs: dict[int, int]) -> None:
        self.needs, self.compiles = needs, 0

    def warmup(self, *args, grid, **kwargs):
        self.compiles += 1
        return SimpleNamespace(metadata=SimpleNamespace(shared=self.needs[kwargs["BN"]]))


@pytest.fixture
def compiled(monkeypatch):
    """first_fit as on a GPU with 100000 bytes of shared memory per program."""
    monkeypatch.setattr(tiles, "interpreted", lambda: False)
    monkeypatch.setattr(tiles, "smem_limit", lambda device: 100_000)
    tiles._SHARED.clear()


def launch(plan, T=100):
    keys, stages = plan
    return (torch.empty(1), T), dict(BN=keys, num_stages=stages)


def test_takes_the_first_plan_that_fits(compiled):
    kernel = FakeKernel({64: 150_000, 32: 90_000, 16: 40_000})
    plans = tiles.staged_plans(64)  # (64, 3), (64, 2), (64, 1), (32, 1), (16, 1)
    assert tiles.first_fit(kernel, plans, launch, torch.device("cpu")) == (32, 1)
    compiles = kernel.compiles
    assert tiles.first_fit(kernel, plans, launch, torch.device("cpu")) == (32, 1)
    assert tiles.first_fit(kernel, plans, lambda p: launch(p, T=228), torch.device("cpu")) == (32, 1)
    assert kernel.compiles == compiles  # cached, also across lengths of the same specialisation
    tiles.first_fit(kernel, plans, lambda p: launch(p, T=224), torch.device("cpu"))  # divisible by 16
    assert kernel.compiles > compiles


def test_no_plan_fits_says_why(compiled):
    kernel = FakeKernel({64: 150_000, 32: 120_000, 16: 110_000})
    message = r"_fake: none of its 5 tile plans fits the 100000 bytes.*needs 110000"
    with pytest.raises(UnsupportedError, match=message):
        tiles.first_fit(kernel, tiles.staged_plans(64), launch, torch.device("cpu"))


def test_interpreter_takes_the_tuned_plan(monkeypatch):
    monkeypatch.setattr(tiles, "interpreted", lambda: True)
    kernel = FakeKernel({})
    assert tiles.first_fit(kernel, [(64, 3), (16, 1)], launch, torch.device("cpu")) == (64, 3)
    assert kernel.compiles == 0
