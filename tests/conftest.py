"""Shared test helpers: deterministic seeds and reference models with non-trivial statistics."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# One share of the cores per pytest-xdist worker: two workers with two OpenMP threads each on 2 cores spin
# against each other. Subprocesses the tests start (DDP, kill-and-resume) inherit the same share.
_THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomize_stats(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every BatchNorm non-trivial running stats and affine params, and the classifier larger
    weights, so equivalence is checked on logits of order 1-10 rather than ~0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
    return model


def reference_model(name: str) -> torch.nn.Module:
    """The model as the official package builds it (timm for resnest14d/26d, which only timm has)."""
    if name in ("resnest14d", "resnest26d"):
        import timm

        return timm.create_model(name)
    import resnest.torch as official

    return getattr(official, name)()


# A tiny, fast `splitattn train` on CPU: resnest14d narrowed to width 8, 32 px, no workers or logs.
TINY_TRAIN_ARGS = [
    "--model", "resnest14d", "--img-size", "32", "--workers", "0", "--device", "cpu", "--no-progress-bar",
    "--set", "model_kwargs={stem_width: 8, base_width: 8}", "--set", "tensorboard=false",
]

OFFICIAL = [
    "resnest50", "resnest101", "resnest200", "resnest269",
    "resnest50_fast_1s1x64d", "resnest50_fast_2s1x64d", "resnest50_fast_4s1x64d",
    "resnest50_fast_1s2x40d", "resnest50_fast_2s2x40d", "resnest50_fast_4s2x40d", "resnest50_fast_1s4x24d",
]
ALL_MODELS = ["resnest14d", "resnest26d", *OFFICIAL]


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face Hub cache, in offline mode, for huggingface_hub, timm and splitattn."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both variables at import: set what it read too.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def put_hf_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "c0ffee" * 6 + "0123",
              ) -> Path:
    """Lay out ``files`` as huggingface_hub caches a download: blobs named by the hub's etag (SHA-256 for
    LFS weights, git SHA-1 for small files), snapshot links to them, refs/main naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for name, data in files.items():
        lfs = name.endswith((".safetensors", ".bin"))
        blob = repo / "blobs" / (hashlib.sha256(data).hexdigest() if lfs else git_sha1(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def write_roofs_file(path: Path, threads: int = 2) -> Path:
    """A fake ``benchmarks/cpu_peak.py --out`` file for this CPU: fp32 40, bf16 emulated, INT8 80 GMAC/s."""
    from splitattn.deploy.cpu_features import cpu_description

    roofs = {"fp32": {"status": "measured", "gmac_per_s": 40.0},
             "bf16": {"status": "emulated", "gmac_per_s": None, "reason": "reference loop"},
             "int8": {"status": "measured", "gmac_per_s": 80.0}}
    path.write_text(json.dumps({"cpu": cpu_description(), "threads": threads, "torch": "x", "roofs": roofs}))
    return path


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` inside (a global state that dynamo guards a compiled
    model on), the previous setting restored after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
