"""Lower layers never import higher ones (DESIGN.md's layer table, HOUSE.md's order)."""

import ast
import pathlib

import pytest
from helpers import parse_source

ROOT = pathlib.Path(__file__).resolve().parent.parent / "mmsb_jax"

# lowest first; a module may import its own package and any package earlier in this list
ORDER = ["_errors", "_compat", "_checks", "semirings", "pages", "deltas", "log", "graph", "adaptive", "telemetry",
         "shell", "_tools", "cli"]


def _layer(module: str) -> str:
    """The layer (top-level name inside mmsb_jax) of a dotted module path like 'shell._state'."""
    return module.split(".")[0]


def _imports(path: pathlib.Path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    pkg = parts[:-1]  # the package a relative import starts from
    for node in ast.walk(parse_source(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if node.module else [base + [a.name] for a in node.names]
                for t in names:
                    if t:
                        yield ".".join(t), node.lineno
            elif node.module and node.module.startswith("mmsb_jax."):
                yield node.module[len("mmsb_jax."):], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mmsb_jax."):
                    yield a.name[len("mmsb_jax."):], node.lineno


# every module of the package; top-level files are layers themselves (``__init__`` and
# ``__main__`` sit above everything and are not checked)
MODULES = sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT or p.stem in ORDER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_imports(path):
    own = _layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
    if own not in ORDER:
        pytest.fail(f"{path} is in no layer of ORDER; add its package to the table")
    for target, line in _imports(path):
        layer = _layer(target)
        if layer not in ORDER:
            continue  # e.g. a submodule name inside its own package
        assert ORDER.index(layer) <= ORDER.index(own), (
            f"{path.relative_to(ROOT)}:{line} imports {target} (layer {layer!r}), above its own layer {own!r}"
        )
