"""The package's architecture, checked: each subpackage imports only the layers below it, the CPU fast path is
switched on by training alone, only the CLI reaches the benchmarks, and no module imports a cycle at load time."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "peftkit"

# Bottom to top; a subpackage may import its own modules and those of strictly lower layers.
LAYERS = [
    {"errors", "__init__"},
    {"fileio", "quiet"},
    {"models"},
    {"data"},
    {"methods"},
    {"recipe"},
    {"adapters"},
    {"inference", "cpu"},
    {"training"},
    {"serve", "tune", "bench"},
    {"cli"},
    {"__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """`peftkit.training.loop` → `training`; `peftkit.errors` → `errors`; `peftkit` → `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported peftkit module, imported at load time?, line) for every import of the file, type-only
    imports (`if TYPE_CHECKING:`) left out."""
    found = []

    def visit(node: ast.AST, at_load: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            load = at_load and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(
                    (a.name, load, child.lineno) for a in child.names if a.name.startswith("peftkit")
                )
            elif (
                isinstance(child, ast.ImportFrom)
                and not child.level
                and (child.module or "").startswith("peftkit")
            ):
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    path = SRC / full.replace(".", "/")
                    is_module = path.with_suffix(".py").exists() or path.is_dir()
                    found.append((full if is_module else str(child.module), load, child.lineno))
            visit(child, load)

    visit(ast.parse(path.read_text()), True)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_subpackage_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(LAYER), "add the new subpackage to LAYERS"


def test_subpackages_import_only_lower_layers():
    wrong = []
    for module, path in MODULES.items():
        here = _part(module)
        for target, _, line in _imports(path):
            there = _part(target)
            if there != here and LAYER[there] >= LAYER[here]:
                wrong.append(f"{path.relative_to(SRC)}:{line} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_only_training_switches_on_the_cpu_fast_path_and_only_the_cli_runs_benchmarks():
    for module, path in MODULES.items():
        here = _part(module)
        for target, _, line in _imports(path):
            if _part(target) == "cpu":
                assert here in ("cpu", "training"), f"{path.relative_to(SRC)}:{line} imports {target}"
            if _part(target) == "bench":
                assert here in ("bench", "cli"), f"{path.relative_to(SRC)}:{line} imports {target}"
    callers = [m for m, p in MODULES.items() if "cpu.enable(" in p.read_text() and _part(m) != "cpu"]
    assert callers == ["peftkit.training.recipe"]


def test_no_import_cycle_at_load_time():
    graph = {
        module: {t for t, at_load, _ in _imports(path) if at_load and t in MODULES and t != module}
        for module, path in MODULES.items()
    }
    done: set[str] = set()

    def walk(module: str, stack: list[str]) -> None:
        if module in stack:
            raise AssertionError("import cycle: " + " → ".join([*stack[stack.index(module) :], module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            walk(target, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])
