"""Static checks CI enforces: ruff lint and format; mypy strict on mechanisms/ and dpface/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    assert found, f"{name} is not installed; run ./dev setup"
    return found


def test_ruff_is_clean() -> None:
    proc = subprocess.run(
        [_tool("ruff"), "check", "mechanisms", "dpface", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


FORMATTED = ("mechanisms", "dpface", "tests", "scripts", "notebooks", "docs/_hooks.py")


def test_ruff_format_is_clean() -> None:
    """The code is as ``ruff format`` writes it (``./dev lint`` checks the same)."""
    proc = subprocess.run(
        [_tool("ruff"), "format", "--check", *FORMATTED],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_on_mechanisms_and_dpface() -> None:
    proc = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("mechanisms", "dpface"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def test_no_runnable_tool_inside_the_library() -> None:
    """Tools (benches, calibration, table builders) live in scripts/: the library's only
    command line is dpface.cli."""
    import ast

    tools = []
    for name, path in _modules().items():
        if name == "dpface.cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                tools.append(name)
            if isinstance(node, ast.Compare) and ast.unparse(node) == "__name__ == '__main__'":
                tools.append(name)
    assert not tools, f"runnable tools inside the library: {sorted(set(tools))}"


def test_no_import_cycles_between_library_modules() -> None:
    """Module-level imports between mechanisms/ and dpface/ modules form no cycle (imports
    inside functions are deferred on purpose and are not counted)."""
    import ast

    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in tree.body:  # module level only
            if isinstance(node, ast.If):  # TYPE_CHECKING blocks are not imports at run time
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if seen.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, dep]))
            if dep not in seen:
                visit(dep)
        stack.pop()
        seen[node] = 2

    for name in graph:
        if name not in seen:
            visit(name)
