"""The package's shape: imports inside it are relative and form no circle, modules and functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pipeline"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _module(path: Path) -> str:
    parts = path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (inside functions too)."""
    module = _module(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = [p for p in package if p]
    known = {_module(p) for p in PKG.rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import onnx` imports a module
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in known else target)
    return found - {module}


def test_imports_inside_the_package_are_relative():
    absolute = [f"{p.relative_to(PKG)}:{n.lineno}" for p in PKG.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").split(".")[0] == "cnnpipe"]
    assert not absolute, absolute


def test_every_import_inside_the_package_resolves():
    """Imports inside functions too (the lazy ones that keep torch out of `predict`), which ruff cannot check."""
    known = {_module(p) for p in PKG.rglob("*.py")}
    missing = [f"{p.relative_to(PKG)}: {target}" for p in PKG.rglob("*.py") for target in _imports(p) if target not in known]
    assert not missing, missing


def test_no_import_circle():
    graph = {_module(p): _imports(p) for p in PKG.rglob("*.py")}
    done: set[str] = set()

    def circle_from(module: str, path: tuple[str, ...]) -> list[str]:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return []
        for target in sorted(graph.get(module, ())):
            if found := circle_from(target, (*path, module)):
                return found
        done.add(module)
        return []

    circles = [c for m in sorted(graph) if (c := circle_from(m, ()))]
    assert not circles, " -> ".join(circles[0])


def test_modules_and_functions_are_small():
    big = []
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            big.append(f"{path.relative_to(PKG)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (length := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    big.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name}(): {length} lines")
    assert not big, big


TORCH_FREE = ("verify", "predict", "sign", "publish")  # stages whose own process imports no torch


def test_the_stages_that_judge_or_serve_a_bundle_import_no_torch():
    """verify judges what workers answer and predict runs onnxruntime: importing them (and the CLI)
    imports no torch; ``test_sandbox.py`` watches a whole verify's process as well."""
    import subprocess
    import sys

    modules = ", ".join(["cnnpipe.cli.app", *(f"cnnpipe.stages.{name}" for name in TORCH_FREE)])
    script = f"import sys\nimport {modules}\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout[:2000]
