"""Capability honesty of backend "cuda" without a GPU: it loads, says why it cannot run here,
refuses what it does not claim with the reason, and its Python limits match the CUDA sources."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from nsa_cuda import build
from nsa_cuda.backend import CudaBackend
from nsa_cuda.ops import nsa as cuda_nsa
from nsa_cuda.ops import select
from nsa_spec.backends import Problem, backends, explain, load_failures, select_backend
from nsa_spec.config import NSAConfig
from nsa_spec.errors import InvalidInputError, UnsupportedError
from nsa_spec.info import render

PAPER = NSAConfig(cmp_len=32, cmp_stride=16, slc_len=64, top_n=16, window=512)
CLAIMED = Problem(op="forward", array_api="torch", device="cuda", dtype="bfloat16", heads_q=64, heads_kv=4,
                  dk=128, dv=128, config=PAPER, compute_capability=(9, 0), tokens=65536)
NO_DEVICE = "torch.cuda.is_available() is False"


def own_reasons(problem: Problem) -> list[str]:
    """The backend's reasons, less the missing CUDA device of this machine."""
    return [r for r in CudaBackend().not_supported_reasons(problem) if NO_DEVICE not in r]


def test_registered_and_loaded():
    assert "cuda" in backends() and "cuda" not in load_failures()
    assert isinstance(backends()["cuda"], CudaBackend)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_unavailable_without_a_gpu_says_why():
    why = CudaBackend().unavailable_reason()
    assert why is not None and ("without CUDA" in why or "no CUDA device" in why), why
    assert f"cuda (priority {CudaBackend.priority}): unavailable: {why}" in render()
    refused = {c.name: c for c in explain(CLAIMED)}["cuda"]
    assert refused.reasons == (f"unavailable: {why}",)
    with pytest.raises(UnsupportedError, match=re.escape(why)):
        select_backend(CLAIMED, "cuda")


@pytest.mark.parametrize(
    ("missing", "words"),
    [("cuda torch", "built without CUDA"), ("device", "no CUDA device"), ("nvcc", "nvcc not found"),
     ("ninja", "ninja is not on PATH"), (None, None)],
)
def test_unavailable_reason_names_the_first_missing_piece(monkeypatch, tmp_path, missing, words):
    from torch.utils import cpp_extension

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").touch()
    present = {"cuda torch": ("version.cuda", "13.0"), "device": ("cuda.is_available", lambda: True)}
    for name, (attr, value) in present.items():
        if name != missing:
            module, field = attr.split(".")
            monkeypatch.setattr(getattr(torch, module), field, value)
    if missing == "cuda torch":
        monkeypatch.setattr(torch.version, "cuda", None)
    if missing == "device":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None if missing == "nvcc" else str(tmp_path))
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: missing != "ninja")
    why = build.unavailable_reason.__wrapped__()
    assert (why is None) if words is None else (words in why), why


def test_the_paper_shape_is_claimed():
    assert own_reasons(CLAIMED) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"dtype": "float64"}, "dtype='float64'"),
        ({"heads_q": 128}, "G=HQ/H=32"),
        ({"dk": 512, "dv": 512}, "dk=512"),
        ({"compute_capability": (7, 5)}, "compute capability (7, 5) is below the minimum (8, 0)"),
        ({"device": "cpu"}, "device='cpu'"),
        ({"op": "backward"}, "backward is not implemented yet"),
        ({"op": "decode"}, "decode step is not implemented yet"),
        ({"batch": 20000}, "B*H=80000"),
    ],
)
def test_unclaimed_problems_name_the_reason(change, words):
    reasons = own_reasons(dataclasses.replace(CLAIMED, **change))
    assert any(words in r for r in reasons), reasons


def test_triton_stage_refusals_are_listed(monkeypatch):
    """A refusal of one of the composed triton stages shows up, marked as such."""
    from nsa_triton.backend import TritonBackend

    monkeypatch.setattr(TritonBackend, "not_supported_reasons",
                        lambda self, problem: [f"stage limit at T={problem.tokens}"])
    assert "triton stage: stage limit at T=65536" in own_reasons(CLAIMED)


def test_triton_stage_reasons_are_not_repeated():
    reasons = own_reasons(dataclasses.replace(CLAIMED, compute_capability=(7, 5)))
    assert len([r for r in reasons if "compute capability" in r]) == 1, reasons


def test_composition_is_declared():
    caps = CudaBackend().capabilities
    assert caps.ops == {"forward"} and {"lse", "indices", "branch_o"} <= caps.saves
    assert "triton" in caps.notes["composition"] and "sm_90a" in caps.notes["sm90"]
    assert cuda_nsa.COMPOSED_STAGES["selected"] == "cuda"
    assert set(cuda_nsa.COMPOSED_STAGES.values()) == {"cuda", "triton"}


def test_forward_swaps_only_the_selected_stage(monkeypatch):
    calls = []
    monkeypatch.setattr(cuda_nsa.triton_nsa, "nsa_attention", lambda *a, **kw: calls.append((a, kw)))
    cuda_nsa.nsa_attention("inputs", PAPER)
    assert calls == [(("inputs", PAPER), {"selected": select.selected_attention})]


def _header_constant(name: str, file: str) -> int:
    text = (build.CSRC / file).read_text()
    found = re.search(rf"constexpr int {name} = (\d+);", text)
    assert found, f"{name} not found in {file}"
    return int(found.group(1))


def test_python_limits_match_the_cuda_sources():
    assert _header_constant("kMaxGroup", "select.h") == select.MAX_GROUP
    assert _header_constant("kMaxHeadDim", "select.h") == select.MAX_HEAD_DIM
    assert _header_constant("kMaxGridY", "select.cu") == select.MAX_BATCH_HEADS
    assert {s for s in build.SOURCES} <= {p.name for p in build.CSRC.iterdir()}


def _tensors(B=1, T=5, HQ=8, H=2, dk=16, dv=16, n=3, dtype=torch.bfloat16):
    return dict(
        q=torch.zeros(B, T, HQ, dk, dtype=dtype), k_slc=torch.zeros(B, T, H, dk, dtype=dtype),
        v_slc=torch.zeros(B, T, H, dv, dtype=dtype), indices=torch.zeros(B, T, H, n, dtype=torch.int32),
        o=torch.zeros(B, T, HQ, dv), lse=torch.zeros(B, T, HQ),
    )


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"indices": torch.zeros(1, 5, 2, 3, dtype=torch.int64)}, InvalidInputError, "indices must be int32"),
        ({"o": torch.zeros(1, 5, 8, 16, dtype=torch.bfloat16)}, InvalidInputError, "o must be float32"),
        ({"v_slc": torch.zeros(1, 5, 2, 16)}, InvalidInputError, "v_slc must have q's dtype"),
        ({"k_slc": torch.zeros(1, 4, 2, 16, dtype=torch.bfloat16)}, InvalidInputError,
         "k_slc must have shape"),
        ({"lse": torch.zeros(1, 5, 8, 1)}, InvalidInputError, "lse must be a 3-dim"),
        ({"q": torch.zeros(1, 5, 8, 32, dtype=torch.bfloat16)[..., ::2]}, InvalidInputError, "unit stride"),
        (_tensors(n=0), InvalidInputError, "n >= 1 slots"),
        (_tensors(dtype=torch.float64), UnsupportedError, "q.dtype=torch.float64"),
        (_tensors(HQ=64, H=2), UnsupportedError, "G=HQ/H=32"),
        (_tensors(dk=320, dv=320), UnsupportedError, "dk=320"),
        ({}, InvalidInputError, "must be on q's CUDA device"),
    ],
)
def test_input_checks_use_the_project_errors(change, error, words):
    args = {**_tensors(), **change}
    with pytest.raises(error, match=re.escape(words)):
        select.check_inputs(**args)
