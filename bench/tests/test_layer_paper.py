"""bench.layer_paper on the CPU at a tiny shape: both layers run forward and forward+backward, the
NSA layer's parts are timed, and the report has one row per T."""

from __future__ import annotations

import torch
from nsa_spec import NSAConfig

from bench import layer_paper

TINY = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=3, window=16)


def test_dense_layer_is_causal():
    layer = layer_paper.DenseLayer(32, 4, 2, 8)
    x = torch.randn(1, 20, 32)
    y = layer(x)
    x2 = x.clone()
    x2[:, 10:] = torch.randn(1, 10, 32)
    assert y.shape == x.shape and torch.allclose(layer(x2)[:, :10], y[:, :10])


def test_report_rows():
    text = layer_paper.report([40, 64], 32, 4, 2, "cpu", TINY)
    rows = [line for line in text.splitlines() if line.startswith("| 40 ") or line.startswith("| 64 ")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        times = [float(c.rstrip("x")) for c in cells[1:7]] + [float(p) for p in cells[7].split(" / ")]
        assert all(t > 0 for t in times)
