"""Checks of a ``torch.export`` ``.pt2`` archive before ``torch.export.load`` reads it.

``torch.export.load`` trusts its input: it unpickles tensors stored as pickles and sample inputs, compiles
guard code, resolves any ``torch.*`` attribute as an operator and hands shape expressions to
``sympy.sympify``. :func:`check_pt2_archive` refuses anything beyond what
:meth:`splitattn.quantize.QuantizedModel.save` writes.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsError

__all__ = ["check_pt2_archive"]

# What a checked .pt2 archive may hold, relative to its root folder.
_PT2_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_PT2_ENTRY = re.compile(r"models/\w+\.json|data/(weights/\w+_weights|constants/\w+_constants)_config\.json"
                        r"|data/weights/weight_\d+|data/constants/tensor_\d+|data/sample_inputs/\w+\.pt"
                        r"|extra/[\w.\-]+", re.ASCII)
_PT2_MAX_BYTES = 8 << 30
# Operators a quantized classifier calls: aten, the quantize/dequantize ops, and symbolic-size arithmetic.
_PT2_OP = re.compile(r"torch\.ops\.(aten|quantized_decomposed|prims)\.\w+\.\w+"
                     r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|eq|ne|lt|le|gt|ge)"
                     r"|torch\.sym_(max|min|not|float|int|ite)", re.ASCII)
_PT2_NAME = re.compile(r"([A-Za-z_]\w*(\.\w+)*)?", re.ASCII)
_PT2_NAME_KEYS = {"name", "as_name", "parameter_name", "buffer_name", "fqn", "tensor_constant_name",
                  "forward_arg_names", "path_name"}
# sympy.sympify evaluates shape expressions: only symbols, integers, arithmetic and torch's size functions.
_PT2_SYMBOL = re.compile(r"Symbol\('[a-z]\d+'(, \w+=(True|False))*\)", re.ASCII)
_PT2_EXPR = re.compile(r"[\w +\-*/(),]*", re.ASCII)
_PT2_EXPR_NAMES = {"FloorDiv", "CeilDiv", "Mod", "PythonMod", "ModularIndexing", "CleanDiv", "Max", "Min",
                   "IntTrueDiv", "True", "False"}


def _pt2_refuse(path: Path, what: str) -> WeightsError:
    return WeightsError(f"INT8 model file {path} is refused: {what}; only archives written by "
                        "QuantizedModel.save are loaded (quantize the float model again)")


def _check_expr(path: Path, expr: str) -> None:
    if _PT2_SYMBOL.fullmatch(expr):
        return
    names = set(re.findall(r"[A-Za-z_]\w*", expr))
    bad = {n for n in names if not re.fullmatch(r"[a-z]\d+", n)} - _PT2_EXPR_NAMES
    if not _PT2_EXPR.fullmatch(expr) or bad:
        raise _pt2_refuse(path, f"shape expression {expr[:80]!r} is not plain arithmetic")


def _check_graph_json(path: Path, obj: Any, key: str = "") -> None:
    """Walk the serialized program: operators, names, expressions; no code, objects or source lines."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str) or not re.fullmatch(r"[\w.]+", k, re.ASCII):
                raise _pt2_refuse(path, f"key {str(k)[:80]!r} is not a plain name")
            if k in ("guards_code", "stack_trace") or "custom_obj" in k or "opaque" in k:
                if v:
                    raise _pt2_refuse(path, f"it holds {k}")
                continue
            if k == "range_constraints" and isinstance(v, dict):
                for expr in v:
                    _check_expr(path, expr)
            _check_graph_json(path, v, k)
    elif isinstance(obj, list):
        for v in obj:
            _check_graph_json(path, v, key)
    elif isinstance(obj, str):
        if key in ("target", "as_operator") and not _PT2_OP.fullmatch(obj):
            raise _pt2_refuse(path, f"operator {obj[:80]!r} is outside aten / quantized_decomposed")
        if key in _PT2_NAME_KEYS and not _PT2_NAME.fullmatch(obj):
            raise _pt2_refuse(path, f"name {obj[:80]!r} is not a plain identifier")
        if key == "expr_str":
            _check_expr(path, obj)


def _check_payload_config(path: Path, obj: Any, prefix: str) -> None:
    entries = obj.get("config") if isinstance(obj, dict) else None
    if not isinstance(entries, dict):
        raise _pt2_refuse(path, "a weights/constants config has no 'config' table")
    for fqn, meta in entries.items():
        if not _PT2_NAME.fullmatch(fqn) or not isinstance(meta, dict):
            raise _pt2_refuse(path, f"tensor name {fqn[:80]!r} is not a plain identifier")
        if meta.get("use_pickle") is not False:
            raise _pt2_refuse(path, f"tensor {fqn} is stored as a pickle")
        if not re.fullmatch(prefix + r"\d+", str(meta.get("path_name"))):
            raise _pt2_refuse(path, f"tensor {fqn} is stored as {str(meta.get('path_name'))[:40]!r}")


def check_pt2_archive(path: str | os.PathLike, required_extra: str | None = None) -> None:
    """Refuse a ``torch.export`` archive that could run code when ``torch.export.load`` reads or runs it.

    ``torch.export.load`` unpickles tensors stored as pickles and sample inputs (falling back to
    ``weights_only=False``), compiles guard code, resolves any ``torch.*`` attribute as an operator and
    hands shape expressions to ``sympy.sympify``. This accepts only: the archive's plain entries, raw
    tensor payloads, sample inputs that load with ``weights_only=True``, operators of ``aten`` /
    ``quantized_decomposed`` (and size arithmetic), plain identifiers as names, arithmetic as shape
    expressions, no guard code, custom objects or source lines.

    Raises:
        WeightsError: naming the file and the first thing refused.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"INT8 model file {path} is not a .pt2 archive or is truncated ({e})") from e
    with zf:
        infos = zf.infolist()
        roots = {i.filename.split("/", 1)[0] for i in infos}
        if len(roots) != 1 or sum(i.file_size for i in infos) > _PT2_MAX_BYTES:
            raise _pt2_refuse(path, "it is not one archive folder of at most 8 GiB")
        root = roots.pop() + "/"
        names = {i.filename[len(root):] for i in infos if not i.is_dir()}
        odd = sorted(n for n in names if n not in _PT2_FIXED and not _PT2_ENTRY.fullmatch(n))
        if odd:
            raise _pt2_refuse(path, f"it holds {odd[0]!r}")
        if required_extra is not None and f"extra/{required_extra}" not in names:
            raise _pt2_refuse(path, f"it has no extra/{required_extra}")
        try:
            for name in sorted(names):
                data = zf.read(root + name)
                if name.startswith("models/"):
                    _check_graph_json(path, json.loads(data))
                elif name.endswith("_config.json"):
                    prefix = "weight_" if "/weights/" in name else "tensor_"
                    _check_payload_config(path, json.loads(data), prefix)
                elif name.startswith("data/sample_inputs/"):
                    torch.load(io.BytesIO(data), weights_only=True)
        except WeightsError:
            raise
        except Exception as e:  # noqa: BLE001 (bad JSON, a refused unpickle, a corrupt member)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise _pt2_refuse(path, f"{name} is corrupt or not plain data ({first})") from e
