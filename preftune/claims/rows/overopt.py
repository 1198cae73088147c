"""The over-optimisation rows: the KL-budget sweep (Rafailov et al. 2024) and the likelihood indicators
(Shi et al. 2024), both read from one sweep per seed.

Each seed trains DPO from its SFT model on the length-bias task's pairs at every β of SWEEP_BETAS,
for twice the preference budget of the other rows (so that the small β runs can overshoot) at the
learning rate DPO's own search chose on that task, holding out a tenth of the pairs. The
diagnostics log, SWEEP_EVALUATIONS times per run and at step 0, the Monte-Carlo KL to the SFT model and the
gold reward of samples on held-out prompts, and the top-10 entropy and mass on the held-out
pairs' chosen responses. The mechanism: the labeller rewards length and gold reward does not, so
the further the policy moves, the more it has to lose.
"""
from __future__ import annotations

import math

from preftune.claims.registry import Extra, register_claim
from preftune.claims.rows.baselines import DPO_LENGTH

SWEEP_BETAS = (0.03, 0.1, 0.3, 1.0)   # `preftune sweep`'s default values
SWEEP_STEPS_FACTOR = 2                # x the preference budget
SWEEP_EVALUATIONS = 12                # diagnostics logged this many times per run (and at step 0)
SWEEP_PROMPTS = 64                    # held-out prompts of each diagnostics evaluation (fewer in a smoke run)
INDICATORS = {"entropy": "diag/top10_entropy", "mass": "diag/top10_mass"}


def flag_errors(rows: list[dict]) -> dict:
    """For one run's diagnostics rows: the gold reward's peak step and, per indicator, how far (in
    evaluation intervals) its own peak lies from it, against the mean distance of a uniformly random
    logged step (chance). A turn from rising to falling is a peak, so an indicator that flags the
    point where gold reward starts to fall peaks where gold reward peaks."""
    rows = [r for r in rows if "diag/gold_reward" in r and all(k in r for k in INDICATORS.values())]
    if len(rows) < 3:
        raise ValueError(f"the sweep logged {len(rows)} diagnostics rows; the indicators need at least 3")
    gold = [r["diag/gold_reward"] for r in rows]
    peak = max(range(len(rows)), key=lambda i: gold[i])
    chance = sum(abs(i - peak) for i in range(len(rows))) / len(rows)
    out = {"gold_peak_step": rows[peak]["step"], "gold_fell": peak < len(rows) - 1, "chance_error": chance}
    for name, key in INDICATORS.items():
        values = [r[key] for r in rows]
        flagged = max(range(len(rows)), key=lambda i: values[i])
        out[f"{name}_flag_step"] = rows[flagged]["step"]
        out[f"{name}_error"] = abs(flagged - peak)
    return out


def overopt_sweep(cfg_dict: dict, seed: int, models: dict, chosen: dict) -> dict:
    """The seed's sweep: fitted curve per seed, and the indicators' distance to the gold peak per run."""
    import json

    from preftune.claims.assets import assets_of, preference_rows, task_setting
    from preftune.claims.config import ClaimsConfig
    from preftune.config import RunConfig, from_dict
    from preftune.bench.sweep import sweep_points
    from preftune.eval.sweep import fit_overopt_curve
    from preftune.train.runner import run_training
    from preftune.train.metrics import read_metrics

    cfg = from_dict(ClaimsConfig, cfg_dict)
    task = DPO_LENGTH.task
    assets = assets_of(cfg, task, seed)
    rows = preference_rows(cfg, task, seed, "best-worst")
    out_dir = cfg.run_dir / "extras" / "overopt" / f"seed{seed}"
    run_dirs, steps = {}, SWEEP_STEPS_FACTOR * cfg.preference.steps
    for beta in SWEEP_BETAS:
        spec = {"name": f"dpo-beta{beta:g}", "output_dir": str(out_dir / "{name}"),
                "model": {"name_or_path": assets["sft_model"]}, "loss": {"dpo": {"beta": beta}},
                "data": {"source": f"task:{task}", "eval_fraction": 0.1,
                         "max_length": task_setting(cfg, task, "max_length", 48),
                         "max_prompt_length": task_setting(cfg, task, "max_prompt_length", 16),
                         "task": {"options": task_setting(cfg, task, "options", {}) or {},
                                  "labeller": task_setting(cfg, task, "labeller", {}) or {}}},
                "train": {"steps": steps, "batch_size": cfg.preference.batch_size,
                          "lr": chosen[DPO_LENGTH.name]["lr"], "warmup_ratio": cfg.preference.warmup_ratio,
                          "seed": seed, "progress": False, "log_every": 10},
                "diagnostics": {"every": max(1, steps // SWEEP_EVALUATIONS), "examples": 64,
                                "prompts": min(SWEEP_PROMPTS, cfg.splits.test_prompts or SWEEP_PROMPTS), "samples_per_prompt": 4,
                                "max_new_tokens": task_setting(cfg, task, "max_new_tokens", 24)}}
        run_dirs[beta] = run_training(from_dict(RunConfig, spec), data_source=rows)
    points = sweep_points(run_dirs)
    for beta in SWEEP_BETAS:  # the gain over the run's own start (every run starts at the SFT model)
        start = next(p["gold_reward"] for p in points if p["value"] == beta and p["step"] == 0)
        for p in points:
            if p["value"] == beta:
                p["gain"] = p["gold_reward"] - start
    fit = fit_overopt_curve([p["d"] for p in points], [p["gain"] for p in points])
    flags = {str(beta): flag_errors(read_metrics(run_dir)) for beta, run_dir in run_dirs.items()}
    result = {"alpha": fit.alpha, "curvature": fit.beta, "rmse": fit.rmse, "d_star": fit.d_star,
              "points": len(points), "gold_fell_runs": sum(f["gold_fell"] for f in flags.values())}
    for name in INDICATORS:  # per seed: mean over the runs of (chance distance - the indicator's distance)
        result[f"{name}_advantage"] = sum(f["chance_error"] - f[f"{name}_error"] for f in flags.values()) / len(flags)
    (out_dir / "sweep.json").write_text(json.dumps({"points": points, "fit": result, "flags": flags}, indent=1))
    return {k: (v if v is None or not isinstance(v, float) or math.isfinite(v) else None) for k, v in result.items()}


SWEEP = Extra("overopt-sweep", overopt_sweep, after=(DPO_LENGTH.name,))


@register_claim(
    "daa-overopt-scaling", "analysis",
    "a KL-budget sweep produces gold reward vs sqrt(KL) and the fitted curve d(alpha - beta log d)",
    f"""Per seed, DPO at β ∈ {{{', '.join(map(str, SWEEP_BETAS))}}} for twice the preference budget on the
    length-bias task (the labeller's length preference is the proxy that gold reward does not share), with
    KL and gold reward logged {SWEEP_EVALUATIONS} times per run: every logged point (d = sqrt(KL), gold gain over
    the SFT model) of the four runs enters one least-squares fit of R(d) = d(α − β log d) (eval/sweep.py,
    the function behind `preftune sweep`). The paper's curves are hump-shaped: the fitted β is positive
    (an interior peak at d* = exp(α/β − 1)). The part: the fitted β > 0 over seeds; the fit's RMSE and the
    number of runs whose gold reward fell after a peak are reported.""",
    arms=(DPO_LENGTH.name,), extras=(SWEEP,))
def overopt_scaling_claim(ev):
    from preftune.claims import stats

    return [ev.part("fitted curvature β of R(d) = d(α − β log d)", ev.extra(SWEEP.name, "curvature"), "curvature"),
            ev.part("fit RMSE (reported)", ev.extra(SWEEP.name, "rmse"), "gold_reward", kind=stats.REPORTED),
            ev.part("runs (of 4) whose gold reward fell after its peak (reported)",
                    ev.extra(SWEEP.name, "gold_fell_runs"), "steps", kind=stats.REPORTED)]


@register_claim(
    "likelihood-overopt", "analysis",
    "both indicators are logged during training and flag the point where gold reward starts to fall",
    f"""The runs of the KL-budget sweep (daa-overopt-scaling) log the top-10 entropy and top-10 mass of the
    policy's next-token distributions along held-out chosen responses {SWEEP_EVALUATIONS} times per run, beside
    the gold reward of samples. An indicator flags the step where it turns from rising to falling (its
    peak); it flags the point where gold reward starts to fall when that is the gold reward's peak. Per
    run: the distance, in evaluation intervals, between the indicator's peak and the gold peak, against
    the mean distance of a uniformly random logged step; per seed, the mean over the four runs of
    (chance distance − indicator distance). One part per indicator.""",
    arms=(DPO_LENGTH.name,), extras=(SWEEP,))
def likelihood_overopt_claim(ev):
    return [ev.part(f"top-10 {name}: steps closer to the gold peak than chance", ev.extra(SWEEP.name, f"{name}_advantage"),
                    "steps", unit="intervals") for name in INDICATORS]
