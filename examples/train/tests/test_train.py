"""The training example on the CPU: config, data split, loss, exact resume, SIGTERM, watchdog,
SIGUSR1, the Hugging Face loader's timeout, and 2-process gloo DDP through torchrun."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from nsa_spec.errors import InvalidInputError
from nsa_train import checkpoint
from nsa_train.config import ModelConfig, load_config
from nsa_train.data import NEEDLE_QUESTION, Batches, DataUnavailableError, is_validation, local_corpus
from nsa_train.loop import train
from nsa_train.model import LM, parameter_count
from nsa_train.operations import Watchdog, install_stack_dump
from nsa_train.tokenizer import IGNORE, decode

EXAMPLE = Path(__file__).resolve().parents[1]
TINY = EXAMPLE / "configs" / "tiny.yaml"
SCRIPT = EXAMPLE / "train.py"


def tiny(run_dir: Path, *overrides: str):
    return load_config(TINY, [f"ops.run_dir={run_dir}", "ops.progress=false", *overrides])


def child_env() -> dict[str, str]:
    """The test's import path for child processes, one thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    return env


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  layers: 3\ntrain:\n  lr: 1e-3\n")
    cfg = load_config(path, ["model.layers=2", "data.include=[yaml, tqdm]", "model.attention=dense"])
    assert (cfg.model.layers, cfg.model.attention, cfg.data.include) == (2, "dense", ["yaml", "tqdm"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.width == ModelConfig().width
    with pytest.raises(InvalidInputError, match=r"unknown key model\.depth"):
        load_config(path, ["model.depth=2"])
    with pytest.raises(InvalidInputError, match=r"section\.key=value"):
        load_config(path, ["layers=2"])
    with pytest.raises(InvalidInputError, match="unknown config section 'modle'"):
        load_config(path, ["modle.layers=2"])


def test_default_model_size():
    with torch.device("meta"):
        nsa, dense = LM(ModelConfig()), LM(ModelConfig(attention="dense"))
    assert 20e6 <= parameter_count(dense) < parameter_count(nsa) <= 50e6


def test_split_by_file_hash_is_stable(tmp_path):
    """The split is sha256 of the relative path (not Python's salted hash, not the file order)."""
    keys = ["yaml/__init__.py", "yaml/nodes.py", "torch/nn/functional.py", "a.py", "b.py", "c.py", "d.py"]
    assert [k for k in keys if is_validation(k, 30)] == ["b.py", "c.py"]
    corpora = []
    for name, order in (("up", range(30)), ("down", reversed(range(30)))):
        (tmp_path / name / "pkg").mkdir(parents=True)
        for i in order:
            (tmp_path / name / "pkg" / f"m{i:02d}.py").write_text(f"value_{i} = {i}\n")
        cfg = load_config(None, ["data.source=tree", f"data.path={tmp_path / name}", "data.seq_len=8",
                                 "data.val_percent=30"]).data
        corpora.append(local_corpus(cfg))
    assert all(np.array_equal(corpora[0][s], corpora[1][s]) for s in ("train", "validation"))
    found = [int(line.split()[0][6:]) for line in decode(corpora[0]["validation"]).splitlines() if line]
    assert found == [i for i in range(30) if is_validation(f"pkg/m{i:02d}.py", 30)] != []


def test_needle_targets_are_the_digits():
    cfg = load_config(None, ["data.source=needle", "data.seq_len=300", "data.needle_digits=5"]).data
    ids, targets = Batches(cfg, 3, seed=1).batch("train", 7)
    assert ids.shape == targets.shape == (3, 300)
    for row in range(3):
        text = decode([*ids[row].tolist(), targets[row, -1].item()])
        number = text.split("The secret number is ")[1][:5]
        assert text.endswith(NEEDLE_QUESTION + number)
        assert decode(targets[row][targets[row] != IGNORE].tolist()) == number


def test_training_loss_decreases(tmp_path):
    for attention in ("nsa", "dense"):
        summary = train(tiny(tmp_path / attention, f"model.attention={attention}", "train.steps=12"))
        losses = [loss for _, loss in summary["losses"]]
        assert len(losses) == 12 and all(np.isfinite(losses))
        assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses


def test_resume_is_exact(tmp_path):
    """2N steps at once == N steps, checkpoint, new objects (RNG disturbed), N more steps."""
    whole = train(tiny(tmp_path / "whole", "train.steps=8"))["losses"]
    first = train(tiny(tmp_path / "split", "train.steps=8", "ops.stop_after=4"))
    assert first["stopped_by"] == "ops.stop_after" and first["end_step"] == 4
    torch.manual_seed(12345)
    np.random.seed(12345)
    second = train(tiny(tmp_path / "split", "train.steps=8"))
    assert second["start_step"] == 4 and second["resumed_from"].endswith("step-00000004")
    assert first["losses"] + second["losses"] == whole
    assert first["losses"] != []


def test_resume_refuses_another_model(tmp_path):
    train(tiny(tmp_path, "train.steps=2"))
    with pytest.raises(InvalidInputError, match="another model config"):
        train(tiny(tmp_path, "train.steps=4", "model.layers=1"))


def test_sigterm_writes_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--config", str(TINY), "--set", f"ops.run_dir={run_dir}",
         "--set", "ops.progress=false", "--set", "train.steps=100000", "--set", "ops.heartbeat_every=1",
         "--set", "ops.checkpoint_every=100000", "--set", "train.eval_every=100000"],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    beats = run_dir / "heartbeat.jsonl"
    deadline = time.monotonic() + 120
    while not (beats.exists() and '"kind": "train"' in beats.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0, output
    summary = json.loads((run_dir / "summary-rank-0.json").read_text())
    assert summary["stopped_by"] == "SIGTERM"
    latest = checkpoint.latest(run_dir)
    assert latest is not None and latest.name == f"step-{summary['end_step']:08d}"
    shared, own = checkpoint.load(latest, 0, torch.device("cpu"))  # weights_only=True
    assert shared["step"] == summary["end_step"] and "rng" in own


def test_watchdog_dumps_every_thread(tmp_path):
    path = tmp_path / "stacks.txt"
    with path.open("w") as file:
        watchdog = Watchdog(0.2, file, poll_s=0.05).start()
        time.sleep(0.6)
        watchdog.stop()
    text = path.read_text()
    assert watchdog.dumps == 1 and "no step finished" in text and "watchdog" in text
    assert "test_watchdog_dumps_every_thread" in text  # the main thread's stack is in it


def test_sigusr1_dumps_stacks(tmp_path):
    path = tmp_path / "stacks.txt"
    with path.open("w") as file:
        install_stack_dump(file)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.1)
        finally:
            faulthandler.unregister(signal.SIGUSR1)
    assert "test_sigusr1_dumps_stacks" in path.read_text()


def test_hf_stream_times_out_with_a_clear_error(monkeypatch):
    release = threading.Event()

    def load_dataset(*args, **kwargs):
        release.wait(10)
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    cfg = load_config(None, ["data.source=hf", "data.hf_name=some/corpus", "data.hf_timeout_s=0.2",
                             "data.seq_len=16"]).data
    try:
        with pytest.raises(DataUnavailableError, match=r"hf_timeout_s=0.2s; no other data was used"):
            Batches(cfg, 2, seed=0).batch("train", 0)
    finally:
        release.set()
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataUnavailableError, match="needs the datasets package"):
        Batches(cfg, 2, seed=0).batch("train", 0)


def test_hf_stream_reads_in_order_and_resumes(monkeypatch):
    docs = [{"text": f"document number {i}."} for i in range(200)]

    class Stream:
        def __init__(self, start=0):
            self.start = start

        def skip(self, n):
            return Stream(self.start + n)

        def __iter__(self):
            return iter(docs[self.start:])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: Stream()))
    cfg = load_config(None, ["data.source=hf", "data.hf_name=fake", "data.seq_len=16"]).data
    one = Batches(cfg, 2, seed=0, rank=1, world=2)
    batches = [one.batch("train", step) for step in range(6)]
    two = Batches(cfg, 2, seed=0, rank=1, world=2)
    for step in range(3):
        two.batch("train", step)
    three = Batches(cfg, 2, seed=0, rank=1, world=2)
    three.load_state_dict(two.state_dict())
    for step in range(3, 6):
        assert all(torch.equal(a, b) for a, b in zip(three.batch("train", step), batches[step], strict=True))
    assert decode(batches[0][1][0].tolist()) == "ocument number 1"  # rank 1 of 2 reads documents 1, 3, ...


def torchrun(run_dir: Path, *overrides: str) -> list[dict]:
    """A 2-process gloo DDP run of the tiny config through torchrun; both ranks' summaries."""
    sets = [a for o in (f"ops.run_dir={run_dir}", "ops.progress=false", "ops.heartbeat_every=1", *overrides)
            for a in ("--set", o)]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
         "--config", str(TINY), *sets],
        env=child_env(), capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((run_dir / f"summary-rank-{r}.json").read_text()) for r in range(2)]


def test_ddp_two_processes_gloo(tmp_path):
    """Ranks agree on the loss and the weights; a DDP run resumed from its checkpoint is exact."""
    whole = torchrun(tmp_path / "whole", "train.steps=4")
    assert whole[0]["world"] == 2 and whole[0]["end_step"] == 4 and len(whole[0]["losses"]) == 4
    assert whole[0]["losses"] == whole[1]["losses"]
    assert whole[0]["param_checksum"] == whole[1]["param_checksum"]
    assert (checkpoint.latest(tmp_path / "whole") / "rank-1.pt").exists()
    first = torchrun(tmp_path / "split", "train.steps=4", "ops.stop_after=2")
    second = torchrun(tmp_path / "split", "train.steps=4")
    assert first[0]["stopped_by"] == "ops.stop_after" and second[0]["start_step"] == 2
    assert first[0]["losses"] + second[0]["losses"] == whole[0]["losses"]
    assert second[1]["param_checksum"] == whole[1]["param_checksum"]


def test_evaluate_and_plot(tmp_path):
    """evaluate.py on a tiny needle run's checkpoint, then plot.py over its heartbeat and result."""
    import evaluate
    import plot

    run_dir = tmp_path / "needle"
    train(tiny(run_dir, "data.source=needle", "data.needle_digits=3", "train.steps=3",
               "ops.heartbeat_every=1"))
    out = tmp_path / "needle.json"
    evaluate.main([str(run_dir), "--needle-lengths", "64,96", "--depths", "0.2,0.8", "--samples", "2",
                   "--val-batches", "1", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["step"] == 3 and np.isfinite(result["val_loss"])
    cells = [(r["length"], r["depth"]) for r in result["needle"]]
    assert cells == [(64, 0.2), (64, 0.8), (96, 0.2), (96, 0.8)]
    assert all(0 <= r["accuracy"] <= 1 for r in result["needle"])
    plot.main(["--runs", str(run_dir), "--needle", str(out), "--out", str(tmp_path / "plots")])
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "loss.png", "gates.png", "gate-histograms.png", "needle.png"}
