"""The runner end to end on the CPU at tiny sizes: gate, skip reasons, files, table, plot."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest

from bench import __main__ as cli
from bench import results, runner, targets, timing, workloads
from bench.gate import GateResult, command

TINY = workloads.Overrides(seqlens=[48], batches=[1], selected=[16], heads_q=4, heads_kv=1,
                           head_dim=8, dtype="float64", config=cli.SMOKE_CONFIG)
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_NSA_TORCH = importlib.util.find_spec("nsa_torch") is not None


def _gate(passed):
    tail = "ok" if passed else "1 failed"
    return lambda backend, device: GateResult(backend, device, passed, 0.0, tail)


def test_gate_command_is_the_documented_one():
    cmd = command("torch", "cuda")
    assert cmd[1:] == ["-m", "pytest", "--pyargs", "nsa_conformance.suite", "--nsa-backend", "torch",
                       "--nsa-device", "cuda", "-m", "quick", "-q", "-p", "no:cacheprovider"]


def test_run_numpy_and_dense_on_cpu(tmp_path):
    names = ["numpy", "sdpa-math", "sdpa-cudnn", "no-such-backend"] + (["torch"] if HAS_NSA_TORCH else [])
    # Forward only: the numpy backward compiles JAX (half a minute); fwdbwd is timed on the GPU.
    out = runner.run(["prefill-paper"], names, "cpu", replace(TINY, modes=["fwd"]), 30, tmp_path,
                     gate=_gate(True))
    out |= runner.run(["decode-paper", "selection"], names, "cpu", TINY, 30, tmp_path, gate=_gate(True))
    by = {(r["workload"], r["backend"], r["case_id"]): r for rows in out.values() for r in rows}
    fwd = by[("prefill-paper", "numpy", "fwd-B1-T48-HQ4-H1-dk8-dv8-float64")]
    assert fwd["status"] == "ok" and fwd["time_ms"] > 0
    assert fwd["tflops"] == pytest.approx(fwd["flops"] / (fwd["time_ms"] * 1e-3) / 1e12)
    assert fwd["peak_gib"] is None  # the CUDA allocator's peak, on a GPU only
    assert by[("selection", "numpy", "selection-B1-T48-HQ4-H1-dk8-dv8-float64-L16")]["status"] == "ok"
    assert by[("decode-paper", "numpy", "decode-B1-S48-HQ4-H1-dk8-dv8-float64")]["status"] == "ok"
    cudnn = by[("prefill-paper", "sdpa-cudnn", "fwd-B1-T48-HQ4-H1-dk8-dv8-float64")]
    assert cudnn["status"] == "skipped" and "needs a CUDA device" in cudnn["reason"]
    missing = by[("prefill-paper", "no-such-backend", "fwd-B1-T48-HQ4-H1-dk8-dv8-float64")]
    assert missing["status"] == "skipped" and "not installed" in missing["reason"]
    assert not any(r["backend"].startswith("sdpa") for r in out["selection"])  # no dense selection
    if HAS_TORCH:
        math = by[("prefill-paper", "sdpa-math", "fwd-B1-T48-HQ4-H1-dk8-dv8-float64")]
        assert math["status"] == "ok" and math["speedup_vs_dense"] == 1.0
        assert fwd["speedup_vs_dense"] == pytest.approx(math["time_ms"] / fwd["time_ms"])
        assert "GQA expanded" in math["note"]
    csvs = sorted((tmp_path / "cpu").glob("*.csv"))
    assert [p.name.split("-20")[0] for p in csvs] == ["decode-paper", "prefill-paper", "selection"]
    assert len(results.read_csv(csvs[1])) == len(out["prefill-paper"])
    text = results.table(out["prefill-paper"])
    assert "numpy" in text and "sdpa-cudnn skipped" in text
    if HAS_NSA_TORCH:  # the torch backend's rows, the selection adapter included
        assert {r["status"] for r in out["selection"] if r["backend"] == "torch"} == {"ok"}
        assert {r["status"] for r in out["decode-paper"] if r["backend"] == "torch"} == {"ok"}
    if HAS_TORCH and importlib.util.find_spec("matplotlib"):
        from bench.plot import plot_all

        pngs = plot_all([tmp_path])
        assert {p.stem for p in pngs} == {p.stem for p in csvs[:2]}  # selection has no dense time
        assert all(p.stat().st_size > 1000 for p in pngs)


def test_failed_gate_refuses_every_case(tmp_path):
    out = runner.run(["decode-paper"], ["numpy"], "cpu", TINY, 30, tmp_path, gate=_gate(False))
    assert {r["status"] for r in out["decode-paper"]} == {"refused"}
    assert all("conformance gate failed on cpu (1 failed)" in r["reason"] for r in out["decode-paper"])


class _SlowTarget:
    """Stands in for a target: a case costs what `seconds` says, without running anything."""

    name, kind, needs_gate, modes = "slow", "nsa", False, ("fwd",)

    def __init__(self, seconds):
        self.seconds = seconds

    def unsupported(self, case, device):
        return None

    def model_blocks(self, case):
        return case.blocks

    def prepare(self, case, device):
        raise timing.OverBudgetError(self.seconds, 1.0)


def test_flash_attn_rows_say_why_they_are_skipped(tmp_path, monkeypatch):
    """Without flash-attn (or off CUDA) the flash-attn rows are skipped with the reason, not dropped."""
    monkeypatch.setattr(targets, "_flash_attn_module", lambda: None)
    out = runner.run(["prefill-paper"], ["flash-attn"], "cpu", TINY, 30, tmp_path, gate=_gate(True))
    rows = [r for r in out["prefill-paper"] if r["backend"] == "flash-attn"]
    assert rows and {r["status"] for r in rows} == {"skipped"}
    assert all("flash-attn is not installed" in r["reason"] for r in rows)


def test_over_budget_stops_the_series():
    cases = workloads.get("prefill-paper").cases(workloads.Overrides(seqlens=[64, 128], modes=["fwd"]))
    series = runner.Series()
    first = runner.run_case(cases[0], _SlowTarget(5.0), "cpu", 1.0, series, "abc")
    second = runner.run_case(cases[1], _SlowTarget(5.0), "cpu", 1.0, series, "abc")
    assert first["status"] == "skipped" and "5.0 s, over the 1 s budget" in first["reason"]
    assert second["reason"] == "a smaller size exceeded the time budget"


def test_prediction_skips_sizes_over_budget():
    cases = workloads.get("prefill-paper").cases(workloads.Overrides(seqlens=[8192, 131072], modes=["fwd"]))
    series = runner.Series()
    series.last = (cases[0].nsa_cost().total_flops, 0.5)  # 0.5 s at 8k -> far over 1 s at 128k
    row = runner.run_case(cases[1], _SlowTarget(0.0), "cpu", 1.0, series, "abc")
    assert row["status"] == "skipped" and row["reason"].startswith("predicted")


def test_cli_list_and_threshold(tmp_path, capsys):
    assert cli.main(["list"]) == 0
    assert "decode-B64-S131072-HQ64-H4-dk128-dv128-bfloat16" in capsys.readouterr().out
    csv = tmp_path / "sel.csv"
    results.write_csv(csv, [])
    assert cli.main(["threshold", str(csv), "--candidate", "a", "--baseline", "b"]) == 0
    assert (tmp_path / "selection-threshold-a-vs-b.md").exists()


@pytest.mark.skipif(not HAS_NSA_TORCH, reason="needs nsa-torch (the nox session installs it)")
def test_torch_selection_adapter_computes_the_reference_branch():
    import numpy as np
    from nsa_spec.reference.select import selected_attention

    from bench import targets

    case = workloads.get("selection").cases(replace(TINY, seqlens=[70], selected=[32]))[0]
    prepared = targets.get("torch").prepare(case, "cpu")
    a = prepared.inputs
    o = np.concatenate([x.numpy() for x in prepared.fn()], axis=1)[0]  # [T, H, G, dv]
    B, T, H = case.batch, case.seqlen, case.heads_kv
    k, v = (x.reshape(B, H, -1, x.shape[-1])[:, :, :T].permute(0, 2, 1, 3)[0].numpy()
            for x in (a["k_blocks"], a["v_blocks"]))
    q = a["q"][0].reshape(T, case.heads_q, case.dk).numpy()
    ref, _ = selected_attention(q, k, v, a["indices"][0].numpy(), case.config)
    assert np.abs(o.reshape(T, case.heads_q, case.dv) - ref).max() < 1e-10
    for row in a["indices"][0].numpy().reshape(-1, 2):  # valid selections: ascending, -1 padded
        got = row[row >= 0]
        assert len(got) >= 1 and list(got) == sorted(set(got)) and (row[len(got):] == -1).all()


def test_cli_overrides():
    a = cli._parser().parse_args(["run", "prefill-groups", "--backend", "torch", "sdpa-cudnn", "--smoke",
                                  "--seqlens", "64,128", "--groups", "2,4", "--modes", "fwd"])
    o = cli._overrides(a)
    assert (o.seqlens, o.groups, o.modes, o.heads_q, o.head_dim) == ([64, 128], [2, 4], ["fwd"], 16, 32)
    assert o.config == cli.SMOKE_CONFIG and a.backend == ["torch", "sdpa-cudnn"] and a.device == "cuda"
    cases = workloads.get("prefill-groups").cases(o)
    assert [(c.group_size, c.seqlen) for c in cases] == [(2, 64), (2, 128), (4, 64), (4, 128)]
    plain = cli._overrides(cli._parser().parse_args(["run", "decode-paper", "--backend", "torch"]))
    assert plain == workloads.Overrides()
