"""The house rules of src/oarl (docs/architecture.md): imports run down the floors (no cycle between oarl's
modules, lazy imports included), an import inside a function says why it is there (`# lazy: <reason>`), no module
over 500 lines, and the `oarl` command starts without torch, transformers or TRL (`oarl --help`, `oarl eval --help`
and `oarl compare --help` stay quick; OMP_WAIT_POLICY is set before torch loads)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "oarl").rglob("*.py"))}
# docs/architecture.md's floors, top to bottom: a module imports modules of its floor or below
FLOORS = [
    ("oarl", "oarl.cli", "oarl.commands"),
    ("oarl.jobs", "oarl.runs"),
    ("oarl.trainer", "oarl.trl_fixes"),
    ("oarl.evaluate", "oarl.report"),
    ("oarl.generation",),
    ("oarl.models", "oarl.data", "oarl.rewards"),
    (
        "oarl.credit",
        "oarl.answer",
        "oarl.expression",
        "oarl.notation",
        "oarl.devices",
        "oarl.checks",
        "oarl.errors",
        "oarl.mathverify_worker",
    ),
]


def floor(name: str) -> int:
    """0 for the top floor; the most specific prefix wins (``oarl`` itself is the package face, on top)."""
    matches = [
        (len(prefix), -i)
        for i, prefixes in enumerate(FLOORS)
        for prefix in prefixes
        if name == prefix or name.startswith(prefix + ".")
    ]
    assert matches, f"{name} is on no floor of tests/test_layout.py (and docs/architecture.md): place it"
    return -max(matches)[1]


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """oarl's modules that ``name`` imports anywhere in its file (functions too), except under TYPE_CHECKING."""
    tree = ast.parse(MODULES[name].read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    package = name if is_package(name) else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base not in MODULES:
                continue
            for alias in node.names:  # `from oarl.data import arithmetic` imports the module oarl.data.arithmetic
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return out - {name}


def test_the_import_graph_is_read():
    graph = {name: imports_of(name) for name in MODULES}
    assert "oarl.trainer" in graph["oarl.commands.train"] and "oarl.credit.core" in graph["oarl.trainer"]
    assert "oarl.credit.config" in graph["oarl.credit.bilevel"]  # a relative import


def test_no_import_cycle():
    graph = {name: imports_of(name) for name in MODULES}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])


def test_imports_run_down_the_floors():
    upward = [
        f"{name} (floor {floor(name)}) -> {other} (floor {floor(other)})"
        for name in MODULES
        for other in sorted(imports_of(name))
        if floor(other) < floor(name)
    ]
    assert not upward, "imports up the floors: " + "; ".join(upward)


def test_an_import_inside_a_function_says_why():
    """Imports sit at the top of the module, except the lazy ones docs/architecture.md allows, each with a
    `# lazy: <reason>` comment on its line or on the comment lines right above it."""
    unexplained = []
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        guarded = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in guarded:
                    above, i = [], node.lineno - 2
                    while i >= 0 and (
                        not lines[i].strip()
                        or lines[i].strip().startswith(("#", "from ", "import ", ")"))
                        or lines[i].rstrip().endswith((",", "("))
                    ):  # the function's imports above
                        above.append(lines[i])
                        i -= 1
                    own = lines[node.lineno - 1 : node.end_lineno]
                    if not any("lazy:" in line for line in [*own, *above]):
                        unexplained.append(f"{path.relative_to(SRC)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "imports inside functions without a `# lazy:` reason:\n" + "\n".join(unexplained)


def test_the_credit_core_imports_no_trainer_library():
    """oarl.credit is framework-free: torch, not TRL or transformers (it takes any model with their forward API)."""
    found = []
    for name in (n for n in MODULES if n.startswith("oarl.credit")):
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            )
            found += [f"{name}: {m}" for m in modules if m.split(".")[0] in ("trl", "transformers", "accelerate")]
    assert not found, found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines: split it by what its parts do"


@pytest.mark.parametrize("command", [None, "eval"])
def test_the_command_starts_without_torch(command):
    """Importing the command and building its parser (what `oarl --help` and `oarl eval --help` do) loads no torch,
    transformers or TRL: start-up stays quick, and oarl.cli.main sets OMP_WAIT_POLICY before torch loads."""
    code = (
        f"import sys; from oarl.cli import build_parser; build_parser({command!r}); "
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_compare_help_starts_without_torch():
    code = (
        "import contextlib, io, sys; from oarl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['compare', '--help'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
