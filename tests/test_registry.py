"""The method registry: coverage of stable methods by tests, taxonomy, catalogue entries, signature checks."""
from __future__ import annotations

import json
import uuid

import pytest
import torch

from preftune.methods import all_methods, build_objective, get, register, registry, taxonomy
from preftune.methods.registry import TAXONOMY_AXES
from preftune.records import Logps, MethodOutput

STABLE = [spec.name for spec in all_methods() if spec.status == "stable"]
ALL = [spec.name for spec in all_methods()]


@pytest.mark.parametrize("kind", ["value", "reduction"])
@pytest.mark.parametrize("name", STABLE)
def test_stable_method_has_value_and_reduction_tests(name, kind, method_test_kinds):
    # offline.md §0 requirement 5: the reductions to the parent are the first unit tests of a method.
    assert (name, kind) in method_test_kinds, (
        f"stable method '{name}' has no test marked @pytest.mark.method(\"{name}\", \"{kind}\")")


def test_method_markers_name_registered_methods(method_test_kinds):
    unknown = sorted({name for name, _ in method_test_kinds} - set(ALL))
    assert not unknown, f"tests are marked with unregistered method names {unknown}"


def test_source_scan_agrees_with_collection(collected_method_markers, method_marker_scanner):
    # The fallback used when a test file was not collected must find what collection finds.
    compared = 0
    for path, collected in collected_method_markers.items():
        if path.name.startswith("test_") and collected:
            assert method_marker_scanner(path) == collected, path.name
            compared += 1
    if not compared:
        pytest.skip("no method-marked test file was collected in this session")


@pytest.mark.parametrize("name", ALL)
def test_taxonomy_has_the_four_axes(name):
    tags = get(name).taxonomy
    assert tuple(tags) == TAXONOMY_AXES
    assert all(isinstance(v, list) and all(isinstance(t, str) and t for t in v) for v in tags.values())
    # the survey's first three axes apply to every method (model property only to some): the dpo-survey
    # row of `preftune claims` checks the same on what `preftune methods --json` lists
    assert all(tags[axis] for axis in TAXONOMY_AXES[:3]), f"'{name}' lacks tags on {TAXONOMY_AXES[:3]}"


@pytest.mark.parametrize("name", ALL)
def test_as_dict_describes_the_method(name):
    spec = get(name)
    entry = spec.as_dict()
    for key in ("name", "seed", "family", "needs_reference", "status", "taxonomy"):
        assert entry[key] == getattr(spec, key), key
    assert entry["name"] == name and entry["status"] in registry.STATUSES
    assert json.loads(json.dumps(entry)) == entry  # `preftune methods --json` must be able to print it


@pytest.fixture
def temporary_name():
    """A method name nobody uses, removed from the registry afterwards whatever happened."""
    name = f"_test_method_{uuid.uuid4().hex}"
    yield name
    registry._REGISTRY.pop(name, None)


def _meta(name: str, **overrides):
    meta = dict(name=name, seed=None, family="test", input_kind="pairwise", needs_reference=True,
                taxonomy=taxonomy(["pairwise"], ["offline"], ["fixed-reference"], []), paper="none")
    meta.update(overrides)
    return meta


def _reference_free(policy, *, beta=0.1):
    return MethodOutput(policy.sum[:, 0], policy.sum)


def _swapped(reference, policy, *, beta=0.1):
    return MethodOutput(policy.sum[:, 0], policy.sum)


def _extra_label(policy, reference, *, label, beta=0.1):
    return MethodOutput(policy.sum[:, 0], policy.sum)


def _no_extra(policy, reference, *, beta=0.1):
    return MethodOutput(policy.sum[:, 0], policy.sum)


@pytest.mark.parametrize("fn, overrides, message", [
    # needs_reference=True but the function takes only the policy.
    (_reference_free, {}, "must take positional arguments"),
    # Positional names must be exactly (policy, reference), in that order.
    (_swapped, {}, "must take positional arguments"),
    # Reference-free registration of a function that takes a reference.
    (_no_extra, dict(needs_reference=False), "must take positional arguments"),
    # A required keyword (label) that is not declared in extras.
    (_extra_label, {}, "must be exactly the declared extras"),
    # An extra declared but not taken by the function.
    (_no_extra, dict(extras=("label",)), "must be exactly the declared extras"),
], ids=["reference-missing", "positional-swapped", "unexpected-reference", "undeclared-extra", "missing-extra"])
def test_register_rejects_a_wrong_signature(temporary_name, fn, overrides, message):
    with pytest.raises(TypeError, match=message):
        register(**_meta(temporary_name, **overrides))(fn)
    assert temporary_name not in registry._REGISTRY


def test_register_accepts_a_correct_signature(temporary_name):
    # The control for the test above: the same machinery accepts a well-formed method.
    register(**_meta(temporary_name, input_kind="pointwise", extras=("label",)))(_extra_label)
    spec = get(temporary_name)
    assert spec.extras == ("label",) and spec.hyperparameters == {"beta": 0.1}
    # And a registered method can be called through the objective combinator like any other.
    policy = Logps(sum=torch.tensor([[-1.0]], dtype=torch.float64), length=torch.ones(1, 1, dtype=torch.float64))
    out = build_objective(temporary_name)(policy, policy, {"label": torch.tensor([True])})
    assert out.loss.tolist() == [-1.0]
