"""Weights: URLs with cache and hash check, formats, class/channel adaptation, clear refusals."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import logging
import os
import threading
from pathlib import Path

import pytest
import torch

import splitattn
from conftest import randomize_stats
from splitattn.models import _registry as registry
from splitattn.models._weights import WeightsError, read_state_dict


@pytest.fixture
def served(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (www_dir, base_url)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("SPLITATTN_CACHE", str(d))
    return d


def _release(www: Path, name: str = "resnest14d") -> tuple[torch.nn.Module, str, str]:
    """Write a checkpoint named like a release (<name>-<sha256[:8]>.pth); return (model, file, sha8)."""
    ref = randomize_stats(splitattn.create_model(name)).eval()
    tmp = www / "tmp.pth"
    torch.save(ref.state_dict(), tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    fname = f"{name}-{sha}.pth"
    tmp.rename(www / fname)
    return ref, fname, sha


def test_pretrained_true_downloads_checks_hash_and_caches(served, cache, monkeypatch) -> None:
    www, base = served
    ref, fname, sha = _release(www)
    cfg = dataclasses.replace(registry.get_model_cfg("resnest14d"), url=f"{base}/{fname}", hash_prefix=sha)
    monkeypatch.setitem(registry._CFGS, "resnest14d", cfg)
    model = splitattn.create_model("resnest14d", pretrained=True).eval()
    assert (cache / fname).is_file()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    (www / fname).unlink()  # the second call uses the cache
    splitattn.create_model("resnest14d", pretrained=True)
    # A corrupted cache entry is detected, not used.
    (cache / fname).write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="SHA-256"):
        splitattn.create_model("resnest14d", pretrained=True)


def test_url_with_wrong_hash_is_refused(served, cache, monkeypatch) -> None:
    www, base = served
    _, fname, sha = _release(www)
    bad = "00000000" if sha != "00000000" else "11111111"
    cfg = dataclasses.replace(registry.get_model_cfg("resnest14d"), url=f"{base}/{fname}", hash_prefix=bad)
    monkeypatch.setitem(registry._CFGS, "resnest14d", cfg)
    with pytest.raises(WeightsError, match="hash"):
        splitattn.create_model("resnest14d", pretrained=True)
    assert not (cache / fname).exists(), "a file with the wrong hash must not stay in the cache"
    # Any URL named <name>-<sha prefix>.pth is checked the torch.hub way; one without a hash just loads.
    (www / "resnest14d-deadbeef.pth").write_bytes((www / fname).read_bytes())
    with pytest.raises(WeightsError, match="deadbeef"):
        splitattn.create_model("resnest14d", pretrained=f"{base}/resnest14d-deadbeef.pth")
    (www / "plain.pth").write_bytes((www / fname).read_bytes())
    assert splitattn.create_model("resnest14d", pretrained=f"{base}/plain.pth") is not None
    with pytest.raises(WeightsError, match="could not download .*missing.pth"):
        splitattn.create_model("resnest14d", pretrained=f"{base}/missing.pth")


def test_save_weights_roundtrip_with_metadata(tmp_path) -> None:
    model = randomize_stats(splitattn.create_model("resnest14d")).eval()
    path = splitattn.save_weights(model, tmp_path / "sub" / "w.safetensors", metadata={"epoch": 3})
    sd, meta = read_state_dict(path)
    assert meta["producer"] == "splitattn"
    assert json.loads(meta["splitattn.model"])["model_name"] == "resnest14d"
    assert meta["epoch"] == "3" and set(sd) == set(model.state_dict())
    assert not list((tmp_path / "sub").glob("*.tmp")), "temp file left behind"
    loaded = splitattn.create_model("resnest14d", pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_same_shapes_other_function_is_refused(tmp_path) -> None:
    """fast_2s1x64d weights fit resnest50 shape for shape; our files record the arch and say so."""
    fast = splitattn.create_model("resnest50_fast_2s1x64d")
    path = splitattn.save_weights(fast, tmp_path / "fast.safetensors")
    with pytest.raises(WeightsError, match="avd_first.*create_model\\('resnest50_fast_2s1x64d'\\)"):
        splitattn.create_model("resnest50", pretrained=str(path))


def test_num_classes_and_in_chans_adaptation(tmp_path, caplog) -> None:
    ref = randomize_stats(splitattn.create_model("resnest14d")).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING, logger="splitattn"):
        m10 = splitattn.create_model("resnest14d", pretrained=str(tmp_path / "w.pth"), num_classes=10).eval()
    assert "classifier weights" in caplog.text and "dropped" in caplog.text
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m10.forward_features(x), ref.forward_features(x))
        gray = splitattn.create_model("resnest14d", pretrained=str(tmp_path / "w.pth"), in_chans=1).eval()
        g = torch.randn(2, 1, 64, 64)
        assert (gray(g) - ref(g.expand(-1, 3, -1, -1))).abs().max().item() <= 1e-4
        six = splitattn.create_model("resnest14d", pretrained=str(tmp_path / "w.pth"), in_chans=6).eval()
        assert (six(g.expand(-1, 6, -1, -1)) - ref(g.expand(-1, 3, -1, -1))).abs().max().item() <= 1e-4


@pytest.mark.parametrize("norm", ["frozenbn", "groupnorm"])
def test_pretrained_into_other_norms(norm: str, tmp_path) -> None:
    """BN checkpoints load into FrozenBN models (same function) and GroupNorm models (affine params only
    where shapes allow: here, none of BN's statistics, so the strict check names them)."""
    ref = randomize_stats(splitattn.create_model("resnest14d")).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    if norm == "frozenbn":
        m = splitattn.create_model("resnest14d", norm_layer=norm, pretrained=str(tmp_path / "w.pth")).train()
        x = torch.randn(1, 3, 64, 64)  # FrozenBN: a training batch of 1 is fine and matches eval BN
        with torch.no_grad():
            assert (m(x) - ref(x)).abs().max().item() <= 1e-4
    else:
        with pytest.raises(WeightsError, match="unexpected keys .*running_mean"):
            splitattn.create_model("resnest14d", norm_layer=norm, pretrained=str(tmp_path / "w.pth"))


def test_key_errors_name_keys_and_model(tmp_path) -> None:
    sd = splitattn.create_model("resnest14d").state_dict()
    sd.pop("layer1.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"resnest14d.*1 missing keys \(e.g. layer1.0.conv1.weight\).*"
                                           r"1 unexpected keys \(e.g. extra.weight\)"):
        splitattn.create_model("resnest14d", pretrained=str(tmp_path / "w.pth"))
    torch.save(splitattn.create_model("resnest26d").state_dict(), tmp_path / "w26.pth")
    with pytest.raises(WeightsError, match="missing keys|unexpected keys"):
        splitattn.create_model("resnest14d", pretrained=str(tmp_path / "w26.pth"))


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused(tmp_path, capsys) -> None:
    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="pickled code.*refuses"):
        splitattn.create_model("resnest14d", pretrained=str(tmp_path / "evil.pth"))
    assert "pickled code ran" not in capsys.readouterr().out
    (tmp_path / "trunc.pth").write_bytes((tmp_path / "evil.pth").read_bytes()[:100])
    with pytest.raises(WeightsError, match="trunc.pth"):
        splitattn.create_model("resnest14d", pretrained=str(tmp_path / "trunc.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        splitattn.create_model("resnest14d", pretrained=str(tmp_path / "nope.pth"))


def test_a_download_that_does_not_load_is_moved_aside(served, cache) -> None:
    """A served file that is not weights (no hash to catch it) is not kept in the cache to fail forever."""
    www, base = served
    (www / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + b"\0" * 64)
    with pytest.raises(WeightsError, match=r"the cached download .*broken.safetensors did not load .*not "
                                           r"a readable safetensors file.*moved aside to "
                                           r"broken.safetensors.bad, so the next call downloads it again"):
        splitattn.create_model("resnest14d", pretrained=f"{base}/broken.safetensors")
    cached = next(cache.rglob("broken.safetensors*"))
    assert cached.name == "broken.safetensors.bad" and not list(cache.rglob("broken.safetensors"))
    ref = randomize_stats(splitattn.create_model("resnest14d")).eval()
    splitattn.save_weights(ref, www / "broken.safetensors")  # fixed on the server: the next call downloads
    again = splitattn.create_model("resnest14d", pretrained=f"{base}/broken.safetensors").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), ref(x))


def test_pretrained_that_is_not_a_regular_file(tmp_path) -> None:
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    for path, what in ((fifo, "is not a regular file"), (Path("/dev/zero"), "is not a regular file"),
                       (tmp_path / "nowhere.pth", "does not exist")):
        with pytest.raises(WeightsError, match=f"weights file {path} {what}"):
            splitattn.create_model("resnest14d", pretrained=str(path))
