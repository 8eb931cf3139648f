"""The package's layers: a module imports only from its own layer or the ones below (docs/design.md).

Every import in the package is read from the source (module level and inside functions alike), resolved to
the module it names, and checked against the layer table below. A new module must be placed in a layer.
"""

import ast
from pathlib import Path

import pytest

import apt_research

PACKAGE = Path(apt_research.__file__).resolve().parent

LAYERS = [
    ("foundation", ["apt_research.errors", "apt_research.contract", "apt_research._io", "apt_research._validation",
                    "apt_research.provenance", "apt_research.plain"]),
    ("backends", ["apt_research.backends"]),
    ("core", ["apt_research.entropy", "apt_research.selection", "apt_research.scorers", "apt_research.tokenizer",
              "apt_research.datasets",
              "apt_research.calibration", "apt_research.analysis", "apt_research"]),
    ("models", ["apt_research.models", "apt_research.testing"]),
    ("presentation", ["apt_research.presentation"]),
    ("training", ["apt_research.training", "apt_research.finetune"]),
    ("sweep", ["apt_research.sweep"]),
    ("cli", ["apt_research.cli"]),
]
"""Lowest first. A module belongs to the layer with the longest prefix matching its name."""


def layer_of(module: str) -> int:
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to tests/crosscutting/test_layers.py's LAYERS"
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, resolved (``from . import x`` names module ``x`` when it is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "apt_research"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "apt_research":
                continue
            found.add(target)
            for alias in node.names:  # `from .. import figures`: the module figures
                candidate = f"{target}.{alias.name}"
                folder = PACKAGE.parent / Path(*candidate.split("."))
                if folder.with_suffix(".py").exists() or (folder / "__init__.py").exists():
                    found.add(candidate)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_no_module_imports_from_a_layer_above_its_own(path):
    name = module_name(path)
    own = layer_of(name)
    above = sorted(target for target in package_imports(path) if layer_of(target) > own)
    assert not above, (f"{name} (layer {LAYERS[own][0]}) imports {above} from a layer above it "
                       f"({', '.join(LAYERS[layer_of(t)][0] for t in above)})")


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself: a foundation module importing the tokenizer would be caught."""
    fake = PACKAGE / "contract.py"
    tree_imports = package_imports(fake)
    assert all(layer_of(target) == 0 for target in tree_imports)
    assert layer_of("apt_research.tokenizer") > layer_of("apt_research.contract")
    assert layer_of("apt_research.backends.numba_backend.kernel_cache") == 1
    assert layer_of("apt_research") == 2  # the package's front door is core: it imports no layer above


def test_the_public_api_is_unchanged():
    import apt_research.models as models

    assert {"PatchTokenizer", "patch_groups", "compute_patch_entropy_batched", "grayscale", "patch_histograms",
            "SCORERS", "compute_importance_maps", "register_scorer", "select_patches_by_threshold"} <= \
        set(apt_research.__all__)
    assert {"AptViT", "from_timm", "MapsTransform", "PackCollate", "load_model"} <= set(models.__all__)


def test_no_import_circles():
    """No two modules import each other, directly or around a circle (imports inside functions included); a
    package's ``__init__`` importing its own modules is not a circle."""
    graph = {}
    for path in MODULES:
        name = module_name(path)
        graph[name] = {target for target in package_imports(path) if target != name
                       and not (path.name != "__init__.py" and name.startswith(target + "."))}
    state, circles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                circles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(circle) for circle in circles)
