"""Distribution: torch.hub entry points, Hugging Face Hub ids (offline cache), local folders, save_pretrained.

Every tool is the real one: torch.hub loads hubconf.py from this checkout, huggingface_hub reads a Hub cache
laid out as it lays it out (blobs named by hash, snapshot links, refs/main) with HF_HUB_OFFLINE on, and timm
loads the same cache and the folders splitattn writes. No network is used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import sys
import threading
from pathlib import Path

import pytest
import torch

import splitattn
from conftest import put_hf_repo, randomize_stats
from splitattn.errors import InputError, MissingDependencyError, MissingFileError, WeightsError
from splitattn.models import _registry as registry

timm = pytest.importorskip("timm")
huggingface_hub = pytest.importorskip("huggingface_hub")

REPO_ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "timm/resnest14d.gluon_in1k"
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def timm_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, dict[str, bytes]]:
    """A timm resnest14d with non-trivial weights, and what timm's save_for_hf writes for it."""
    ref = randomize_stats(timm.create_model("resnest14d")).eval()
    out = tmp_path_factory.mktemp("timm_export")
    timm.models.save_for_hf(ref, out, safe_serialization=True)
    return ref, {p.name: p.read_bytes() for p in out.iterdir()}


def _logits(model: torch.nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _close(model: torch.nn.Module, expected: torch.Tensor, x: torch.Tensor = X) -> bool:
    """Equal outputs up to float rounding (timm and splitattn order a few ops differently)."""
    return torch.allclose(_logits(model, x), expected, rtol=1e-5, atol=1e-5)


def test_hf_hub_id_from_offline_cache_equals_timm(hf_cache: Path, timm_export) -> None:
    ref, files = timm_export
    put_hf_repo(hf_cache, HUB_ID, files)
    ours = splitattn.create_model(f"hf-hub:{HUB_ID}", pretrained=True)
    theirs = timm.create_model(f"hf-hub:{HUB_ID}", pretrained=True)
    assert _same_weights(ours, ref) and _close(theirs, _logits(ours))
    assert ours.model_cfg.name == "resnest14d"
    assert ours.pretrained_cfg["hf_hub_id"] == HUB_ID and ours.pretrained_cfg["source"] == "hf-hub"
    assert ours.pretrained_cfg["interpolation"] == "bilinear"
    # Without pretrained the config alone builds the model (random weights), as timm does.
    assert splitattn.create_model(f"hf-hub:{HUB_ID}").num_classes == 1000


def test_hf_hub_tampered_blob_and_unknown_ids_are_refused(hf_cache: Path, timm_export) -> None:
    _, files = timm_export
    repo = put_hf_repo(hf_cache, HUB_ID, files)
    blob = (repo / "snapshots").glob("*/model.safetensors").__next__().resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last tensor: safetensors still reads it, the hash does not match
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"hf-hub:timm/resnest14d.gluon_in1k: model.safetensors .*SHA-256"):
        splitattn.create_model(f"hf-hub:{HUB_ID}", pretrained=True)
    with pytest.raises(WeightsError, match=r"hf-hub:timm/no-such-model: could not get config.json.*OFFLINE"):
        splitattn.create_model("hf-hub:timm/no-such-model")
    config = json.loads(files["config.json"])
    other = json.dumps({**config, "architecture": "resnet50"}).encode()
    put_hf_repo(hf_cache, "someone/resnet", {"config.json": other})
    with pytest.raises(WeightsError, match=r"hf-hub:someone/resnet \(config.json\): 'architecture' must be a "
                                           r"model splitattn builds .*got 'resnet50'"):
        splitattn.create_model("hf-hub:someone/resnet")


def test_hf_hub_revision_and_pytorch_model_bin(hf_cache: Path, timm_export, tmp_path: Path) -> None:
    """A revision pins a snapshot; a repo with only pytorch_model.bin loads through safe torch.load."""
    ref, files = timm_export
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    commit = "1234abcd" * 5
    repo = {"config.json": files["config.json"],
            "pytorch_model.bin": (tmp_path / "pytorch_model.bin").read_bytes()}
    put_hf_repo(hf_cache, "someone/bin-only", repo, commit=commit)
    model = splitattn.create_model(f"hf-hub:someone/bin-only@{commit}", pretrained=True)
    assert _same_weights(model, ref) and model.pretrained_cfg["hf_hub_id"] == f"someone/bin-only@{commit}"
    with pytest.raises(WeightsError, match=r"bin-only@0{40}: could not get config.json"):
        splitattn.create_model("hf-hub:someone/bin-only@" + "0" * 40)


def test_hf_hub_without_huggingface_hub_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("huggingface_hub", "huggingface_hub.constants", "huggingface_hub.errors"):
        monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when it is not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'splitattn\[hub\]'"):
        splitattn.create_model(f"hf-hub:{HUB_ID}")


def test_pretrained_true_falls_back_to_the_hugging_face_mirror(
    hf_cache: Path, timm_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref, files = timm_export
    cfg = registry.get_model_cfg("resnest14d")
    assert registry.get_pretrained_cfg("resnest14d")["hf_hub_id"] == HUB_ID
    gone = (tmp_path / "gone" / cfg.file_name).as_uri()  # the release is unreachable
    monkeypatch.setitem(registry._CFGS, "resnest14d", dataclasses.replace(cfg, url=gone))
    monkeypatch.setenv("SPLITATTN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match=r"could not be had from the release .*gone.*nor from its Hugging "
                                           r"Face mirror hf-hub:timm/resnest14d.gluon_in1k"):
        splitattn.create_model("resnest14d", pretrained=True)
    put_hf_repo(hf_cache, HUB_ID, files)
    model = splitattn.create_model("resnest14d", pretrained=True)
    assert _same_weights(model, ref)
    assert "Hugging Face mirror" in caplog.text


def test_save_pretrained_loads_in_timm_and_splitattn(tmp_path: Path) -> None:
    model = randomize_stats(splitattn.create_model("resnest14d", in_chans=1, num_classes=10)).eval()
    labels = [f"digit_{i}" for i in range(10)]
    folder = splitattn.save_pretrained(model, tmp_path / "export", label_names=labels)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnest14d" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["input_size"] == [1, 224, 224] and config["label_names"] == labels
    assert config["splitattn"] == {"format_version": 1, "model_name": "resnest14d", "model_args": {},
                                   "num_classes": 10, "in_chans": 1, "label_names": labels}
    assert not list(folder.glob("*.tmp")), "temp file left behind"
    x = torch.randn(2, 1, 64, 64)
    expected = _logits(model, x)
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert _close(theirs, expected, x)
    ours = splitattn.create_model(f"local-dir:{folder}", pretrained=True)
    assert torch.equal(_logits(ours, x), expected)
    for again in (ours, splitattn.create_model("resnest14d", pretrained=folder),
                  splitattn.create_model("resnest14d", pretrained=str(folder / "model.safetensors"))):
        assert (again.in_chans, again.num_classes) == (1, 10) and _same_weights(again, model)
    assert splitattn.create_model(f"local-dir:{folder}").pretrained_cfg["label_names"] == labels
    # What the caller passes wins over the file: a new 5-class head, RGB input (stem adapted).
    five = splitattn.create_model("resnest14d", pretrained=folder, num_classes=5, in_chans=3)
    assert (five.in_chans, five.num_classes) == (3, 5)
    # The grey stem spread over 3 channels (a third each) sees a grey RGB image as the grey one.
    grey = model.conv1[0].weight
    assert torch.allclose(five.conv1[0].weight, grey.expand(-1, 3, -1, -1) / 3)


def test_file_metadata_rebuilds_the_model(tmp_path: Path) -> None:
    model = randomize_stats(splitattn.create_model("resnest14d", in_chans=1, num_classes=10,
                                                   norm_layer="frozenbn")).eval()
    path = splitattn.save_weights(model, tmp_path / "w.safetensors")
    again = splitattn.create_model("resnest14d", pretrained=path)
    assert (again.in_chans, again.num_classes, again.model_kwargs["norm_layer"]) == (1, 10, "frozenbn")
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(_logits(again, x), _logits(model, x))
    # A plain state dict tells its class count by its classifier.
    torch.save(model.state_dict(), tmp_path / "w.pth")
    plain = splitattn.create_model("resnest14d", pretrained=tmp_path / "w.pth", norm_layer="frozenbn")
    assert (plain.in_chans, plain.num_classes) == (1, 10)
    # A headless model's file rebuilds a headless model; a new classifier keeps its initialisation.
    headless = tmp_path / "h.safetensors"
    splitattn.save_weights(splitattn.create_model("resnest14d", num_classes=0), headless)
    assert splitattn.create_model("resnest14d", pretrained=headless).num_classes == 0
    assert splitattn.create_model("resnest14d", pretrained=headless, num_classes=7).num_classes == 7


def test_save_pretrained_of_a_variant_timm_cannot_build(tmp_path: Path) -> None:
    model = randomize_stats(splitattn.create_model("resnest14d", output_stride=16)).eval()
    folder = splitattn.save_pretrained(model, tmp_path / "os16")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] != "resnest14d", "timm would build an output-stride-32 model from it"
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model(f"local-dir:{folder}")
    again = splitattn.create_model(f"local-dir:{folder}", pretrained=True)
    assert again.output_stride == 16 and _same_weights(again, model)


def test_save_pretrained_of_other_global_pools_keeps_timm_name(tmp_path: Path) -> None:
    """timm builds the same function for these pools (our concatenating "avgmax" is its "catavgmax")."""
    for pool, timm_pool in (("max", "max"), ("avgmax", "catavgmax")):
        model = randomize_stats(splitattn.create_model("resnest14d", global_pool=pool)).eval()
        folder = splitattn.save_pretrained(model, tmp_path / pool)
        config = json.loads((folder / "config.json").read_text())
        assert config["architecture"] == "resnest14d" and config["model_args"]["global_pool"] == timm_pool
        expected = _logits(model)
        assert _close(timm.create_model(f"local-dir:{folder}", pretrained=True), expected)
        ours = splitattn.create_model(f"local-dir:{folder}", pretrained=True)
        assert ours.global_pool_type == pool and torch.equal(_logits(ours), expected)


def test_model_folder_errors_name_the_file(tmp_path: Path) -> None:
    folder = splitattn.save_pretrained(splitattn.create_model("resnest14d"), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    with pytest.raises(MissingFileError, match=r"config.json does not exist"):
        splitattn.create_model("resnest14d", pretrained=folder)
    with pytest.raises(MissingFileError, match=r"nowhere does not exist"):
        splitattn.create_model(f"local-dir:{tmp_path / 'nowhere'}")
    del config["splitattn"]
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "vit_base_patch16_224"}))
    with pytest.raises(WeightsError, match=r"config.json\): 'architecture' must be .*'vit_base_patch16_224'"):
        splitattn.create_model(f"local-dir:{folder}")
    (folder / "config.json").write_text(json.dumps({**config, "model_args": {"pretrained": "http://x"}}))
    with pytest.raises(WeightsError, match=r"'model_args.pretrained' must be absent \(unknown key"):
        splitattn.create_model(f"local-dir:{folder}")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match=r"config.json is not valid JSON"):
        splitattn.create_model(f"local-dir:{folder}")
    with pytest.raises(InputError, match="unknown model source 'ftp'"):
        splitattn.create_model("ftp:resnest14d")
    with pytest.raises(InputError, match="use 'hf-hub:timm/resnest14d'"):
        splitattn.create_model("timm/resnest14d")


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, str]:
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (www_dir, base_url)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_torch_hub_load_from_this_checkout(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.hub.load(str(REPO_ROOT), "resnest14d", source="local", pretrained=False)
    assert isinstance(model, splitattn.ResNeSt) and model.model_cfg.name == "resnest14d"
    alias = torch.hub.load(str(REPO_ROOT), "resnest50d", source="local", num_classes=0)
    assert alias.model_cfg.name == "resnest50" and alias.num_classes == 0
    # pretrained=True downloads the release (served here), SHA-256 checked, into the splitattn cache.
    www, base = served
    ref = randomize_stats(splitattn.create_model("resnest14d")).eval()
    torch.save(ref.state_dict(), www / "w.pth")
    sha = hashlib.sha256((www / "w.pth").read_bytes()).hexdigest()
    (www / "w.pth").rename(www / f"resnest14d-{sha[:8]}.pth")
    cfg = dataclasses.replace(registry.get_model_cfg("resnest14d"), url=f"{base}/resnest14d-{sha[:8]}.pth",
                              hash_prefix=sha[:8])
    monkeypatch.setitem(registry._CFGS, "resnest14d", cfg)
    monkeypatch.setenv("SPLITATTN_CACHE", str(tmp_path / "cache"))
    loaded = torch.hub.load(str(REPO_ROOT), "resnest14d", source="local", pretrained=True)
    assert _same_weights(loaded, ref)
    assert (tmp_path / "cache" / f"resnest14d-{sha[:8]}.pth").is_file()


def test_torch_hub_list_and_github_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub.list / load of 'owner/repo:ref' read the repo torch.hub cached (here: this checkout)."""
    hub_dir = tmp_path / "torch_hub"
    hub_dir.mkdir()
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub_dir))
    (hub_dir / "splitattn_splitattn_main").symlink_to(REPO_ROOT, target_is_directory=True)
    names = torch.hub.list("splitattn/splitattn:main", trust_repo=True, verbose=False)
    assert sorted(names) == sorted(splitattn.list_models(include_aliases=True))
    assert {"resnest50", "resnest50d", "resnest101e", "resnest14d", "resnest50_fast_1s1x64d"} <= set(names)
    model = torch.hub.load("splitattn/splitattn:main", "resnest26d", trust_repo=True, verbose=False)
    assert model.model_cfg.name == "resnest26d"
    assert "ResNeSt" in torch.hub.help("splitattn/splitattn:main", "resnest101e", trust_repo=True)
