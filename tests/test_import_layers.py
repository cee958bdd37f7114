"""Imports run one way: no circle among the package's modules, and no module imports a higher tier.

Every import statement counts, at module level or inside a function (``import a.b``, ``from a.b
import c``, relative ones resolved); ``from a.b import c`` where ``a.b.c`` is a module is an edge to
that module. The tiers, bottom to top, are :data:`TIERS`; a module may import its own tier or below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_blip

PACKAGE = "lightning_blip"

TIERS: tuple[tuple[str, ...], ...] = (
    ("layers", "losses", "metrics", "atomic"),
    ("weights",),
    ("models.shared",),
    ("models", "models.blip", "models.blip2"),
    ("convert", "data", "tasks", "callbacks", "capfilt", "optim", "checks", "resume"),
    (
        "",
        "__main__",
        "cli",
        "cli_commands",
        "cli_consolidate",
        "cli_errors",
        "cli_lightning",
        "cli_overrides",
        "cli_pretrained",
        "cli_quiet",
        "demos",
    ),
)
"""Module prefixes (below ``lightning_blip.``) per tier, bottom to top; the longest prefix decides."""

APART: tuple[tuple[str, str], ...] = (("models.blip", "models.blip2"),)
"""Sibling folders of one tier that must not import each other (what they share is below them)."""


def module_files(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package at ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` (at ``path``) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules it imports}`` within the package at ``root``."""
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def _prefix(module: str) -> str:
    return module.partition(".")[2]


def _within(module: str, prefix: str) -> bool:
    inner = _prefix(module)
    return (
        prefix == "" and inner == "" or prefix != "" and (inner == prefix or inner.startswith(prefix + "."))
    )


def tier_of(module: str) -> int | None:
    """The index in :data:`TIERS` of the longest prefix that holds ``module``; None if none does."""
    best: tuple[int, int] | None = None
    for tier, prefixes in enumerate(TIERS):
        for prefix in prefixes:
            if _within(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), tier)
    return None if best is None else best[1]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Modules in no tier, imports of a higher tier, and imports between folders kept apart."""
    problems = [f"{m} is in no tier of TIERS" for m in sorted(graph) if tier_of(m) is None]
    for module in sorted(graph):
        for target in sorted(graph[module]):
            low, high = tier_of(module), tier_of(target)
            if low is not None and high is not None and high > low:
                problems.append(f"{module} (tier {low}) imports {target} (tier {high})")
            for a, b in APART:
                for this, other in ((a, b), (b, a)):
                    if _within(module, this) and _within(target, other):
                        problems.append(f"{module} imports {target}: {this} and {other} are kept apart")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """``(members, circle)`` per strongly connected group of modules (Tarjan): its modules, sorted,
    and one circle through them, ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            groups.append([node, *group])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(sorted(group), _circle(graph, set(group))) for group in groups if len(group) > 1]


def _circle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A path ``[a, ..., a]`` through ``group`` (breadth-first from its first member back to it)."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & group):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError("a strongly connected group has a circle")


def test_no_import_circle():
    found = cycles(import_graph(Path(lightning_blip.__file__).parent))
    assert not found, "import circles:\n" + "\n".join(
        f"{len(members)} modules, e.g. {' -> '.join(circle)}: {members}" for members, circle in found
    )


def test_imports_run_downward():
    problems = layer_violations(import_graph(Path(lightning_blip.__file__).parent))
    assert not problems, "\n".join(problems)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / PACKAGE


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A package with a circle through a function-level relative import, an upward import and an
    import between the two families."""
    return _write(
        tmp_path,
        {
            f"{PACKAGE}/__init__.py": "",
            f"{PACKAGE}/losses/__init__.py": "",
            f"{PACKAGE}/losses/itc.py": "from lightning_blip.models.shared import vision\n",
            f"{PACKAGE}/models/__init__.py": "",
            f"{PACKAGE}/models/shared/__init__.py": "",
            f"{PACKAGE}/models/shared/vision.py": "def f():\n    from ..blip import model\n",
            f"{PACKAGE}/models/blip/__init__.py": "",
            f"{PACKAGE}/models/blip/model.py": "import lightning_blip.models.shared.vision\n",
            f"{PACKAGE}/models/blip2/__init__.py": "",
            f"{PACKAGE}/models/blip2/model.py": "from lightning_blip.models.blip import model\n",
            f"{PACKAGE}/stray.py": "",
        },
    )


def test_the_checks_find_a_circle_an_upward_import_and_an_unplaced_module(toy):
    graph = import_graph(toy)
    assert graph["lightning_blip.models.shared.vision"] == {"lightning_blip.models.blip.model"}
    assert graph["lightning_blip.models.blip2.model"] == {"lightning_blip.models.blip.model"}
    circle = ["lightning_blip.models.blip.model", "lightning_blip.models.shared.vision"]
    assert cycles(graph) == [(circle, [*circle, circle[0]])]
    assert layer_violations(graph) == [
        "lightning_blip.stray is in no tier of TIERS",
        "lightning_blip.losses.itc (tier 0) imports lightning_blip.models.shared.vision (tier 2)",
        (
            "lightning_blip.models.blip2.model imports lightning_blip.models.blip.model: "
            "models.blip2 and models.blip are kept apart"
        ),
        "lightning_blip.models.shared.vision (tier 2) imports lightning_blip.models.blip.model (tier 3)",
    ]
