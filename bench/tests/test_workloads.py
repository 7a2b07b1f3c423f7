"""Workload registry: default sizes, overrides, ids and the ideal-speedup basis."""

from __future__ import annotations

import pytest

from bench import workloads
from bench.workloads import Overrides


def test_prefill_paper_defaults():
    cases = workloads.get("prefill-paper").cases()
    assert [c.seqlen for c in cases] == [8192, 16384, 32768, 65536, 131072] * 2
    assert {c.mode for c in cases} == {"fwd", "fwdbwd"}
    c = cases[0]
    assert (c.batch, c.heads_q, c.heads_kv, c.dk, c.dv, c.dtype) == (1, 64, 4, 128, 128, "bfloat16")
    cfg = c.config
    assert (cfg.cmp_len, cfg.cmp_stride, cfg.slc_len, cfg.top_n, cfg.window) == (32, 16, 64, 16, 512)
    assert c.case_id == "fwd-B1-T8192-HQ64-H4-dk128-dv128-bfloat16"
    assert c.ideal_basis == "flops"


def test_groups_keep_hq_and_dk():
    cases = workloads.get("prefill-groups").cases(Overrides(seqlens=[8192], modes=["fwd"]))
    assert [(c.heads_q, c.heads_kv, c.group_size, c.dk) for c in cases] == [
        (64, 64, 1, 128), (64, 32, 2, 128), (64, 16, 4, 128), (64, 8, 8, 128), (64, 4, 16, 128)]


def test_decode_and_overrides():
    cases = workloads.get("decode-paper").cases(Overrides(seqlens=[8192, 16384], batches=[16]))
    assert [(c.batch, c.seqlen) for c in cases] == [(16, 8192), (16, 16384)]
    assert cases[0].case_id.startswith("decode-B16-S8192")
    assert cases[0].ideal_basis == "bytes"
    assert cases[0].ideal_speedup() == pytest.approx(4.0, abs=0.05)  # Table 4, plus q/o traffic


def test_selection_blocks_follow_L():
    cases = workloads.get("selection").cases()
    assert [(c.selected, c.blocks.n) for c in cases] == [(64, 1), (128, 2), (256, 4), (512, 8), (1024, 16)]
    with pytest.raises(ValueError, match="multiple of l'"):
        workloads.get("selection").cases(Overrides(selected=[100]))


def test_bad_mode_and_name():
    with pytest.raises(ValueError, match="modes"):
        workloads.get("decode-paper").cases(Overrides(modes=["fwd"]))
    with pytest.raises(KeyError, match="unknown workload"):
        workloads.get("nope")
