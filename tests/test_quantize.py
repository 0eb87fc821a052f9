"""INT8 (splitattn.deploy.quantization, ONNX QDQ) and bf16 CPU inference: accuracy on real digits,
persistence, refusals.

One small ResNeSt-14 is trained on scikit-learn's digits once (the demo's model, ~15 s), quantized and
compiled once; the zoo models are quantized without compiling (the reference graph), which checks the
numbers, not the speed (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from filelock import FileLock

import splitattn
import splitattn.deploy.quantization as qmod
from conftest import deterministic_algorithms, randomize_stats
from splitattn.cli import main
from splitattn.data.digits import build_digits_imagefolder
from splitattn.data.imagefolder import ImageFolderDataset
from splitattn.data.preprocessing import DataConfig
from splitattn.data.transforms import create_eval_transform
from splitattn.deploy import cpu_features
from splitattn.deploy.export import export_onnx_int8, onnx_predict
from splitattn.deploy.fold import optimize_for_inference
from splitattn.errors import EvalOnlyError, InputError, MissingDependencyError, MissingFileError, WeightsError
from splitattn.layers.split_attn import SplitAttn
from splitattn.models._spec import ModelSpec

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="torchao is not installed (pip install 'splitattn[int8]')")
# oneDNN's INT8 convolutions run on any x86-64 CPU (VNNI, or AVX2 code with 7-bit activations); their
# speed is in benchmarks/RESULTS.md.
needs_onednn_int8 = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None or qmod.int8_support_problem() is not None,
    reason=f"needs torchao and oneDNN INT8 kernels: {qmod.int8_support_problem() or 'torchao missing'}")

KWARGS = {"stem_width": 8, "base_width": 8}  # the demo's model (configs/demo_digits.yaml)
DIGITS_CFG = DataConfig(32, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = ImageFolderDataset(root / split, create_eval_transform(DIGITS_CFG))
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(ds.targets)


def _train(x: torch.Tensor, y: torch.Tensor, epochs: int = 4) -> torch.nn.Module:
    """The demo's ResNeSt-14 trained with Nesterov SGD, one-cycle LR and label smoothing (~97%)."""
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


def _trained_digits_model(shared: Path, xtr: torch.Tensor, ytr: torch.Tensor) -> torch.nn.Module:
    """The digits model, trained once per test run: the first worker to get here trains it and writes its
    weights to ``shared``, the others load them (the same numbers: one thread, fixed seeds)."""
    path = shared / "resnest14d_digits.pt"
    with FileLock(str(shared / "resnest14d_digits.lock")):
        if not path.exists():
            threads = torch.get_num_threads()
            # Tiny convs: one thread wastes no time in OpenMP barriers when the cores are shared (xdist).
            torch.set_num_threads(1)
            try:
                model = _train(xtr, ytr)
            finally:
                torch.set_num_threads(threads)
            torch.save(model.state_dict(), shared / "resnest14d_digits.pt.tmp")
            (shared / "resnest14d_digits.pt.tmp").replace(path)
            return model
    model = splitattn.create_model("resnest14d", num_classes=10, **KWARGS)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # Session scope: xdist interleaves modules on a worker, and a module fixture is rebuilt each time the
    # worker comes back to this one. The run's base directory is shared by its xdist workers.
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = build_digits_imagefolder(tmp_path_factory.mktemp("digits") / "data", size=32)
    xtr, ytr = _load_split(root, "train")
    xva, yva = _load_split(root, "val")
    model = _trained_digits_model(shared, xtr, ytr)
    return {"root": root, "model": model, "xtr": xtr, "xva": xva, "yva": yva,
            "calibration": [xtr[i:i + 64] for i in range(0, 256, 64)]}


@pytest.fixture(scope="session")
def int8_digits(digits: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """The digits model quantized once (the reference graph: runs on any CPU), and its val logits."""
    qmodel = splitattn.quantize(digits["model"], digits["calibration"], compile=False)
    return qmodel, qmodel(digits["xva"])


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of images on which two models predict the same class."""
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


@needs_torchao
def test_digits_int8_and_bf16_accuracy_next_to_fp32(digits: dict, int8_digits: tuple) -> None:
    model, x, y = digits["model"], digits["xva"], digits["yva"]
    with torch.no_grad():
        fp32 = _top1(model(x), y)
        # bf16 numerics are the same with or without AVX512-BF16 (only the speed differs).
        bf16_model = optimize_for_inference(model, dtype=torch.bfloat16)
        bf16 = _top1(bf16_model(x.to(torch.bfloat16)).float(), y)
    _, logits = int8_digits
    int8 = _top1(logits, y)
    # Margins of several images (of 360): the trained model, and so its quantization error, differs between
    # CPUs (AVX2, AVX-512 and AMX kernels round differently); RESULTS.md has the measured figures.
    assert fp32 >= 90.0, f"the digits model trained to only {fp32:.2f}%"
    assert fp32 - int8 <= 1.5, f"INT8 top-1 {int8:.2f}% vs fp32 {fp32:.2f}%"
    assert fp32 - bf16 <= 1.5, f"bf16 top-1 {bf16:.2f}% vs fp32 {fp32:.2f}%"
    assert _agreement(logits, model(x)) >= 0.97
    assert logits.dtype == torch.float32 and logits.shape == (len(x), 10)


@needs_onednn_int8
def test_int8_kernels_run_every_conv_and_match_the_reference(digits: dict, int8_digits: tuple) -> None:
    from torch._dynamo.utils import counters

    reference, ref_logits = int8_digits
    # The same quantized graph, compiled (one compile, ~40 s on 2 cores, for the whole module).
    qmodel = qmod.QuantizedModel(reference.graph_module, reference.info, compile=True)
    counters["inductor"].clear()
    x = digits["xva"]
    logits = qmodel(x)
    # Every conv of the model ran as a oneDNN INT8 convolution (ReLU / residual add fused in), but the
    # attention MLP's fc1 / fc2 on the pooled vector: fp32 by default, run as linear layers.
    inductor = counters["inductor"]
    lowered = inductor["qconv_unary_lower_count"] + inductor["qconv2d_binary_lower_count"]
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in digits["model"].modules())
    n_attention = 2 * sum(isinstance(m, SplitAttn) for m in digits["model"].modules())
    assert lowered == n_convs - n_attention == 27 - 8
    linears = [n for n in qmodel.graph_module.graph.nodes if n.target is torch.ops.aten.linear.default]
    assert len(linears) == n_attention + 1  # and the classifier
    # The kernels round differently from the reference ops (and, without VNNI, on 7-bit activations),
    # so the deployed model is checked against fp32 as well as against the reference graph.
    with torch.no_grad():
        fp32 = _top1(digits["model"](x), digits["yva"])
    assert fp32 - _top1(logits, digits["yva"]) <= 1.5
    assert _agreement(logits, ref_logits) >= 0.98
    assert F.cosine_similarity(logits, ref_logits).min().item() > 0.99
    # A smaller batch runs padded into the compiled size: the same numbers, no second compile.
    part = qmodel(x[:100])
    torch.testing.assert_close(part, logits[:100], atol=1e-5, rtol=0)
    assert list(qmodel._programs) == [len(x)]


@needs_torchao
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
    bad = torch.zeros(2, 3, 8, 8)
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(InputError, match=r"calibration batch 1 holds NaN or infinite values \(1 of 384\)"):
        splitattn.quantize(torch.nn.Conv2d(3, 3, 1), [torch.zeros(2, 3, 8, 8), bad], compile=False)
    with pytest.raises(InputError, match="calibration batch 1 has images of shape"):
        splitattn.quantize(torch.nn.Conv2d(3, 3, 1), [torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 9, 9)])


_LOAD_IN_FRESH_PROCESS = """
import sys, torch, splitattn
model = splitattn.load_quantized(sys.argv[1], compile=False)
torch.save({"logits": model(torch.load(sys.argv[2])), "info": model.info}, sys.argv[3])
"""


@needs_torchao
def test_int8_save_load_round_trip(digits: dict, int8_digits: tuple, tmp_path: Path) -> None:
    qmodel, logits = int8_digits
    path = qmodel.save(tmp_path / "digits.int8.safetensors")
    fp32 = splitattn.save_weights(digits["model"], tmp_path / "digits.safetensors")
    assert path.stat().st_size <= 1.1 * fp32.stat().st_size, "the INT8 file is larger than the fp32 one"
    torch.save(digits["xva"], tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, str(path), str(tmp_path / "x.pt"),
                    str(tmp_path / "out.pt")], check=True, timeout=600)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["info"] == qmodel.info and out["info"]["calibration_images"] == 256
    torch.testing.assert_close(out["logits"], logits, atol=0, rtol=0)  # the same program, to the bit
    with pytest.raises(MissingFileError, match="does not exist"):
        splitattn.load_quantized(tmp_path / "missing.int8.safetensors", compile=False)
    # A model splitattn did not build: its file records no architecture; the caller gives one.
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten()).eval()
    q = splitattn.quantize(tiny, [torch.randn(4, 3, 8, 8)], compile=False)
    other = q.save(tmp_path / "tiny.int8.safetensors")
    with pytest.raises(InputError, match=r"tiny.int8.safetensors holds a Sequential.*pass model="):
        splitattn.load_quantized(other, compile=False)
    x = torch.randn(2, 3, 8, 8)
    again = splitattn.load_quantized(other, compile=False, model=torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()))
    torch.testing.assert_close(again(x), q(x), atol=0, rtol=0)
    # The .pt2 export is for deployment runtimes; splitattn refuses to open one.
    pt2 = qmodel.export_program(tmp_path / "digits.pt2")
    with pytest.raises(WeightsError, match=r"digits.pt2 is a torch.export archive \(.pt2\), which splitattn "
                                           r"does not load.*quantize the float model again"):
        splitattn.load_quantized(pt2, compile=False)


@needs_torchao
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


def _int8_weights(qmodel: torch.nn.Module) -> int:
    """How many per-channel int8 weights (one per quantized conv / linear) the quantized graph holds."""
    return sum("dequantize_per_channel" in str(n.target) for n in qmodel.graph_module.graph.nodes)


@needs_torchao
@pytest.mark.parametrize("name, attention", [("resnest50_fast_4s2x40d", "int8"), ("tiny-radix4", "fp32")])
def test_quantize_radix4_models(name: str, attention: str) -> None:
    # Radix 2 (resnest14d) is the digits model above; these are radix 4 (cardinality 2) at 64 px: the zoo
    # model, and a one-block-per-stage one with the attention MLP (fc1, fc2) left in fp32.
    if name == "tiny-radix4":
        model = splitattn.ResNeSt(layers=(1, 1, 1, 1), radix=4, cardinality=2, stem_width=8, base_width=8,
                                  num_classes=10)
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


@needs_onednn_int8
def test_compiled_program_runs_without_dynamo_or_config_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch size gets one program, compiled by inductor directly; a call runs it as it is: no dynamo
    (no guards to evaluate, no recompile on global state) and no patch of inductor's config (each costs a
    call a few hundred microseconds)."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    nn = torch.nn
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()
    qmodel = splitattn.quantize(tiny, [torch.randn(4, 3, 12, 12) for _ in range(2)])
    compiled_for: list[int] = []
    compile_program = qmod._compile_program
    monkeypatch.setattr(qmod, "_compile_program",
                        lambda graph, x: compiled_for.append(len(x)) or compile_program(graph, x))
    captured = counters["stats"]["calls_captured"]
    counters["inductor"].clear()
    x = torch.randn(4, 3, 12, 12)
    first = qmodel(x)
    assert counters["inductor"]["qconv_unary_lower_count"] == 2  # the INT8 kernels, not the reference ops
    frozen_at_call: list[bool] = []
    program = qmodel._programs[4]
    qmodel._programs[4] = lambda inp: frozen_at_call.append(bool(inductor_config.freezing)) or program(inp)
    with deterministic_algorithms():  # dynamo would compile again under it
        again, part = qmodel(x), qmodel(x[:3])  # the second padded to the compiled size
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(part, first[:3], rtol=0, atol=0)
    assert frozen_at_call == [False, False] and compiled_for == [4]
    # A larger batch gets a program of its own, computing each image as before.
    bigger = qmodel(torch.cat([x, x]))
    assert compiled_for == [4, 8] and sorted(qmodel._programs) == [4, 8]
    torch.testing.assert_close(bigger, torch.cat([first, first]), rtol=0, atol=1e-5)
    assert counters["stats"]["calls_captured"] == captured  # dynamo traced nothing


def test_int8_support_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    assert not qmod.int8_dot_product(["avx2", "fma", "avx512f"])
    assert qmod.int8_dot_product(["avx2", "avx512f", "avx512_vnni"]) and qmod.int8_dot_product(["avx_vnni"])
    model = splitattn.create_model("resnest14d", num_classes=10, **KWARGS).eval()
    with pytest.raises(InputError, match="unknown INT8 backend 'arm'"):
        splitattn.quantize(model, [torch.zeros(2, 3, 32, 32)], backend="arm")
    if importlib.util.find_spec("torchao") is not None:
        # Without an int8 dot-product instruction: 7-bit activations (torchao's advice), with a warning.
        tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())
        calibration = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))]
        for flags, reduced in (({"avx2", "fma"}, True), ({"avx2", "avx512f", "avx512_vnni"}, False)):
            monkeypatch.setattr(cpu_features, "cpu_flags", lambda flags=flags: frozenset(flags))
            caplog.clear()
            reference = splitattn.quantize(tiny, calibration, compile=False)
            assert reference.info["reduce_range"] is reduced
            assert ("activations are quantized to 7 bits" in caplog.text) is reduced
            assert "none of avx512_vnni, avx_vnni, amx_int8" in caplog.text or not reduced
            assert reference(torch.randn(3, 3, 8, 8)).shape == (3, 4)
    # Where the kernels cannot run at all, the reference graph (compile=False) still builds.
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "aarch64")
    assert "needs an x86-64 CPU" in qmod.int8_support_problem()
    with pytest.raises(MissingDependencyError, match="needs an x86-64 CPU"):
        splitattn.quantize(model, [torch.zeros(2, 3, 32, 32)])
    with pytest.raises(MissingDependencyError, match="needs an x86-64 CPU"):
        qmod.check_int8_support()


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


@needs_torchao
def test_cli_eval_bf16_int8_and_export_int8(digits: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    spec = ModelSpec.from_model(digits["model"], [str(i) for i in range(10)], DIGITS_CFG.to_dict())
    weights = splitattn.save_weights(digits["model"], tmp_path / "digits.safetensors", spec=spec)
    common = ["eval", "--weights", str(weights), "--data", str(digits["root"]), "--workers", "0",
              "--device", "cpu"]
    assert main([*common, "--bf16", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["precision"] == "bf16" and res["images"] == 360
    assert res["fp32"]["top1"] - res["top1"] <= 1.5  # several images of 360: trajectories differ by CPU
    # --int8 on a CPU without INT8 kernels: the reference graph's accuracy, with a warning saying why.
    no_kernels = lambda: "INT8 inference needs an x86-64 CPU"  # noqa: E731
    monkeypatch.setattr(qmod, "int8_support_problem", no_kernels)
    monkeypatch.setattr(splitattn.evaluation.evaluate, "int8_support_problem", no_kernels)
    assert main([*common, "--int8", "--calibration-images", "64"]) == 0
    text = capsys.readouterr().out
    assert "INT8 calibrated on 64 images of" in text and str(digits["root"] / "train") in text
    assert "fp32  top-1" in text and "int8  top-1" in text and "reference ops" in text
    assert "evaluating the INT8 model's reference graph" in caplog.text
    out = tmp_path / "r14_int8.onnx"
    assert main(["export", str(out), "--model", "resnest14d", "--num-classes", "10", "--image-size", "32",
                 "--int8", "--calibration", str(digits["root"] / "train"), "--calibration-images", "16"]) == 0
    text = capsys.readouterr().out
    assert "INT8 onnx, calibrated on 16 images" in text and "cosine similarity" in text
    assert onnx_predict(out, torch.zeros(2, 3, 32, 32)).shape == (2, 10)
