"""The paper's ImageNet training recipe, for one process or many (``torchrun``), resumable at any step."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset

from .. import create_model
from ..amp import autocast, make_grad_scaler
from ..checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from ..data.augment import create_mixup, create_train_transform
from ..data.datasets import (
    BadImageError,
    ImageFolderDataset,
    check_same_classes,
    collate_skip_bad,
    resolve_split_dirs,
    unwrap_worker_error,
)
from ..data.transforms import create_eval_transform
from ..distributed import DistInfo, all_reduce_mean, all_reduce_sum, cleanup_distributed, init_distributed
from ..models import set_drop_block_prob
from .config import save_config
from .evaluate import evaluate
from .optim import WarmupCosineSchedule, create_optimizer, drop_block_prob_at
from .progress import EpochProgress, MetricsLogger
from .rng import get_rng_state, seed_everything, set_rng_state
from .sampler import GlobalBatchSampler, shard_indices

log = logging.getLogger("splitattn.train")


class TrainingDivergedError(ValueError):
    """The loss became NaN or infinite."""


def eval_model_cfg(cfg: dict[str, Any]):
    """The model's :class:`ModelCfg` with this run's crop size, crop ratio, interpolation and mean/std."""
    from ..models.registry import get_model_cfg

    base = get_model_cfg(cfg["model"])
    size = int(cfg["eval_img_size"] or cfg["img_size"])
    return dataclasses.replace(
        base, input_size=(3, size, size), crop_pct=float(cfg["crop_pct"] or base.crop_pct),
        interpolation=cfg["interpolation"], mean=tuple(cfg["mean"] or base.mean),
        std=tuple(cfg["std"] or base.std),
    )


def eval_cfg_dict(mcfg: Any) -> dict[str, Any]:
    """The eval preprocessing of a :class:`ModelCfg` as a plain dict (stored in checkpoints)."""
    return {"img_size": mcfg.crop_size, "crop_pct": mcfg.crop_pct, "interpolation": mcfg.interpolation,
            "mean": list(mcfg.mean), "std": list(mcfg.std)}


def build_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """``create_model`` with the recipe's regularisation, norm layer and extra ``model_kwargs``."""
    model = create_model(
        cfg["model"], pretrained=cfg["pretrained"] or False, num_classes=num_classes,
        drop_rate=cfg["drop_rate"], drop_block_rate=cfg["drop_block_rate"],
        zero_init_last=cfg["zero_init_last"], norm_layer=cfg["norm_layer"], **cfg["model_kwargs"],
    )
    model.pretrained_cfg = eval_model_cfg(cfg)
    return model


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


class Trainer:
    """Owns the model, data, optimizer and run folder of one training run; :meth:`fit` runs it.

    Args:
        cfg: a resolved config (:func:`splitattn.engine.config.resolve_config`).
        dist: the process layout (default: from the ``torchrun`` environment).
    """

    def __init__(self, cfg: dict[str, Any], dist: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or init_distributed(None if cfg["device"] == "auto" else cfg["device"])
        if not cfg.get("output"):
            raise ValueError("no run folder given; pass --output RUN_DIR")
        self.run_dir = Path(cfg["output"])
        self.device = self.dist.device
        amp = cfg["amp"]
        self.amp = ("bf16" if self.device.type == "cuda" else "off") if amp == "auto" else amp
        cl = cfg["channels_last"]
        self.channels_last = self.device.type == "cuda" if cl == "auto" else bool(cl)
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg["seed"] + self.dist.rank)
        self._build_data()
        self._build_model()
        self.global_step, self.start_epoch, self.start_batch, self.best_top1 = 0, 0, 0, -1.0
        self.metrics = MetricsLogger(self.run_dir, enabled=self.dist.is_main, tensorboard=cfg["tensorboard"])

    # -- set-up ------------------------------------------------------------------------------------
    def _build_data(self) -> None:
        cfg, d = self.cfg, self.dist
        train_dir, val_dir = resolve_split_dirs(cfg["data"])
        ecfg = eval_model_cfg(cfg)
        train_tf = create_train_transform(
            cfg["img_size"], cfg["rrc_scale"], cfg["rrc_ratio"], cfg["hflip"], cfg["auto_augment"],
            cfg["color_jitter"], cfg["pca_lighting"], cfg["interpolation"], ecfg.mean, ecfg.std,
        )
        self.train_ds = ImageFolderDataset(train_dir, train_tf, skip_bad_images=cfg["skip_bad_images"],
                                           seed=cfg["seed"], what="train")
        self.val_ds = ImageFolderDataset(val_dir, create_eval_transform(ecfg),
                                         skip_bad_images=cfg["skip_bad_images"], what="val")
        check_same_classes(self.train_ds.classes, self.val_ds.classes, train_dir, val_dir)
        self.classes = self.train_ds.classes
        self.sampler = GlobalBatchSampler(len(self.train_ds), cfg["batch_size"], d.world_size, d.rank,
                                          shuffle=True, seed=cfg["seed"])
        self.global_batch = self.sampler.global_batch
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{train_dir} has {len(self.train_ds)} images, fewer than one global batch "
                f"({cfg['batch_size']} x {d.world_size} processes); lower --batch-size"
            )
        pin = self.device.type == "cuda"
        # Own generators: creating a loader iterator must not draw from the global RNG, or a run resumed
        # mid-epoch (one iterator fewer) would see shifted mixup/DropBlock random numbers.
        self.train_loader = DataLoader(self.train_ds, batch_sampler=self.sampler, num_workers=cfg["workers"],
                                       pin_memory=pin, collate_fn=collate_skip_bad,
                                       generator=torch.Generator())
        val_part = Subset(self.val_ds, shard_indices(len(self.val_ds), d.world_size, d.rank))
        self.val_loader = DataLoader(val_part, batch_size=cfg["batch_size"], shuffle=False,
                                     num_workers=cfg["workers"], pin_memory=pin, collate_fn=collate_skip_bad,
                                     generator=torch.Generator())

    def _build_model(self) -> None:
        cfg, d = self.cfg, self.dist
        model = build_model(cfg, len(self.classes))
        if cfg["grad_checkpointing"]:
            model.set_grad_checkpointing(cfg["grad_checkpointing"])
        if cfg["sync_bn"] and d.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = None
        if cfg["ema"]:
            avg_fn = get_ema_multi_avg_fn(cfg["ema_decay"])
            self.ema = AveragedModel(model, multi_avg_fn=avg_fn, use_buffers=True)
        self.lr = float(cfg["lr"] or cfg["base_lr"] * self.global_batch / cfg["lr_base_batch"])
        self.optimizer = create_optimizer(model, self.lr, cfg["momentum"], cfg["weight_decay"],
                                          cfg["nesterov"])
        self.total_steps = cfg["epochs"] * self.steps_per_epoch
        self.schedule = WarmupCosineSchedule(self.optimizer, self.lr, self.total_steps,
                                             cfg["warmup_epochs"] * self.steps_per_epoch, cfg["min_lr"])
        self.scaler = make_grad_scaler(self.device, self.amp)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
        self.mixup = create_mixup(cfg["mixup_alpha"], len(self.classes))
        train_model: nn.Module = model
        if d.distributed:
            train_model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg["compile"]:
            train_model = torch.compile(train_model)
        self.train_model = train_model

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self, epoch: int, batch: int) -> dict[str, Any]:
        """Everything needed to continue at ``(epoch, batch)``: plain containers, tensors and numbers."""
        from .distributed import is_dist

        rng = get_rng_state()
        if is_dist():
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rng_states = gathered
        else:
            rng_states = [rng]
        return {
            "format": "splitattn-train-1",
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "model_ema": ({k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()}
                          if self.ema is not None else None),
            "ema_n_averaged": int(self.ema.n_averaged.item()) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "batch": batch,
            "step": self.global_step,
            "best_top1": self.best_top1,
            "rng": rng_states,
            "world_size": self.dist.world_size,
            "config": dict(self.cfg),
            "classes": list(self.classes),
            "model_name": self.cfg["model"],
            "model_kwargs": dict(self.cfg["model_kwargs"]),
            "eval_cfg": eval_cfg_dict(self.model.pretrained_cfg),
        }

    def save(self, epoch: int, batch: int, best: bool = False) -> None:
        state = self.state_dict(epoch, batch)  # collective under DDP: every rank builds it
        if self.dist.is_main:
            save_checkpoint(self.run_dir / "last.ckpt", state)
            if best:
                save_checkpoint(self.run_dir / "best.ckpt", state)

    def resume(self, spec: str) -> Path | None:
        """Load ``spec`` (a path, or ``"auto"``: the newest valid checkpoint in the run folder)."""
        path = find_latest_checkpoint(self.run_dir) if spec == "auto" else Path(spec)
        if path is None:
            if self.dist.is_main:
                log.info("--resume auto: no checkpoint in %s, starting from scratch", self.run_dir)
            return None
        ck = load_checkpoint(path)
        if ck.get("classes") != list(self.classes):
            raise ValueError(f"checkpoint {path} was trained on classes {ck.get('classes')[:5]}..., "
                             f"not those of {self.cfg['data']}; use another --output or --resume")
        self.model.load_state_dict(ck["model"])
        if self.ema is not None and ck.get("model_ema") is not None:
            self.ema.module.load_state_dict(ck["model_ema"])
            self.ema.n_averaged.fill_(ck["ema_n_averaged"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck["schedule"])
        self.scaler.load_state_dict(ck["scaler"])
        self.global_step, self.start_epoch, self.start_batch = ck["step"], ck["epoch"], ck["batch"]
        self.best_top1 = ck.get("best_top1", -1.0)
        if ck.get("world_size") == self.dist.world_size:
            set_rng_state(ck["rng"][self.dist.rank])
        elif self.dist.is_main:
            log.warning("checkpoint was written by %s processes, now %s: RNG streams are re-seeded",
                        ck.get("world_size"), self.dist.world_size)
        if self.dist.is_main:
            log.info("resumed from %s (epoch %d, batch %d, step %d)", path, self.start_epoch + 1,
                     self.start_batch, self.global_step)
        return path

    # -- training ----------------------------------------------------------------------------------
    def _train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int) -> tuple[float, float]:
        cfg = self.cfg
        lr = self.schedule.step()
        if cfg["drop_block_rate"] > 0:
            set_drop_block_prob(self.model, drop_block_prob_at(self.global_step, self.total_steps,
                                                                cfg["drop_block_rate"]))
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(self.device, non_blocking=True)
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        with autocast(self.device, self.amp):
            logits = self.train_model(x)
        loss = self.criterion(logits.float(), target)
        loss_val = all_reduce_mean(loss.detach()).item()
        if not math.isfinite(loss_val):
            last = self.run_dir / "last.ckpt"
            kept = (f"the last good checkpoint {last} is left intact" if last.is_file()
                    else "no checkpoint was written yet")
            raise TrainingDivergedError(
                f"loss is {loss_val} at step {self.global_step + 1} (epoch {epoch + 1}, batch {batch + 1}); "
                f"training stopped, {kept}; lower --lr, or use --amp off / bf16"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), float(cfg["grad_clip"]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.global_step += 1
        return loss_val, lr

    def fit(self) -> dict[str, Any]:
        """Train to the end (or ``max_steps``), validating and checkpointing; returns the last metrics."""
        cfg, d = self.cfg, self.dist
        if d.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resolved = {**cfg, "lr": self.lr, "world_size": d.world_size, "global_batch": self.global_batch,
                        "amp": self.amp, "channels_last": self.channels_last, "classes": list(self.classes)}
            save_config(resolved, self.run_dir / "config.yaml")
        if cfg["resume"]:
            self.resume(str(cfg["resume"]))
        if d.is_main:
            print(f"training {cfg['model']} on {len(self.train_ds)} images / {len(self.classes)} classes "
                  f"(val {len(self.val_ds)}), {d.world_size} process(es) on {self.device}, global batch "
                  f"{self.global_batch}, peak lr {self.lr:g}, {cfg['epochs']} epochs x "
                  f"{self.steps_per_epoch} steps, amp {self.amp}; run folder {self.run_dir}", flush=True)
        last: dict[str, Any] = {}
        max_steps = cfg["max_steps"]
        for epoch in range(self.start_epoch, cfg["epochs"]):
            if max_steps and self.global_step >= max_steps:
                break
            start_batch = self.start_batch if epoch == self.start_epoch else 0
            last = self._run_epoch(epoch, start_batch)
        if self.dist.is_main:
            self.metrics.close()
        return last

    def _run_epoch(self, epoch: int, start_batch: int) -> dict[str, Any]:
        cfg, d = self.cfg, self.dist
        self.train_ds.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_batch)
        self.train_model.train()
        t0 = time.perf_counter()
        loss_sum, n_steps, n_bad, stopped = 0.0, 0, 0, False
        bar = EpochProgress(len(self.sampler), f"epoch {epoch + 1}/{cfg['epochs']}", enabled=d.is_main,
                            batch_size=self.global_batch, force_plain=not cfg["progress_bar"])
        lr = self.schedule.lr_at(self.global_step)
        try:
            for batch, (x, y, bad) in enumerate(self.train_loader, start=start_batch):
                n_bad += bad
                if x.shape[0] < 2:
                    raise ValueError(f"a training batch of epoch {epoch + 1} has fewer than 2 readable "
                                     "images; remove the unreadable images from the train folder")
                loss, lr = self._train_step(x, y, epoch, batch)
                loss_sum += loss
                n_steps += 1
                bar.update(1, loss=loss, lr=lr)
                interval = cfg["checkpoint_interval"]
                at_end = batch + 1 == self.steps_per_epoch
                if interval and self.global_step % interval == 0 and not at_end:
                    self.save(epoch, batch + 1)
                if cfg["max_steps"] and self.global_step >= cfg["max_steps"]:
                    stopped = not at_end
                    if stopped:
                        self.save(epoch, batch + 1)
                    break
        except BadImageError as e:
            raise BadImageError(unwrap_worker_error(e)) from None
        except RuntimeError as e:
            if "BadImageError" in str(e):
                raise BadImageError(unwrap_worker_error(e)) from None
            raise
        finally:
            bar.close()
        if stopped:
            return {"epoch": epoch + 1, "step": self.global_step, "stopped_at_max_steps": True}
        seconds = time.perf_counter() - t0
        record: dict[str, Any] = {
            "epoch": epoch + 1, "step": self.global_step, "lr": lr,
            "train_loss": loss_sum / max(n_steps, 1), "epoch_time": seconds,
            "train_images_per_sec": n_steps * self.global_batch / max(seconds, 1e-9),
            "drop_block": drop_block_prob_at(self.global_step - 1, self.total_steps, cfg["drop_block_rate"]),
        }
        n_bad = int(all_reduce_sum(torch.tensor(float(n_bad))).item())
        if n_bad:
            record["skipped_images"] = n_bad
        last_epoch = epoch + 1 == cfg["epochs"]
        best = False
        if (epoch + 1) % max(cfg["eval_interval"], 1) == 0 or last_epoch:
            v = evaluate(self.model, self.val_loader, self.device, self.amp, self.channels_last)
            record.update(val_loss=v["loss"], val_top1=v["top1"], val_top5=v["top5"])
            score = v["top1"]
            if self.ema is not None:
                ve = evaluate(self.ema.module, self.val_loader, self.device, self.amp, self.channels_last)
                record.update(val_ema_loss=ve["loss"], val_ema_top1=ve["top1"], val_ema_top5=ve["top5"])
                score = max(score, ve["top1"])
            if v["skipped"]:
                record["skipped_val_images"] = v["skipped"]
            best = score > self.best_top1
            self.best_top1 = max(self.best_top1, score)
        self.save(epoch + 1, 0, best=best)
        if d.is_main:
            self.metrics.log(record, step=self.global_step)
            msg = (f"epoch {epoch + 1}/{cfg['epochs']}: train loss {record['train_loss']:.4f}, lr {lr:.4g}, "
                   f"{record['train_images_per_sec']:.1f} img/s, {seconds:.1f} s")
            if "val_top1" in record:
                msg += (f"; val loss {record['val_loss']:.4f}, top-1 {record['val_top1']:.2f}%, "
                        f"top-5 {record['val_top5']:.2f}%")
            if "val_ema_top1" in record:
                msg += f", EMA top-1 {record['val_ema_top1']:.2f}%"
            if n_bad:
                msg += f"; skipped {n_bad} unreadable images"
            print(msg, flush=True)
        return record


def train(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one training job described by a resolved config; returns the last epoch's metrics."""
    dist = init_distributed(None if cfg["device"] == "auto" else cfg["device"])
    try:
        return Trainer(cfg, dist).fit()
    finally:
        cleanup_distributed()


__all__ = ["Trainer", "TrainingDivergedError", "build_model", "eval_model_cfg", "train"]
