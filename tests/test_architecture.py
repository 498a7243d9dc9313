"""The shape of the code (README, *Layout*): which package may import which, no import cycles
between files, files of a readable length, and an HTTP layer that loads no model libraries."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ragserve", "indexer", "retriever", "reader", "service")
# package -> the packages it may import (besides itself)
ALLOWED = {
    "ragserve": set(),
    "retriever": {"ragserve"},
    "reader": {"ragserve"},
    "indexer": {"retriever", "ragserve"},
    "service": {"indexer", "reader", "retriever", "ragserve"},
}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules a module imports, anywhere in it (TYPE_CHECKING blocks and functions too)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from a import b` names module a.b when there is one, else something defined in a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module: its nearest module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def test_packages_import_only_downwards() -> None:
    wrong = [
        f"{source} imports {target}"
        for source, targets in graph().items()
        for target in targets
        if (a := source.split(".")[0]) != (b := target.split(".")[0]) and b not in ALLOWED[a]
    ]
    assert not wrong, "forbidden package arrows:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_between_files() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_arrows_and_cycles(tmp_path: Path) -> None:
    # the parser above, on a module that imports in every way it understands
    source = tmp_path / "m.py"
    source.write_text(
        "import retriever.version\nfrom reader import builtin\nfrom ragserve.types import Passage\n"
        "if TYPE_CHECKING:\n    from service.application.engine import QAEngine\n"
        "def f():\n    from indexer.build import build_artifact\n",
        encoding="utf-8",
    )
    known = modules()
    assert imports(source, "reader.m", known) == {
        "retriever.version",
        "reader.builtin",
        "ragserve.types",
        "service.application.engine",
        "indexer.build",
    }


def test_files_stay_short() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_http_layer_and_the_core_load_no_model_libraries() -> None:
    http = [name for name in modules() if name.startswith(("service.http", "ragserve"))]
    code = (
        "import sys, importlib\n"
        f"for name in {http!r}: importlib.import_module(name)\n"
        "from service.http.app import create_app\n"
        "from service.settings import Settings\n"
        "create_app(Settings())\n"
        "print(sorted(m for m in ('torch', 'faiss', 'scipy', 'transformers', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
