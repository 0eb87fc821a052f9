"""``torchrun`` integration: process group set-up from environment variables, rank-0 helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError, SplitAttnError

DEFAULT_TIMEOUT_MIN = 10.0


class DistributedTimeoutError(SplitAttnError, TimeoutError):
    """A process of the job did not arrive (or answer) within the run's ``dist_timeout``."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process computes on.
        is_main: ``rank == 0``: the process that logs and writes checkpoints.
        distributed: a process group is initialised and ``world_size > 1``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True
    distributed: bool = False


def _resolve_device(device: str | None, local_rank: int) -> torch.device:
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from e
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported for training; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    return dev


def _env_int(name: str, default: str) -> int:
    value = os.environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; launch with "
                          "torchrun") from None


def _connect_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store at ``MASTER_ADDR:MASTER_PORT`` (hosted by rank 0, or by the torchrun agent),
    the way ``env://`` builds it, except that rank 0 does not wait for the others here: :func:`_arrive`
    does, so that a timeout can name the ranks that are missing."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT", "")
    if not addr or not port.isdigit():
        raise ConfigError(f"WORLD_SIZE is {world_size} but MASTER_ADDR / MASTER_PORT are not set (or not a "
                          "port number); launch with torchrun")
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    host = "the torchrun agent" if agent else "rank 0"
    try:
        return dist.TCPStore(addr, int(port), world_size, is_master=rank == 0 and not agent, timeout=timeout,
                             wait_for_workers=False, multi_tenant=True)
    except (RuntimeError, OSError) as e:  # torch's DistError and DistNetworkError are RuntimeErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if rank == 0 and not agent:
            raise DistributedTimeoutError(f"rank 0 could not host the rendezvous at {addr}:{port} ({first}); "
                                          "set another MASTER_PORT") from e
        raise DistributedTimeoutError(
            f"rank {rank}: {host}, which hosts the rendezvous at {addr}:{port}, did not answer within "
            f"{_minutes(timeout)} (dist_timeout; {first}); check that it started and that MASTER_ADDR / "
            "MASTER_PORT reach it, or raise dist_timeout") from e


def _minutes(timeout: timedelta) -> str:
    return f"{timeout.total_seconds() / 60:g} min"


def _arrive(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> None:
    """Mark this rank arrived and wait for all; on timeout, name the ranks that never marked."""
    prefix = (f"splitattn/arrived/{os.environ.get('TORCHELASTIC_RUN_ID', '-')}/"
              f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/")  # a restarted job's round is new
    store.set(f"{prefix}{rank}", str(os.getpid()))
    try:
        store.wait([f"{prefix}{r}" for r in range(world_size)], timeout)
    except RuntimeError as e:
        try:
            missing = [str(r) for r in range(world_size) if not store.check([f"{prefix}{r}"])]
            who = f"rank{'s' if len(missing) > 1 else ''} {', '.join(missing)} of {world_size}"
        except RuntimeError:  # the host itself went away
            who = "the rendezvous host"
        raise DistributedTimeoutError(
            f"rank {rank}: {who} did not arrive within {_minutes(timeout)} (dist_timeout); check that every "
            "process of the job started (see their logs), or raise dist_timeout") from e


def init_distributed(device: str | None = None, timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistInfo:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (as the ``env://``
    init method does). Uses NCCL on CUDA and gloo on CPU. Without those variables it returns a
    single-process :class:`DistInfo`.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None``/``"auto"`` (CUDA when available).
        timeout_min: minutes a process waits for the others, at start and in every collective (torch's
            default is 30 for gloo: a restarted job whose peer is gone would hang that long).

    Raises:
        DistributedTimeoutError: a process did not arrive in time; the message names its rank.
    """
    world_size, rank = _env_int("WORLD_SIZE", "1"), _env_int("RANK", "0")
    local_rank = _env_int("LOCAL_RANK", "0")
    dev = _resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(device=dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        timeout = timedelta(minutes=timeout_min)
        store = _connect_store(rank, world_size, timeout)
        _arrive(store, rank, world_size, timeout)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                                timeout=timeout, **kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                    is_main=rank == 0, distributed=True)


def cleanup_distributed() -> None:
    """Destroy the process group if one is initialised (safe to call always)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all processes (a copy). Identity when single."""
    if not is_dist():
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


__all__ = ["DEFAULT_TIMEOUT_MIN", "DistInfo", "DistributedTimeoutError", "init_distributed",
           "cleanup_distributed", "all_reduce_sum",
           "is_dist"]
