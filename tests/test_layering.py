"""Imports run one way through the layers (docs/architecture.md).

Every ``import`` of every module is read with :mod:`ast`, function-level imports included. A module
may import from its own layer or a lower one; packages must not import each other in a cycle; and
function-local imports of pnnunet or Paddle are allowed only where listed below, with the reason.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pnnunet"

# The layer order, lowest first, written once. A top-level module or package of pnnunet is a "unit";
# "pnnunet" itself (``import pnnunet`` for ``__version__``) belongs to the foundation.
LAYERS: list[tuple[str, ...]] = [
    ("pnnunet", "errors", "paths", "fileio", "heap", "parallel", "defaults", "safe_pickle", "locks",
     "pretrained"),  # foundation (pretrained: where the bundled model folders are)
    ("imageio",),
    ("dataset",),           # dataset.json, labels, cases, integrity, conversion, folders of label maps
    ("plans",),             # the typed plans, read by everyone above
    ("preprocessing",),
    ("planning",),          # uses preprocessing's shape and normalization rules
    ("runtime",),           # what training and inference share: device, networks, checkpoints, oneDNN
    ("metrics",),
    ("postprocessing",),
    ("inference",),         # sliding window, export, predictor, ensembles, the prediction pipeline
    ("training",),          # its final validation calls inference
    ("evaluation",),        # model selection (find_best_config), reports
    ("cli", "app"),         # the front ends: commands and the web platform (app may use cli's plumbing)
]

# Function-local imports that are allowed (module, imported module) -> why.
LOCAL_IMPORTS_ALLOWED = {
    ("pnnunet.runtime.device", "paddle"): "import_paddle(): the one place that imports Paddle on demand and "
                                          "turns a missing install into the install hint",
    ("pnnunet.cli.train", "pnnunet.training.trainer"): "deferred until import_paddle() has checked the install: "
                                                       "the trainer imports Paddle at load time",
    ("pnnunet.cli.predict", "pnnunet.inference"): "deferred until import_paddle() has checked the install: the "
                                                  "pipeline imports Paddle at load time",
    ("pnnunet.cli.selfcheck", "pnnunet.evaluation.selfcheck"): "deferred until import_paddle() has checked the "
                                                               "install: the self-check trains with Paddle",
    ("pnnunet.app.worker", "pnnunet.inference"): "deferred until import_paddle() has checked the install: the "
                                                 "pipeline imports Paddle at load time",
    ("pnnunet.app.main", "pnnunet.app.server"): "deferred so that a missing fastapi/uvicorn (the app extra) becomes "
                                                "the install hint",
}


def layer_of(unit: str, layers=LAYERS) -> int:
    for i, units in enumerate(layers):
        if unit in units:
            return i
    raise AssertionError(f"pnnunet.{unit} is in no layer: add it to LAYERS in tests/test_layering.py "
                         "and docs/architecture.md")


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path):
    """(module, imported module, line, function-local?) for every import under ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        mod = _module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        local = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                names = [base]
            else:
                continue
            out.extend((mod, name, node.lineno, id(node) in local) for name in names)
    return out


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pnnunet":
        return None
    return parts[1] if len(parts) > 1 else "pnnunet"


def upward_imports(root: Path, layers=LAYERS) -> list[str]:
    bad = []
    for mod, name, line, _ in imports_of(root):
        src, dst = unit_of(mod), unit_of(name)
        if dst is None or src == dst:
            continue
        if layer_of(dst, layers) > layer_of(src, layers):
            bad.append(f"{mod}:{line} imports {name} (layer {dst} is above {src})")
    return bad


def package_cycles(root: Path) -> list[list[str]]:
    edges = defaultdict(set)
    for mod, name, _, _ in imports_of(root):
        src, dst = unit_of(mod), unit_of(name)
        if dst is not None and src != dst and "pnnunet" not in (src, dst):
            edges[src].add(dst)
    cycles, seen = [], set()

    def reach(start):  # every unit reachable from start
        stack, found = [start], set()
        while stack:
            for w in edges.get(stack.pop(), ()):
                if w not in found:
                    found.add(w)
                    stack.append(w)
        return found

    for u in sorted(edges):
        group = sorted(w for w in reach(u) if u in reach(w)) if u in reach(u) else []
        if group and tuple(group) not in seen:
            seen.add(tuple(group))
            cycles.append(group)
    return cycles


def test_no_lower_layer_imports_a_higher_one():
    assert upward_imports(PACKAGE) == []


def test_no_two_packages_import_each_other():
    assert package_cycles(PACKAGE) == []


def test_every_unit_has_a_layer():
    units = {unit_of(_module_name(p, PACKAGE)) for p in PACKAGE.rglob("*.py")}
    for unit in units:
        layer_of(unit)


def test_function_local_imports_only_where_listed():
    found = {(mod, name) for mod, name, _, local in imports_of(PACKAGE)
             if local and (name.startswith("pnnunet") or name.split(".")[0] == "paddle")}
    assert found == set(LOCAL_IMPORTS_ALLOWED), (
        "a function-local import of pnnunet or Paddle hides the import graph; import at module level, or, "
        "where it defers Paddle, add it to LOCAL_IMPORTS_ALLOWED with the reason")


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("where", ["module", "function"])
def test_checker_finds_a_planted_upward_import(tmp_path, where):
    """The checks above can fail: a package where preprocessing imports training is caught."""
    root = tmp_path / "pnnunet"
    _write(root, "__init__.py", "")
    _write(root, "training/__init__.py", "")
    _write(root, "training/trainer.py", "from pnnunet.preprocessing.storage import load\n")
    _write(root, "preprocessing/__init__.py", "")
    body = "from pnnunet.training.trainer import Trainer\n"
    if where == "function":
        body = "def f():\n    " + body
    _write(root, "preprocessing/storage.py", body)
    assert upward_imports(root) == [f"pnnunet.preprocessing.storage:{1 if where == 'module' else 2} imports "
                                    "pnnunet.training.trainer (layer training is above preprocessing)"]
    assert package_cycles(root) == [["preprocessing", "training"]]


def test_checker_resolves_relative_imports(tmp_path):
    root = tmp_path / "pnnunet"
    _write(root, "__init__.py", "")
    _write(root, "plans.py", "")
    _write(root, "dataset/__init__.py", "from ..plans import x\n")
    _write(root, "dataset/cases.py", "from . import labels\nfrom ..inference import predictor\n")
    assert upward_imports(root) == [
        "pnnunet.dataset:1 imports pnnunet.plans (layer plans is above dataset)",
        "pnnunet.dataset.cases:2 imports pnnunet.inference (layer inference is above dataset)"]
