"""compile_for_inference: a float model captured once, compiled by inductor with freezing per batch size,
called without dynamo. (The bf16 Split-Attention tail as one kernel: test_inference.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import splitattn
from conftest import deterministic_algorithms, randomize_stats
from splitattn.deploy import compiled
from splitattn.errors import EvalOnlyError, InputError
from splitattn.layers import fused_conv


def _gemms(graph: torch.fx.GraphModule) -> int:
    return sum(n.op == "call_function" and any(k in str(n.target) for k in ("linear", "bmm", "addmm", "mm."))
               for n in graph.graph.nodes)


def test_resnest_is_captured_with_its_attention_mlp_as_reductions() -> None:
    """What inductor gets for a ResNeSt (the compile itself: the tests below and test_inference.py's
    Split-Attention block, which compile faster)."""
    torch.manual_seed(0)
    model = randomize_stats(splitattn.ResNeSt(layers=(1, 1, 1, 1), radix=2, cardinality=2, stem_width=8,
                                              base_width=8, num_classes=10)).eval()
    fast = splitattn.optimize_for_inference(model)
    program = splitattn.compile_for_inference(fast, (3, 32, 32))
    assert not fused_conv._EXPORT_FOR_INDUCTOR  # the capture's switch is off again
    # The attention MLP (two grouped 1x1 convs per block) was captured as products and sums, which inductor
    # fuses into the block's tail kernel: the one GEMM left is the classifier.
    assert _gemms(program.graph_module) == 1
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.graph_module(x.contiguous(memory_format=torch.channels_last)),
                                   model(x), rtol=1e-4, atol=1e-5)


def test_one_program_per_batch_size_called_without_dynamo(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()
    program = splitattn.compile_for_inference(tiny, (3, 12, 12))
    compiled_for: list[int] = []
    compile_graph = compiled.compile_graph
    monkeypatch.setattr(compiled, "compile_graph",
                        lambda graph, x: compiled_for.append(len(x)) or compile_graph(graph, x))
    captured = counters["stats"]["calls_captured"]
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        reference = tiny(x)
    out = program(x)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    # Later changes to the model's weights reach neither the compiled program nor a new batch size's.
    with torch.no_grad():
        for p in tiny.parameters():
            p.zero_()
    with deterministic_algorithms():  # dynamo would compile again under it
        again, part = program(x), program(x[:3])  # the second padded to the compiled size
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    torch.testing.assert_close(part, out[:3], rtol=0, atol=0)
    assert compiled_for == [4]
    bigger = program(torch.cat([x, x]))  # a second compile of the same captured graph
    assert compiled_for == [4, 8] and sorted(program._programs) == [4, 8]
    torch.testing.assert_close(bigger, torch.cat([out, out]), rtol=1e-5, atol=1e-6)
    assert counters["stats"]["calls_captured"] == captured  # dynamo traced nothing
    assert "compiled_batch_sizes=[4, 8]" in repr(program)


def test_bf16_module_and_bad_inputs_are_named() -> None:
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).to(torch.bfloat16)
    with pytest.raises(InputError, match=r"no pretrained_cfg\['input_size'\]: pass input_size"):
        splitattn.compile_for_inference(tiny)
    with pytest.raises(InputError, match=r"input_size must be \(C, H, W\)"):
        splitattn.compile_for_inference(tiny, (3, 12))
    with pytest.raises(InputError, match="expects an nn.Module"):
        splitattn.compile_for_inference(lambda x: x, (3, 12, 12))
    mixed = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3).to(torch.bfloat16))
    with pytest.raises(InputError, match="several dtypes"):
        splitattn.compile_for_inference(mixed, (3, 12, 12))
    program = splitattn.compile_for_inference(tiny, (3, 12, 12), channels_last=False)
    assert tiny.training  # its mode restored; the program computes eval mode
    assert program.dtype == torch.bfloat16 and program.memory_format == torch.contiguous_format
    x = torch.randn(2, 3, 12, 12, dtype=torch.bfloat16)
    with torch.no_grad():
        out, reference = program(x), tiny.eval()(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference, rtol=0.02, atol=0.02)
    for bad, words in (
            (torch.randn(2, 3, 13, 12), r"takes \(B, 3, 12, 12\) inputs with B >= 1, got \(2, 3, 13"),
            (torch.randn(0, 3, 12, 12), r"B >= 1, got \(0, 3, 12, 12\)"),
            (torch.randn(2, 3, 12, 12), r"takes torch.bfloat16 inputs .*, got torch.float32"),
            (x.to("meta"), "runs on cpu; got an input on meta"),
    ):
        with pytest.raises(InputError, match=words):
            program(bad)
    with pytest.raises(EvalOnlyError, match="cannot train"):
        program.train()
    assert program.eval() is program
