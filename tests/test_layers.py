"""The package's import graph: layers only point down, no cycles, lazy imports only with a reason.

The layers follow the data flow (STYLE.md): helpers, then models / data / config, then the
train-test contract (preprocessing, checkpoints), inference, evaluation, training, and on top
the analyses, interop, benchmarks, the report and the command line. A module may import its
own unit (a subpackage or a top-level module) and any lower layer, never a higher one.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    {"errors", "files", "runtime", "progress", "kernels", "figures"},
    {"config", "models", "data"},
    {"preprocess", "parallel", "summary"},
    {"checkpoint"},
    {"inference", "interop"},
    {"evaluate"},
    {"train"},
    {"analysis", "bench", "report"},
    {"serve"},
    {"cli", "__main__", "__init__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

# Imports inside functions, each with its reason: optional dependencies, and heavy ones loaded on use.
LAZY = {
    ("alexnet.analysis.retrieval", "faiss"): "optional dependency (faiss-cpu)",
    ("alexnet.train.rundir", "torch.utils.tensorboard"): "optional dependency (tensorboard)",
    ("alexnet.interop.export", "onnxruntime"): "optional dependency (the export extra)",
    ("alexnet.figures", "matplotlib"): "start-up time, and the backend must be chosen before pyplot loads",
    ("alexnet.figures", "matplotlib.pyplot"): "start-up time, and the backend must be chosen before pyplot loads",
    ("alexnet.kernels", "torch.utils.cpp_extension"): "start-up time: only needed to build the C++ kernels",
    ("alexnet.data.imagenet", "scipy.io"): "start-up time: only the ImageNet devkit's meta.mat needs it",
    ("alexnet.data.download", "pooch"): "start-up time: only a download needs it",
    ("alexnet.data.download", "requests"): "start-up time: only a download needs it",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "alexnet").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(name: str, path: Path) -> list[str]:
    """Every module (or module attribute) an import statement of `name` names, wherever it stands."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += names
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for target in imports(name, path):
            # a module's own parent packages are imported before it anyway: not a dependency
            if target in mods and target != name and not name.startswith(target + "."):
                edges[name].add(target)
    return edges


def test_imports_only_point_down_the_layers():
    assert set(RANK) >= {unit(m) for m in modules()}, "a new top-level module needs a layer above"
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets
              if unit(a) != unit(b) and RANK[unit(b)] > RANK[unit(a)]]  # fmt: skip
    assert not upward, "imports that run up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in modules():
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_function_local_imports_are_the_listed_ones():
    unexplained = []
    for name, path in modules().items():
        lazy = [t for m, t in LAZY if m == name]
        for node, line in local_imports(path):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{n}" for n in names] + [node.module or ""]
            if not any(n == t or n.startswith(t + ".") for n in names for t in lazy):
                unexplained.append(f"{name}: {line}")
    assert not unexplained, "function-local imports without a reason (add to LAZY or move to the top):\n" + "\n".join(unexplained)


def local_imports(path: Path) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    tree = ast.parse(path.read_text())
    return [(n, ast.unparse(n)) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]  # fmt: skip
