"""Faults around a run folder and a resume: another global batch, training set or seed; two processes on
one folder; malformed checkpoint entries; a torchrun process that never arrives."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN_ARGS
from splitattn.cli import main
from splitattn.data.synthetic import make_synthetic_imagefolder
from splitattn.engine.resume import check_entries
from splitattn.errors import CheckpointError
from splitattn.utils.train_checkpoint import CHECKPOINT_FORMAT, check_format, load_checkpoint, save_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
NEW_RUN = "start a new run (another --output, or --overwrite)"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_imagefolder(tmp_path_factory.mktemp("d") / "data", num_classes=2, train_per_class=6,
                                      val_per_class=2)


def _args(data: Path, out: Path, *extra: str, epochs: int = 2, batch: int = 4, seed: int = 1) -> list[str]:
    return ["train", "--data", str(data), "--output", str(out), *TINY_TRAIN_ARGS, "--batch-size", str(batch),
            "--epochs", str(epochs), "--lr", "0.02", "--seed", str(seed), "--set", "warmup_epochs=0",
            "auto_augment=null", *extra]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A finished 1-epoch run: 12 images, global batch 4, seed 1, so its checkpoints are at step 3."""
    run = tmp_path_factory.mktemp("r") / "run"
    assert main(_args(data, run, epochs=1)) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def _refused(capsys, args: list[str]) -> str:
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    return err.strip()


def test_resume_refuses_another_global_batch_training_set_or_seed(data, run, tmp_path, capsys):
    before, ck = _snapshot(run), run / "last.ckpt"
    more = make_synthetic_imagefolder(tmp_path / "more", num_classes=2, train_per_class=8, val_per_class=2)
    cases = [
        (_args(data, run, "--resume", "auto", batch=2),
         "a global batch of 4 images ('global_batch'), this run has 2; resume with the global batch "
         "(batch_size)"),
        (_args(more, run, "--resume", "auto"),
         "a training set of 12 images ('train_size'), this run has 16; resume with the training data"),
        (_args(data, run, "--resume", str(ck), seed=2),
         "seed 1 ('seed'), this run has 2; resume with the seed"),
    ]
    for args, what in cases:
        err = _refused(capsys, args)
        assert err == (f"splitattn train: error: checkpoint {ck} was written with {what} of that run, or "
                       f"{NEW_RUN}")
    assert _snapshot(run) == before  # nothing trained, logged or deleted


def test_resume_of_an_older_checkpoint_checks_its_position_and_config_seed(data, run, tmp_path, capsys):
    state = load_checkpoint(run / "last.ckpt")
    for key in ("global_batch", "train_size", "seed"):  # as written before these were recorded
        del state[key]
    old = save_checkpoint(tmp_path / "old.ckpt", state)
    err = _refused(capsys, _args(data, run, "--resume", str(old), batch=2))
    assert err == (f"splitattn train: error: checkpoint {old} is at step 3 = epoch 1 + batch 0, which does "
                   "not fit this run's 6 steps per epoch: the global batch or the training set changed; "
                   f"resume with those of that run, or {NEW_RUN}")
    err = _refused(capsys, _args(data, run, "--resume", str(old), seed=3))
    assert err.endswith(f"checkpoint {old} was written with seed 1 ('seed'), this run has 3; resume with the "
                        f"seed of that run, or {NEW_RUN}")


def test_a_checkpoint_of_a_newer_format_is_refused_and_nothing_runs(data, run, tmp_path, capsys):
    state = load_checkpoint(run / "last.ckpt")
    assert state["format"] == CHECKPOINT_FORMAT
    future = save_checkpoint(tmp_path / "future.ckpt", {**state, "format": "splitattn-train-99"})
    save_checkpoint(run / "last.ckpt", {**state, "format": "splitattn-train-99"})  # for --resume auto
    before = _snapshot(run)
    for spec, path in ((str(future), future), ("auto", run / "last.ckpt")):
        err = _refused(capsys, _args(data, run, "--resume", spec))
        assert err == (f"splitattn train: error: checkpoint {path} has format 'splitattn-train-99', "
                       f"this splitattn reads '{CHECKPOINT_FORMAT}' and older; it was written by a newer "
                       "splitattn: upgrade splitattn to use it")
    assert _snapshot(run) == before  # not trained, not logged, not quarantined as corrupt
    del state["format"]  # before the entry was written: read as today
    check_format(state, "old.ckpt")


def test_resume_of_a_checkpoint_with_a_per_process_batch_size_says_so(data, run, tmp_path, capsys):
    """Before config_version 2, a classification batch_size was per process: the refusal says what to set."""
    state = load_checkpoint(run / "last.ckpt")
    new_keys = ("config_version", "batch_size_per_process")
    config = {k: v for k, v in state["config"].items() if k not in new_keys}
    old = save_checkpoint(tmp_path / "old.ckpt", {**state, "world_size": 2, "rng": state["rng"] * 2,
                                                  "config": {**config, "batch_size": 2}})
    err = _refused(capsys, _args(data, run, "--resume", str(old), batch=2))
    assert err == (f"splitattn train: error: checkpoint {old} was written with a global batch of 4 images "
                   "('global_batch'), this run has 2 (that run's batch_size 2 was per process, x 2 "
                   "processes: set batch_size_per_process 2 or batch_size 4); resume with the global batch "
                   f"(batch_size) of that run, or {NEW_RUN}")


def _rng(state: dict) -> dict:
    return state["rng"][0]


MALFORMED = {  # what is changed -> (entry, what the message says is wrong with it)
    "step -7": (lambda s: s.update(step=-7), "'step' entry is -7, expected an integer >= 0"),
    "step 2.5": (lambda s: s.update(step=2.5), "'step' entry is 2.5, expected an integer >= 0"),
    "epoch str": (lambda s: s.update(epoch="1"), "'epoch' entry is '1', expected an integer >= 0"),
    "batch None": (lambda s: s.update(batch=None), "'batch' entry is None, expected an integer >= 0"),
    "world_size 0": (lambda s: s.update(world_size=0), "'world_size' entry is 0, expected an integer >= 1"),
    "best nan": (lambda s: s.update(best=float("nan")), "'best' entry is nan, expected a finite number or "
                 "-inf"),
    "best str": (lambda s: s.update(best="0.5"), "'best' entry is '0.5', expected a finite number or -inf"),
    "sums list": (lambda s: s.update(sums=[1]), "'sums' entry is [1], expected a dict with loss, steps, "
                  "skipped and lr"),
    "sums steps": (lambda s: s["sums"].update(steps=-1.5), "'sums' entry holds 'steps': -1.5, expected a "
                   "finite number"),
    "scheduler": (lambda s: s["scheduler"].update(last_epoch=0), "'scheduler' entry is at iteration 0, "
                  "expected the checkpoint's step 3"),
    "rng type": (lambda s: s.update(rng="abc"), "'rng' entry is a str, expected a list of 1 RNG states (one "
                 "per process)"),
    "rng size": (lambda s: s.update(rng=s["rng"] * 2), "'rng' entry is a list of 2, expected a list of 1 RNG "
                 "states (one per process)"),
    "rng state type": (lambda s: s.update(rng=[[1, 2]]), "'rng' entry has a bad state for process 0: it is a "
                       "list, expected a dict"),
    "torch length": (lambda s: _rng(s).update(torch=_rng(s)["torch"][:100]), "'rng' entry has a bad state "
                     "for process 0: 'torch' is a torch.uint8 tensor of shape (100,), expected a 1-D uint8 "
                     f"tensor of {torch.get_rng_state().numel()} values"),
    "torch dtype": (lambda s: _rng(s).update(torch=_rng(s)["torch"].float()), "'rng' entry has a bad state "
                    "for process 0: 'torch' is a torch.float32 tensor of shape"),
    "numpy keys": (lambda s: _rng(s)["numpy"].update(keys=torch.zeros(5, dtype=torch.int64)), "'numpy' keys "
                   "is a torch.int64 tensor of shape (5,), expected a 1-D int64 tensor of 624 values"),
    "numpy pos": (lambda s: _rng(s)["numpy"].update(pos=10**6), "'numpy' pos is 1000000, expected an "
                  "integer in [0, 624]"),
    "python state": (lambda s: _rng(s)["python"].update(state=_rng(s)["python"]["state"][:-1]), "'python' "
                     "state is a torch.int64 tensor of shape (624,), expected a 1-D int64 tensor of 625 "
                     "values"),
    "python values": (lambda s: _rng(s)["python"]["state"].__setitem__(0, -1), "'python' state holds values "
                      "outside [0, 4294967296)"),
    "no python": (lambda s: _rng(s).pop("python"), "'rng' entry has a bad state for process 0: it has no "
                  "'python'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_checkpoint_entry_is_named(trained, case):
    state = load_checkpoint(trained / "last.ckpt")
    check_entries(state, trained / "last.ckpt")  # as written: accepted
    change, what = MALFORMED[case]
    change(state)
    with pytest.raises(CheckpointError) as e:
        check_entries(state, Path("x.ckpt"))
    msg = str(e.value)
    assert msg.startswith("checkpoint x.ckpt: its ") and what in msg and "\n" not in msg
    assert msg.endswith("the file is damaged or was not written by splitattn train: resume from another "
                        f"checkpoint, or {NEW_RUN}")


@pytest.mark.parametrize("case", ["step -7", "torch length"])
def test_resume_from_a_malformed_checkpoint_stops_with_one_line(data, run, tmp_path, capsys, case):
    state = load_checkpoint(run / "last.ckpt")
    change, what = MALFORMED[case]
    change(state)
    bad = save_checkpoint(tmp_path / "bad.ckpt", state)
    before = _snapshot(run)
    err = _refused(capsys, _args(data, run, "--resume", str(bad)))
    assert err.startswith(f"splitattn train: error: checkpoint {bad}: its {what}")
    assert _snapshot(run) == before


def _holder(run: Path) -> subprocess.Popen:
    """A process holding the run folder's lock (as a live run does: flock, its PID in the file) until its
    stdin closes; returns once the lock is held. Plain Python, so it starts in milliseconds."""
    code = ("import fcntl, os, sys; f = open(os.path.join(sys.argv[1], '.lock'), 'a+'); "
            "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); f.write(f'{os.getpid()}\\n'); f.flush(); "
            "print('locked', flush=True); sys.stdin.read(); os.unlink(f.name)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], env=ENV, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_a_locked_run_folder_is_left_alone(data, run, capsys):
    stale = run / ".last.ckpt.abc123.tmp"  # a live writer's temp file: must not be removed
    stale.write_bytes(b"in flight")
    before = _snapshot(run)
    holder = _holder(run)
    try:
        msg = (f"splitattn train: error: {run} is in use by another training process (PID {holder.pid}, "
               f"holding {run / '.lock'}); wait for it to end or stop it, or choose another --output")
        for extra in (["--overwrite"], ["--resume", "auto"], ["--overwrite", "--resume", "auto"]):
            assert _refused(capsys, _args(data, run, *extra)) == msg
        assert _snapshot(run) == {**before, ".lock": f"{holder.pid}\n".encode()}
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert not (run / ".lock").exists()  # released and removed at exit
    stale.unlink()


def test_a_second_train_on_a_live_run_is_refused_and_the_lock_released_at_exit(data, tmp_path, capsys):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "splitattn", *_args(data, run, "--set",
                             "checkpoint_interval=1", epochs=30)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        err = _refused(capsys, _args(data, run, "--resume", "auto", epochs=30))
        assert err == (f"splitattn train: error: {run} is in use by another training process (PID "
                       f"{proc.pid}, holding {run / '.lock'}); wait for it to end or stop it, or choose "
                       "another --output")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, perr = proc.communicate(timeout=120)
    assert proc.returncode == 143, perr
    assert not (run / ".lock").exists()
    assert not list(run.glob(".*.tmp"))


def test_a_run_that_fails_to_start_leaves_no_folder_behind(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    err = _refused(capsys, _args(empty, tmp_path / "run"))
    assert err.startswith("splitattn train: error: ")
    assert not (tmp_path / "run").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_that_does_not_arrive_is_named_within_dist_timeout(data, tmp_path):
    port = _free_port()
    procs = {}
    for rank in (0, 1):  # two separate jobs on two ports: each lacks the other rank
        env = {**ENV, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port if rank == 0 else _free_port())}
        procs[rank] = subprocess.Popen(
            [sys.executable, "-m", "splitattn", *_args(data, tmp_path / f"run{rank}", "--set",
                                                        "dist_timeout=0.05")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errs = {r: p.communicate(timeout=120)[1].strip().splitlines()[-1] for r, p in procs.items()}
    assert procs[0].returncode == 2 and procs[1].returncode == 2, errs
    assert errs[0] == ("splitattn train: error: rank 0: rank 1 of 2 did not arrive within 0.05 min "
                       "(dist_timeout); check that every process of the job started (see their logs), or "
                       "raise dist_timeout")
    assert errs[1].startswith("splitattn train: error: rank 1: rank 0, which hosts the rendezvous at "
                              "127.0.0.1:")
    assert "did not answer within 0.05 min (dist_timeout; " in errs[1]
    assert errs[1].endswith("raise dist_timeout")


def test_resume_from_a_hostile_checkpoint_is_refused(data, run, tmp_path, capsys):
    """--resume PATH with a record naming weights to fetch, a record of another model, or a pickled payload:
    one line naming the checkpoint and the field, no code run, nothing in the run folder changed."""
    state = load_checkpoint(run / "last.ckpt")
    record = json.loads(state["splitattn.model"])
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    evil = save_checkpoint(tmp_path / "evil.ckpt", {**state, "splitattn.model": json.dumps(
        {**record, "model_args": {**record["model_args"], "pretrained": "http://127.0.0.1:1/w.pth"}})})
    other = save_checkpoint(tmp_path / "other.ckpt", {**state, "splitattn.model": json.dumps(
        {**record, "num_classes": 3, "label_names": ["a", "b", "c"]})})
    pickled = tmp_path / "pickled.ckpt"
    with zipfile.ZipFile(run / "last.ckpt") as src, zipfile.ZipFile(pickled, "w") as out:
        for item in src.infolist():
            data_ = src.read(item.filename)
            out.writestr(item.filename, pickle.dumps({"step": Payload()}, protocol=2)
                         if item.filename.endswith("data.pkl") else data_)
    before = _snapshot(run)
    for path, message in ((evil, f"checkpoint {evil}: 'model_args.pretrained' must be absent"),
                          (other, f"checkpoint {other} was trained with num_classes 3, this run has 2"),
                          (pickled, f"checkpoint {pickled} needs pickled code to load (the global "
                                    "posix.mkdir)")):
        err = _refused(capsys, _args(data, run, "--resume", str(path)))
        assert message in err, err
    assert not marker.exists() and _snapshot(run) == before
