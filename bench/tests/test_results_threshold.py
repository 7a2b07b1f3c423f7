"""CSV round trip, merging, measured speedups, the table, and the selection threshold logic."""

from __future__ import annotations

import json

import pytest

from bench import results, threshold


def _row(backend, kind, case_id, ms, status="ok", workload="prefill-paper", mode="fwd", seqlen=8192,
         selected=None):
    return {
        "workload": workload, "mode": mode, "case_id": case_id, "backend": backend, "kind": kind,
        "batch": 1, "seqlen": seqlen, "heads_q": 64, "heads_kv": 4, "group_size": 16, "dk": 128,
        "dv": 128, "dtype": "bfloat16", "l": 32, "d": 16, "l_slc": 64, "n": 16, "w": 512,
        "selected": selected, "status": status, "reason": "" if status == "ok" else "out of memory: x",
        "time_ms": ms, "timer": "t", "flops": 10**12, "bytes": 10**9, "tflops": 1.5, "tbps": 0.25,
        "dense_flops": 4 * 10**12, "dense_bytes": 10**9, "ideal_speedup": 4.0, "ideal_basis": "flops",
        "speedup_vs_dense": None, "dense_ref": "", "note": "n, with comma", "commit": "abc",
        "timestamp": "2026-11-27T00:00:00+00:00",
    }


def test_slug():
    assert results.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert results.slug("cpu") == "cpu"


def test_speedups_use_best_dense_of_the_same_case():
    rows = [_row("sdpa-cudnn", "dense", "a", 4.0), _row("sdpa-flash", "dense", "a", 5.0),
            _row("torch", "nsa", "a", 2.0), _row("torch", "nsa", "b", 1.0),
            _row("sdpa-flash", "dense", "c", None, status="skipped")]
    results.fill_speedups(rows)
    assert rows[2]["speedup_vs_dense"] == 2.0 and rows[2]["dense_ref"] == "sdpa-cudnn"
    assert rows[1]["speedup_vs_dense"] == 0.8
    assert rows[3]["speedup_vs_dense"] is None  # no dense time for case b
    assert rows[4]["speedup_vs_dense"] is None


def test_write_read_merge(tmp_path):
    meta = {"gpu": "NVIDIA H100 80GB HBM3", "commit": "abc", "started": "t1"}
    first = [_row("sdpa-cudnn", "dense", "a", 4.0), _row("torch", "nsa", "a", 8.0)]
    j, c = results.write("prefill-paper", first, meta, tmp_path, date="2026-11-27")
    assert j == tmp_path / "nvidia-h100-80gb-hbm3" / "prefill-paper-2026-11-27.json"
    back = results.read_csv(c)
    assert back[1]["time_ms"] == 8.0 and back[1]["speedup_vs_dense"] == 0.5
    assert back[0]["batch"] == 1 and back[0]["selected"] is None and back[0]["note"] == "n, with comma"
    # A second run replaces torch's row for case a and keeps the baseline.
    results.write("prefill-paper", [_row("torch", "nsa", "a", 2.0)], {**meta, "started": "t2"}, tmp_path,
                  date="2026-11-27")
    back = results.read_csv(c)
    assert [(r["backend"], r["time_ms"], r["speedup_vs_dense"]) for r in back] == [
        ("sdpa-cudnn", 4.0, 1.0), ("torch", 2.0, 2.0)]
    assert [r["started"] for r in json.loads(j.read_text())["runs"]] == ["t1", "t2"]
    # The same run writing again (after its next backend) replaces its own entry.
    results.write("prefill-paper", [], {**meta, "started": "t2"}, tmp_path, date="2026-11-27")
    assert [r["started"] for r in json.loads(j.read_text())["runs"]] == ["t1", "t2"]


def test_table_lists_timed_rows_and_summarises_the_rest():
    rows = [_row("sdpa-cudnn", "dense", "a", 4.0), _row("torch", "nsa", "a", 2.0),
            _row("torch", "nsa", "b", None, status="skipped", seqlen=16384),
            _row("torch", "nsa", "c", None, status="skipped", seqlen=32768)]
    results.fill_speedups(rows)
    text = results.table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["workload", "backend", "mode", "size"]
    assert "2.00x" in lines[2] and "4.0x flops" in lines[2]
    assert lines[3] == ("prefill-paper torch skipped (2: fwd T16384, fwd T32768): out of memory: x")


def _sel(backend, L, ms, T=16384):
    return _row(backend, "nsa", f"selection-T{T}-L{L}", ms, workload="selection", mode="selection",
                seqlen=T, selected=L)


def test_threshold_needs_the_margin_from_L_on():
    rows = [_sel("triton", 64, 1.0), _sel("torch", 64, 1.1),   # 1.1x: below 1.2
            _sel("triton", 128, 1.0), _sel("torch", 128, 1.3),  # 1.3x
            _sel("triton", 256, 1.0), _sel("torch", 256, 1.1),  # dips below: resets
            _sel("triton", 512, 1.0), _sel("torch", 512, 1.25),
            _sel("triton", 1024, 1.0), _sel("torch", 1024, 2.0)]
    series = threshold.points(rows, "triton", "torch")[16384]
    assert [p.selected for p in series] == [64, 128, 256, 512, 1024]
    assert threshold.threshold(series, 1.2) == 512
    assert threshold.threshold(series, 1.0) == 64
    assert threshold.threshold(series, 2.5) is None


def test_threshold_report(tmp_path):
    rows = [_sel("a", 64, 2.0), _sel("b", 64, 1.0), _sel("a", 128, 1.0), _sel("b", 128, 3.0),
            _sel("b", 256, 1.0)]  # 256 timed for b only: left out
    text = threshold.report(rows, "a", "b", 1.2)
    assert "| 64 | 2.000 | 1.000 | 0.50 | no |" in text
    assert "| 128 | 1.000 | 3.000 | 3.00 | yes |" in text
    assert "**Use a for L >= 128**" in text and "| 256 |" not in text
    assert "No selection size was timed" in threshold.report(rows, "a", "zzz", 1.2)
    csv = tmp_path / "selection.csv"
    results.write_csv(csv, rows)
    out = threshold.write_report([csv], "a", "b", 1.2, tmp_path / "r.md")
    assert "**Use a for L >= 128**" in out.read_text()


@pytest.mark.parametrize("ratio", [0.5, 1.0, 3.0])
def test_point_ratio(ratio):
    assert threshold.Point(64, 2.0, 2.0 * ratio).ratio == pytest.approx(ratio)
