"""The demo runs end to end: figure written, decode reads measured equal to the exact count."""

from __future__ import annotations

import numpy as np
import pytest
from nsa_spec import NSAConfig
from nsa_spec.counters import tokens_read_exact
from nsa_torch import demo


def test_demo_writes_figure_and_measures_reads(tmp_path, capsys, one_thread):
    pytest.importorskip("matplotlib")
    out = tmp_path / "selection.png"
    demo.main(["--out", str(out), "--tokens", "700"])
    assert out.stat().st_size > 10_000
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:7].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [1024, 2048, 4096, 8192, 16384, 32768, 65536]
    for length, dense, measured, exact, *_ in rows:
        assert int(dense) == int(length)
        assert int(measured) == int(exact) == tokens_read_exact(int(length), NSAConfig())


def test_branch_maps_mark_forced_window_and_coverage():
    config = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=3, window=4)
    indices = np.array([[0, -1, -1]] * 8 + [[0, 1, -1]] * 8 + [[0, 1, 2]] * 4)
    maps = demo.branch_maps(indices, 20, config)
    assert maps["selected"][19].tolist() == [2, 2, 2]  # blocks 0, c-1, c are forced at t=19
    assert maps["window"][19].tolist() == [0, 0, 0.5]  # tokens 16..19 of block 2 (8 tokens)
    assert maps["compressed"][19].tolist() == [1, 1, 0.5]  # 9 compressed tokens cover 0..19
