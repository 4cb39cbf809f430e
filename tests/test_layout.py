"""The rules of the house (bench/__init__.py and each package's docstring), read off the code's imports:
no two modules import each other, directly or through others; methods see only tensors; the report reads
only records; only the CLI and the config's own readers touch Hydra; the table builds without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# package -> the bench modules and packages it may import (besides itself and the root's UserError / digest)
ALLOWED = {
    "bench.methods": {"bench.progress", "bench.flows"},
    "bench.report": {"bench.results", "bench.temps"},
    "bench.sweep": {"bench.config", "bench.results", "bench.temps"},
    "bench.data": {"bench.fetch", "bench.config"},
    "bench.backbones": {"bench.fetch", "bench.temps", "bench.config"},
    "bench.finetune": {"bench.backbones", "bench.data", "bench.temps"},
}
# the modules that may import hydra or omegaconf, each to turn a config into plain values at once
HYDRA = {"bench.cli", "bench.config", "bench.sweep.status", "bench.backbones.zoo"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(BENCH.rglob("*.py")):
        parts = path.relative_to(BENCH.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every module this one imports, at module level or inside a function, resolved to bench's modules
    (`from bench.x import y` is bench.x.y when y is a module, else bench.x) or to a third-party top name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m if m.startswith("bench") else m.split(".")[0] for m in out}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def test_no_two_modules_import_each_other(graph):
    """No cycle in the import graph of bench's modules (Tarjan's strongly connected components)."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_its_docstring_allows(graph, package):
    def within(module: str, packages) -> bool:
        return any(module == p or module.startswith(p + ".") for p in packages)

    for name, deps in graph.items():
        if within(name, [package]):
            bad = {d for d in deps if d.startswith("bench.") and not within(d, [package, *ALLOWED[package]])}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_only_the_cli_and_the_config_readers_touch_hydra(graph):
    users = {name for name, deps in graph.items() if deps & {"hydra", "omegaconf"}}
    assert users == HYDRA


def test_the_report_imports_neither_torch_nor_the_run(graph):
    for name, deps in graph.items():
        if name.startswith("bench.report"):
            assert "torch" not in deps and "bench.metrics" not in deps, name
    # and at run time too: building the table loads no torch (checked in a fresh interpreter)
    code = "import sys, bench.report.table; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_layout_the_docstring_shows_is_the_layout_on_disk():
    """bench/__init__.py names every top-level module and package of bench/ (the map a newcomer reads)."""
    import bench

    on_disk = {p.stem for p in BENCH.glob("*.py") if p.stem not in ("__init__", "__main__")}
    on_disk |= {p.name for p in BENCH.iterdir() if (p / "__init__.py").is_file()}
    doc = bench.__doc__
    assert all((f"{m}.py" in doc) or (f"{m}/" in doc) for m in on_disk), sorted(
        m for m in on_disk if f"{m}.py" not in doc and f"{m}/" not in doc)
