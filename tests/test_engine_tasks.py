"""The Trainer/Task boundary: the Trainer reads only the keys every run shares; each task owns its cadence,
its DDP options and its name, defined once."""

from __future__ import annotations

import ast
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import splitattn.engine.trainer as trainer_module
from splitattn.engine import load_config
from splitattn.engine.cadence import Cadence, EpochCadence, IterationCadence, Moments
from splitattn.engine.config import CONFIG_CLASSES, RunConfig
from splitattn.engine.schedule import WarmupSchedule
from splitattn.engine.tasks import TASKS, Task, create_task
from splitattn.utils.train_checkpoint import load_checkpoint


class EveryThird(Cadence):
    """Log every 3 steps, evaluate at step 4 only, save at step 2: no epoch or iteration key involved."""

    def moments(self, step: int, at_end: bool, cut_short: bool) -> Moments:
        return Moments(log=step % 3 == 0, evaluate=step == 4, save=step == 2)

    def stamp(self, step: int) -> dict[str, int]:
        return {"thirds": step // 3}


class FakeTask(Task):
    """Regression of 2 numbers on 10 samples; its options live in the task, not in the config."""

    config_class = RunConfig
    primary_metric = "val_score"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.ddp_calls = 0

    @staticmethod
    def collate(items: list[Any]) -> Any:
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]), 0

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(10, 2, generator=g)
        return TensorDataset(x, x.sum(1, keepdim=True)), TensorDataset(x[:4], x[:4].sum(1, keepdim=True))

    def build_model(self, train_ds: Dataset) -> nn.Module:
        return nn.Linear(2, 1)

    def for_ddp(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        self.ddp_calls += 1
        return model, {}

    def peak_lr(self, global_batch: int) -> float:
        return 0.05

    def total_steps(self, steps_per_epoch: int) -> int:
        return 7

    def cadence(self, steps_per_epoch: int) -> Cadence:
        return EveryThird()

    def schedule(self, steps_per_epoch: int, peak_lr: float) -> WarmupSchedule:
        return WarmupSchedule("poly", 7, power=1.0)

    def losses(self, model: nn.Module, inputs: Any, targets: Any, step: int, total: int,
               ) -> dict[str, torch.Tensor]:
        return {"mse": nn.functional.mse_loss(model(inputs), targets)}

    def evaluate(self, model: nn.Module, val_ds: Dataset, device: torch.device, amp: str,
                 channels_last: bool) -> dict[str, float]:
        x, y = val_ds.tensors  # type: ignore[attr-defined]
        with torch.no_grad():
            return {"val_score": -float(nn.functional.mse_loss(model(x), y))}


def test_a_task_with_its_own_cadence_runs_through_the_trainer_on_the_shared_keys_alone(tmp_path, monkeypatch):
    """A plain RunConfig (no task section: no epochs, eval_interval, log_period, sync_bn...) trains: the
    Trainer asks the task when to log, evaluate and save, and how to wrap the model."""
    task = FakeTask(RunConfig(task="fake"))
    monkeypatch.setattr(trainer_module, "create_task", lambda cfg: task)
    cfg = RunConfig(task="fake", output=str(tmp_path / "run"), device="cpu", workers=0, batch_size=4,
                    progress_bar=False, weight_decay=0.0)
    last = trainer_module.Trainer(cfg).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["thirds"], "val_score" in r) for r in records] == [
        (3, 1, False), (4, 1, True), (6, 2, False)]
    assert last == records[-1] and math.isfinite(last["train_loss"])
    assert load_checkpoint(tmp_path / "run" / "last.ckpt")["step"] == 7  # saved at the end
    assert load_checkpoint(tmp_path / "run" / "best.ckpt")["step"] == 4  # the one evaluation
    assert task.ddp_calls == 0  # one process: no DDP wrapping asked for


def test_the_trainer_names_no_field_of_a_task_section():
    shared = {f.name for f in fields(RunConfig)}
    own = {f.name for c in CONFIG_CLASSES.values() for f in fields(c)} - shared
    source = Path(trainer_module.__file__).read_text()
    nodes = list(ast.walk(ast.parse(source)))
    on_cfg = {n.attr for n in nodes if isinstance(n, ast.Attribute) and ast.unparse(n.value) in ("cfg",
                                                                                              "self.cfg")}
    strings = {n.value for n in nodes if isinstance(n, ast.Constant)}
    assert on_cfg and on_cfg <= shared, on_cfg - shared  # cfg.x and self.cfg.x: shared keys only
    assert not own & strings, own & strings  # nor getattr(cfg, "sync_bn")-style look-ups
    assert "getattr(cfg" not in source and "epoch_based" not in source
    assert not set(CONFIG_CLASSES) & strings  # nor a task name


def test_task_names_come_from_the_config_sections():
    assert list(TASKS) == list(CONFIG_CLASSES)
    for name, cls in CONFIG_CLASSES.items():
        assert cls().task == name and TASKS[name].config_class is cls
        assert create_task(cls()).name == name


def test_each_task_owns_its_cadence_and_ddp_options():
    cls = load_config("classification", overrides={"eval_interval": 2, "sync_bn": True})
    det = load_config("detection", overrides={"log_period": 5, "eval_period": 10,
                                              "find_unused_parameters": True})
    assert create_task(cls).cadence(4) == EpochCadence(4, 2)
    assert create_task(det).cadence(4) == IterationCadence(5, 10)
    bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model, kwargs = create_task(cls).for_ddp(bn)
    assert isinstance(model[1], nn.SyncBatchNorm) and kwargs == {}
    assert create_task(det).for_ddp(bn) == (bn, {"find_unused_parameters": True})
    seg = load_config("segmentation")
    assert create_task(seg).for_ddp(bn) == (bn, {"find_unused_parameters": False})


def test_epoch_and_iteration_cadences():
    epochs = EpochCadence(steps_per_epoch=3, eval_interval=2)
    assert [epochs.moments(s, s == 12, False) for s in (2, 3, 6, 12)] == [
        (False, False, False), (True, False, True), (True, True, True), (True, True, True)]
    assert epochs.moments(9, True, True) == (True, False, True)  # cut short by max_steps: no evaluation
    assert epochs.stamp(9) == {}
    iters = IterationCadence(log_period=4, eval_period=0)
    assert [iters.moments(s, s == 10, False) for s in (3, 4, 10)] == [
        (False, False, False), (True, False, False), (True, True, False)]
    assert iters.moments(10, True, True) == (True, False, False)
    assert IterationCadence(4, 5).moments(5, False, False).evaluate and iters.stamp(7) == {"iter": 7}
