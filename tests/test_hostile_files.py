"""Files built the way an attacker builds them, handed to every loader splitattn has.

Each loader (``create_model(pretrained=FILE)``, ``local-dir:``, ``hf-hub:`` from a Hub cache, ``predict`` /
``eval --weights``, ``--resume``, ``load_quantized``) gets torch zip archives with duplicate members, NUL and
``..`` in member names, pickled payloads and sizes that lie, and records naming unknown or out-of-range
arguments or disagreeing with their tensors. Every case asserts that no code ran (the payload would create
a marker folder), that no network connection was attempted, and that the error names the file and the
field.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import splitattn
from conftest import put_hf_repo
from splitattn.cli import main
from splitattn.errors import CheckpointError, SplitAttnError, WeightsError
from splitattn.evaluation.predict import load_for_inference
from splitattn.utils.train_checkpoint import find_latest_checkpoint, load_checkpoint

KWARGS = {"stem_width": 8, "base_width": 8}


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.mkdir, (self.marker,)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection attempt is recorded and refused; each test asserts there was none."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any, *args: Any) -> None:
        attempts.append(address)
        raise OSError(f"test: network access to {address} refused")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert not attempts, f"a hostile file made splitattn connect to {attempts}"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return splitattn.create_model("resnest14d", num_classes=3, **KWARGS).eval()


# -- torch zip archives ---------------------------------------------------------------------------------
def _torch_zip(obj: Any) -> dict[str, bytes]:
    """The members of ``torch.save(obj)`` in order."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as z:
        return {i.filename: z.read(i.filename) for i in z.infolist()}


def _write_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return path


def _payload_pickle(marker: Path) -> bytes:
    return pickle.dumps({"fc.weight": _Payload(marker)}, protocol=2)


def _pkl_name(members: dict[str, bytes]) -> str:
    return next(n for n in members if n.endswith("data.pkl"))


def _duplicate_member(first_evil: bool) -> Callable[[dict[str, bytes], Path, Path], Path]:
    def craft(members: dict[str, bytes], marker: Path, path: Path) -> Path:
        pkl = _pkl_name(members)
        evil = (pkl, _payload_pickle(marker))
        items = [(n, d) for n, d in members.items()]
        at = items.index((pkl, members[pkl]))
        items.insert(at if first_evil else at + 1, evil)
        with pytest.warns(UserWarning, match="Duplicate name"):
            return _write_zip(path, items)
    return craft


def _renamed_member(name_of: Callable[[str], str]) -> Callable[[dict[str, bytes], Path, Path], Path]:
    """A second, evil copy of data.pkl under ``name_of(name)``; a NUL is patched into the raw bytes, since
    Python's zipfile cuts names at NUL (as other readers may not)."""
    def craft(members: dict[str, bytes], marker: Path, path: Path) -> Path:
        pkl = _pkl_name(members)
        evil_name = name_of(pkl)
        _write_zip(path, [(evil_name.replace("\0", "#"), _payload_pickle(marker)), *members.items()])
        if "\0" in evil_name:
            raw = path.read_bytes().replace(evil_name.replace("\0", "#").encode(), evil_name.encode())
            path.write_bytes(raw)
        return path
    return craft


def _pickled_payload(members: dict[str, bytes], marker: Path, path: Path) -> Path:
    pkl = _pkl_name(members)
    return _write_zip(path, [(n, _payload_pickle(marker) if n == pkl else d) for n, d in members.items()])


def _lying_sizes(members: dict[str, bytes], marker: Path, path: Path) -> Path:
    """Every central-directory entry claims 4 GiB uncompressed, and data.pkl holds the payload."""
    _pickled_payload(members, marker, path)
    raw = bytearray(path.read_bytes())
    pos = raw.find(b"PK\x01\x02")
    while pos != -1:
        raw[pos + 24:pos + 28] = struct.pack("<I", 0xFFFFFFF0)  # uncompressed size
        pos = raw.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(raw))
    return path


ZIP_CRAFTS: dict[str, Callable[[dict[str, bytes], Path, Path], Path]] = {
    "pickled_payload": _pickled_payload,
    "duplicate_member_evil_first": _duplicate_member(first_evil=True),
    "duplicate_member_evil_last": _duplicate_member(first_evil=False),
    "nul_in_member_name": _renamed_member(lambda n: n + "\0.evil"),
    "dotdot_member_name": _renamed_member(lambda n: n.split("/")[0] + "/../" + n),
    "lying_declared_sizes": _lying_sizes,
}


def _loads_benign_or_refuses(load: Callable[[], Any], path: Path, error: type[Exception],
                             marker: Path) -> str | None:
    """``load()`` either refuses with ``error`` naming ``path`` (the message is returned) or loads the
    benign copy; never runs the payload."""
    try:
        load()
    except error as e:
        assert path.name in str(e), f"the message does not name the file: {e}"
        msg = str(e)
    else:
        msg = None
    assert not marker.exists(), "a loader ran code from a file"
    return msg


@pytest.mark.parametrize("craft", sorted(ZIP_CRAFTS))
def test_crafted_weights_archives(craft: str, model: torch.nn.Module, marker: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    path = ZIP_CRAFTS[craft](_torch_zip(model.state_dict()), marker, tmp_path / f"{craft}.pth")
    loaders = {
        "create_model": lambda: splitattn.create_model("resnest14d", pretrained=path, **KWARGS),
        "load_pretrained": lambda: splitattn.load_pretrained(
            splitattn.create_model("resnest14d", num_classes=3, **KWARGS), path),
        "load_for_inference": lambda: load_for_inference(path, "resnest14d"),
    }
    messages = [_loads_benign_or_refuses(fn, path, WeightsError, marker) for fn in loaders.values()]
    if craft in ("pickled_payload", "lying_declared_sizes"):
        assert all(m is not None for m in messages), "an archive whose only pickle is hostile loaded"
        assert any("posix.mkdir" in m or "truncated or corrupt" in m for m in messages), messages
    # predict --weights: one line naming the file, exit status 2 (or the benign copy's predictions).
    image = tmp_path / "x.png"
    __import__("PIL.Image").Image.new("RGB", (40, 40)).save(image)
    code = main(["predict", "--weights", str(path), "--model", "resnest14d", str(image)])
    err = capsys.readouterr().err
    assert code in (0, 2) and (code == 0 or path.name in err)
    assert not marker.exists()


@pytest.mark.parametrize("craft", sorted(ZIP_CRAFTS))
def test_crafted_checkpoints_for_resume_and_eval(craft: str, model: torch.nn.Module, marker: Path,
                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    state = {"task": "classification", "model": model.state_dict(), "step": 1}
    path = ZIP_CRAFTS[craft](_torch_zip(state), marker, run / "last.ckpt")
    for load in (lambda: load_checkpoint(path), lambda: load_for_inference(path)):
        _loads_benign_or_refuses(load, path, CheckpointError, marker)
    found = find_latest_checkpoint(run, quarantine=True)  # --resume auto
    assert not marker.exists() and found in (None, path)


# -- safetensors and records -----------------------------------------------------------------------------
def _record(**changes: Any) -> str:
    record = {"format_version": 1, "model_name": "resnest14d", "model_args": KWARGS, "num_classes": 3,
              "in_chans": 3}
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if v is not None})


# (record changes, the field the message must name)
HOSTILE_RECORDS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown_argument": ({"model_args": {**KWARGS, "weights_url": "http://127.0.0.1:1/w.pth"}},
                         "'model_args.weights_url' must be absent"),
    "pretrained_argument": ({"model_args": {**KWARGS, "pretrained": True}},
                            "'model_args.pretrained' must be"),
    "out_of_range_radix": ({"model_args": {**KWARGS, "radix": 99}},
                           "'model_args.radix' must be an integer in"),
    "billions_of_parameters": ({"model_args": {"layers": [64, 64, 64, 64], "base_width": 256,
                                               "cardinality": 64}}, "at most 1,000M parameters"),
    "classes_disagree": ({"num_classes": 1000}, "'num_classes' must be the rows of fc.weight (3, "),
    "channels_disagree": ({"in_chans": 5}, "'in_chans' must be the input channels of conv1.0.weight"),
    "resize_without_bound": ({"data_config": {"img_size": 8192, "crop_pct": 0.001, "interpolation": "bicubic",
                                              "mean": [0, 0, 0], "std": [1, 1, 1]}}, "of at most 8192 px"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RECORDS))
def test_hostile_records_in_weights_files(case: str, model: torch.nn.Module, marker: Path,
                                          tmp_path: Path) -> None:
    changes, field = HOSTILE_RECORDS[case]
    path = tmp_path / f"{case}.safetensors"
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"splitattn.model": _record(**changes)})
    for load in (lambda: splitattn.create_model("resnest14d", pretrained=path),
                 lambda: load_for_inference(path)):
        with pytest.raises(WeightsError) as info:
            load()
        assert path.name in str(info.value) and field in str(info.value), str(info.value)
    assert not marker.exists()


def test_lying_safetensors_headers(model: torch.nn.Module, tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    good = tmp_path / "good.safetensors"
    save_file(sd, str(good), metadata={"splitattn.model": _record()})
    data = good.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    lies = {
        "offsets_past_the_end": {**header, name: {**header[name], "data_offsets": [0, len(data) * 4]}},
        "shape_larger_than_its_bytes": {**header, name: {**header[name], "shape": [2**20, 2**20]}},
    }
    for what, fake in lies.items():
        raw = json.dumps(fake).encode()
        path = tmp_path / f"{what}.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
        with pytest.raises(WeightsError, match=f"{path.name} is not a readable safetensors file"):
            splitattn.create_model("resnest14d", pretrained=path)
    huge = tmp_path / "header_length_lies.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(WeightsError, match="header_length_lies.safetensors is not a readable"):
        load_for_inference(huge)


# -- model folders and the Hub cache --------------------------------------------------------------------
def _folder(model: torch.nn.Module, root: Path) -> Path:
    return splitattn.save_pretrained(model, root / "folder", label_names=["a", "b", "c"])


def test_hostile_model_folders(model: torch.nn.Module, marker: Path, tmp_path: Path) -> None:
    folder = _folder(model, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    cases = {
        "weights url": ({**config, "pretrained_cfg": {
            **config["pretrained_cfg"], "url": "http://127.0.0.1:1/x", "hf_hub_id": "evil/repo",
            "file": "/etc/passwd"}}, None),
        "unknown argument": ({**config, "splitattn": {**config["splitattn"], "model_args": {"exec": "x"}}},
                             "'model_args.exec' must be absent"),
        "out of range": ({**config, "splitattn": {**config["splitattn"], "in_chans": 10**9}},
                         "'in_chans' must be an integer in [1, 256]"),
        "record vs weights": ({**config, "splitattn": {**config["splitattn"], "num_classes": 5,
                                                       "label_names": list("abcde")}},
                              "config.json and model.safetensors record different models"),
    }
    for what, (edited, field) in cases.items():
        (folder / "config.json").write_text(json.dumps(edited))
        for load in (lambda: splitattn.create_model(f"local-dir:{folder}", pretrained=True),
                     lambda: splitattn.create_model("resnest14d", pretrained=folder)):
            if field is None:  # keys naming weights are ignored: the folder's own weights load
                assert load().num_classes == 3
                continue
            with pytest.raises(WeightsError) as info:
                load()
            assert "config.json" in str(info.value) and field in str(info.value), (what, str(info.value))
    assert not marker.exists()


def test_torn_model_folder_is_refused_naming_both_files(model: torch.nn.Module, tmp_path: Path) -> None:
    """New weights beside the old config.json (what two separate atomic writes could leave)."""
    folder = _folder(model, tmp_path)
    five = splitattn.create_model("resnest14d", num_classes=5, **KWARGS)
    splitattn.save_weights(five, folder / "model.safetensors")
    with pytest.raises(WeightsError, match=r"model.safetensors does not match config.json.*save the model"):
        splitattn.create_model(f"local-dir:{folder}", pretrained=True)
    # Without the hash (a hand-edited config), the records and tensors still disagree, naming both files.
    config = json.loads((folder / "config.json").read_text())
    del config["splitattn_weights_sha256"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"config.json and model.safetensors record different models "
                                           r"\(label_names, num_classes"):
        splitattn.create_model(f"local-dir:{folder}", pretrained=True)


def test_hostile_hub_cache(model: torch.nn.Module, marker: Path, hf_cache: Path, tmp_path: Path) -> None:
    folder = _folder(model, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    weights = (folder / "model.safetensors").read_bytes()
    bad = {**config, "splitattn": {**config["splitattn"], "model_args": {"radix": -1}}}
    put_hf_repo(hf_cache, "evil/bad-record", {"config.json": json.dumps(bad).encode(),
                                              "model.safetensors": weights})
    with pytest.raises(WeightsError, match=r"hf-hub:evil/bad-record \(config.json\): 'model_args.radix'"):
        splitattn.create_model("hf-hub:evil/bad-record", pretrained=True)
    members = _torch_zip(model.state_dict())
    pickled = _pickled_payload(members, marker, tmp_path / "pytorch_model.bin").read_bytes()
    timm_config = {k: v for k, v in config.items() if k not in ("splitattn", "splitattn_weights_sha256")}
    put_hf_repo(hf_cache, "evil/pickle", {"config.json": json.dumps(timm_config).encode(),
                                          "pytorch_model.bin": pickled})
    with pytest.raises(WeightsError, match=r"pytorch_model.bin needs pickled code.*posix.mkdir"):
        splitattn.create_model("hf-hub:evil/pickle", pretrained=True, **KWARGS)
    assert not marker.exists()


# -- INT8 files ---------------------------------------------------------------------------------------
def _pt2_with_pickled_weights(marker: Path, path: Path) -> Path:
    """What the issue found: a .pt2 whose second weights config marks a weight as pickled."""
    inner = "archive/data/weights/model_weights_config.json"
    evil = json.dumps({"config": {"w": {"path_name": "weight_0", "use_pickle": True}}}).encode()
    return _write_zip(path, [("archive/archive_format", b"pt2"), (inner, b'{"config": {}}'), (inner, evil),
                             ("archive/data/weights/weight_0", pickle.dumps(_Payload(marker)))])


def test_hostile_int8_files(model: torch.nn.Module, marker: Path, tmp_path: Path) -> None:
    pytest.importorskip("torchao")
    with pytest.warns(UserWarning, match="Duplicate name"):
        pt2 = _pt2_with_pickled_weights(marker, tmp_path / "model.pt2")
    disguised = tmp_path / "model.int8.safetensors"
    disguised.write_bytes(pt2.read_bytes())
    for path in (pt2, disguised):
        with pytest.raises(WeightsError, match=f"{path.name} is a torch.export archive .* does not load"):
            splitattn.load_quantized(path, compile=False)
    qmodel = splitattn.quantize(model, [torch.randn(2, 3, 32, 32)], compile=False)
    good = qmodel.save(tmp_path / "good.int8.safetensors")
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
    settings = json.loads(meta["splitattn.int8"])
    cases = {
        "record_unknown_argument": ({**meta, "splitattn.model": _record(model_args={"evil": 1})}, tensors,
                                    "'model_args.evil' must be absent"),
        "settings_unknown_key": ({**meta, "splitattn.int8": json.dumps({**settings, "program": "x"})},
                                 tensors, "'splitattn.int8.program' must be absent"),
        "settings_shape_huge": (
            {**meta, "splitattn.int8": json.dumps({**settings, "input_shape": [3, 2**40, 1]})}, tensors,
            "'splitattn.int8.input_shape' must be 3 integers"),
        "settings_flag_not_boolean": (
            {**meta, "splitattn.int8": json.dumps({**settings, "attention_linear": "yes"})}, tensors,
            "'splitattn.int8.attention_linear' must be true or false"),
        "qparams_not_numbers": (
            {**meta, "splitattn.int8.qparams": json.dumps([["x", 0, 0, 255, "torch.uint8"]])}, tensors,
            "'splitattn.int8.qparams[0]' must be"),
        "tensor_renamed": (meta, {**{k: v for k, v in tensors.items() if k != "_frozen_param0"},
                                  "evil": torch.zeros(1)}, "does not fit the program rebuilt"),
    }
    for name, (metadata, stored, field) in cases.items():
        path = tmp_path / f"{name}.int8.safetensors"
        save_file(stored, str(path), metadata=metadata)
        with pytest.raises(SplitAttnError) as info:
            splitattn.load_quantized(path, compile=False)
        assert path.name in str(info.value) and field in str(info.value), (name, str(info.value))
    assert not marker.exists()


# -- a model folder is written whole or not at all ---------------------------------------------------------
_SAVE_FOREVER = """
import sys, torch, splitattn
folder, refs = sys.argv[1], sys.argv[2]
models = []
for i, n in enumerate((3, 5)):
    torch.manual_seed(i)
    models.append(splitattn.create_model("resnest14d", num_classes=n, stem_width=8, base_width=8))
    splitattn.save_weights(models[-1], f"{refs}/ref{n}.safetensors")
print("ready", flush=True)
i = 0
while True:
    model = models[i % 2]
    splitattn.save_pretrained(model, folder, label_names=[f"c{k}" for k in range(model.num_classes)])
    i += 1
"""


def test_sigkill_during_save_pretrained_leaves_the_old_or_the_new_folder(tmp_path: Path) -> None:
    folder, refs = tmp_path / "model", tmp_path / "refs"
    refs.mkdir()
    (folder / "sub").mkdir(parents=True)
    (folder / "README.md").write_text("the user's own notes")  # kept through every save
    (folder / "sub" / "extra.txt").write_text("kept too")
    rng = random.Random(0)
    outcomes = []
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(folder), str(refs)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        while not (folder / "config.json").exists():  # the first save of all: wait until it is complete
            time.sleep(0.01)
        # Anywhere in the loop: each moment is inside a save (or between two), whatever the machine's speed.
        time.sleep(rng.uniform(0.0, 1.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        loaded = splitattn.create_model(f"local-dir:{folder}", pretrained=True)
        ref = splitattn.create_model("resnest14d", pretrained=refs / f"ref{loaded.num_classes}.safetensors")
        assert all(torch.equal(v, ref.state_dict()[k]) for k, v in loaded.state_dict().items()), "a mix"
        assert loaded.pretrained_cfg["label_names"] == [f"c{k}" for k in range(loaded.num_classes)]
        assert (folder / "README.md").read_text() == "the user's own notes"
        assert (folder / "sub" / "extra.txt").read_text() == "kept too"
        outcomes.append(loaded.num_classes)
    assert set(outcomes) <= {3, 5}
    leftovers = list(tmp_path.glob(".model.*"))
    assert len(leftovers) <= 1, leftovers  # at most the last killed save's temp folder
    splitattn.save_pretrained(splitattn.create_model("resnest14d", num_classes=3, **KWARGS), folder)
    assert not list(tmp_path.glob(".model.*")), "the next save removes what a killed one left"
