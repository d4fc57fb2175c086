"""The package's structure: layers that only import downwards, no import cycle (function-level
imports included), every ``docs/theory.md §N`` citation resolves, and the test tree mirrors the
source tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "fimvar"
TESTS = Path(__file__).resolve().parent
THEORY = Path(__file__).resolve().parents[1] / "docs" / "theory.md"

#: the layers, lowest first; a module may import its own layer and the layers below it
LAYERS = ["errors", "families", "engine", "estimators", "results", "analysis", "recipes", "report",
          "data", "models", "language", "app", "reproduce"]


def modules() -> dict[str, Path]:
    out = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """Every fimvar module ``path`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fimvar"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("fimvar"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_layers_only_import_downwards():
    known = modules()
    wrong = []
    for name, path in known.items():
        own = layer(name)
        if own is None or own == "__main__":
            continue
        for target in imports(path, name):
            other = layer(target)
            if target not in known or other is None:
                continue
            if LAYERS.index(other) > LAYERS.index(own):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    known = modules()
    graph = {name: {t for t in imports(path, name) if t in known and t != name}
             for name, path in known.items() if name != "fimvar"}
    for name in graph:  # a package's __init__ is not an edge back into the package itself
        graph[name] = {t for t in graph[name] if t != "fimvar"}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if target.startswith(node + "."):  # a package importing its own submodules
                continue
            if state.get(target) == 1 and not node.startswith(target + "."):
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_every_theory_citation_resolves():
    sections = set(re.findall(r"^#+ §([0-9.]+)", THEORY.read_text(), flags=re.M))
    cited = {}
    documents = [THEORY.parent / "usage.md", THEORY.parents[1] / "README.md"]
    for path in list(SOURCE.rglob("*.py")) + documents:
        text = path.read_text()
        for match in re.finditer(r"docs/theory\.md (§[0-9.]+(?:[–,] ?§?[0-9.]+)*)", text):
            for number in re.findall(r"[0-9]+(?:\.[0-9]+)?", match.group(1)):
                cited.setdefault(number, path.name)
    missing = {n: f for n, f in cited.items() if n not in sections}
    assert cited and not missing, f"cited but not in docs/theory.md: {missing}"


def test_the_test_tree_mirrors_the_source_tree():
    packages = {p.name for p in SOURCE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    tested = {p.name for p in TESTS.iterdir() if p.is_dir() and list(p.rglob("test_*.py"))}
    assert tested <= packages, f"test folders without a source package: {tested - packages}"
    assert packages - tested <= set(), f"source packages without tests: {packages - tested}"
