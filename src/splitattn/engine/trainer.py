"""The one training loop: any :class:`~splitattn.engine.tasks.Task`, one process or many (``torchrun``),
resumable at any step to the bit.

The batch order is a function of (seed, epoch), each sample's augmentation of (seed, epoch, index)
(:class:`~splitattn.data.SeededDataset`), and a checkpoint stores every other piece of state: model, EMA,
optimizer, LR schedule, grad scaler, the RNG states of every process, the position in the data and the
running sums of the epoch in progress. A run killed at any moment and resumed with ``resume="auto"``
ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from ..data.seeded import SeededDataset
from ..errors import (
    CheckpointError,
    ConfigError,
    Interrupted,
    SplitAttnError,
    TrainingDivergedError,
    worker_error,
)
from ..utils.amp import autocast, make_grad_scaler
from ..utils.distributed import DistInfo, all_reduce_sum, cleanup_distributed, init_distributed, is_dist
from ..utils.train_checkpoint import (
    CHECKPOINT_FORMAT,
    check_format,
    find_latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .config import DEFAULT_TASK, RunConfig, per_process_batch, save_config
from .interrupt import StopRequest
from .progress import EpochProgress, MetricsLogger
from .resume import check_entries, check_same_run
from .rng import get_rng_state, seed_everything, set_rng_state
from .rundir import RunDirLock, drop_metrics_after, lock_run_dir, prepare_run_dir
from .sampler import GlobalBatchSampler
from .schedule import create_lr_scheduler, create_optimizer
from .tasks import Task, create_task

log = logging.getLogger("splitattn.train")


class Trainer:
    """Owns the model, data, optimizer and run folder of one training run; :meth:`fit` runs it.

    Args:
        cfg: a config from :func:`splitattn.engine.config.load_config`.
        dist: the process layout (default: from the ``torchrun`` environment).
    """

    def __init__(self, cfg: RunConfig, dist: DistInfo | None = None) -> None:
        if not cfg.output:
            raise ConfigError("no run folder given; pass --output RUN_DIR")
        self.cfg = cfg
        self.task: Task = create_task(cfg)
        self.dist = dist or init_distributed(cfg.device, cfg.dist_timeout)
        self.run_dir = Path(cfg.output)
        # Rank 0 alone locks (and alone deletes or writes files): no rank waits on another's lock.
        self._lock: RunDirLock | None = lock_run_dir(self.run_dir) if self.dist.is_main else None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        cfg = self.cfg
        prepare_run_dir(self.run_dir, bool(cfg.resume), cfg.overwrite, self.dist.is_main)
        self.device = self.dist.device
        self.amp = ("bf16" if self.device.type == "cuda" else "off") if cfg.amp == "auto" else cfg.amp
        cl = cfg.channels_last
        self.channels_last = self.device.type == "cuda" if cl == "auto" else bool(cl)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed + self.dist.rank)
        self._build_data()
        self._build_model()
        self.step, self.best, self.sums = 0, -math.inf, _new_sums()
        self._clock = (time.perf_counter(), 0)  # (start, steps since): throughput of this process's steps
        self._stop, self._stop_after_step, self._saved_step = StopRequest(), 0, -1
        self.metrics = MetricsLogger(self.run_dir, enabled=self.dist.is_main, tensorboard=cfg.tensorboard)

    def close(self) -> None:
        """Release the run folder's lock (:meth:`fit` does at its end; process exit does in any case)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.dist
        train_ds, self.val_ds = self.task.build_datasets()
        self.train_ds = SeededDataset(train_ds, cfg.seed)
        per_proc = per_process_batch(cfg, d.world_size)
        self.train_size = len(train_ds)
        self.sampler = GlobalBatchSampler(len(train_ds), per_proc, d.world_size, d.rank, seed=cfg.seed)
        self.global_batch = self.sampler.global_batch
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training set has {len(train_ds)} images, fewer than one global batch "
                              f"({self.global_batch}); lower batch_size")
        # Its own generator: creating a loader iterator must not draw from the global RNG, or a run resumed
        # mid-epoch (one iterator fewer) would see shifted random numbers.
        self.train_loader = DataLoader(self.train_ds, batch_sampler=self.sampler, num_workers=cfg.workers,
                                       pin_memory=self.device.type == "cuda", collate_fn=self.task.collate,
                                       generator=torch.Generator())
        self.total_steps = self.task.total_steps(self.steps_per_epoch)
        self.cadence = self.task.cadence(self.steps_per_epoch)
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)

    def _build_model(self) -> None:
        cfg, d = self.cfg, self.dist
        model = self.task.build_model(self.train_ds.dataset)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(cfg.grad_checkpointing)
        ddp_kwargs: dict[str, Any] = {}
        if d.distributed:
            model, ddp_kwargs = self.task.for_ddp(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = None
        if cfg.ema:
            avg = get_ema_multi_avg_fn(cfg.ema_decay)
            self.ema = AveragedModel(model, multi_avg_fn=avg, use_buffers=True)
        self.lr = self.task.peak_lr(self.global_batch)
        self.optimizer = create_optimizer(model, self.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        schedule = self.task.schedule(self.steps_per_epoch, self.lr)
        self.scheduler = create_lr_scheduler(self.optimizer, schedule)
        self.scaler = make_grad_scaler(self.device, self.amp)
        net: nn.Module = model
        if d.distributed:
            net = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None, **ddp_kwargs)
        self.net = torch.compile(net) if cfg.compile else net

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after iteration ``self.step``: tensors, numbers, strings."""
        rng = get_rng_state()
        if is_dist():
            rngs: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        cpu = lambda m: {k: v.detach().cpu() for k, v in m.state_dict().items()}  # noqa: E731
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        return {
            "format": CHECKPOINT_FORMAT, "task": self.task.name,
            "model": cpu(self.model),
            "model_ema": cpu(self.ema.module) if self.ema is not None else None,
            "ema_n_averaged": int(self.ema.n_averaged.item()) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": epoch, "batch": batch, "best": self.best,
            "sums": dict(self.sums), "rng": rngs, "world_size": self.dist.world_size,
            "global_batch": self.global_batch, "train_size": self.train_size, "seed": self.cfg.seed,
            "config": dataclasses.asdict(self.cfg), **self.task.checkpoint_meta(),
        }

    def save(self, best: bool = False) -> None:
        """Write ``best.ckpt`` (when ``best``) and then ``last.ckpt``, which records that best.

        Raises:
            TrainingDivergedError: a weight is NaN or infinite; nothing is written.
        """
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        bad = [n for m in models for n, t in m.state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            last = self.run_dir / "last.ckpt"
            kept = f"{last} (finite weights) is left as it was" if last.is_file() else "none was written"
            raise TrainingDivergedError(
                f"weights became non-finite at step {self.step} ({', '.join(bad[:3])}); not saved: the last "
                f"checkpoint {kept}; lower the learning rate (--lr), raise the warmup, or set grad_clip")
        state = self.state_dict()  # collective under DDP: every rank builds it
        self._saved_step = self.step
        if self.dist.is_main:
            if best:
                save_checkpoint(self.run_dir / "best.ckpt", state)
            save_checkpoint(self.run_dir / "last.ckpt", state)

    def resume(self, spec: str) -> Path | None:
        """Load ``spec`` (a path, or ``"auto"``: the newest valid checkpoint in the run folder)."""
        if spec == "auto":
            path = find_latest_checkpoint(self.run_dir, quarantine=self.dist.is_main)
        else:
            path = Path(spec)
        if path is None:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", self.run_dir)
            return None
        ck = _load_training_checkpoint(path, self.task.name)
        self.task.check_resume(ck, path)
        check_entries(ck, path)
        check_same_run(ck, path, global_batch=self.global_batch, train_size=self.train_size,
                       seed=self.cfg.seed, steps_per_epoch=self.steps_per_epoch)
        try:
            self.model.load_state_dict(ck["model"])
            if self.ema is not None and ck.get("model_ema") is not None:
                self.ema.module.load_state_dict(ck["model_ema"])
                self.ema.n_averaged.fill_(ck["ema_n_averaged"])
            self.optimizer.load_state_dict(ck["optimizer"])
            schedule = dataclasses.asdict(self.scheduler.lr_lambdas[0])
            self.scheduler.load_state_dict(ck["scheduler"])
            for fn in self.scheduler.lr_lambdas:  # this run's schedule wins (e.g. a longer max_iter)
                fn.__dict__.update(schedule)
            self.scaler.load_state_dict(ck["scaler"])
            self.step, self.best, self.sums = int(ck["step"]), float(ck["best"]), dict(ck["sums"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            first = str(e).splitlines()[0]
            raise CheckpointError(f"checkpoint {path} does not fit this run ({first})") from e
        if ck["world_size"] == self.dist.world_size:
            try:
                set_rng_state(ck["rng"][self.dist.rank])
            except (ValueError, TypeError, RuntimeError, OverflowError) as e:
                raise CheckpointError(f"checkpoint {path}: its 'rng' entry {self.dist.rank} cannot be "
                                      f"restored ({str(e).splitlines()[0]}); resume from another "
                                      "checkpoint") from e
        else:
            log.warning("checkpoint was written by %s processes, now %s: RNG streams are re-seeded",
                        ck.get("world_size"), self.dist.world_size)
        if self.dist.is_main and drop_metrics_after(self.run_dir, self.step):
            log.info("metrics.jsonl: records after step %d dropped (they are written again)", self.step)
        log.info("resumed from %s at step %d", path, self.step)
        return path

    # -- training ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the end, evaluating, logging and checkpointing; returns the last record written.

        The run folder's lock is released at the end, whether training finished or failed.
        """
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict[str, Any]:
        cfg, d = self.cfg, self.dist
        if cfg.resume:
            self.resume(str(cfg.resume))
        if d.is_main:
            save_config({**dataclasses.asdict(cfg), "lr": self.lr, "world_size": d.world_size,
                         "global_batch": self.global_batch, "amp": self.amp,
                         "channels_last": self.channels_last}, self.run_dir / "config.yaml")
            print(f"training {self.task.name} {cfg.model} on {len(self.train_ds)} images, {d.world_size} "
                  f"process(es) on {self.device}, global batch {self.global_batch}, peak lr {self.lr:g}, "
                  f"{self.total_steps} steps ({self.steps_per_epoch} per epoch), amp {self.amp}; run folder "
                  f"{self.run_dir}", flush=True)
        last: dict[str, Any] = {}
        try:
            with self._stop:
                while self.step < self.total_steps:
                    last = self._run_epoch() or last
        except SplitAttnError as e:  # re-raised by a DataLoader worker with its traceback in the message
            raise worker_error(e) from None
        finally:
            self.metrics.close()
        return last

    def _run_epoch(self) -> dict[str, Any]:
        epoch, start = divmod(self.step, self.steps_per_epoch)
        self.train_ds.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start)
        self.net.train()
        bar = EpochProgress(len(self.sampler), f"epoch {epoch + 1}", enabled=self.dist.is_main,
                            batch_size=self.global_batch, force_plain=not self.cfg.progress_bar)
        record: dict[str, Any] = {}
        with bar:
            for batch in self.train_loader:
                loss = self._train_step(batch)
                bar.update(1, loss=loss, lr=self.scheduler.get_last_lr()[0])
                record = self._after_step() or record
                if self._stop_after_step:
                    self._interrupt()
                if self.step >= self.total_steps:
                    break
        return record

    def _train_step(self, batch: Any) -> float:
        inputs, targets, n_bad = self.task.prepare(batch, self.device, self.channels_last)
        lr = self.scheduler.get_last_lr()[0]
        with autocast(self.device, self.amp):
            losses = self.task.losses(self.net, inputs, targets, self.step, self.total_steps)
        loss = sum(losses.values())
        extra = [torch.tensor(float(n_bad)), torch.tensor(float(self._stop.signum))]
        parts = torch.stack([v.detach().float().cpu() for v in losses.values()] + extra)
        parts = all_reduce_sum(parts) / torch.tensor([self.dist.world_size] * len(losses) + [1.0, 1.0])
        stop = int(parts[-1])  # any process asked to stop: all stop after this step
        parts = parts[:-1]
        total = float(parts[:-1].sum())
        if not math.isfinite(total):
            self._diverged(total, losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), float(self.cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        self._clock = (self._clock[0], self._clock[1] + 1)
        s = self.sums
        s["loss"] += total
        s["steps"] += 1
        s["skipped"] += int(parts[-1])
        s["lr"] = lr
        for k, v in zip(losses, parts.tolist()):
            s[f"part/{k}"] = s.get(f"part/{k}", 0.0) + v
        self._stop_after_step = stop
        return total

    def _interrupt(self) -> None:
        """Save (unless this step's checkpoint was just written) and raise :class:`Interrupted`."""
        if self._saved_step != self.step:
            self.save()
        signum = self._stop.signum or self._stop_after_step  # the sum over processes if this one got none
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
        code = 128 + (signal.SIGINT if name == "SIGINT" else signal.SIGTERM)
        raise Interrupted(f"stopped by {name} after step {self.step}; checkpoint saved to "
                          f"{self.run_dir / 'last.ckpt'}; continue with --resume auto", exit_code=code)

    def _diverged(self, value: float, losses: dict[str, torch.Tensor]) -> None:
        last = self.run_dir / "last.ckpt"
        kept = (f"the last good checkpoint {last} is left intact" if last.is_file()
                else "no checkpoint was written yet")
        parts = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())
        raise TrainingDivergedError(
            f"loss is {value} at step {self.step + 1} ({parts}); training stopped, {kept}; lower the "
            "learning rate (--lr), raise the warmup, or use --amp off / bf16")

    def _after_step(self) -> dict[str, Any] | None:
        """Log, evaluate and checkpoint where the schedule says; returns the record written, if any."""
        step = self.step
        at_end = step >= self.total_steps
        cut_short = at_end and step < self.task.total_steps(self.steps_per_epoch)
        now = self.cadence.moments(step, at_end, cut_short)
        record: dict[str, Any] | None = None
        best = False
        if now.log or now.evaluate:
            record = self._record()
            if now.evaluate and self.val_ds is not None:
                best = self._evaluate_into(record)
            self.metrics.log(record, step=step)
            self._print(record)
        periodic = bool(self.cfg.checkpoint_interval and step % self.cfg.checkpoint_interval == 0)
        if periodic or at_end or now.evaluate or now.save:
            self.save(best=best)
        return record

    def _record(self) -> dict[str, Any]:
        s, spe = self.sums, self.steps_per_epoch
        timed, seconds = self._clock[1], time.perf_counter() - self._clock[0]
        n = max(s["steps"], 1)
        rec: dict[str, Any] = {"epoch": math.ceil(self.step / spe), "step": self.step, "lr": s["lr"]}
        rec.update(self.cadence.stamp(self.step))
        rec.update(train_loss=s["loss"] / n, time=seconds,
                   train_images_per_sec=timed * self.global_batch / max(seconds, 1e-9))
        parts = {k[5:]: v / n for k, v in s.items() if k.startswith("part/")}
        if len(parts) > 1:
            rec.update(parts)
        rec.update(self.task.log_extras(self.step - 1, self.total_steps))
        if s["skipped"]:
            rec["skipped_images"] = s["skipped"]
        self.sums, self._clock = _new_sums(), (time.perf_counter(), 0)
        return rec

    def _evaluate_into(self, record: dict[str, Any]) -> bool:
        """Add the val metrics (and the EMA's) to ``record``; True when the primary metric is a new best."""
        t = self.task
        record.update(t.evaluate(self.model, self.val_ds, self.device, self.amp, self.channels_last))
        score = record.get(t.primary_metric, -math.inf)
        if self.ema is not None:
            ema = t.evaluate(self.ema.module, self.val_ds, self.device, self.amp, self.channels_last)
            record.update({k.replace("val_", "val_ema_", 1) if k.startswith("val_") else f"ema_{k}": v
                           for k, v in ema.items()})
            score = max(score, ema.get(t.primary_metric, -math.inf))
        score = -math.inf if score is None or math.isnan(score) else score
        if score > self.best:
            self.best = score
            return True
        return False

    def _print(self, r: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        skip = {"epoch", "step", "iter"}
        vals = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                         if k not in skip)
        print(f"epoch {r['epoch']} step {r['step']}/{self.total_steps}: {vals}", flush=True)


def _load_training_checkpoint(path: str | Path, task: str) -> dict[str, Any]:
    """Checkpoint ``path``, refused (:class:`CheckpointError`, one line) when of a newer format or another
    task; a checkpoint without ``task`` is of :data:`~splitattn.engine.config.DEFAULT_TASK`."""
    ck = load_checkpoint(path)
    check_format(ck, path)
    if ck.get("task", DEFAULT_TASK) != task or "model" not in ck:
        raise CheckpointError(f"{path} is not a {task} training checkpoint of splitattn")
    return ck


def _new_sums() -> dict[str, Any]:
    return {"loss": 0.0, "steps": 0, "skipped": 0, "lr": 0.0}


def train(cfg: RunConfig) -> dict[str, Any]:
    """Run one training job described by a config; returns the last metrics record."""
    dist = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        return Trainer(cfg, dist).fit()
    finally:
        cleanup_distributed()


def evaluate_checkpoint(cfg: RunConfig, checkpoint: str | Path) -> dict[str, Any]:
    """The task's validation metrics of a training checkpoint, on the config's val set."""
    dist = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        task = create_task(cfg)
        ck = _load_training_checkpoint(checkpoint, task.name)
        val = task.build_val_dataset(ck)
        model = task.build_model(None).to(dist.device)
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {checkpoint} does not fit the config's model "
                                  f"({str(e).splitlines()[0]})") from e
        amp = "off" if cfg.amp == "auto" else cfg.amp
        metrics = task.evaluate(model, val, dist.device, amp, False)
        return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
    finally:
        cleanup_distributed()


__all__ = ["CHECKPOINT_FORMAT", "Trainer", "evaluate_checkpoint", "train"]
