"""Package layering: each layer imports only itself and the layers below it (helpers < kernel < runtime < lang
< server < viz < magics < bench), counting every import, also inside functions and TYPE_CHECKING blocks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sglbench"

# Helpers that import no other part of sglbench sit below the kernel: `ids` (request ids), `sequences`
# (common_prefix_len) and `default_model` (the embedded checkpoint, its corpus and trainer).
RANKS = {"ids": 0, "lazy": 0, "sequences": 0, "default_model": 0, "kernel": 1, "runtime": 2, "lang": 3, "server": 4,
         "viz": 5, "magics": 6, "bench": 7}
FACADE_RANK = RANKS["lang"]  # `import sglbench`: its lazy attributes are the runtime's and the language's API

# Importers outside the layers. `sglbench/__init__.py` (the top package) names modules in strings and
# imports the magics inside `load_ipython_extension`; `sglbench/__main__.py`, the CLI, dispatches to the
# server (`serve`) and the benchmarks (`bench`).
UNLAYERED = {"__init__", "__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    """The top-level part of sglbench a dotted module name belongs to (None: the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def rank(module: str) -> int:
    part = layer(module)
    return FACADE_RANK if part is None else RANKS[part]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every sglbench module that `path` imports anywhere in its code."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from sglbench import viz` imports the subpackage; `from sglbench import gen` the facade.
            found += [(node.lineno, f"{base}.{a.name}" if base == "sglbench" and a.name in RANKS else base)
                      for a in node.names]
    return [(line, name) for line, name in found if name == "sglbench" or name.startswith("sglbench.")]


def layered_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem not in UNLAYERED)


def test_every_part_of_the_package_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert tops - UNLAYERED <= set(RANKS)  # a new top-level module or package needs a rank


@pytest.mark.parametrize("path", layered_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_its_own(path):
    name = module_name(path)
    upward = [f"line {line}: {target}" for line, target in imported_modules(path)
              if rank(target) > rank(name)]
    assert not upward, f"{name} ({layer(name)}) imports from a layer above it: {upward}"


def test_only_the_benchmarks_and_the_cli_import_the_benchmarks():
    importers = {module_name(p) for p in PACKAGE.rglob("*.py")
                 if any(layer(t) == "bench" for _, t in imported_modules(p))}
    assert {m for m in importers if layer(m) != "bench"} <= {"sglbench.__main__"}


def test_the_viz_layer_and_its_workbench_load_without_torch():
    heavy = ("torch", "sglbench.runtime.runtime", "sglbench.bench")
    code = ("import sys, sglbench.viz, sglbench.viz.widgets, sglbench.viz.report, sglbench.viz.workbench; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
