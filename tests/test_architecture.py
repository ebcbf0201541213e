"""The layering of the package, read from its source: dependencies point one way.

Bottom to top: ``errors`` -> ``settings`` / ``runtime`` / ``threats`` / ``files`` / ``progress`` -> ``data``, ``models``
-> ``training``, ``attacks`` -> ``certify``, ``stochastic``, ``budgets`` -> ``eval`` -> ``study`` -> ``cli``.
Every import counts (module level or inside a function, absolute or relative, ``from . import x``);
:data:`ALLOWED` says which parts each part may import, and a failure names the file, the line and
the edge. Only ``robustsuite/cli/`` parses arguments, prints and chooses exit codes.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "robustsuite"

BASE = {"errors", "settings", "runtime", "threats", "files", "progress"}
CORE = BASE | {"data", "models"}
METHODS = CORE | {"training", "attacks"}

#: part -> the parts it may import (besides itself). A part is a top-level module or subpackage of
#: robustsuite; ``__init__`` is the package's public API (top layer: it imports the parts that register
#: trainers, noise layers and model builders, so every registry is filled before use), ``__main__`` the
#: ``python -m robustsuite`` entry point of the command line.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "settings": {"errors"},             # the strict base model, YAML, --set, error formatting, name rules
    "runtime": {"errors"},              # devices, seeds, RNG states, the process's rank
    "threats": {"errors"},              # the perturbation sets
    "files": {"errors", "runtime", "settings"},  # atomic writes and locks (rank 0 writes; name rules)
    "progress": set(),                  # progress bars, summary lines, the run's log file
    "data": BASE,
    "models": BASE,
    "training": CORE,                   # the shared loop, checkpoints, run config, trainer registry
    "attacks": CORE,                    # attacks never import training or the parts above
    "certify": METHODS,
    "stochastic": METHODS,
    "budgets": METHODS | {"certify"},   # budgets train and certify with CROWN-IBP
    "eval": METHODS | {"certify", "stochastic", "budgets"},
    "study": METHODS | {"certify", "stochastic", "budgets", "eval"},
    "cli": METHODS | {"certify", "stochastic", "budgets", "eval", "study"},
    "__init__": METHODS | {"certify", "stochastic", "budgets", "eval", "study"},
    "__main__": {"cli"},
}

#: where command-line code may live: argparse, sys.exit / SystemExit, print
COMMAND_LINE = ("cli", "__main__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> list[tuple[Path, str, ast.Module]]:
    return [(p, _module_name(p), ast.parse(p.read_text(encoding="utf-8"), str(p)))
            for p in sorted(PKG.rglob("*.py"))]


def _is_module(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path, module: str, tree: ast.Module):
    """(line, imported robustsuite module) for every import in ``tree``, relative ones resolved;
    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                yield node.lineno, full if _is_module(full) else target


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "robustsuite":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _edges() -> list[tuple[str, str, str]]:
    """(importing part, imported part, 'file:line module -> module') for every import across parts."""
    out = []
    for path, module, tree in _sources():
        src = _part(module)
        for line, target in sorted(set(_imports(path, module, tree))):
            dst = _part(target)
            if dst is not None and dst != src:
                out.append((src, dst, f"{path.relative_to(ROOT)}:{line} {module} -> {target}"))
    return out


def test_every_part_is_in_the_layering_table():
    parts = {_part(m) for _, m, _ in _sources()}
    assert parts <= set(ALLOWED), f"parts missing from ALLOWED (add them to a layer): {sorted(parts - set(ALLOWED))}"


def test_imports_point_down_the_layers():
    bad = [f"{where}   ({src} may not import {dst})" for src, dst, where in _edges() if dst not in ALLOWED.get(src, set())]
    assert not bad, "forbidden imports:\n  " + "\n  ".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_between_parts():
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for src, dst, w in _edges():
        if src not in ("__init__", "__main__"):  # the package API imports the parts (see ALLOWED)
            graph.setdefault(src, set()).add(dst)
            where.setdefault((src, dst), w)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle " + " -> ".join(cycle) + ":\n  " + "\n  ".join(
        where[(a, b)] for a, b in zip(cycle, cycle[1:]))


def test_the_command_line_lives_in_cli_only():
    """No argparse, sys.exit / SystemExit / exit(), or print() outside robustsuite/cli/ (and __main__)."""
    bad = []
    for path, module, tree in _sources():
        if _part(module) in COMMAND_LINE:
            continue
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
                bad.append(f"{rel}:{node.lineno} imports argparse")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
                bad.append(f"{rel}:{node.lineno} imports from argparse")
            elif isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
                if (owner == "sys" and name == "exit") or (owner is None and name in ("exit", "quit", "print")):
                    bad.append(f"{rel}:{node.lineno} calls {'sys.' if owner else ''}{name}()")
            elif isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id == "SystemExit":
                    bad.append(f"{rel}:{node.lineno} raises SystemExit")
    assert not bad, "command-line code outside robustsuite/cli/:\n  " + "\n  ".join(bad)


_MODULE_STRING = re.compile(r"^robustsuite(\.\w+)+(:\w+)?$")


def test_no_part_is_imported_by_a_name_in_a_string():
    """``importlib.import_module("robustsuite.x")`` or ``"robustsuite.x:Class"`` tables would dodge the
    rules above; registries are filled by the classes themselves instead."""
    bad = []
    for path, module, tree in _sources():
        rel = path.relative_to(ROOT)
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and _MODULE_STRING.match(node.value):
                bad.append(f"{rel}:{node.lineno} names the module {node.value!r} in a string")
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name in ("import_module", "__import__") and node.args:
                    arg = node.args[0]
                    if not isinstance(arg, ast.Constant) and _part(module) != "certify" \
                            or isinstance(arg, ast.Constant) and str(arg.value).startswith(("robustsuite", ".")):
                        bad.append(f"{rel}:{node.lineno} imports a module by name ({ast.unparse(arg)})")
    assert not bad, "\n  ".join(["modules imported by name:"] + bad)


# --------------------------------------------------------------------------- the test checks itself
@pytest.mark.parametrize("source, edge", [
    ("from ..stochastic.builders import build_from_spec", ("training", "stochastic")),  # a lazy import too
    ("from .. import eval", ("training", "eval")),
    ("import robustsuite.cli", ("training", "cli")),
])
def test_a_forbidden_import_is_found_with_its_line(tmp_path, monkeypatch, source, edge):
    """The walk sees function-level, ``from .. import`` and absolute imports (so the rules can fail)."""
    path = PKG / "training" / "checkpoint.py"
    tree = ast.parse(f"def f():\n    {source}\n")
    found = [(_part("robustsuite.training.checkpoint"), _part(t), line)
             for line, t in _imports(path, "robustsuite.training.checkpoint", tree)]
    assert (edge[0], edge[1], 2) in found
    assert edge[1] not in ALLOWED[edge[0]]


def test_a_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
