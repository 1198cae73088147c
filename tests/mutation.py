"""Mutation tests of the tabular checks: a deliberately broken copy of a loss must fail its check.

Each test file lists its mutants as (method, broken loss, words of the property that must fail)
and gets the parametrised test from `mutation_test`, so that every file asserts the same thing.
"""
from __future__ import annotations

import pytest

from preftune.methods import get


SOLVER_FAILED = "the check's solver found no gradient-free point"


def failed_properties(method: str, broken, solver_may_fail: bool = False) -> list[str]:
    """The properties of `method`'s check that fail when its loss is replaced by `broken`.

    With `solver_may_fail`, a check whose iterative solver cannot converge on the broken loss
    (RuntimeError about the gradient) counts as failing every property: the online checks solve
    for the loss's minimiser, and a broken loss may have none.
    """
    try:
        results = get(method).check(fn=broken)
    except RuntimeError as error:
        if solver_may_fail and "gradient" in str(error):
            return [SOLVER_FAILED]
        raise
    return [r.property for r in results if not r.passed]


def mutation_test(mutants: list[tuple], with_property_in_id: bool = False, solver_may_fail: bool = False):
    """A pytest test asserting that each mutant fails (at least) the named property of its check."""
    def test_id(mutant):
        method, broken, prop = mutant
        return f"{method}-{broken.__name__}" + (f"-{prop.split()[0]}" if with_property_in_id else "")

    @pytest.mark.parametrize("method, broken, failing_property", mutants, ids=[test_id(m) for m in mutants])
    def test_check_fails_on_a_broken_copy_of_the_loss(method, broken, failing_property):
        failed = failed_properties(method, broken, solver_may_fail)
        assert failed == [SOLVER_FAILED] or any(failing_property in prop for prop in failed), f"{broken.__name__} passed {failing_property!r}: {failed}"

    return test_check_fails_on_a_broken_copy_of_the_loss
