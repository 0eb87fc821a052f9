"""Which kernels a compiled INT8 or bf16 program calls per step, read from inductor's generated wrapper.

For each model and program (built by the bench's own builders, as in ``profile_ops.py``) and batch size,
the program is compiled once (inductor's FX graph cache off) and its Python wrapper's ``call`` is read: every
extern kernel (oneDNN / mkldnn / MKL / ATen calls) and every generated C++ kernel (``cpp_fused_<ops>``) it
calls, counted by name, with the total of calls per step. Nothing is timed.

``--native-bf16`` generates the bf16 program as inductor builds it for a CPU with native bf16 (AVX512-BF16 or
AMX), on any CPU: inductor's check for oneDNN bf16 is answered yes, and the two weight reorders that freezing
runs at compile time (which refuse bf16 on such a CPU) return the weight as it is. The code is generated,
not run: where the CPU lacks bf16 the first oneDNN bf16 call then fails, which is expected and reported.

    python benchmarks/program_calls.py --programs bf16 --native-bf16 --batch-sizes 1
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import sys
from collections import Counter
from contextlib import AbstractContextManager
from typing import Any
from unittest import mock

import torch

from harness import BenchConfig, make_runner
from profile_ops import DEFAULT_MODELS, PROGRAMS
from splitattn.deploy.cpu_features import cpu_description

# One call in the wrapper: an op of a library (torch.ops.<ns>.<op>.<overload>), an extern kernel of
# inductor's (extern_kernels.<op>) or a generated kernel (cpp_fused_<ops>_<n>).
_CALL = re.compile(r"\b(torch\.ops\.\w+\.\w+\.\w+|extern_kernels\.\w+|cpp_fused_\w+)\(")


def wrapper_calls(code: str) -> Counter[str]:
    """Calls per step in the ``call`` function of one generated wrapper, by callee (kernel numbers
    dropped: ``cpp_fused_relu_3`` and ``cpp_fused_relu_7`` count as ``cpp_fused_relu``)."""
    start = re.search(r"^[ \t]*def call\(.*$", code, re.MULTILINE)
    if start is None:
        raise ValueError("no call() in the generated wrapper: another inductor layout")
    body = code[start.end() + 1:]
    end = re.search(r"^\S", body, re.MULTILINE)  # the next top-level statement ends the function
    body = body[:end.start()] if end else body
    return Counter(re.sub(r"_\d+$", "", m) for m in _CALL.findall(body))


_PASS_THROUGH: list[torch.library.Library] = []  # the weight-reorder registrations, kept alive


def native_bf16() -> AbstractContextManager[Any]:
    """Inductor's lowering as on a CPU with oneDNN bf16 (see the module docstring); a no-op if it has it."""
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return contextlib.nullcontext()
    lib = torch.library.Library("mkldnn", "IMPL")  # process-wide, as a script may do
    for op in ("_reorder_convolution_weight", "_reorder_linear_weight"):
        lib.impl(op, lambda w, *args: w.clone(), "CPU")
    _PASS_THROUGH.append(lib)
    return mock.patch("torch._inductor.fx_passes.mkldnn_fusion.is_mkldnn_bf16_supported", lambda device: True)


def program_calls(model: str, program: str, batch: int, args: argparse.Namespace) -> tuple[Counter[str], str]:
    """Build and compile one program; its calls per step and how its first run ended."""
    import torch._inductor.config as inductor_config
    from torch._inductor.graph import GraphLowering

    cfg = BenchConfig(models=[model], mode="infer", device="cpu", batch_size=batch, img_size=args.img_size,
                      channels_last=args.channels_last, threads=args.threads)
    codes: list[str] = []
    torch._dynamo.reset()
    with mock.patch.object(GraphLowering, "save_output_code", codes.append), \
            inductor_config.patch(fx_graph_cache=False):
        runner = make_runner(f"{model}+{PROGRAMS[program]}", cfg, ["infer"])
        assert runner.infer is not None
        try:
            runner.infer()
            ran = "ran"
        except RuntimeError as err:  # --native-bf16 on a CPU without bf16: generated, not runnable
            ran = f"generated, not run here ({str(err).splitlines()[-1][:100]})"
    calls: Counter[str] = Counter()
    for code in codes:
        calls += wrapper_calls(code)
    return calls, ran


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="bench model specs")
    p.add_argument("--programs", nargs="+", default=list(PROGRAMS), choices=list(PROGRAMS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=BenchConfig().threads)
    p.add_argument("--channels-last", action="store_true", help="bf16 program in channels_last (as @cl)")
    p.add_argument("--native-bf16", action="store_true", help="the bf16 program of a CPU with native bf16")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_description()}\ntorch {torch.__version__}\n{shlex.join([sys.executable, *sys.argv])}")
    lowering = native_bf16() if args.native_bf16 else contextlib.nullcontext()
    if args.native_bf16:
        own = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        print("bf16: " + ("this CPU's own (it has oneDNN bf16)" if own else
                          "generated as for a CPU with native bf16"))
    with lowering:
        for model in args.models:
            for program in args.programs:
                for batch in args.batch_sizes:
                    calls, ran = program_calls(model, program, batch, args)
                    print(f"\n{model} {program} b{batch}: {sum(calls.values())} calls per step ({ran})")
                    for name, n in calls.most_common():
                        print(f"  {n:4d}  {name}")
                    sys.stdout.flush()


if __name__ == "__main__":
    main()
