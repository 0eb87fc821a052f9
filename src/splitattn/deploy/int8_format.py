"""The INT8 model file: tensors in safetensors, everything else in JSON, never a pickle or a program.

A quantized program (the graph of torchao's ``convert_pt2e``) is made of the float model's architecture, its
constants (int8 weights, per-channel scales and zero points, float biases of the folded BatchNorms) and the
scale and zero point of each per-tensor quantize / dequantize op. :func:`graph_state` takes the last two
out of a graph; :func:`write_int8_file` stores them with the model record and the quantization settings;
:func:`read_int8_file` reads them back with the one parser (safetensors) and validates the JSON; and
:func:`bind_graph_state` puts them into a graph rebuilt from the architecture, checking that the rebuilt
graph uses exactly the stored tensors (same names, shapes and dtypes, none left over) and the same
quantize / dequantize ops.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import WeightsError
from ..models._spec import RECORD_KEY, ModelSpec, read_spec
from ..models._weights import read_safetensors
from ..utils.fileio import atomic_write
from ..utils.validation import Invalid, boolean, check_fields, choice, integer, number, sequence, text

FORMAT = "splitattn-int8"
VERSION = 2
SETTINGS_KEY = "splitattn.int8"
QPARAMS_KEY = "splitattn.int8.qparams"
_PER_TENSOR = ("quantize_per_tensor", "dequantize_per_tensor")
_QDTYPES = {"torch.uint8": torch.uint8, "torch.int8": torch.int8}
_PT2_MAGIC = b"PK\x03\x04"

_SETTINGS_CHECKS = {
    "format": choice(FORMAT), "version": integer(1, 1_000_000), "backend": choice("x86"),
    "input_shape": sequence(integer(1, 65536), 3, 3, "3 integers (C, H, W)"),
    "calibration_images": integer(0, 2**40), "attention": choice("int8", "fp32"), "reduce_range": boolean,
    "model": text, "torch": text, "torchao": text,
    # Whether the Split-Attention convs' outputs are quantized (deploy.int8_fusion); absent in older files.
    "int8_split": boolean,
    # Whether fp32 attention convs run as linear layers (deploy.int8_fusion); absent in older files.
    "attention_linear": boolean,
}


@dataclass
class Int8File:
    """An INT8 model file as read: its tensors, quantize / dequantize parameters, settings and record.

    Attributes:
        tensors: the program's constants by their graph names.
        qparams: ``[scale, zero_point, qmin, qmax, dtype]`` of each per-tensor quantize / dequantize op,
            in graph order.
        settings: what :func:`splitattn.quantize` recorded (``input_shape``, ``attention``...).
        spec: the float model's record, or None for a model splitattn did not build.
    """

    tensors: dict[str, torch.Tensor]
    qparams: list[list[Any]]
    settings: dict[str, Any]
    spec: ModelSpec | None


def _is_per_tensor(node: torch.fx.Node) -> bool:
    target = node.target
    return (node.op == "call_function" and getattr(target, "_overloadpacket", None) is not None
            and target._overloadpacket.__name__ in _PER_TENSOR and target._overloadname == "default")


def _attr(gm: nn.Module, target: str) -> Any:
    return functools.reduce(getattr, target.split("."), gm)


def graph_state(gm: torch.fx.GraphModule) -> tuple[dict[str, torch.Tensor], list[list[Any]]]:
    """The constants a quantized graph reads (``get_attr``) and the parameters of its per-tensor q/dq ops."""
    tensors = {n.target: _attr(gm, n.target).detach().contiguous().clone() for n in gm.graph.nodes
               if n.op == "get_attr"}
    qparams = [[float(n.args[1]), int(n.args[2]), int(n.args[3]), int(n.args[4]), str(n.args[5])]
               for n in gm.graph.nodes if _is_per_tensor(n)]
    return tensors, qparams


def write_int8_file(path: str | os.PathLike, gm: torch.fx.GraphModule, settings: Mapping[str, Any],
                    spec: ModelSpec | None) -> Path:
    """Write the state of quantized graph ``gm`` with its settings and record, atomically (safetensors)."""
    tensors, qparams = graph_state(gm)
    meta = {"format": "pt", "producer": "splitattn", SETTINGS_KEY: json.dumps(dict(settings)),
            QPARAMS_KEY: json.dumps(qparams)}
    if spec is not None:
        meta[RECORD_KEY] = spec.to_json()
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


_INT32 = integer(-2**31, 2**31 - 1)
_QPARAM = (number(0.0, 1e30, lo_open=True), _INT32, _INT32, _INT32, choice(*_QDTYPES))


def _check_qparams(raw: Any) -> list[list[Any]]:
    if not isinstance(raw, list):
        raise Invalid("a list", raw, QPARAMS_KEY)
    out = []
    for i, q in enumerate(raw):
        if not isinstance(q, list) or len(q) != len(_QPARAM):
            raise Invalid("[scale, zero_point, qmin, qmax, dtype]", q, f"{QPARAMS_KEY}[{i}]")
        try:
            out.append([check(v) for check, v in zip(_QPARAM, q)])
        except Invalid as e:
            raise e.at(f"{QPARAMS_KEY}[{i}]") from None
    return out


def _json_entry(meta: Mapping[str, str], key: str) -> Any:
    if key not in meta:
        raise Invalid("present", shown="nothing", field=key)
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, RecursionError) as e:
        raise Invalid("valid JSON", shown=str(e)[:80], field=key) from None


def read_int8_file(path: str | os.PathLike) -> Int8File:
    """Read and validate an INT8 model file of :func:`write_int8_file`.

    Raises:
        WeightsError: a ``.pt2`` archive of splitattn 0.1 (never opened: it can run code), a file safetensors
            cannot read, or metadata that is missing or invalid; the message names the file and the field.
    """
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == _PT2_MAGIC:
        raise WeightsError(f"INT8 model file {path} is a torch.export archive (.pt2), which splitattn does "
                           "not load (loading one can run code it holds); quantize the float model again and "
                           "save it with QuantizedModel.save('model.int8.safetensors')")
    tensors, meta = read_safetensors(path, "INT8 model file")
    try:
        settings = check_fields(_SETTINGS_CHECKS, _json_entry(meta, SETTINGS_KEY), SETTINGS_KEY)
        if settings.get("format") != FORMAT or settings.get("version") != VERSION:
            raise Invalid(f"format {FORMAT!r} version {VERSION} (written by this splitattn; quantize the "
                          "float model again)", {k: settings.get(k) for k in ("format", "version")},
                          SETTINGS_KEY)
        for key in ("input_shape", "attention", "reduce_range"):
            if key not in settings:
                raise Invalid("present", shown="nothing", field=f"{SETTINGS_KEY}.{key}")
        settings["input_shape"] = list(settings["input_shape"])
        qparams = _check_qparams(_json_entry(meta, QPARAMS_KEY))
        spec = read_spec(meta)
    except Invalid as e:
        raise WeightsError(f"INT8 model file {path}: {e}") from None
    return Int8File(tensors, qparams, settings, spec)


def bind_graph_state(gm: torch.fx.GraphModule, stored: Int8File, path: Path) -> torch.fx.GraphModule:
    """Put the stored constants and q/dq parameters into ``gm``, rebuilt from the architecture.

    Raises:
        WeightsError: the rebuilt graph reads other constants (names, shapes, dtypes) or has other
            quantize / dequantize ops than the file holds: another architecture, or another torch / torchao
            version; the message names the first difference.
    """
    def refuse(what: str) -> WeightsError:
        versions = f"torch {stored.settings.get('torch')}, torchao {stored.settings.get('torchao')}"
        return WeightsError(f"INT8 model file {path} does not fit the program rebuilt from its architecture: "
                            f"{what} (the file was written with {versions}); quantize the float model again")

    targets = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    missing, extra = sorted(targets - set(stored.tensors)), sorted(set(stored.tensors) - targets)
    if missing or extra:
        raise refuse(f"the graph reads {len(targets)} tensors, the file holds {len(stored.tensors)} "
                     f"(not in the file: {missing[:3]}; not in the graph: {extra[:3]})")
    with torch.no_grad():
        for name in sorted(targets):
            own, theirs = _attr(gm, name), stored.tensors[name]
            if own.shape != theirs.shape or own.dtype != theirs.dtype:
                raise refuse(f"tensor {name} is {theirs.dtype} {tuple(theirs.shape)} in the file, "
                             f"{own.dtype} {tuple(own.shape)} in the graph")
            own.copy_(theirs)
    nodes = [n for n in gm.graph.nodes if _is_per_tensor(n)]
    if len(nodes) != len(stored.qparams):
        raise refuse(f"{len(stored.qparams)} quantize/dequantize ops in the file, {len(nodes)} in the graph")
    for node, (scale, zero_point, qmin, qmax, dtype) in zip(nodes, stored.qparams):
        if (int(node.args[3]), int(node.args[4]), str(node.args[5])) != (qmin, qmax, dtype):
            raise refuse(f"op {node.name} quantizes to [{node.args[3]}, {node.args[4]}] {node.args[5]} in "
                         f"the graph, [{qmin}, {qmax}] {dtype} in the file")
        node.args = (node.args[0], scale, zero_point, *node.args[3:])
    gm.recompile()
    return gm


__all__ = ["FORMAT", "VERSION", "Int8File", "bind_graph_state", "graph_state", "read_int8_file",
           "write_int8_file"]
