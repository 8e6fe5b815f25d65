"""DESIGN.md's layers: imports point down. No import cycle among fastenc's modules (module-level imports: those run
when a module is imported), and no runtime module imports a tool (fastenc.bench, fastenc.precompile), at module
level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fastenc": ROOT / "fastenc", "fastenc.kernels": ROOT / "kernels"}
TOOLS = ("fastenc.bench", "fastenc.precompile")


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = (path, path.name == "__init__.py")
    return found


def _imports(name: str, path: Path, is_package: bool, known: set[str]) -> tuple[set[str], set[str]]:
    """(fastenc modules imported at module level, fastenc modules imported anywhere) by one module."""
    package = name if is_package else name.rpartition(".")[0]
    top, anywhere = set(), set()

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        return []

    def visit(nodes: list[ast.stmt], module_level: bool) -> None:
        for node in nodes:
            for target in targets(node):
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    anywhere.add(target)
                    if module_level:
                        top.add(target)
            level_here = module_level and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit([n for n in getattr(node, field, []) if isinstance(n, ast.stmt | ast.ExceptHandler)],
                      level_here)

    visit(ast.parse(path.read_text()).body, True)
    return top, anywhere


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = _modules()
    top, anywhere = {}, {}
    for name, (path, is_package) in mods.items():
        top[name], anywhere[name] = _imports(name, path, is_package, set(mods))
    return top, anywhere


def _is_tool(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TOOLS)


def test_no_import_cycle():
    top, _ = _graph()
    state: dict[str, int] = {}
    cycles = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(top[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(top):
        if name not in state:
            walk(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_runtime_imports_no_tool():
    _, anywhere = _graph()
    bad = sorted(f"{m} -> {t}" for m, targets in anywhere.items() if not _is_tool(m) and m != "fastenc.__main__"
                 for t in targets if _is_tool(t))
    assert not bad, "runtime modules importing tools: " + ", ".join(bad)


def test_the_checker_sees_imports():
    """The graph is not empty: a checker that found nothing would pass everything."""
    top, anywhere = _graph()
    assert "fastenc.backends" in top["fastenc.dispatch"] and "fastenc.autotune" in top["fastenc.dispatch"]
    assert "fastenc.precompile" in anywhere["fastenc.__main__"]
