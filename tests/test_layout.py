"""The package layout: every module imports on its own, no import cycles, the layers hold, and the README's
library table is the directory listing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "splitattn"

# Each module is imported in a child forked from a fresh interpreter that has loaded only third-party
# packages: no splitattn module is loaded before the one under test, so an import that works only after
# another module was imported first fails here. Importing any module runs the package root first, so a
# module that ``import splitattn`` loads is imported alone exactly when the root is: a first child reports
# which those are, and only the root and the modules it does not load get a child of their own.
_IMPORT_EACH = r"""
import importlib, os, sys, traceback
import numpy, PIL.Image, rich, safetensors.torch, torch, torchvision, yaml  # third-party only
assert not [m for m in sys.modules if m.split(".")[0] == "splitattn"]


def child(name, report=None):
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
            if report is not None:
                os.write(report, " ".join(m for m in sys.modules if m.split(".")[0] == "splitattn").encode())
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    return os.waitpid(pid, 0)[1] == 0


read, write = os.pipe()
with os.fdopen(read) as names_loaded:
    ok = child("splitattn", write)  # its report is a few kB: it fits the pipe before anyone reads
    os.close(write)
    by_root = set(names_loaded.read().split())
failed = [] if ok else ["splitattn"]
alone = [n for n in sys.argv[1:] if n not in by_root]
failed += [n for n in alone if not child(n)]
print("COVERED", len(by_root), "ALONE", len(alone))
print("FAILED", " ".join(failed))
"""


def module_names() -> list[str]:
    """Every module of src/splitattn, dotted (packages by their own name)."""
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = module_names()
    assert len(names) > 60 and "splitattn.models._factory" in names
    out = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    covered, failed_line = out.stdout.strip().splitlines()[-2:]
    failed = failed_line.split()[1:]
    assert failed == [], f"{failed} do not import on their own:\n{out.stderr[-3000:]}"
    _, n_root, _, n_alone = covered.split()
    assert int(n_root) > 40 and int(n_root) + int(n_alone) >= len(names), covered


def _cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle_between_any_two_modules():
    """Stricter than import-linter's acyclic_siblings: a package's __init__ and its own modules count too,
    and imports inside functions are read like the others."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("splitattn")
    assert _cycles(graph) == []
    # The check sees a cycle when there is one: explain.plots -> explain.explanations -> explain.plots.
    graph.add_import(importer="splitattn.explain.plots", imported="splitattn.explain.explanations")
    assert ["splitattn.explain.explanations", "splitattn.explain.plots"] in _cycles(graph)


def test_layer_contracts_hold():
    """The import-linter contracts of pyproject.toml (also run by `make test` as lint-imports)."""
    pytest.importorskip("importlinter")
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in out.stdout


def _readme_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Library and application", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w./]+)` \| (.+) \|$", section, re.M)}


def test_readme_library_table_is_the_directory_listing():
    rows = _readme_rows()
    entries = {p.name + "/" for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"}
    entries |= {p.name for p in SRC.glob("*.py")}
    assert set(rows) == entries
    for folder in (e for e in entries if e.endswith("/")):
        modules = {p.stem for p in (SRC / folder).glob("*.py") if p.stem != "__init__"}
        named = set(re.findall(r"`(\w+)`", rows[folder]))
        assert modules <= named, f"README's row for {folder} does not name {sorted(modules - named)}"
