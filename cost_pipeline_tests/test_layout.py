"""The package layout's rules, read from the code's own imports: data and imports flow one way, and only Dagster
definitions import Dagster.

Every import of the package counts, a function's own imports included: a lazy import is still a dependency.
"""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "cost_pipeline"
FLOORS = {
    "storage": 1,
    "config": 1,
    "ingest": 2,
    "gemini": 3,
    "money": 4,
    "model_server": 5,
    "gemini_step": 5,
    "reports": 6,
    "defs": 7,
    "dagster_private": 7,
    "definitions": 8,
    "launch": 8,
    "cli": 9,
}
"""Each room's floor: a module may import its own room and lower floors only (docs/architecture.md draws it)."""
DAGSTER_FREE = {"storage", "config", "ingest", "gemini", "money", "model_server", "gemini_step", "reports"}
"""The domain packages: Dagster's definitions live in defs/ (the launch adapter and the CLI use Dagster too)."""


def imported_names(path: Path) -> set[str]:
    """Every module name a file imports, anywhere in its code, and `module.name` for each name it takes from one."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules() -> dict[str, set[str]]:
    """Each module of the package (a path under it) and the package's modules it imports, anywhere in its code."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        imported = {_module_path(target) for target in imported_names(path) if target.startswith("cost_pipeline.")}
        found[name] = {target for target in imported if target and target != name}
    return found


def importing(predicate) -> set[str]:
    """The package's modules that import a name `predicate` accepts."""
    return {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if any(predicate(name) for name in imported_names(path))
    }


def _module_path(dotted: str) -> str | None:
    """`cost_pipeline.money.pricing` (or a name in it) -> `money/pricing.py`; None when it is no module of ours."""
    parts = dotted.split(".")[1:]
    while parts:
        candidate = PACKAGE.joinpath(*parts)
        if candidate.with_suffix(".py").is_file():
            return "/".join(parts) + ".py"
        if (candidate / "__init__.py").is_file():
            return "/".join(parts) + "/__init__.py"
        parts.pop()
    return None


def room(module: str) -> str:
    return module.split("/")[0].removesuffix(".py")


def test_every_module_stands_in_a_room_with_a_floor():
    assert {room(module) for module in modules()} - {"__init__"} <= set(FLOORS)


def test_imports_never_run_up_a_floor_or_sideways_into_another_room():
    wrong = [
        f"{module} -> {target}"
        for module, targets in modules().items()
        for target in targets
        if room(target) != room(module)
        and room(module) != "__init__"
        and FLOORS.get(room(target), 0) >= FLOORS.get(room(module), 0)
    ]
    assert not wrong, "imports that run up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_itself_round_a_circle():
    graph = modules()
    state: dict[str, int] = defaultdict(int)  # 0 unseen, 1 on the path, 2 done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state[target] == 1:
                return path + [module, target]
            if state[target] == 0 and (found := visit(target, path + [module])):
                return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if state[module] == 0 and (circle := visit(module, [])):
            pytest.fail("import circle: " + " -> ".join(circle))


def test_only_the_adapter_imports_dagster_internals():
    assert importing(lambda name: name.startswith("dagster._")) == {"dagster_private.py"}


def test_only_dagster_definitions_import_dagster():
    dagster_users = importing(lambda name: name == "dagster" or name.startswith("dagster."))
    wrong = sorted(module for module in dagster_users if room(module) in DAGSTER_FREE)
    assert not wrong, f"Dagster imported outside defs/: {wrong}"


def test_no_function_takes_more_than_six_parameters_without_saying_why():
    """Past six, a function's docstring (or its class's, for `__init__`) says why the parameters belong together."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for owner in [tree, *(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef))]:
            for node in owner.body:
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                args = node.args
                named = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
                count = sum(arg is not None and arg.arg not in ("self", "cls") for arg in named)
                docstring = ast.get_docstring(node) or (
                    ast.get_docstring(owner) if isinstance(owner, ast.ClassDef) and node.name == "__init__" else ""
                )
                if count > 6 and "parameters" not in (docstring or "").lower():
                    unexplained.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({count})")
    assert not unexplained, unexplained
