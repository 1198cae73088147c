"""Shared test plumbing: the `method(name, kind)` marker and a record of which methods have which tests.

Tests that pin a registered method's behaviour carry `@pytest.mark.method("<name>", "<kind>")`
with kind one of `value`, `gradient`, `reduction`. At collection time we record every
(name, kind) pair; the fixture `method_test_kinds` hands the set to tests/test_registry.py,
which asserts that every stable method is covered.

When a test file was not collected in this session (e.g. `pytest tests/test_registry.py` run
alone, or a file selected only by node id), its markers are read from its source instead, by
the literal pattern `pytest.mark.method("name", "kind")`; so write the marker literally.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

METHOD_TEST_KINDS = ("value", "gradient", "reduction")
TESTS_DIR = Path(__file__).resolve().parent
MARKER_SOURCE = re.compile(r"""pytest\.mark\.method\(\s*["']([^"']+)["']\s*,\s*["']([^"']+)["']\s*\)""")

_COLLECTED = pytest.StashKey[dict]()  # resolved test-file path -> {(name, kind)} from collected items
_PARTIAL = pytest.StashKey[set]()     # test files selected only in part (by node id): not trusted


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml declares the marker; register it here too so the suite stands without it.
    declared = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    if "method" not in declared:
        config.addinivalue_line(
            "markers", "method(name, kind): ties a test to a registered method; kind is value, reduction or gradient")


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection: a deselected test still exists
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    collected: dict[Path, set[tuple[str, str]]] = {}
    for item in items:
        found = collected.setdefault(Path(item.path).resolve(), set())
        for marker in item.iter_markers("method"):
            if len(marker.args) != 2 or marker.args[1] not in METHOD_TEST_KINDS:
                raise pytest.UsageError(f"{item.nodeid}: write @pytest.mark.method(name, kind) with kind in "
                                        f"{METHOD_TEST_KINDS}, got args {marker.args}")
            found.add((marker.args[0], marker.args[1]))
    config.stash[_COLLECTED] = collected
    root = config.invocation_params.dir
    config.stash[_PARTIAL] = {(root / arg.split("::")[0]).resolve() for arg in config.args if "::" in arg}


def scan_method_markers(path: Path) -> set[tuple[str, str]]:
    """(name, kind) pairs of the literal `pytest.mark.method("name", "kind")` markers in a file."""
    return {(name, kind) for name, kind in MARKER_SOURCE.findall(path.read_text())}


@pytest.fixture(scope="session")
def collected_method_markers(pytestconfig: pytest.Config) -> dict[Path, set[tuple[str, str]]]:
    """Resolved test-file path -> (name, kind) markers of its items, for files collected whole this session."""
    partial = pytestconfig.stash.get(_PARTIAL, set())
    return {path: kinds for path, kinds in pytestconfig.stash.get(_COLLECTED, {}).items() if path not in partial}


@pytest.fixture(scope="session")
def method_test_kinds(collected_method_markers) -> set[tuple[str, str]]:
    """Every (method name, kind) that some test in tests/ is marked with."""
    kinds: set[tuple[str, str]] = set()
    for path in sorted(TESTS_DIR.rglob("test_*.py")):
        path = path.resolve()
        kinds |= collected_method_markers[path] if path in collected_method_markers else scan_method_markers(path)
    return kinds


@pytest.fixture(scope="session")
def method_marker_scanner():
    """The source-scan fallback, exposed so a test can check it agrees with collection."""
    return scan_method_markers


# --------------------------------------------------------------------------- models for LM tests

@pytest.fixture(scope="session", autouse=True)
def _isolated_cache():
    """Keep builtin:arithmetic-sft out of the user's home during tests: a cache beside the tests
    (git-ignored), reused across sessions and keyed by the SFT settings' fingerprint."""
    import os

    previous = os.environ.get("PREFTUNE_CACHE")
    os.environ["PREFTUNE_CACHE"] = str(TESTS_DIR.parent / ".pytest_cache" / "preftune")
    yield
    if previous is None:
        os.environ.pop("PREFTUNE_CACHE", None)
    else:
        os.environ["PREFTUNE_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_sft_model(_isolated_cache) -> str:
    """builtin:arithmetic-sft, trained once into the test cache (the quickstart's SFT stage, ~40 s
    on 2 cores) and reused: a tiny model that answers about 80% of held-out sums greedily."""
    import preftune.train  # noqa: F401  (registers builtin:arithmetic-sft)
    from preftune.models import BUILTIN_ARITHMETIC_SFT, resolve_model_name

    return resolve_model_name(BUILTIN_ARITHMETIC_SFT)


@pytest.fixture(scope="session")
def smoke_bench(tmp_path_factory, _isolated_cache):
    """`preftune bench --smoke` (configs/bench/smoke.yaml) run once per session into a temporary
    directory: (its BenchConfig, its report). About a minute on 2 cores."""
    from preftune.bench import load_bench_config, run_bench

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("bench")
    cfg = load_bench_config(root / "configs" / "bench" / "smoke.yaml",
                            [f"--output_dir={out}/{{name}}", f"--recipes={root / 'configs' / 'methods'}"])
    return cfg, run_bench(cfg, "preftune bench --smoke", progress=False, log=lambda *args: None)
