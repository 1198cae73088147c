"""`preftune claims`: the rows cover the catalogue, the search and the row measurements on known inputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from preftune.claims.arms import Arm, all_arms, settings_of
from preftune.claims.config import load_claims_config
from preftune.claims.prereg import preregistration_digest
from preftune.claims.online_cells import summary_metrics
from preftune.claims.catalogue import all_claims
from preftune.claims.report import format_preregistration, format_table, replace_between
from preftune.claims.rows.overopt import flag_errors
from preftune.claims.runner import arms_needed, choose, selection_value

ROOT = Path(__file__).resolve().parents[1]
# The shared catalogue sits beside the project checkout (or beside its worktrees' folder).
CATALOGUE = next((p for p in (ROOT.parent / "shared" / "methods" / "catalogue.tsv",
                              ROOT.parent.parent / "shared" / "methods" / "catalogue.tsv") if p.exists()),
                 ROOT.parent / "shared" / "methods" / "catalogue.tsv")
FAMILIES = ("offline", "online", "analysis")


def catalogue_rows() -> dict[str, tuple[str, str]]:
    if not CATALOGUE.exists():
        pytest.skip("the method catalogue (../shared/methods/catalogue.tsv) is not beside this checkout")
    rows = list(csv.reader(CATALOGUE.open(), delimiter="\t"))[1:]
    return {r[0]: (r[1].split("-")[0], " ".join(r[4].split())) for r in rows if r[1].split("-")[0] in FAMILIES}


def test_every_offline_online_and_analysis_row_has_an_experiment_with_the_catalogues_claim():
    expected = catalogue_rows()
    claims = {c.row: c for c in all_claims()}
    assert set(claims) == set(expected)
    for row, (family, statement) in expected.items():
        assert claims[row].family == family, row
        assert claims[row].statement == statement, row


def test_every_row_measures_something_and_names_what_it_runs():
    for claim in all_claims():
        assert claim.arms or claim.extras or claim.verify, claim.row
        assert len(claim.miniature) > 100, claim.row
        for name in claim.arms:
            assert any(a.name == name for a in all_arms()), (claim.row, name)


def test_every_arm_searches_its_beta_equivalent_times_the_shared_learning_rates():
    cfg = load_claims_config("configs/claims/full.yaml")
    for arm in all_arms():
        settings = settings_of(arm, cfg.lr_grid)
        assert len(settings) == len(arm.grid) * len(cfg.lr_grid)
        assert sorted({s["lr"] for s in settings}) == sorted(cfg.lr_grid)
        assert settings_of(arm, cfg.lr_grid, "middle") == [{**arm.grid[len(arm.grid) // 2], "lr": cfg.lr_grid[1]}]


def test_the_phases_run_each_job_after_what_it_reads(tmp_path):
    from preftune.claims.catalogue import get_claim
    from preftune.claims.runner import Runner

    cfg = load_claims_config("configs/claims/smoke.yaml", [f"--output_dir={tmp_path}/{{name}}"])
    claims = [get_claim(row) for row in ("tgdpo", "r2q", "modpo", "daa-overopt-scaling", "more-is-less")]
    arms, phases = arms_needed(claims), []

    def fake_pool(fn, jobs, desc, describe):
        phases.append(jobs)
        return [{"extra": j[1], "seed": j[2], "status": "ok"} if j[0] == "extra" else
                {"arm": j[1], "setting": j[2], "seed": j[3], "status": "ok", "metrics": {
                    "gold_reward": 0.5, "gold/helpful": 0.5, "gold/concise": 0.5}} for j in jobs]

    runner = Runner(cfg, progress=False, log=lambda *_: None)
    runner.pool, runner.aux_paths = fake_pool, lambda arm, seed: {}
    runner.run(arms, list({e.name: e for c in claims for e in c.extras}.values()))
    when = {}
    for index, jobs in enumerate(phases):
        for job in jobs:
            kind = "extra" if job[0] == "extra" else ("search" if job[3] in cfg.search_seeds else "final")
            when.setdefault((kind, job[1]), index)
    assert when[("search", "tgdpo@multistep")] > when[("search", "dpo@multistep")]
    assert when[("final", "tgdpo@multistep")] > when[("final", "dpo@multistep")]
    assert when[("extra", "r2q-beam")] > when[("final", "dpo@multistep")]
    assert when[("extra", "overopt-sweep")] > when[("search", "dpo@length-bias")]
    assert when[("final", "modpo-w0.1@two-objective")] > when[("search", "modpo-w0.5@two-objective")]
    assert ("search", "modpo-w0.1@two-objective") not in when       # it borrows w=0.5's setting
    assert runner.chosen["modpo-w0.1@two-objective"] == runner.chosen["modpo-w0.5@two-objective"]
    assert when[("extra", "more-is-less-probe")] == 0 and len(phases) == 3


def test_selection_scores_and_the_choice_take_the_best_mean_and_the_first_on_a_tie():
    assert selection_value({"gold_reward": 0.5}, "gold_reward") == 0.5
    assert selection_value({"duality_gap": 0.2}, "-duality_gap") == -0.2
    assert selection_value({"gold/helpful": 0.25, "gold/concise": 0.5}, "gold/helpful+gold/concise") == 0.75
    cfg = load_claims_config("configs/claims/full.yaml", ["--search_seeds=[0,9]"])
    arm = Arm("toy", "arithmetic", "dpo", grid=({"beta": 0.1}, {"beta": 1.0}))
    scores = {(0.1, 1e-05): (0.5, 0.5), (0.1, 3e-05): (0.5, 0.75), (0.1, 0.0001): (0.875, 0.125),
              (1.0, 1e-05): (0.625, 0.625), (1.0, 3e-05): (0.25, 0.25), (1.0, 0.0001): (0.0, 0.0)}
    # (0.1, 3e-5) and (1.0, 1e-5) both have the best mean, 0.625: the first in grid order wins
    results = {}
    for (beta, lr), values in scores.items():
        for seed, value in zip((0, 9), values):
            setting = {"beta": beta, "lr": lr}
            results[("toy", json.dumps(setting, sort_keys=True), seed)] = {"status": "ok", "metrics": {"gold_reward": value}}
    best, table = choose(cfg, arm, results)
    assert best == {"beta": 0.1, "lr": 3e-05}
    assert len(table) == 6 and table[2]["score"] == pytest.approx(0.5)


def test_flag_errors_measure_the_indicator_peaks_against_the_gold_peak_and_chance():
    gold = [0.5, 0.6, 0.7, 0.65, 0.6]                 # peak at index 2
    entropy = [1.0, 1.1, 1.3, 1.2, 1.0]               # also peaks at 2
    mass = [0.9, 0.95, 0.9, 0.8, 0.7]                 # peaks at 1
    rows = [{"step": 10 * i, "diag/gold_reward": g, "diag/top10_entropy": e, "diag/top10_mass": m}
            for i, (g, e, m) in enumerate(zip(gold, entropy, mass))]
    found = flag_errors(rows)
    assert found["gold_peak_step"] == 20 and found["gold_fell"]
    assert found["entropy_error"] == 0 and found["mass_error"] == 1
    assert found["chance_error"] == pytest.approx((2 + 1 + 0 + 1 + 2) / 5)
    with pytest.raises(ValueError):
        flag_errors(rows[:2])


def test_online_summary_metrics_read_the_first_and_last_iteration_and_forgetting():
    iterations = [{"iteration": t, "duality_gap": g, "win_rate_vs_initial": w, "domain0/duality_gap": d0,
                   "domain1/duality_gap": d1}
                  for t, (g, w, d0, d1) in enumerate([(0.3, 0.5, 0.3, 0.2), (0.2, 0.55, 0.2, 0.25),
                                                      (0.1, 0.6, 0.1, 0.3), (0.2, 0.5, 0.25, 0.1),
                                                      (0.15, 0.52, 0.3, 0.05)])]
    metrics = summary_metrics({"iterations": iterations})
    assert metrics["win_rate_vs_initial"] == 0.52 and metrics["win_rate_vs_initial@1"] == 0.55
    assert metrics["forgetting"] == pytest.approx(0.3 - 0.1)    # domain 0 ends at iteration 2 of 4
    assert metrics["mean_domain_gap"] == pytest.approx((0.3 + 0.05) / 2)


def test_the_preregistration_digest_moves_with_a_grid_or_a_seed_and_not_with_workers():
    claims = all_claims()
    arms = arms_needed(claims)

    def digest(*overrides):
        return preregistration_digest(load_claims_config("configs/claims/full.yaml", list(overrides)), arms, claims)

    assert digest("--workers=1") == digest() != digest("--seeds=[1,2,3,4,6]")
    assert digest("--lr_grid=[0.00001]") != digest()



def test_the_committed_preregistration_is_the_one_the_code_and_config_give():
    """docs/claims.md's verdicts were judged under the digest its pre-registration states: a change to the
    full config, a row module, the decision rule or the evidence accessors moves the digest, and then
    the committed verdicts no longer describe the code. Re-register (`preftune claims --preregister`),
    say why in docs/claims.md, and re-run the final run."""
    claims = all_claims()
    digest = preregistration_digest(load_claims_config("configs/claims/full.yaml"), arms_needed(claims), claims)
    committed = (ROOT / "docs" / "claims.md").read_text().split("<!-- claims-preregistration:start -->")[1]
    assert f"Digest `{digest}`" in committed, "docs/claims.md's pre-registration is not the current code's"

def test_search_and_final_seeds_may_not_overlap():
    from preftune.config import ConfigError

    with pytest.raises(ConfigError, match="must not overlap"):
        load_claims_config("configs/claims/full.yaml", ["--search_seeds=[1]"])


def test_the_table_and_the_preregistration_render_and_replace_only_their_section():
    part = {"label": "gold", "kind": "superiority", "margin": 0.02, "unit": "", "judgement": "holds",
            "interval": {"mean": 0.05, "low": 0.01, "high": 0.09, "std": 0.03, "n": 5, "level": 0.95},
            "per_seed": {"1": 0.05}, "detail": ""}
    report = {"command": "preftune claims", "wall_seconds": 60.0, "cpu_seconds": 100.0, "preregistration_digest": "abc",
              "config": {"workers": 2, "threads_per_worker": 1, "seeds": [1, 2], "search_seeds": [0]},
              "machine": {"cpu_count": 2, "cpu_flags": ["avx2"]},
              "invocations": [{"wall_seconds": 60.0, "load_start": [1.0, 1, 1], "load_end": [2.0, 2, 2]}],
              "rows": [{"row": "x", "family": "offline", "verdict": "reproduced", "arms": ["a"], "parts": [part]}],
              "chosen": {"a": {"beta": 0.1, "lr": 3e-05}}, "cell_seconds": {"a": 12.0}}
    table = format_table(report)
    assert "| x | offline | **reproduced** | +0.050 [+0.010, +0.090] |" in table and "a: beta 0.1, lr 3e-05" in table
    assert "load 1.0 at the start, 2.0 at the end" in table
    cfg = load_claims_config("configs/claims/full.yaml")
    from preftune.claims.prereg import preregistration

    text = format_preregistration(preregistration(cfg, arms_needed(all_claims()), all_claims()), "d1g35t")
    assert "d1g35t" in text and "| dpo@arithmetic | arithmetic | dpo | sft |" in text
    page = "intro\n<!-- a -->\nold\n<!-- b -->\ntail\n"
    assert replace_between(page, "<!-- a -->", "<!-- b -->", "new") == "intro\n<!-- a -->\nnew\n<!-- b -->\ntail\n"


def test_sample_entropy_of_a_uniform_model_is_length_times_log_vocabulary():
    """With every weight zero, each next token is uniform over V, so -log pi(y|x) = |y| log V exactly."""
    import math

    import torch

    from preftune.claims.metrics import sample_entropy
    from preftune.models import build_tiny_model, build_tiny_tokenizer
    from preftune.sampling import sample

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    prompts = ["1+2=", "3+4="]
    found = sample_entropy(model, tokenizer, prompts, samples_per_prompt=3, max_new_tokens=5, seed=0)
    drawn = sample(model, tokenizer, prompts, 3, 1.0, 1.0, 5, 256, 2, False)      # the same draw (seed + 2)
    lengths = [len(ids) for *_, ids in drawn.flat()]
    vocabulary = model.config.vocab_size
    assert found["entropy"] == pytest.approx(sum(lengths) / len(lengths) * math.log(vocabulary), rel=1e-5)
    assert 0 < found["distinct"] <= 1


def test_an_arm_whose_search_fails_fails_what_reads_it_and_the_rest_runs(tmp_path):
    from preftune.claims.catalogue import get_claim
    from preftune.claims.runner import Runner

    cfg = load_claims_config("configs/claims/smoke.yaml", [f"--output_dir={tmp_path}/{{name}}"])
    claims = [get_claim(row) for row in ("tgdpo", "r2q", "ld-dpo")]

    def fake_pool(fn, jobs, desc, describe):
        return [{"extra": j[1], "seed": j[2], "status": "ok"} if j[0] == "extra" else
                {"arm": j[1], "setting": j[2], "seed": j[3], "status": "error", "error": "DataError: no rows"}
                if j[1] == "dpo@multistep" else
                {"arm": j[1], "setting": j[2], "seed": j[3], "status": "ok", "metrics": {"gold_reward": 0.5}}
                for j in jobs]

    runner = Runner(cfg, progress=False, log=lambda *_: None)
    runner.pool, runner.aux_paths = fake_pool, lambda arm, seed: {}
    runner.run(arms_needed(claims), [e for c in claims for e in c.extras])
    assert "no rows" in runner.failed["dpo@multistep"] and "needs dpo@multistep" in runner.failed["tgdpo@multistep"]
    assert runner.extras[("r2q-beam", 1)]["status"] == "error"
    assert runner.results[("tgdpo@multistep", "failed", 1)]["status"] == "error"
    assert "ld_dpo@length-bias" in runner.chosen                # the other rows run as usual


def test_every_judge_turns_per_seed_numbers_into_judged_parts():
    """Each row's judge on synthetic evidence: every metric it reads has a smallest effect of interest,
    and it returns parts with judgements (a judge that breaks on real numbers would cost a full run)."""
    from preftune.claims.evidence import Evidence
    from preftune.claims.stats import combine

    cfg = load_claims_config("configs/claims/full.yaml")

    class Synthetic(Evidence):
        def final(self, arm, metric):
            return {s: 0.5 + 0.01 * s + 0.001 * len(arm) for s in self.seeds}

        def start_model(self, task, metric, which="sft"):
            return {s: 0.4 + 0.01 * s for s in self.seeds}

        def extra(self, name, key):
            return {s: 0.1 * s for s in self.seeds}

        def once(self, name):
            return {"methods": 3, "untagged": [], "offline_methods": 3, "missing": [], "starts": ["sft", "base"]}

    verified = {m: {"passed": True, "detail": "ok"} for c in all_claims() for m in c.verify}
    evidence = Synthetic(cfg, {}, {}, {}, {}, verified)
    for claim in all_claims():
        parts = claim.judge(evidence)
        assert parts and combine([p.judgement for p in parts]), claim.row
        for part in parts:
            assert part.kind == "exact" or part.interval.n == len(cfg.seeds), (claim.row, part.label)
