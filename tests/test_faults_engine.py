"""Faults around a training run: occupied or odd run folders, corrupt checkpoints, other architectures,
SIGTERM / SIGINT, SIGKILL at random moments (inside checkpoint writes too), a full disk, non-finite
weights."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN_ARGS
from splitattn.cli import main
from splitattn.data.synthetic import make_synthetic_imagefolder
from splitattn.utils.train_checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_imagefolder(tmp_path_factory.mktemp("d") / "data", num_classes=2, train_per_class=6,
                                      val_per_class=2)


def _args(data: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ["train", "--data", str(data), "--output", str(out), *TINY_TRAIN_ARGS, "--batch-size", "4",
            "--epochs", str(epochs), "--lr", "0.02", "--seed", "1", "--set", "warmup_epochs=0",
            "auto_augment=null", *extra]


def _train(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(list(args))
    return rc, capsys.readouterr().err


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def test_a_run_folder_is_never_overwritten_by_accident(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(data, run, epochs=1)) == 0
    before = _snapshot(run)
    rc, err = _train(capsys, *_args(data, run, epochs=1))
    assert rc == 2
    assert err.strip() == (f"splitattn train: error: {run} holds a run (last.ckpt, best.ckpt, metrics.jsonl, "
                           "config.yaml); pass --resume auto to continue it, --overwrite to replace it, or "
                           "choose another --output")
    assert _snapshot(run) == before
    assert main(_args(data, run, "--overwrite", epochs=1)) == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1]  # replaced, not appended to

    (tmp_path / "afile").write_text("x")
    rc, err = _train(capsys, *_args(data, tmp_path / "afile"))
    assert rc == 2 and "is a file, not a run folder" in err


def test_unreadable_checkpoint_is_kept_aside_and_stale_temp_files_removed(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(data, run, epochs=1)) == 0
    garbage = random.Random(0).randbytes(5000)
    (run / "last.ckpt").write_bytes(garbage)
    stale = run / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    rc, err = _train(capsys, *_args(data, run, "--resume", "auto", epochs=2))
    assert rc == 0
    assert (run / "last.ckpt.corrupt").read_bytes() == garbage  # kept, not overwritten
    assert not stale.exists()
    assert load_checkpoint(run / "last.ckpt")["step"] == 6  # resumed from best.ckpt (step 3), finished


def test_a_bad_resume_changes_nothing_on_disk(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(data, run, epochs=1)) == 0
    before = _snapshot(run)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(random.Random(1).randbytes(3000))
    rc, err = _train(capsys, *_args(data, run, "--resume", str(junk)))
    assert rc == 2 and err.count("\n") == 1
    assert f"checkpoint {junk} is truncated or corrupt" in err
    other = _args(data, run, "--resume", "auto")
    other[other.index("resnest14d")] = "resnest26d"
    rc, err = _train(capsys, *other)
    assert rc == 2 and err.count("\n") == 1
    assert "was trained with model_name resnest14d, this run has resnest26d" in err
    assert _snapshot(run) == before


def test_full_disk_keeps_the_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    import splitattn.utils.fileio as fileio

    run = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) > 2:  # best + last of epoch 1 are written; epoch 2's write finds the disk full
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(fileio.torch, "save", save)
    rc, err = _train(capsys, *_args(data, run))
    assert rc == 2 and err.count("\n") == 1
    assert f"no space left on the device writing {run}" in err and "MiB free on that file system" in err
    assert load_checkpoint(run / "last.ckpt")["step"] == 3
    assert not list(run.glob(".*.tmp"))


def test_non_finite_weights_are_never_saved(data, tmp_path):
    from splitattn.engine import Trainer, load_config
    from splitattn.errors import TrainingDivergedError

    cfg = load_config("classification", overrides={
        "data": str(data), "output": str(tmp_path / "run"), "model": "resnest14d", "img_size": 32,
        "workers": 0, "device": "cpu", "model_kwargs": {"stem_width": 8, "base_width": 8},
        "tensorboard": False, "batch_size": 4, "epochs": 1})
    trainer = Trainer(cfg)
    trainer.save()
    good = (tmp_path / "run" / "last.ckpt").read_bytes()
    with torch.no_grad():
        trainer.model.fc.weight[0, 0] = float("inf")
    msg = r"weights became non-finite at step 0 \(fc.weight\); not saved: the last checkpoint .*last.ckpt"
    with pytest.raises(TrainingDivergedError, match=msg):
        trainer.save()
    assert (tmp_path / "run" / "last.ckpt").read_bytes() == good


def _popen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "splitattn", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_save_and_say_how_to_resume(data, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = _popen(_args(data, run, "--set", "checkpoint_interval=1", epochs=30))
    deadline = time.time() + 120
    while not (run / "last.ckpt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGINT"
    last = err.strip().splitlines()[-1]
    ck = load_checkpoint(run / "last.ckpt")
    assert last == (f"splitattn train: stopped: stopped by {name} after step {ck['step']}; checkpoint saved "
                    f"to {run / 'last.ckpt'}; continue with --resume auto")
    assert "Traceback" not in err and 0 < ck["step"] < 90


def _checkpoint_id(path: Path) -> tuple[int, int] | None:
    """Identifies one write of ``path``: each atomic write renames a new file (a new inode) into place."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _kill_at_event(proc: subprocess.Popen, run: Path, in_write: bool, writes: int) -> bool:
    """SIGKILL ``proc`` at an event, never after a delay, so that the kill lands mid-run at any speed: while
    a checkpoint write is in progress (``in_write``; after ``writes`` completed writes if every write was too
    quick to be seen), or right after ``writes`` completed writes of ``last.ckpt``. False if it ended first.
    """
    last, seen, done = run / "last.ckpt", _checkpoint_id(run / "last.ckpt"), 0
    deadline = time.time() + 240  # only a hung run reaches it; it is then killed all the same
    while time.time() < deadline and proc.poll() is None:
        if in_write and list(run.glob(".*.ckpt.*.tmp")):
            break
        now = _checkpoint_id(last)
        if now != seen:
            seen, done = now, done + 1
            if done >= writes:
                break
        time.sleep(0.0005)
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.communicate()
    return True


def test_sigkill_at_random_moments_loses_nothing(data, tmp_path):
    """Kills inside checkpoint writes and between steps; each resumed run ends with every file readable,
    metrics.jsonl holding each epoch once, and the weights of an uninterrupted run. Kills come at events
    (a checkpoint write in progress or completed), so each run advances at most a few of the 12 steps
    whatever the machine's speed, and at least two kills always land."""
    full, run = tmp_path / "full", tmp_path / "run"
    args = _args(data, run, "--set", "checkpoint_interval=1", epochs=4)
    uninterrupted = _args(data, full, "--set", "checkpoint_interval=1", epochs=4)
    res = subprocess.run([sys.executable, "-m", "splitattn", *uninterrupted], env=ENV, capture_output=True,
                         timeout=300)
    assert res.returncode == 0
    rng, kills = random.Random(0), []
    for attempt in range(4):
        proc = _popen(args + (["--resume", "auto"] if attempt else []))
        if not _kill_at_event(proc, run, in_write=attempt % 2 == 0, writes=rng.randint(1, 2)):
            break
        step = load_checkpoint(run / "last.ckpt")["step"] if (run / "last.ckpt").exists() else 0
        kills.append(step)
        for ck in run.glob("*.ckpt"):
            load_checkpoint(ck)  # every checkpoint on disk is whole
    res = subprocess.run([sys.executable, "-m", "splitattn", *args, "--resume", "auto"], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert len(kills) >= 2, kills
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
    a, b = load_checkpoint(full / "last.ckpt"), load_checkpoint(run / "last.ckpt")
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    print(f"killed at steps {kills}; resumed to identical weights")
