"""ONNX (onnxruntime) and TorchScript export: dynamic batch axis, outputs equal PyTorch's within 1e-4."""

from __future__ import annotations

from pathlib import Path

import onnxruntime  # noqa: F401  (a test dependency: a missing one must fail, not skip)
import pytest
import torch

import splitattn
from splitattn.cli import main
from splitattn.deploy.export import (
    export_onnx,
    export_torchscript,
    onnx_max_abs_diff,
    torchscript_max_abs_diff,
)

# The 200- and 269-layer graphs take ~20-30 s each to export and load: marked slow so a quick run can
# deselect them with -m "not slow"; they run by default.
_ZOO = [pytest.param(n, marks=pytest.mark.slow) if n in ("resnest200", "resnest269") else n
        for n in splitattn.list_models()]


@pytest.mark.parametrize("name", _ZOO)
def test_onnx_every_zoo_model(name: str, tmp_path: Path) -> None:
    # 64 px, exported at batch 2 and run at batch 3 (the dynamic axis); 10 classes keep the files small.
    model = splitattn.create_model(name, num_classes=10).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx", image_size=64, batch_size=2)
    assert onnx_max_abs_diff(model, path, batch_size=3, image_size=64) <= 1e-4


def test_onnx_of_folded_model_and_batch_1(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = splitattn.create_model("resnest50_fast_1s4x24d", num_classes=10).eval()
    folded = splitattn.deploy.fold.optimize_for_inference(model, channels_last=False)
    path = export_onnx(folded, tmp_path / "folded.onnx", image_size=64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "input"
    assert isinstance(sess.get_inputs()[0].shape[0], str), "batch axis must be symbolic"
    assert onnx_max_abs_diff(model, path, batch_size=1, image_size=64) <= 1e-4


def test_torchscript_roundtrip(tmp_path: Path) -> None:
    model = splitattn.create_model("resnest14d", num_classes=10).eval()
    path = export_torchscript(model, tmp_path / "m.pt")
    assert torchscript_max_abs_diff(model, path, batch_size=3, image_size=64) <= 1e-5
    assert torch.jit.load(str(path))(torch.randn(1, 3, 40, 48)).shape == (1, 10)


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pth"
    torch.save(splitattn.create_model("resnest14d").state_dict(), weights)
    out = tmp_path / "cli.onnx"
    rc = main(["export", "--model", "resnest14d", "--weights", str(weights), "--format", "onnx",
               "--image-size", "64", str(out)])
    assert rc == 0 and out.is_file()
    assert "ok" in capsys.readouterr().out
    rc = main(["export", "--model", "resnest14d", "--format", "torchscript", "--image-size", "64",
               str(tmp_path / "cli.pt")])
    assert rc == 0 and (tmp_path / "cli.pt").is_file()
    assert main(["export", "--model", "no_such_model", str(out)]) == 2
