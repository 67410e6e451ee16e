"""The import graph of src/attnrhythm runs one way: no cycles, no upward imports across the layers.

Every ``import`` / ``from ... import`` statement counts, those inside functions included (read with
``ast``, nothing is imported). Layers, top to bottom:

    cli (and the package facade)  ->  views / train / integrations / studies  ->  rollout
    ->  analyze, config, records, headsets, schema, models, generate, runner, tasks
    ->  method  ->  attention  ->  errors, settings, spans

A module may import its own layer and the ones below it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "attnrhythm"

LAYERS: dict[str, int] = {
    "errors": 0,
    "display": 0,
    "lazy": 0,
    "settings": 0,
    "spans": 0,
    "attention": 1,
    "method": 2,
    "analyze": 3,
    "config": 3,
    "records": 3,
    "headsets": 3,
    "schema": 3,
    "models": 3,
    "generate": 3,
    "padding": 3,
    "runner": 3,
    "tasks": 3,
    "rollout": 4,
    "diff": 4,
    "distributed": 4,
    "ray_engine": 4,
    "views": 5,
    "train": 5,
    "integrations": 5,
    "studies": 5,
    "cli": 6,
    "__main__": 6,
    "": 6,  # attnrhythm/__init__.py: the public API facade
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def imports(path: Path, modules: set[str]) -> set[str]:
    """attnrhythm modules that ``path`` imports anywhere in its body (functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import mod" imports the module pkg.mod
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports(path, modules) for name, path in paths.items()}


def test_every_module_has_a_layer():
    for name in graph():
        layer(name)  # KeyError names a module outside the table: give it a layer


def test_no_upward_imports():
    upward = [
        f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
        for src, targets in graph().items()
        for dst in targets
        if layer(dst) > layer(src)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    # a package's __init__ that re-exports its own modules is not a cycle of the design
    real = [
        c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))
    ]
    assert not real, "\n".join(" -> ".join(c) for c in real)


def test_the_graph_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "attnrhythm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from attnrhythm.b import g\n    return g\n")
    (pkg / "b.py").write_text("import attnrhythm.a\n")
    global SRC
    saved = SRC
    try:
        SRC = tmp_path
        found = imports(pkg / "a.py", {"attnrhythm", "attnrhythm.a", "attnrhythm.b"})
    finally:
        SRC = saved
    assert found == {"attnrhythm.b"}


def test_the_command_line_help_does_not_load_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from attnrhythm.cli import app\n"
        "runner = CliRunner()\n"
        "for args in ([], ['analyze'], ['train'], ['eval'], ['study', 'couplings'], ['report']):\n"
        "    assert runner.invoke(app, [*args, '--help']).exit_code == 0, args\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'trl', 'ray') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env_path = str(SRC)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"--help loaded {done.stdout.strip()}"
