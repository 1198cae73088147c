"""Curry-DPO: curriculum learning over ranked preference pairs (Pattnaik et al., EMNLP Findings 2024,
arXiv 2403.07230)."""
from __future__ import annotations

from preftune.methods.dpo import dpo
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput


@register(
    name="curry_dpo", seed="curry-dpo", family="offline-data", input_kind="pairwise", needs_reference=True,
    status="stable",
    paper="Pattnaik et al. 2024, Curry-DPO: Enhancing Alignment using Curriculum Learning & Ranked Preferences, "
          "arXiv 2403.07230",
    taxonomy=taxonomy(["pairwise", "ranked-lists", "multi-pair", "curriculum"], ["offline", "iterative"],
                      ["fixed-reference", "stage-wise-reference-refresh", "reverse-kl"]),
    reconstructed="pair modes rejected_fixed and all_pairs, the ref_implicit_margin and random difficulty "
                  "signals, the within-stage shuffle, and the stage-major order of the sorted (non-iterative) "
                  "run are library options; the paper confirms chosen_fixed pairs ordered by rating gap with "
                  "an iterative reference update. Per-stage epochs and beta are not known (zephyr's beta 0.1).",
)
def curry_dpo(policy: Logps, reference: Logps, *, beta: float = 0.1) -> MethodOutput:
    """DPO on pairs cut from ranked lists and trained easy to hard (offline.md §4).

    The loss is DPO's (paper §2, Eq. 1): L = -log sigmoid(beta * (Delta_w - Delta_l)), with
    Delta_y = log pi(y|x) - log pi_ref(y|x). What makes it Curry-DPO is the data and schedule,
    set in the run's `curriculum:` section (config.CurriculumConfig, train/curriculum.py):
    each prompt's N rated responses R1 > ... > RN become pairs (paper: chosen fixed, (R1,RN),
    ..., (R1,R2)), a pair with a larger rating gap is easier, and
      - iterative (paper): stage k trains on every prompt's k-th easiest pair, starting from the
        stage k-1 policy, which is also stage k's reference (stage 1: the SFT model);
      - sorted: one run over all pairs, easy to hard, reference fixed to the SFT model.
    Without a curriculum section this is DPO on the pairs given.
    beta: 0.1 (zephyr recipe; the paper's per-stage value is not confirmed). Shapes: (B, 2) in, (B,) loss.
    """
    return dpo(policy, reference, beta=beta)


@tabular_check("curry_dpo")
def curry_dpo_tabular_check(fn=curry_dpo):
    """Two exact properties of the curriculum on the standard 4-response bandit, ratings r as
    Bradley-Terry rewards (a rated pair's label is a BT draw, so optima are finite):

    1. The pairs of one ranked list identify the reward (sorted schedule): chosen_fixed pairs
       (R1,Rj) and rejected_fixed pairs (Ri,RN) each form a spanning star over the responses, so
       the population optimum of the loss over exactly those pairs, built by data/ranked.py, has
       beta (Delta_i - Delta_j) = r_i - r_j for every pair i, j, also the ones never compared.
       (The order of a sorted run does not change the population optimum.)
    2. Iterative stages with the reference refreshed: stage k starts at policy = reference (loss
       exactly log 2) and its optimum, measured against its own reference (the stage k-1
       optimum), has beta * margin = r_w - r_l on its pair.
    """
    import math

    import torch

    from preftune.data.ranked import build_pairs
    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import (DEFAULT_LENGTHS, DEFAULT_REF, DEFAULT_REWARDS, compare, compare_vectors,
                                         log_ratio, method_loss)
    from preftune.tabular.expected import expected_loss, optimise_policy, pairwise_dataset
    from preftune.tabular.preferences import PreferenceModel

    beta = 0.1
    r = torch.tensor(DEFAULT_REWARDS, dtype=torch.float64)
    # Ratings listed in a shuffled order, so that the pair builder's ranking is exercised.
    listed = [2, 0, 3, 1]
    ratings = [float(r[i]) for i in listed]
    loss = method_loss("curry_dpo", fn, beta=beta)
    preferences = PreferenceModel.bradley_terry(DEFAULT_REWARDS)

    def sampling(pairs) -> torch.Tensor:
        mu = torch.zeros(len(r), len(r), dtype=torch.float64)
        for p in pairs:
            w, l = listed[p.chosen], listed[p.rejected]
            mu[w, l] = mu[l, w] = 1.0
        return mu

    results = []
    i, j = torch.triu_indices(len(r), len(r), offset=1)
    for mode in ("chosen_fixed", "rejected_fixed"):
        bandit = Bandit.create(DEFAULT_REF, DEFAULT_LENGTHS)
        data = pairwise_dataset(preferences, sampling(build_pairs(ratings, mode)))
        optimum = optimise_policy(loss, bandit, data)
        implicit = beta * log_ratio(bandit, optimum.logp)
        results.append(compare_vectors("curry_dpo", f"{mode} pairs identify r: beta*(D_i-D_j) = r_i-r_j",
                                       r[i] - r[j], implicit[i] - implicit[j], 1e-9,
                                       labels=[f"{a},{b}" for a, b in zip(i.tolist(), j.tolist())]))

    reference = torch.tensor(DEFAULT_REF, dtype=torch.float64)
    start_losses, stage_margins, targets, labels = [], [], [], []
    for k, pair in enumerate(build_pairs(ratings, "chosen_fixed"), start=1):
        bandit = Bandit.create(reference, DEFAULT_LENGTHS)
        data = pairwise_dataset(preferences, sampling([pair]))
        start_losses.append(float(expected_loss(loss, bandit, data, bandit.reference_logits())))
        optimum = optimise_policy(loss, bandit, data)
        w, l = listed[pair.chosen], listed[pair.rejected]
        delta = log_ratio(bandit, optimum.logp)
        stage_margins.append(float(beta * (delta[w] - delta[l])))
        targets.append(float(r[w] - r[l]))
        labels.append(f"stage {k} ({w},{l})")
        reference = optimum.probs[0]
    results.append(compare("curry_dpo", "every iterative stage starts at loss log 2 (policy = reference) "
                           "[worst stage]", math.log(2), max(start_losses, key=lambda v: abs(v - math.log(2))),
                           1e-15))
    results.append(compare_vectors("curry_dpo", "stage optimum vs previous-stage reference: beta*margin = r_w-r_l",
                                   torch.tensor(targets), torch.tensor(stage_margins), 1e-9, labels=labels))
    return results
