"""`preftune verify`: the whole registry passes, and deliberately broken copies of losses fail.

The broken copies are thin wrappers around the real functions (a swapped pair, a dropped
length, a complemented epsilon), so each one is exactly the bug it is named after.
"""
import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mutation import mutation_test
import preftune.methods  # noqa: F401  (registers the methods)
from preftune.methods import CheckResult, all_methods, get, register, registry, tabular_check
from preftune.methods.cdpo import cdpo
from preftune.methods.dpo import dpo, dpo_tabular_check
from preftune.methods.ipo import ipo
from preftune.methods.kto import kto
from preftune.methods.orpo import orpo
from preftune.methods.simpo import simpo
from preftune.methods.slic import hinge, slic
from preftune.records import Logps, MethodOutput
from preftune.tabular.verify import run_verify

REPO = Path(__file__).resolve().parents[1]


def run(names=None, as_json=True):
    out = io.StringIO()
    code = run_verify(names, as_json=as_json, stream=out)
    return code, (json.loads(out.getvalue()) if as_json else out.getvalue())


# -- the whole registry ---------------------------------------------------------------------------

def test_verify_passes_over_the_whole_registry():
    # No wall-time budget here: under load it measured the machine, not verify (73.7 s at load 13
    # for 7.9 s of CPU). `preftune verify` prints its own time.
    code, report = run()
    assert code == 0 and report["passed"]
    by_name = {m["name"]: m for m in report["methods"]}
    assert set(by_name) == {spec.name for spec in all_methods()}
    for spec in all_methods():
        entry = by_name[spec.name]
        if spec.check is not None:
            assert entry["status"] == "passed" and entry["checks"], spec.name
            assert all(c["passed"] and c["error"] <= c["tolerance"] for c in entry["checks"]), spec.name
        else:
            assert entry["status"] == "no_check" and not entry["checks"], spec.name
            assert entry["reason"] == spec.no_check_reason and entry["reason"].strip(), spec.name


def test_table_shows_a_method_without_a_check_with_its_reason_and_never_as_passed():
    code, table = run(["sft", "dpo"], as_json=False)
    assert code == 0
    header = table.splitlines()[0].split()
    assert header == ["method", "property", "expected", "measured", "error", "result"]
    sft_rows = [line for line in table.splitlines() if line.startswith("sft ")]
    assert len(sft_rows) == 1
    assert "no check: " + get("sft").no_check_reason in sft_rows[0] and sft_rows[0].endswith("NO CHECK")
    assert any(line.startswith("dpo ") and line.endswith("PASS") for line in table.splitlines())


def test_module_entry_point_prints_json_and_exits_zero():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "preftune.tabular.verify", "ipo", "--json"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [m["name"] for m in report["methods"]] == ["ipo"] and report["methods"][0]["status"] == "passed"


def test_unknown_method_is_a_usage_error():
    out = io.StringIO()
    assert run_verify(["no_such_method"], as_json=False, stream=out) == 2
    assert "no_such_method" in out.getvalue()


# -- methods registered for one test only -----------------------------------------------------------

@pytest.fixture
def scratch_registry(monkeypatch):
    """A private copy of the registry: whatever a test registers is gone when it ends."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def register_like_dpo(name, fn, no_check_reason=None):
    spec = get("dpo")
    register(name=name, seed=None, family=spec.family, input_kind=spec.input_kind, needs_reference=True,
             taxonomy=spec.taxonomy, paper="test double", no_check_reason=no_check_reason)(fn)


def dpo_sign_flipped(policy: Logps, reference: Logps, *, beta: float = 0.1) -> MethodOutput:
    """DPO with the sign of the margin flipped: chosen and rejected swapped."""
    return dpo(policy.responses([1, 0]), reference.responses([1, 0]), beta=beta)


def test_a_broken_registered_method_makes_verify_fail(scratch_registry):
    register_like_dpo("dpo_sign_flipped", dpo_sign_flipped)
    tabular_check("dpo_sign_flipped")(lambda: dpo_tabular_check(fn=dpo_sign_flipped))
    code, report = run(["dpo", "dpo_sign_flipped"])
    assert code == 1 and not report["passed"]
    assert [m["status"] for m in report["methods"]] == ["passed", "failed"]


def test_a_method_with_neither_check_nor_reason_is_missing(scratch_registry):
    register_like_dpo("unchecked_dpo", lambda policy, reference, *, beta=0.1: dpo(policy, reference, beta=beta))
    code, table = run(["unchecked_dpo"], as_json=False)
    assert code == 1
    assert [line for line in table.splitlines() if line.startswith("unchecked_dpo")][0].endswith("MISSING")


def test_a_crashing_or_empty_check_is_an_error_not_a_pass(scratch_registry):
    register_like_dpo("crashing", lambda policy, reference, *, beta=0.1: dpo(policy, reference, beta=beta))
    register_like_dpo("empty", lambda policy, reference, *, beta=0.1: dpo(policy, reference, beta=beta))
    tabular_check("crashing")(lambda: 1 / 0)
    tabular_check("empty")(lambda: [])
    code, report = run(["crashing", "empty"])
    assert code == 1
    assert [m["status"] for m in report["methods"]] == ["error", "error"]
    assert "ZeroDivisionError" in report["methods"][0]["reason"]


def test_a_nan_measurement_fails_and_the_json_stays_strict(scratch_registry):
    register_like_dpo("nan_check", lambda policy, reference, *, beta=0.1: dpo(policy, reference, beta=beta))
    tabular_check("nan_check")(lambda: [CheckResult("nan_check", "diverged", 1.0, float("nan"), 1e-6)])
    out = io.StringIO()
    assert run_verify(["nan_check"], as_json=True, stream=out) == 1

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    report = json.loads(out.getvalue(), parse_constant=reject)
    assert report["methods"][0]["status"] == "failed" and report["methods"][0]["checks"][0]["measured"] == "nan"


# -- mutation tests: each check, pointed at a broken copy of its loss, must fail ---------------------

def _unit_lengths(policy: Logps) -> Logps:
    """The same record with every length 1, so that per-token means become sums."""
    return replace(policy, length=torch.ones_like(policy.length))


def ipo_without_length_normalisation(policy, reference, *, beta=0.1, length_normalize=True):
    return ipo(policy, reference, beta=beta, length_normalize=False)


def simpo_with_sums(policy, *, beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.0, loss_type="sigmoid",
                    sft_weight=0.0):
    return simpo(_unit_lengths(policy), beta=beta, gamma_beta_ratio=gamma_beta_ratio,
                 label_smoothing=label_smoothing, loss_type=loss_type, sft_weight=sft_weight)


def cdpo_smoothing_on_wrong_term(policy, reference, *, beta=0.1, label_smoothing=0.1):
    """eps l(h) + (1 - eps) l(-h): the weights of the two terms exchanged."""
    return cdpo(policy, reference, beta=beta, label_smoothing=1 - label_smoothing)


def robust_with_plus_sign(policy, reference, *, beta=0.1, label_smoothing=0.1):
    """[(1-eps) l(h) + eps l(-h)] / (1 - 2 eps): cDPO rescaled, no longer unbiased."""
    out = cdpo(policy, reference, beta=beta, label_smoothing=label_smoothing)
    return MethodOutput(out.loss / (1 - 2 * label_smoothing), out.rewards)


def hinge_without_margin(policy, reference, *, beta=0.1, margin=1.0):
    return hinge(policy, reference, beta=beta, margin=0.0)


def slic_with_token_mean_nll(policy, *, margin=1.0, reg_weight=0.0):
    """The regulariser on the token-mean instead of the sequence NLL the paper uses."""
    out = slic(policy, margin=margin, reg_weight=0.0)
    return MethodOutput(out.loss - reg_weight * policy.mean[:, 0], out.rewards)


def orpo_without_length_normalisation(policy, *, beta=0.1):
    return orpo(_unit_lengths(policy), beta=beta)


def kto_labels_inverted(policy, reference, *, label, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    return kto(policy, reference, label=~label.bool(), beta=beta, desirable_weight=desirable_weight,
               undesirable_weight=undesirable_weight)


def kto_weights_swapped(policy, reference, *, label, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    return kto(policy, reference, label=label, beta=beta, desirable_weight=undesirable_weight,
               undesirable_weight=desirable_weight)


MUTANTS = [
    # (method, broken function, a property that must fail)
    ("dpo", dpo_sign_flipped, "BT optimum"),
    ("ipo", ipo_without_length_normalisation, "per-token log-ratios"),
    ("simpo", simpo_with_sums, "label smoothing"),
    ("simpo", simpo_with_sums, "repeated"),
    ("cdpo", cdpo_smoothing_on_wrong_term, "pair optimum"),
    ("robust", robust_with_plus_sign, "unbiased"),
    ("hinge", hinge_without_margin, "optimum of the expected loss at the margin"),
    ("slic", slic_with_token_mean_nll, "reg_weight"),
    ("orpo", orpo_without_length_normalisation, "pair optimum"),
    ("kto", kto_labels_inverted, "optimum"),
    ("kto", kto_weights_swapped, "optimum"),
]


test_check_fails_on_a_broken_copy_of_the_loss = mutation_test(MUTANTS, with_property_in_id=True)


def test_ipo_mutation_is_caught_only_where_lengths_matter():
    """Without 1/|y| the summed-log-ratio optimum is still right; only the per-token one is wrong."""
    results = {r.property.split(",")[1].strip(): r.passed
               for r in get("ipo").check(fn=ipo_without_length_normalisation)}
    assert results == {"per-token log-ratios": False, "summed log-ratios": True}
