"""The library's shape: packages and modules import each other one way only (the order of the
README's layout), no module outgrows one idea, and the README's layout names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "seq2seq"
MAX_LINES = 420  # "under ~400": a little room, no more


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in LIBRARY.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """The seq2seq modules ``path`` imports anywhere (lazily inside functions, or only for type
    checking, too: a cycle of either kind is a knot for the reader)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "seq2seq":
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "seq2seq")
    return found


def readme_layout() -> list[str]:
    """The modules and packages of the README's layout, in its order, as dotted names."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    names, package = [], None
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+?)(/|\.py)\s", line + " ")
        if not match or line.startswith("seq2seq/"):
            continue
        depth, name, kind = len(match.group(1)), match.group(2), match.group(3)
        if depth == 2:
            package = name if kind == "/" else None
            names.append(f"seq2seq.{name}")
        elif depth == 4 and package:
            names.append(f"seq2seq.{package}.{name}")
    return names


def unit(module: str, other: str) -> tuple[str, str]:
    """The two names to compare: modules of one package, else their top-level entries."""
    a, b = module.split("."), other.split(".")
    if len(a) == 3 and len(b) == 3 and a[1] == b[1]:
        return module, other
    return ".".join(a[:2]), ".".join(b[:2])


def test_the_readme_layout_names_every_module_and_no_other():
    listed = set(readme_layout())
    expected = {name for name in MODULES if name != "seq2seq"}
    assert listed == expected, f"missing: {sorted(expected - listed)}; gone: {sorted(listed - expected)}"


def test_imports_point_up_the_layout_only():
    """A module imports only what the README lists above it (its package's __init__, which
    gathers the package's names, and the root package are exempt); so no import goes in a circle."""
    order = {name: i for i, name in enumerate(readme_layout())}
    backwards = []
    for module, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        for other in imported_modules(path):
            if other == "seq2seq" or other == module:
                continue
            a, b = unit(module, other)
            if a != b and order[b] > order[a]:
                backwards.append(f"{module} -> {other}")
    assert not backwards, "imports against the layout's order: " + ", ".join(sorted(backwards))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_outgrows_one_idea(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines"
