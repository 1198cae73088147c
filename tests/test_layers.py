"""The shape of the package: imports point down the layers, and no import goes round in a circle.

Every `import` and `from ... import` in every module under preftune/ counts, at the top of a file
or inside a function (a lazy import is still a dependency; it only moves the circle to run time).
docs/architecture.md draws the same table; change both together.

A new package goes into LAYERS where it belongs. A method family (preftune/rl/, preftune/diffusion/)
sits on the loops' layer, except its pure parts: `preftune/<family>/methods/` and the pure primitive
or estimator modules it names on the methods layer. The longest matching module prefix decides a
module's layer, so naming `preftune.rl.methods` there moves just that subpackage down.
"""
from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "preftune"

# Highest first. A module may import from its own layer and from any layer below it.
LAYERS = (
    ("cli", ("preftune.cli", "preftune.cli_measure", "preftune.cli_rl", "preftune.cli_claims", "preftune.__main__")),
    # Whole jobs made of runs, and the pages that show them.
    ("jobs", ("preftune.pipeline", "preftune.bench", "preftune.claims", "preftune.report.html")),
    # Training loops: make data -> update on it -> evaluate.
    ("loops", ("preftune.train", "preftune.rl", "preftune.diffusion")),
    # Measuring, judging, generating; the plots, which take data and draw it.
    ("measuring", ("preftune.eval", "preftune.judges", "preftune.tasks", "preftune.sampling", "preftune.report")),
    # Loading and saving models, caches, typed recipes.
    ("models", ("preftune.models", "preftune.model_source", "preftune.reference_cache", "preftune.config",
                "preftune.config_values", "preftune.hub")),
    # Pure objectives, their exact checks, and registries of what the library offers.
    ("methods", ("preftune.methods", "preftune.tabular", "preftune.rl.methods", "preftune.diffusion.methods",
                 "preftune.analysis_tools",
                 "preftune.eval.search",  # beam search over any next-token function (r2q's exact check)
                 # RL's pure primitives and estimators (rl/__init__.py): advantages, exact soft-optimal
                 # values, MCTS trees, reasoning steps, the lot-sizing environment and its exact DP.
                 "preftune.rl.advantages", "preftune.rl.exact", "preftune.rl.tree", "preftune.rl.segment",
                 "preftune.rl.lot_sizing", "preftune.rl.lot_sizing_dp", "preftune.rl.lot_sizing_checks",
                 # Diffusion's pure parts (diffusion/__init__.py): the records methods see, the noise
                 # schedules, denoise_error / step_logprob, SmPO's inversion, DDO's tabular AR model.
                 "preftune.diffusion.records", "preftune.diffusion.schedules", "preftune.diffusion.primitives",
                 "preftune.diffusion.inversion", "preftune.diffusion.tabular_ar")),
    # Tensors in, tensors out; the package root holds only its version.
    ("tensors", ("preftune.logps", "preftune.fastpath", "preftune.data", "preftune.records", "preftune")),
)

# Imports that break the rules today, to be removed (issue 13); the test fails when one is fixed
# and still listed, so this list only shrinks.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_UPWARD: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` runs only when the file is the program (python -m ...): it is a
    command line of its own, on the cli layer, and what it imports is not the module's dependency."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and \
        isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__" and \
        any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)


def walk_module(tree: ast.AST):
    """Every node of the module, function bodies included, except a `__main__` block."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        pending.extend(child for child in ast.iter_child_nodes(node) if not is_main_block(child))


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its file (function bodies included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in walk_module(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule; `from mod import name` the module.
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target.startswith("preftune") and target != name:
            resolved.add(target)
    return resolved


def method_package_edges() -> set[tuple[str, str]]:
    """preftune.methods imports the family method packages it registers by name (registry.METHOD_PACKAGES)."""
    from preftune.methods import registry

    return {("preftune.methods", name) for name in registry.METHOD_PACKAGES}


@functools.lru_cache(maxsize=None)
def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {name: imports_of(name, path, known) for name, path in known.items()}
    for source, target in method_package_edges():
        if target in known:
            edges[source].add(target)
    return edges


def layer_of(module: str) -> tuple[int, str]:
    """(rank, prefix): rank 0 is the highest layer; the longest matching prefix decides."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (rank, prefix)
    return best


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def upward_imports(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(source, target) for source, targets in edges.items() for target in targets
            if layer_of(target)[0] < layer_of(source)[0]}


def describe(source: str, target: str) -> str:
    return f"{source} ({LAYERS[layer_of(source)[0]][0]}) imports {target} ({LAYERS[layer_of(target)[0]][0]})"


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m != "preftune" and layer_of(m)[1] == "preftune"]
    assert not unplaced, f"add these modules to LAYERS in {__file__} and to docs/architecture.md: {unplaced}"


def test_no_import_cycles():
    found = set(cycles(graph()))
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    assert not new, "import cycles inside preftune/ (a lazy import inside a function counts too): " + "; ".join(
        " <-> ".join(c) for c in new)
    fixed = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not fixed, f"these cycles are gone: remove them from KNOWN_CYCLES: {fixed}"


def test_imports_point_down_the_layers():
    found = upward_imports(graph())
    new = sorted(found - KNOWN_UPWARD)
    assert not new, "a lower layer imports a higher one (docs/architecture.md, 'Layers'):\n" + "\n".join(
        describe(*edge) for edge in new)
    fixed = sorted(KNOWN_UPWARD - found)
    assert not fixed, f"these upward imports are gone: remove them from KNOWN_UPWARD: {fixed}"


def test_the_offline_loop_trains_on_prepared_data_and_makes_none():
    """train(cfg, data) reads top to bottom: it never decides what its data is (a task's samples, a
    curriculum's stages); the runner above it does (train/runner.py)."""
    import inspect

    from preftune.train.loop import train

    loop = graph()["preftune.train.loop"]
    makers = sorted(m for m in loop if m.startswith(("preftune.tasks", "preftune.sampling", "preftune.train.curriculum",
                                                     "preftune.train.sources", "preftune.train.runner")))
    assert not makers, f"the loop makes its own data through {makers}"
    assert list(inspect.signature(train).parameters)[:2] == ["cfg", "data"]
    with pytest.raises(TypeError, match="prepared data"):
        train(None, "pairs.jsonl")


def test_the_checker_sees_lazy_relative_and_from_imports(tmp_path):
    """The walk finds an import inside a function, a relative import and `from pkg import submodule`,
    leaves out a `__main__` block, and the cycle finder reports a circle of three; an upward edge is
    reported against the table."""
    pkg = tmp_path / "preftune"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "loop.py").write_text("def f():\n    from preftune import records\n")
    (pkg / "train" / "other.py").write_text("from .loop import f\nfrom . import loop\n")
    (pkg / "records.py").write_text("import preftune.train.other\nif __name__ == '__main__':\n    import preftune.train\n")
    known = {"preftune": pkg / "__init__.py", "preftune.train": pkg / "train" / "__init__.py",
             "preftune.train.loop": pkg / "train" / "loop.py", "preftune.train.other": pkg / "train" / "other.py",
             "preftune.records": pkg / "records.py"}
    edges = {name: imports_of(name, path, known) for name, path in known.items()}
    assert edges["preftune.train.loop"] == {"preftune.records"}
    assert edges["preftune.train.other"] == {"preftune.train.loop"}
    assert cycles(edges) == [frozenset({"preftune.records", "preftune.train.loop", "preftune.train.other"})]
    assert upward_imports(edges) == {("preftune.records", "preftune.train.other")}


@pytest.mark.parametrize("family", ["rl", "diffusion"])
def test_a_family_sits_on_the_loops_layer_and_its_methods_on_the_methods_layer(family):
    assert LAYERS[layer_of(f"preftune.{family}.loop")[0]][0] == "loops"
    assert LAYERS[layer_of(f"preftune.{family}.methods.some_paper")[0]][0] == "methods"


def test_the_package_root_imports_nothing():
    """`preftune` is imported by every module (its version); it must stay free of imports."""
    assert imports_of("preftune", PACKAGE / "__init__.py", modules()) == set()
    importlib.import_module("preftune")


def test_the_registry_finds_family_method_packages_and_skips_missing_ones(tmp_path, monkeypatch):
    """A family's `methods` package registers its losses when imported with preftune.methods; a family
    that does not exist is skipped, and a real missing dependency is not hidden."""
    from preftune.methods import registry

    family = tmp_path / "fakefamily" / "methods"
    family.mkdir(parents=True)
    (tmp_path / "fakefamily" / "__init__.py").write_text("")
    (family / "__init__.py").write_text(
        "from preftune.methods.registry import register, taxonomy\n"
        "from preftune.records import MethodOutput\n"
        "@register(name='fake_family_loss', seed=None, family='test', input_kind='pairwise', needs_reference=False,\n"
        "          taxonomy=taxonomy(), paper='none', no_check_reason='a test double')\n"
        "def fake_family_loss(policy):\n"
        "    return MethodOutput(policy.sum[:, 0], policy.sum)\n")
    (tmp_path / "brokenfamily").mkdir()
    (tmp_path / "brokenfamily" / "__init__.py").write_text("")
    (tmp_path / "brokenfamily" / "methods.py").write_text("import no_such_dependency_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.load_method_packages(("preftune.no_such_family.methods", "fakefamily.methods"))
    assert registry.get("fake_family_loss").family == "test"
    assert "fake_family_loss" in [m.name for m in registry.all_methods()]
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_anywhere"):
        registry.load_method_packages(("brokenfamily.methods",))
    assert "grpo" in [m.name for m in registry.all_methods()]  # preftune/rl/methods, through METHOD_PACKAGES


def test_no_module_is_over_500_lines():
    """One job per module, about 400 lines as a habit; never over 500 (MISSION.md, code we are proud of)."""
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 500}
    assert not long, f"split these modules by job: {long}"


def test_the_architecture_page_draws_this_table():
    """docs/architecture.md's 'Layers' section names every layer and every package or module of LAYERS."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    section = page.split("## Layers", 1)[1].split("\n## ", 1)[0]
    missing = [layer for layer, _ in LAYERS if f"\n{layer} " not in section]
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            path = prefix.removeprefix("preftune.").replace(".", "/")
            if path.startswith(("rl/", "diffusion/")):  # a family's pure parts: named on the page by module
                path = "<family>/methods/" if path.endswith("/methods") else path.split("/")[1]
            if prefix != "preftune" and path not in section:
                missing.append(path)
    assert not missing, f"docs/architecture.md's layer table lacks {missing}"
