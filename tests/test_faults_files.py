"""Hostile weight and checkpoint files: truncated, random, corrupted or lying about their architecture.

Every malformed file must raise the project's CheckpointError / WeightsError naming the file (never a
KeyError, JSONDecodeError, struct.error...), and no file may make loading it fetch a URL, read another
file or allocate without bound.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import pickle
import random
import shutil
import stat
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import splitattn
from splitattn.engine.rng import get_rng_state
from splitattn.errors import CheckpointError, MissingFileError, WeightsError
from splitattn.evaluation.predict import export_weights, load_for_inference
from splitattn.models import _download as dl
from splitattn.models._pretrained import load_pretrained
from splitattn.models._registry import get_model_cfg
from splitattn.models._spec import ARG_RANGES, arg_checks
from splitattn.models._weights import read_state_dict
from splitattn.utils import fileio
from splitattn.utils.train_checkpoint import (
    CHECKPOINT_FORMAT,
    find_latest_checkpoint,
    load_checkpoint,
    quarantine,
    save_checkpoint,
)

CLASSES = ["ant", "bee", "cow"]
KWARGS = {"stem_width": 8, "base_width": 8}
EVAL_CFG = {"img_size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3,
            "std": [0.25] * 3}
MODEL_ARGS = dict(num_classes=len(CLASSES), **KWARGS)


def _checkpoint_state() -> dict[str, Any]:
    """What Trainer.state_dict writes for a classification run, after one SGD step."""
    torch.manual_seed(0)
    model = splitattn.create_model("resnest14d", **MODEL_ARGS)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    opt.step()
    sched.step()
    return {
        "format": CHECKPOINT_FORMAT, "task": "classification", "model": model.state_dict(), "model_ema": None,
        "ema_n_averaged": 0, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "step": 1, "epoch": 0, "batch": 1,
        "best": None, "sums": {"loss": 1.5, "n": 2}, "rng": [get_rng_state()], "world_size": 1,
        "config": {"model": "resnest14d", "model_kwargs": KWARGS, "epochs": 1},
        "model_name": "resnest14d", "model_kwargs": KWARGS, "classes": CLASSES, "eval_cfg": EVAL_CFG,
    }


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("real")
    state = _checkpoint_state()
    ckpt = save_checkpoint(root / "last.ckpt", state)
    weights = export_weights(ckpt, root / "exported.safetensors")
    return {"root": root, "state": state, "ckpt": ckpt, "weights": weights}


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """No file may make splitattn fetch anything."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a file made splitattn download {args}")

    monkeypatch.setattr(dl, "download", refuse)
    monkeypatch.setattr(splitattn.models._pretrained, "download", refuse)


def _expect(error: type[Exception], path: Path, fn: Callable[[], Any], match: str = "") -> str:
    with pytest.raises(error) as info:
        fn()
    msg = str(info.value)
    assert path.name in msg, f"{type(info.value).__name__} does not name {path.name}: {msg}"
    if match:
        assert match in msg, f"{match!r} not in {msg!r}"
    return msg


def _all_refuse(path: Path, out: Path, model: torch.nn.Module) -> None:
    """Every reader refuses ``path`` with the project's error naming it (create_model: see callers)."""
    _expect(WeightsError, path, lambda: read_state_dict(path))
    _expect(WeightsError, path, lambda: load_pretrained(model, path, get_model_cfg("resnest14d")))
    if path.suffix == ".ckpt":
        _expect(CheckpointError, path, lambda: load_checkpoint(path))
        _expect(CheckpointError, path, lambda: load_for_inference(path))
        _expect(CheckpointError, path, lambda: export_weights(path, out))
        assert not out.exists()
    else:
        _expect(WeightsError, path, lambda: load_for_inference(path))


def _loads_or_refuses(path: Path) -> None:
    """A corrupted file either still loads or is refused with the project's error naming it.

    (export_weights reads checkpoints through the same function as load_for_inference.)
    """
    calls: list[tuple[type[Exception], Callable[[], Any]]] = [
        (CheckpointError if path.suffix == ".ckpt" else WeightsError, lambda: load_for_inference(path)),
        (WeightsError, lambda: read_state_dict(path)) if path.suffix != ".ckpt"
        else (CheckpointError, lambda: load_checkpoint(path)),
    ]
    for error, fn in calls:
        try:
            fn()
        except error as e:
            assert path.name in str(e), str(e)


def test_the_real_files_load(real: dict[str, Any]) -> None:
    a, classes = load_for_inference(real["ckpt"])
    b, _ = load_for_inference(real["weights"])
    c = splitattn.create_model("resnest14d", pretrained=str(real["weights"]), **MODEL_ARGS).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert classes == CLASSES and torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))


@pytest.mark.parametrize("kind", ["ckpt", "weights"])
def test_truncated_files_are_refused(real: dict[str, Any], tmp_path: Path, kind: str) -> None:
    src: Path = real[kind]
    victim = tmp_path / f"victim{src.suffix}"
    shutil.copyfile(src, victim)
    n = victim.stat().st_size
    spread = {i * n // 40 for i in range(40)}
    offsets = sorted(spread | set(range(64)) | set(range(n - 64, n)), reverse=True)
    model = splitattn.create_model("resnest14d", **MODEL_ARGS)
    for off in offsets:  # shortest last: each step truncates the same file further
        os.truncate(victim, off)
        _all_refuse(victim, tmp_path / "out.safetensors", model)
        if off in spread:
            _expect(WeightsError, victim,
                    lambda: splitattn.create_model("resnest14d", pretrained=str(victim), **MODEL_ARGS))


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors", ".pth"])
def test_random_bytes_are_refused(tmp_path: Path, suffix: str) -> None:
    rng = random.Random(0)
    path = tmp_path / f"random{suffix}"
    model = splitattn.create_model("resnest14d", **MODEL_ARGS)
    heads = [b"", b"PK\x03\x04", struct.pack("<Q", 100), struct.pack("<Q", 2**63), b"\x80\x02}q\x00"]
    for size in (0, 1, 7, 8, 9, 64, 1000, 50_000):
        for head in heads:
            path.write_bytes(head + rng.randbytes(size))
            _all_refuse(path, tmp_path / "out.safetensors", model)


def _structure_ranges(path: Path) -> list[tuple[int, int]]:
    """Byte ranges holding a file's structure rather than tensor data."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        return [(0, 8 + struct.unpack("<Q", data[:8])[0])]
    with zipfile.ZipFile(path) as z:
        pkl = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
        locals_ = [(i.header_offset, i.header_offset + 30 + len(i.filename) + 64) for i in z.infolist()]
        return [(0, pkl.header_offset + 30 + len(pkl.filename) + 64 + pkl.compress_size),
                *locals_[::25], (z.start_dir, len(data))]


@pytest.mark.parametrize("kind", ["ckpt", "weights"])
def test_corrupted_structure_loads_or_is_refused(real: dict[str, Any], tmp_path: Path, kind: str) -> None:
    """Seeded byte changes in the pickle, zip records or safetensors header (where parsers can fail)."""
    victim = tmp_path / f"victim{real[kind].suffix}"
    shutil.copyfile(real[kind], victim)
    ranges = _structure_ranges(victim)
    rng = random.Random(1)
    with open(victim, "r+b") as f:
        for _ in range(30):
            lo, hi = rng.choice(ranges)
            pos = rng.randrange(lo, hi)
            f.seek(pos)
            old = f.read(1)
            f.seek(pos)
            f.write(bytes([rng.choice([0, 0xFF, ord("{"), ord('"'), old[0] ^ 0x40])]))
            f.flush()
            _loads_or_refuses(victim)
            f.seek(pos)
            f.write(old)
            f.flush()


def _crafted_checkpoint(path: Path, persistent_id: Any) -> Path:
    """A torch zip checkpoint whose pickle names a storage by ``persistent_id``, as a hostile file may."""
    buf = io.BytesIO()
    torch.save({"model": torch.zeros(2)}, buf)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return persistent_id if obj == "STORAGE" else None

    pkl = io.BytesIO()
    Pickler(pkl, protocol=2).dump({"model": "STORAGE"})
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = pkl.getvalue() if info.filename.endswith("data.pkl") else src.read(info.filename)
            out.writestr(info.filename, data)
    return path


_FLOAT_STORAGE = torch.FloatStorage
CRAFTED_IDS = {
    "huge_numel": ("storage", _FLOAT_STORAGE, "0", "cpu", 10**12),
    "missing_record": ("storage", _FLOAT_STORAGE, "9", "cpu", 2),
    "short_tuple": ("storage", _FLOAT_STORAGE),
    "not_storage": ("nope", _FLOAT_STORAGE, "0", "cpu", 2),
    "type_not_a_class": ("storage", ("x",), "0", "cpu", 2),
    "negative_numel": ("storage", _FLOAT_STORAGE, "0", "cpu", -1),
    "numel_string": ("storage", _FLOAT_STORAGE, "0", "cpu", "x"),
    "id_not_tuple": 5,
}


@pytest.mark.parametrize("name", sorted(CRAFTED_IDS))
def test_crafted_pickles_are_refused(tmp_path: Path, name: str) -> None:
    path = _crafted_checkpoint(tmp_path / f"{name}.ckpt", CRAFTED_IDS[name])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert path.name in str(info.value)


def _safetensors_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _with_header(header: Any, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _with_length(n: int, header: dict[str, Any], body: bytes) -> bytes:
    return struct.pack("<Q", n) + json.dumps(header).encode() + body


def _first_tensor(header: dict[str, Any]) -> str:
    return next(k for k in header if k != "__metadata__")


HEADER_CORRUPTIONS: dict[str, Callable[[dict[str, Any], bytes], bytes]] = {
    "length_huge": lambda h, b: _with_length(2**62, h, b),
    "length_zero": lambda h, b: _with_length(0, h, b),
    "length_past_end": lambda h, b: _with_length(len(json.dumps(h)) + len(b) + 1, h, b),
    "bad_json": lambda h, b: _with_header(json.dumps(h).encode()[:-3] + b"@@@", b),
    "not_utf8": lambda h, b: _with_header(b'{"\xff\xfe": 1}' + b" " * 10, b),
    "json_array": lambda h, b: _with_header([1, 2, 3], b),
    "offsets_past_end": lambda h, b: _with_header(
        {**h, _first_tensor(h): {**h[_first_tensor(h)], "data_offsets": [len(b) - 4, len(b) + 1000]}}, b),
    "offsets_reversed": lambda h, b: _with_header(
        {**h, _first_tensor(h): {**h[_first_tensor(h)], "data_offsets": [100, 4]}}, b),
    "shape_mismatch": lambda h, b: _with_header(
        {**h, _first_tensor(h): {**h[_first_tensor(h)], "shape": [10**6, 10**6]}}, b),
    "dtype_unknown": lambda h, b: _with_header(
        {**h, _first_tensor(h): {**h[_first_tensor(h)], "dtype": "Q99"}}, b),
    "metadata_not_strings": lambda h, b: _with_header({**h, "__metadata__": {"model_kwargs": {"a": 1}}}, b),
    "body_truncated": lambda h, b: _with_header(h, b[: len(b) // 2]),
}


@pytest.mark.parametrize("name", sorted(HEADER_CORRUPTIONS))
def test_safetensors_header_corruptions_are_refused(real: dict[str, Any], tmp_path: Path, name: str) -> None:
    header, body = _safetensors_parts(real["weights"])
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(HEADER_CORRUPTIONS[name](header, body))
    model = splitattn.create_model("resnest14d", **MODEL_ARGS)
    _all_refuse(path, tmp_path / "out.safetensors", model)
    _expect(WeightsError, path,
            lambda: splitattn.create_model("resnest14d", pretrained=str(path), **MODEL_ARGS))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda s: {**s, key: value}


def _kw(**kwargs: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return _set("model_kwargs", kwargs)


def _state(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda s: {**s, "model": {**s["model"], **changes}}


# (edit of the checkpoint dict, text the CheckpointError must contain)
CKPT_CORRUPTIONS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "not_a_dict": (lambda s: [1, 2, 3], "holds a list, expected a dict"),
    "no_model": (lambda s: {k: v for k, v in s.items() if k != "model"}, "has no 'model' entry"),
    "pretrained_url": (_kw(**KWARGS, pretrained="https://example.com/w.pth"),
                       "'model_args.pretrained' must be absent (unknown key"),
    "pretrained_path": (_kw(pretrained="/etc/passwd"), "'model_args.pretrained' must be absent"),
    "num_classes": (_kw(**KWARGS, num_classes=7), "'model_args.num_classes' must be absent"),
    "unknown_key": (_kw(**KWARGS, weights_file="/tmp/x"), "'model_args.weights_file' must be absent"),
    "kwargs_not_mapping": (_set("model_kwargs", [8, 8]), "'model_kwargs' must be an object"),
    "width_string": (_kw(stem_width="8"), "'model_args.stem_width' must be an integer in [1, 256], got '8'"),
    "width_negative": (_kw(stem_width=-8), "'model_args.stem_width' must be an integer"),
    "radix_bool": (_kw(radix=True), "'model_args.radix' must be an integer"),
    "norm_unknown": (_kw(norm_layer="os.system"), "'model_args.norm_layer' must be a norm"),
    "huge_model": (_kw(base_width=256, cardinality=64), "a model of at most 1,000M parameters"),
    "unbuildable": (_kw(base_width=1), "'model_args' must be arguments that build a resnest14d"),
    "model_name_unknown": (_set("model_name", "resnest999"), "'model_name' must be a registered model name"),
    "model_name_int": (_set("model_name", 5), "'model_name' must be a registered model name"),
    "classes_string": (_set("classes", "ant bee cow"), "'label_names' must be a list of class names"),
    "classes_ints": (_set("classes", [1, 2, 3]), "'label_names' must be a list of class names"),
    "classes_vs_fc": (_set("classes", [*CLASSES, "dog"]), "'num_classes' must be the rows of fc.weight (3, "),
    "eval_cfg_bad": (_set("eval_cfg", {**EVAL_CFG, "img_size": "big"}), "'data_config.img_size' must be"),
    "eval_cfg_missing_key": (_set("eval_cfg", {"img_size": 32}), "'data_config' must be an eval data config"),
    "eval_cfg_list": (_set("eval_cfg", [32]), "'data_config' must be an object"),
    "eval_cfg_huge": (_set("eval_cfg", {**EVAL_CFG, "crop_pct": 1e-9}), "of at most 8192 px"),
    "state_list": (_set("model", [1, 2]), "entry 'model': expected a state dict"),
    "state_int_key": (lambda s: {**s, "model": {**s["model"], 3: torch.zeros(1)}},
                      "'state dict key' must be a string, got 3"),
    "state_non_tensor": (_state(**{"fc.bias": "zeros"}), "'fc.bias' must be a tensor, got a str"),
    "state_bad_shape": (_state(**{"fc.bias": torch.zeros(5)}), "do not fit model 'resnest14d' (size mis"),
    "state_fc_1d": (_state(**{"fc.weight": torch.zeros(3)}), "the rows of fc.weight (3,)"),
    "record_not_json": (_set("splitattn.model", "{nope"), "'splitattn.model' must be valid JSON"),
    "record_future": (_set("splitattn.model", json.dumps({"format_version": 9, "model_name": "resnest14d",
                                                           "num_classes": 3})),
                      "'format_version' must be at most 1 (this file was written by a newer splitattn"),
    "state_missing_key": (lambda s: {**s, "model": {k: v for k, v in s["model"].items() if k != "fc.bias"}},
                          "1 missing keys (e.g. fc.bias)"),
    "task_tensor": (_set("task", torch.zeros(2)), "not a classification one"),
    "task_detection": (_set("task", "detection"), "is a detection checkpoint"),
    "format_future": (_set("format", "splitattn-train-9"),
                      "has format 'splitattn-train-9', this splitattn reads 'splitattn-train-2' and older"),
    "format_not_text": (_set("format", torch.zeros(2)), "has format tensor("),
}


@pytest.mark.parametrize("name", sorted(CKPT_CORRUPTIONS))
def test_checkpoint_contents_are_validated(real: dict[str, Any], tmp_path: Path, name: str) -> None:
    edit, text = CKPT_CORRUPTIONS[name]
    path = save_checkpoint(tmp_path / f"{name}.ckpt", edit(dict(real["state"])))
    out = tmp_path / "out.safetensors"
    _expect(CheckpointError, path, lambda: load_for_inference(path), text)
    _expect(CheckpointError, path, lambda: export_weights(path, out), text)
    assert not out.exists()


def test_checkpoint_without_ema_and_missing_file(real: dict[str, Any], tmp_path: Path) -> None:
    ckpt = real["ckpt"]
    _expect(CheckpointError, ckpt, lambda: load_for_inference(ckpt, ema=True), "no EMA weights")
    _expect(MissingFileError, tmp_path / "gone.ckpt", lambda: load_checkpoint(tmp_path / "gone.ckpt"))
    _expect(CheckpointError, ckpt, lambda: load_checkpoint(ckpt, required=("model", "nope", "x")),
            "has no 'nope', 'x' entries")


def _record(**changes: Any) -> dict[str, str]:
    """The exported file's record (metadata ``splitattn.model``) with ``changes`` (None deletes a field)."""
    record = {"format_version": 1, "model_name": "resnest14d", "model_args": KWARGS, "num_classes": 3,
              "in_chans": 3, "label_names": CLASSES, "data_config": EVAL_CFG}
    record.update(changes)
    return {"splitattn.model": json.dumps({k: v for k, v in record.items() if v is not None})}


def _legacy(**entries: Any) -> dict[str, str]:
    """Metadata of splitattn 0.1 (separate entries, no record), read through the same validator."""
    return {"splitattn.model": None, "model_name": "resnest14d", "model_kwargs": json.dumps(KWARGS),
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in entries.items()}}


# (metadata changes, text the WeightsError must contain); create_model(pretrained=) reads each file too.
META_CORRUPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "record_bad_json": ({"splitattn.model": '{"model_name": "resnest14d"'},
                        "'splitattn.model' must be valid JSON"),
    "record_deep_json": ({"splitattn.model": "[" * 100_000 + "]" * 100_000}, "must be valid JSON"),
    "record_huge": ({"splitattn.model": " " * (5 * 2**20)}, "a JSON string of at most 4 MiB"),
    "record_array": ({"splitattn.model": "[1]"},
                     "expected an object (a mapping of names to values), got list"),
    "args_pretrained": (_record(model_args={"pretrained": "http://127.0.0.1:9/x.pth"}),
                        "'model_args.pretrained' must be absent (unknown key"),
    "args_num_classes": (_record(model_args={**KWARGS, "num_classes": 5}),
                         "'model_args.num_classes' must be"),
    "args_float_width": (_record(model_args={"stem_width": 8.5}),
                         "'model_args.stem_width' must be an integer"),
    "args_nan_rate": (_record(model_args={**KWARGS, "drop_rate": float("nan")}),
                      "'model_args.drop_rate' must be a finite number in [0, 1)"),
    "unknown_field": (_record(weights_url="http://127.0.0.1:9/w.pth"), "'weights_url' must be absent"),
    "no_num_classes": (_record(num_classes=None, label_names=None), "'num_classes' must be present"),
    "labels_object": (_record(label_names={"a": 1}), "'label_names' must be a list of class names"),
    "labels_vs_classes": (_record(label_names=["a", "b"]), "'label_names' must be 3 names, one per class"),
    "classes_vs_fc": (_record(num_classes=2, label_names=["a", "b"]),
                      "'num_classes' must be the rows of fc."),
    "chans_vs_conv": (_record(in_chans=1), "'in_chans' must be the input channels of conv1.0.weight (8, 3, "),
    "data_inf": (_record(data_config={**EVAL_CFG, "img_size": 1e400}),
                 "'data_config.img_size' must be an int"),
    "data_nan_std": (_record(data_config={**EVAL_CFG, "std": [float("nan")] * 3}),
                     "'data_config.std' must be 3 positive numbers"),
    "model_name_unknown": (_record(model_name="resnest999"), "'model_name' must be a registered model name"),
    "legacy_kwargs_bad_json": (_legacy(model_kwargs="{stem_width: 8"), "'model_kwargs' must be valid JSON"),
    "legacy_pretrained": (_legacy(model_kwargs={"pretrained": "http://x"}),
                          "'model_args.pretrained' must be"),
    "legacy_classes_vs_fc": (_legacy(classes=["a", "b"]), "'num_classes' must be the rows of fc.weight"),
    "legacy_cfg_unknown_model": (_legacy(model_name="evil"), "'model_name' must be a registered model name"),
}


@pytest.mark.parametrize("name", sorted(META_CORRUPTIONS))
def test_safetensors_metadata_is_validated(real: dict[str, Any], tmp_path: Path, name: str) -> None:
    changes, text = META_CORRUPTIONS[name]
    sd, meta = read_state_dict(real["weights"])
    path = tmp_path / f"{name}.safetensors"
    meta = {k: v for k, v in {**meta, **changes}.items() if v is not None}
    save_file(sd, str(path), metadata=meta)
    _expect(WeightsError, path, lambda: load_for_inference(path), text)
    _expect(WeightsError, path, lambda: splitattn.create_model("resnest14d", pretrained=str(path)), text)


def test_record_arguments_come_from_the_constructor() -> None:
    """What a record may set is ResNeSt's signature (ranges from one table), never a second list."""
    params = set(inspect.signature(splitattn.ResNeSt.__init__).parameters)
    params -= {"self", "num_classes", "in_chans"}
    assert set(arg_checks(splitattn.ResNeSt)) == params
    assert set(ARG_RANGES) <= params


def test_quarantine_moves_unreadable_checkpoints_aside(real: dict[str, Any], tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    good = shutil.copyfile(real["ckpt"], run / "epoch_1.ckpt")
    bad = run / "last.ckpt"
    bad.write_bytes(real["ckpt"].read_bytes()[:1000])
    os.utime(good, (1, 1))  # older than the corrupt file
    with caplog.at_level(logging.WARNING, logger="splitattn"):
        assert find_latest_checkpoint(run) == good
    assert "last.ckpt is truncated or corrupt" in caplog.text
    moved = quarantine(bad)
    assert moved == run / "last.ckpt.corrupt" and moved.read_bytes() == real["ckpt"].read_bytes()[:1000]
    assert not bad.exists()
    bad.write_bytes(b"junk")
    assert quarantine(bad) == run / "last.ckpt.corrupt-1" and (run / "last.ckpt.corrupt").is_file()
    assert find_latest_checkpoint(run) == good  # .corrupt files are not candidates
    with pytest.raises(MissingFileError, match="last.ckpt does not exist"):
        quarantine(bad)
    bad.write_bytes(b"more junk")
    assert find_latest_checkpoint(run, quarantine=True) == good
    assert not bad.exists() and (run / "last.ckpt.corrupt-2").read_bytes() == b"more junk"


# -- written files keep the umask, or the mode of the file they replace ------------------------------
@pytest.mark.parametrize("proc_status", [True, False], ids=["umask from /proc", "umask round-trip"])
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_keep_the_umask_or_the_replaced_files_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int, expected: int, proc_status: bool,
) -> None:
    if not proc_status:  # another OS: the umask is read by setting and restoring it
        monkeypatch.setattr(fileio, "_PROC_STATUS", str(tmp_path / "no-such-status"))
    kept = tmp_path / "shared" / "weights.pt"
    kept.parent.mkdir()
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    old = os.umask(umask)
    try:
        text = fileio.atomic_write_text(tmp_path / "run" / "config.yaml", "a: 1\n")
        saved = fileio.atomic_torch_save(tmp_path / "run" / "last.ckpt", {"step": 1})
        fileio.atomic_torch_save(kept, {"w": torch.ones(2)})
        assert os.umask(umask) == umask  # the round-trip fallback restored it
    finally:
        os.umask(old)
    assert stat.S_IMODE(text.stat().st_mode) == expected and text.read_text() == "a: 1\n"
    assert stat.S_IMODE(saved.stat().st_mode) == expected
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640  # not 0600 (mkstemp's), nor the umask's
    assert torch.load(kept, weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in kept.parent.iterdir()) == ["weights.pt"]  # no temp file left
