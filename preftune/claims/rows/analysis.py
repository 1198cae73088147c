"""The analysis rows whose tools are a probe, the registry, the bench protocol, the safety task and
the likelihood trajectories (the over-optimisation rows are in overopt.py)."""
from __future__ import annotations

from preftune.claims import stats
from preftune.claims.arms import DPO_BETAS, arm, betas
from preftune.claims.registry import Extra, register_claim
from preftune.data.formats import usable_response
from preftune.claims.rows.baselines import DPO_ARITHMETIC, DPO_BASE, DPO_SAFETY, LIKELIHOOD_TRAJECTORIES

FLEX = arm("flex_dpo@arithmetic", "arithmetic", "flex_dpo",
           grid=betas("beta_chosen", 0.1, 0.3, 1.0, beta_rejected=lambda b: round(b - 0.02, 6)),
           diagnostics=LIKELIHOOD_TRAJECTORIES)
SFT_DPO = arm("sft_dpo@arithmetic", "arithmetic", "sft_dpo", grid=DPO_BETAS, fixed={"sft_weight": 1.0},
              diagnostics=LIKELIHOOD_TRAJECTORIES)
REJECTED = "diag/logps_per_token/rejected"


# --------------------------------------------------------------------------- More is Less

def separability_single_vs_multi(cfg_dict: dict, seed: int, models: dict, chosen: dict) -> dict:
    """Probe accuracy (pair-grouped 5-fold CV, last layer, last response token) of the SFT model on two
    data sets over the same prompts: single-model pairs (chosen and rejected both sampled from the SFT
    model: the claims' arithmetic pairs) and multi-model pairs (the same chosen responses, the rejected
    one sampled from the base model, a different model, and also wrong)."""
    import json

    from preftune.claims.assets import assets_of, preference_rows, task_of, task_setting
    from preftune.claims.config import ClaimsConfig
    from preftune.config import from_dict
    from preftune.eval.probe import run_probe
    from preftune.models import load_causal_lm, load_tokenizer
    from preftune.sampling import sample
    from preftune.tasks.data import write_jsonl

    cfg = from_dict(ClaimsConfig, cfg_dict)
    task_name = "arithmetic"
    task, assets = task_of(cfg, task_name), assets_of(cfg, task_name, seed)
    single = preference_rows(cfg, task_name, seed, "best-worst")
    tokenizer, base = load_tokenizer(assets["base_model"]), load_causal_lm(assets["base_model"])
    prompts = [r["prompt"] for r in single]
    drawn = sample(base, tokenizer, prompts, 4, 1.0, 1.0, task_setting(cfg, task_name, "max_new_tokens", 8),
                   cfg.splits.batch_size, seed + 17, False).texts
    kept_single, multi = [], []
    for row, texts in zip(single, drawn):
        bar = task.score(row["prompt"], row["chosen"])
        wrong = [t for t in texts if usable_response(t) and task.score(row["prompt"], t) < bar]
        if wrong:
            kept_single.append(row)
            multi.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": wrong[0]})
    out_dir = cfg.run_dir / "extras" / "more-is-less" / f"seed{seed}"
    reports = {}
    for name, rows in (("single", kept_single), ("multi", multi)):
        path = write_jsonl(rows, out_dir / name / "pairs.jsonl")
        reports[name] = run_probe(assets["sft_model"], str(path), out_dir / name, seed=seed, progress=False,
                                  max_length=task_setting(cfg, task_name, "max_length", 32),
                                  max_prompt_length=task_setting(cfg, task_name, "max_prompt_length", 16))
    accuracy = {name: next(iter(r["layers"].values()))["accuracy"] for name, r in reports.items()}
    (out_dir / "summary.json").write_text(json.dumps(accuracy))
    return {"single": accuracy["single"], "multi": accuracy["multi"], "pairs": len(multi)}


@register_claim(
    "more-is-less", "analysis",
    "a separability probe (linear classifier on hidden states) reports chosen-vs-rejected accuracy for a dataset",
    """`preftune probe`'s probe (an L2 logistic regression on the last layer's hidden state at the last
    response token, 5-fold cross-validation that never splits a pair) on each seed's SFT model, for
    two data sets over the same arithmetic prompts and the same chosen responses: single-model pairs,
    whose rejected response the SFT model sampled too, and multi-model pairs, whose rejected response
    the base model sampled (a different model, as in the paper's multi-model data). The paper's
    finding: multi-model data is more linearly separable. The part: accuracy(multi) − accuracy(single).""",
    extras=(Extra("more-is-less-probe", separability_single_vs_multi),))
def more_is_less_claim(ev):
    return [ev.difference("probe accuracy: multi-model − single-model pairs", ev.extra("more-is-less-probe", "multi"),
                          ev.extra("more-is-less-probe", "single"), "probe_accuracy")]


# --------------------------------------------------------------------------- A Survey of DPO

AXES = ("data_strategy", "learning_framework", "constraint_mechanism")


def taxonomy_coverage(cfg_dict: dict, seed, models: dict, chosen: dict) -> dict:
    """How many registered methods carry tags on the survey's axes, as `preftune methods --json` lists them."""
    from preftune.methods import all_methods

    listed = [spec.as_dict() for spec in all_methods()]    # what `preftune methods --json` prints per method
    untagged = [m["name"] for m in listed if not all((m.get("taxonomy") or {}).get(axis) for axis in AXES)]
    return {"methods": len(listed), "untagged": untagged}


@register_claim(
    "dpo-survey", "analysis",
    "every method in the registry carries its taxonomy tags and `methods` lists them",
    """The survey's taxonomy has four axes (data strategy, learning framework, constraint mechanism, model
    property). Every registered method must carry tags on the first three (model property applies only
    to some) in what `preftune methods --json` lists. An exact count, no seeds.""",
    extras=(Extra("survey-taxonomy", taxonomy_coverage, seeds="none"),))
def survey_claim(ev):
    found = ev.once("survey-taxonomy")
    return [ev.exact("every registered method is tagged on the survey's axes", not found["untagged"],
                     f"{found['methods'] - len(found['untagged'])}/{found['methods']} tagged"
                     + (f"; untagged: {', '.join(found['untagged'])}" if found["untagged"] else ""))]


# --------------------------------------------------------------------------- Insights into Alignment

def bench_coverage(cfg_dict: dict, seed, models: dict, chosen: dict) -> dict:
    """Which registered offline methods `preftune bench`'s table has a row for."""
    from preftune.bench import BenchConfig, bench_entries
    from preftune.config import load_config
    from preftune.methods import all_methods, build_objective

    entries = bench_entries(BenchConfig())
    covered = set()
    for entry in entries:
        covered |= {t.spec.name for t in build_objective(entry.loss or load_config(entry.recipe).loss).terms}
    offline = sorted(s.name for s in all_methods() if s.family.startswith("offline"))
    return {"offline_methods": len(offline), "missing": [m for m in offline if m not in covered],
            "starts": list(BenchConfig().starts)}


@register_claim(
    "insights-alignment", "analysis",
    "one benchmark command compares every offline method across the built-in tasks, with and without an SFT stage, "
    "as a table",
    """The tool is `preftune bench` (every offline method x built-in task x seed, from the SFT model and
    from the base model). Two parts. Exact: its table has a row for every registered offline method and
    both starting points. Measured, the paper's protocol finding that the SFT stage matters: DPO trained
    from each seed's SFT model against DPO trained from its base model on the same arithmetic pairs, each
    with its own search, compared on gold reward (SFT start − base start).""",
    arms=(DPO_ARITHMETIC.name, DPO_BASE.name), extras=(Extra("bench-coverage", bench_coverage, seeds="none"),))
def insights_claim(ev):
    found = ev.once("bench-coverage")
    return [ev.exact("the bench table covers every offline method, with and without SFT",
                     not found["missing"] and set(found["starts"]) == {"sft", "base"},
                     f"{found['offline_methods'] - len(found['missing'])}/{found['offline_methods']} offline methods; "
                     f"starts {found['starts']}" + (f"; missing {found['missing']}" if found["missing"] else "")),
            ev.compare(DPO_ARITHMETIC.name, DPO_BASE.name, "gold_reward")]


# --------------------------------------------------------------------------- Egida

@register_claim(
    "egida-safety", "analysis",
    "a safety task with unsafe/attack-style prompts; attack success rate falls after DPO while over-refusal is "
    "measured",
    """The safety task (invented harmful and benign requests under attack-style templates; test prompts
    include unseen names and unseen styles) from each seed's SFT model, which complies with harmful
    requests at a style-dependent rate. DPO (β and learning rate searched) on the gold-labelled pairs of
    the SFT model's samples. Attack success rate on the test prompts: SFT − DPO, paired per seed.
    Over-refusal (benign prompts refused) is reported beside it, as the paper does.""",
    arms=(DPO_SAFETY.name,))
def egida_claim(ev):
    task = DPO_SAFETY.task
    return [ev.difference("attack success rate: SFT − DPO", ev.start_model(task, "attack_success_rate"),
                          ev.final(DPO_SAFETY.name, "attack_success_rate"), "attack_success_rate"),
            ev.difference("over-refusal: DPO − SFT (reported)", ev.final(DPO_SAFETY.name, "over_refusal"),
                          ev.start_model(task, "over_refusal"), "attack_success_rate", kind=stats.REPORTED)]


# --------------------------------------------------------------------------- 3D-properties

@register_claim(
    "3d-properties", "analysis",
    "chosen/rejected log-likelihood trajectories are logged; the proposed regularisers reduce the rejected-likelihood "
    "collapse",
    """DPO and the paper's two regularisers, flex-DPO (β⁻ = β⁺ − 0.02, the paper's reported setting) and
    SFT-augmented DPO (λ = 1), from each seed's SFT model on the arithmetic pairs, each with its own
    search. The diagnostics log the teacher-forced per-token log-likelihood of the chosen and rejected
    responses every 25 steps. Collapse = rejected log-likelihood at step 0 minus at the end; the parts:
    DPO's collapse − each regulariser's.""",
    arms=(DPO_ARITHMETIC.name, FLEX.name, SFT_DPO.name))
def three_d_claim(ev):
    def collapse(arm_name):
        start, end = ev.final(arm_name, f"{REJECTED}@start"), ev.final(arm_name, f"{REJECTED}@end")
        return {s: start[s] - end[s] for s in start}

    dpo = collapse(DPO_ARITHMETIC.name)
    return [ev.difference(f"rejected log-likelihood drop: DPO − {name}", dpo, collapse(arm_name), "log_likelihood",
                          unit="nats/token")
            for name, arm_name in (("flex-DPO", FLEX.name), ("SFT+DPO", SFT_DPO.name))]
