"""INT8 (splitattn.quantize, ONNX QDQ) and bf16 CPU inference: accuracy on real digits, persistence, refusals.

One small ResNeSt-14 is trained on scikit-learn's digits once (the demo's model, ~15 s), quantized and
compiled once; the zoo models are quantized without compiling (the reference graph), which checks the
numbers, not the speed (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import importlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import splitattn
from conftest import randomize_stats
from splitattn.cli import main
from splitattn.data.digits import build_digits_imagefolder
from splitattn.data.imagefolder import ImageFolderDataset
from splitattn.data.preprocessing import DataConfig
from splitattn.data.transforms import create_eval_transform
from splitattn.errors import EvalOnlyError, InputError, MissingDependencyError, WeightsError
from splitattn.export import export_onnx_int8, onnx_predict
from splitattn.inference import optimize_for_inference
from splitattn.layers.split_attn import SplitAttn

qmod = importlib.import_module("splitattn.quantize")  # the module (splitattn.quantize is the function)

needs_int8 = pytest.mark.skipif(qmod.int8_support_problem() is not None or
                                importlib.util.find_spec("torchao") is None,
                                reason=f"no INT8 here: {qmod.int8_support_problem() or 'torchao missing'}")
needs_bf16 = pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(),
                                reason="bf16 accuracy is checked on CPUs with AVX512-BF16")

KWARGS = {"stem_width": 8, "base_width": 8}  # the demo's model (configs/demo_digits.yaml)
DIGITS_CFG = DataConfig(32, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = ImageFolderDataset(root / split, create_eval_transform(DIGITS_CFG))
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(ds.targets)


def _train(x: torch.Tensor, y: torch.Tensor, epochs: int = 6) -> torch.nn.Module:
    """The demo's ResNeSt-14 trained with Nesterov SGD, one-cycle LR and label smoothing (~97-100%)."""
    torch.manual_seed(0)
    model = splitattn.create_model("resnest14d", num_classes=10, **KWARGS)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = (len(x) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = build_digits_imagefolder(tmp_path_factory.mktemp("digits") / "data", size=32)
    xtr, ytr = _load_split(root, "train")
    xva, yva = _load_split(root, "val")
    threads = torch.get_num_threads()
    # Tiny convs: one thread wastes no time in OpenMP barriers when the cores are shared (xdist workers).
    torch.set_num_threads(1)
    try:
        model = _train(xtr, ytr)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "model": model, "xtr": xtr, "xva": xva, "yva": yva,
            "calibration": [xtr[i:i + 64] for i in range(0, 256, 64)]}


@pytest.fixture(scope="module")
def int8_digits(digits: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """The digits model quantized and compiled once, and its val logits (one batch of 360)."""
    from torch._dynamo.utils import counters

    counters["inductor"].clear()
    qmodel = splitattn.quantize(digits["model"], digits["calibration"])
    return qmodel, qmodel(digits["xva"])


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


@needs_int8
@needs_bf16
def test_digits_int8_and_bf16_accuracy_next_to_fp32(digits: dict, int8_digits: tuple) -> None:
    from torch._dynamo.utils import counters

    model, x, y = digits["model"], digits["xva"], digits["yva"]
    with torch.no_grad():
        fp32 = _top1(model(x), y)
        bf16_model = optimize_for_inference(model, dtype=torch.bfloat16)
        bf16 = _top1(bf16_model(x.to(torch.bfloat16)).float(), y)
    qmodel, logits = int8_digits
    int8 = _top1(logits, y)
    assert fp32 >= 95.0, f"the digits model trained to only {fp32:.2f}%"
    assert fp32 - int8 <= 0.5, f"INT8 top-1 {int8:.2f}% vs fp32 {fp32:.2f}%"
    assert fp32 - bf16 <= 0.2, f"bf16 top-1 {bf16:.2f}% vs fp32 {fp32:.2f}%"
    assert logits.dtype == torch.float32 and logits.shape == (len(x), 10)
    # Every conv of the model ran as a oneDNN INT8 convolution (ReLU / residual add fused in).
    inductor = counters["inductor"]
    lowered = inductor["qconv_unary_lower_count"] + inductor["qconv2d_binary_lower_count"]
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert lowered == n_convs == 27
    # A smaller batch runs padded into the compiled size: the same numbers, no second compile.
    part = qmodel(x[:100])
    torch.testing.assert_close(part, logits[:100], atol=1e-5, rtol=0)
    assert qmodel._batch_sizes == {len(x)}


@needs_int8
def test_quantized_model_refuses_training_and_other_inputs(int8_digits: tuple) -> None:
    qmodel, _ = int8_digits
    assert qmodel.eval() is qmodel and not qmodel.training
    with pytest.raises(EvalOnlyError, match="train the float model"):
        qmodel.train()
    with pytest.raises(InputError, match=r"\(B, 3, 32, 32\).*got \(2, 3, 64, 64\)"):
        qmodel(torch.zeros(2, 3, 64, 64))
    with pytest.raises(InputError, match="floating-point"):
        qmodel(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match="calibration set is empty"):
        splitattn.quantize(torch.nn.Conv2d(3, 3, 1), [])
    with pytest.raises(InputError, match="calibration batch 1 has images of shape"):
        splitattn.quantize(torch.nn.Conv2d(3, 3, 1), [torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 9, 9)])


@needs_int8
def test_int8_save_load_round_trip(digits: dict, int8_digits: tuple, tmp_path: Path) -> None:
    qmodel, logits = int8_digits
    path = qmodel.save(tmp_path / "digits_int8.pt2")
    loaded = splitattn.load_quantized(path, compile=False)
    assert loaded.info == qmodel.info and loaded.info["calibration_images"] == 256
    x = digits["xva"][:120]
    with torch.no_grad():
        reference = qmodel.graph_module(x)
    got = loaded(x)
    torch.testing.assert_close(got, reference, atol=0, rtol=0)  # the same program
    agree = (got.argmax(1) == logits[:120].argmax(1)).float().mean().item()
    assert agree >= 0.99  # the reference ops vs the compiled INT8 kernels


def _rewrite(src: Path, dst: Path, edit: dict) -> Path:
    """A copy of the archive ``src`` with the members whose name ends with a key of ``edit`` replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, new in edit.items():
                if item.filename.endswith(suffix):
                    data = new(data)
            zout.writestr(item, data)
    return dst


class _Payload:
    """Stands for any object a crafted archive would unpickle."""


@needs_int8
def test_load_quantized_refuses_crafted_archives(int8_digits: tuple, tmp_path: Path) -> None:
    qmodel, _ = int8_digits
    good = qmodel.save(tmp_path / "good.pt2")

    def pickled(_: bytes) -> bytes:
        buf = io.BytesIO()
        torch.save({"payload": _Payload()}, buf)
        return buf.getvalue()

    def os_system(data: bytes) -> bytes:
        return data.replace(b'"torch.ops.aten.softmax.int"', b'"torch.os.system"', 1)

    def guard(data: bytes) -> bytes:
        graph = json.loads(data)
        graph["guards_code"] = ["__import__('os').system('true')"]
        return json.dumps(graph).encode()

    def use_pickle(data: bytes) -> bytes:
        return data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)

    cases = {"sample_inputs/model.pt": (pickled, "corrupt or not plain data"),
             "models/model.json": (os_system, "operator 'torch.os.system'"),
             "models/model.json ": (guard, "guards_code"),
             "_weights_config.json": (use_pickle, "stored as a pickle")}
    for i, (suffix, (edit, message)) in enumerate(cases.items()):
        bad = _rewrite(good, tmp_path / f"bad{i}.pt2", {suffix.strip(): edit})
        with pytest.raises(WeightsError, match=message):
            splitattn.load_quantized(bad, compile=False)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="not a .pt2 archive"):
        splitattn.load_quantized(tmp_path / "junk.pt2", compile=False)


@needs_int8
def test_onnx_int8_matches_pytorch_int8_on_digits(digits: dict, int8_digits: tuple, tmp_path: Path) -> None:
    import onnx

    _, logits = int8_digits
    path = export_onnx_int8(digits["model"], tmp_path / "digits_int8.onnx", digits["calibration"],
                            image_size=32)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") >= 27 and "Conv" in ops
    got = onnx_predict(path, digits["xva"])
    y = digits["yva"]
    assert abs(_top1(got, y) - _top1(logits, y)) <= 0.5
    assert (got.argmax(1) == logits.argmax(1)).float().mean().item() >= 0.99
    assert onnx_predict(path, digits["xva"][:3]).shape == (3, 10)  # dynamic batch axis


@needs_int8
def _int8_weights(qmodel: torch.nn.Module) -> int:
    """How many per-channel int8 weights (one per quantized conv / linear) the quantized graph holds."""
    return sum("dequantize_per_channel" in str(n.target) for n in qmodel.graph_module.graph.nodes)


@needs_int8
@pytest.mark.parametrize("name, attention", [("resnest50_fast_4s2x40d", "int8"), ("tiny-radix4", "fp32")])
def test_quantize_radix4_models(name: str, attention: str) -> None:
    # Radix 2 (resnest14d) is the digits model above; these are radix 4 (cardinality 2) at 64 px: the zoo
    # model, and a one-block-per-stage one with the attention MLP (fc1, fc2) left in fp32.
    if name == "tiny-radix4":
        model = splitattn.ResNeSt(layers=(1, 1, 1, 1), radix=4, cardinality=2, base_width=16, num_classes=10)
    else:
        model = splitattn.create_model(name, num_classes=10)
    model = randomize_stats(model).eval()
    gen = torch.Generator().manual_seed(0)
    calibration = [torch.randn(4, 3, 64, 64, generator=gen)]
    qmodel = splitattn.quantize(model, calibration, attention=attention, compile=False)
    x = torch.randn(3, 3, 64, 64, generator=gen)
    with torch.no_grad():
        ref = model(x)
    got = qmodel(x)
    assert F.cosine_similarity(got, ref).min().item() > 0.99
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    n_attention = 2 * sum(isinstance(m, SplitAttn) for m in model.modules())
    assert _int8_weights(qmodel) == n_convs + 1 - (n_attention if attention == "fp32" else 0)
    # The r-softmax stays in float.
    assert any("softmax" in str(n.target) for n in qmodel.graph_module.graph.nodes)


def test_int8_support_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert qmod.int8_support_problem(["avx2", "fma", "avx512f"]) is not None
    assert "avx512_vnni" in qmod.int8_support_problem(["avx2", "fma", "avx512f"])
    monkeypatch.setattr(qmod, "cpu_flags", lambda: frozenset({"sse4_2", "avx2", "fma"}))
    model = splitattn.create_model("resnest14d", num_classes=10, **KWARGS).eval()
    with pytest.raises(MissingDependencyError, match=r"no int8 dot-product instruction \(none of avx512_vnni"
                       ):
        splitattn.quantize(model, [torch.zeros(2, 3, 32, 32)])
    monkeypatch.setattr(qmod.platform, "machine", lambda: "aarch64")
    with pytest.raises(MissingDependencyError, match="needs an x86-64 CPU"):
        qmod.check_int8_support()
    with pytest.raises(InputError, match="unknown INT8 backend 'arm'"):
        splitattn.quantize(model, [torch.zeros(2, 3, 32, 32)], backend="arm")


def test_optimize_for_inference_bf16_dtype() -> None:
    model = randomize_stats(splitattn.create_model("resnest14d", num_classes=10, **KWARGS)).eval()
    bf16 = optimize_for_inference(model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = bf16(x.to(torch.bfloat16))
        ref = model(x)
    assert got.dtype == torch.bfloat16
    assert F.cosine_similarity(got.float(), ref).min().item() > 0.99
    with pytest.raises(InputError, match="dtype must be a floating torch.dtype"):
        optimize_for_inference(model, dtype=torch.int8)


@needs_int8
@needs_bf16
def test_cli_eval_bf16_and_export_int8(digits: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = splitattn.save_weights(digits["model"], tmp_path / "digits.safetensors", metadata={
        "model_name": "resnest14d", "model_kwargs": KWARGS, "classes": [str(i) for i in range(10)],
        "eval_cfg": DIGITS_CFG.to_dict()})
    assert main(["eval", "--weights", str(weights), "--data", str(digits["root"]), "--bf16",
                 "--workers", "0", "--device", "cpu", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["precision"] == "bf16" and res["images"] == 360
    assert res["fp32"]["top1"] - res["top1"] <= 0.2
    out = tmp_path / "r14_int8.onnx"
    assert main(["export", str(out), "--model", "resnest14d", "--num-classes", "10", "--image-size", "32",
                 "--int8", "--calibration", str(digits["root"] / "train"), "--calibration-images", "16"]) == 0
    text = capsys.readouterr().out
    assert "INT8 onnx, calibrated on 16 images" in text and "cosine similarity" in text
    assert onnx_predict(out, torch.zeros(2, 3, 32, 32)).shape == (2, 10)
