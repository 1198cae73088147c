"""Claims about imperfect data: label noise (ADPO), mixed margins (MADPO, β-DPO), scored lists (BRAIn,
Curry-DPO).

- `noisy-labels` is arithmetic whose best-vs-worst pairs are swapped with a controlled probability ε
  (the claims config fixes ε); `arithmetic` is the same samples with clean labels, so the two
  conditions differ in the flips alone.
- `mixed-margins` grades answers (1 for the sum, 1/(1 + |error|) otherwise) and labels them with a
  Bradley-Terry annotator at τ = 0.1: pairs range from near-certain to coin flips. Each response
  carries the annotator's utility (`chosen_score`, a list's `scores`): the reward-model scores that
  MADPO, BRAIn and the curriculum read. No method sees the gold reward.
"""
from __future__ import annotations

from preftune.claims import stats
from preftune.claims.arms import DPO_BETAS, arm, betas
from preftune.claims.registry import register_claim
from preftune.claims.rows.baselines import DPO_ARITHMETIC, DPO_MARGINS, DPO_NOISY

ADPO_TAUS = betas("tau", 1.0, 3.0, 10.0)          # τ = 1/β: the DPO grid's β = 1, 0.33, 0.1
ADPO_FIXED = {"q": 0.9}                            # soft label, as configs/methods/adpo.yaml
ADPO_CLEAN = arm("adpo@arithmetic", "arithmetic", "adpo", grid=ADPO_TAUS, fixed=ADPO_FIXED)
ADPO_NOISY = arm("adpo@noisy-labels", "noisy-labels", "adpo", grid=ADPO_TAUS, fixed=ADPO_FIXED)

RM_SCORES = {"extra_columns": [{"rm_scores": ["chosen_score", "rejected_score"]}]}
MADPO = arm("madpo@mixed-margins", "mixed-margins", "madpo", grid=DPO_BETAS, fixed={"c_max": 2.0, "c_min": 0.5},
            data=RM_SCORES)
BETA_DPO = arm("beta_dpo@mixed-margins", "mixed-margins", "beta_dpo", grid=DPO_BETAS,
               fixed={"alpha": 0.6, "filter_ratio": 0.2})
BRAIN = arm("brain@mixed-margins", "mixed-margins", "brain", grid=betas("beta_post", 0.1, 0.3, 1.0), rows="listwise",
            aux={"proposal_logps": "sft"})
CURRY = arm("curry_dpo@mixed-margins", "mixed-margins", "curry_dpo", grid=DPO_BETAS, rows="listwise",
            curriculum={"pairs": "chosen_fixed", "order": "rating_gap", "schedule": "iterative"})


@register_claim(
    "adpo", "offline",
    "under injected label noise ADPO's gold reward degrades less than DPO's",
    """ADPO (pairwise anchored soft-DPO, anchor = the SFT model, soft label q = 0.9 as in the project's
    recipe; τ = 1/β searched over 1, 3 and 10) and DPO (β over 0.1, 0.3, 1), each searched and run on the
    same samples with clean labels (arithmetic) and with 30% of the pairs swapped (noisy-labels, flip
    rate ε = 0.3 in configs/claims/full.yaml: heavy noise, still below the 50% at which labels carry
    nothing). Degradation = gold reward on clean labels minus gold reward on noisy ones; the
    claim is DPO's degradation minus ADPO's > 0, per seed (a difference of differences, paired).""",
    arms=(ADPO_CLEAN.name, ADPO_NOISY.name, DPO_ARITHMETIC.name, DPO_NOISY.name))
def adpo_claim(ev):
    adpo_drop = {s: ev.final(ADPO_CLEAN.name, "gold_reward")[s] - ev.final(ADPO_NOISY.name, "gold_reward")[s]
                 for s in ev.seeds}
    dpo_drop = {s: ev.final(DPO_ARITHMETIC.name, "gold_reward")[s] - ev.final(DPO_NOISY.name, "gold_reward")[s]
                for s in ev.seeds}
    return [ev.difference("gold reward lost to noise: DPO's − ADPO's", dpo_drop, adpo_drop, "gold_reward"),
            ev.part("mechanism: DPO's gold reward lost to noise (reported)", dpo_drop, "gold_reward",
                    kind=stats.REPORTED)]


@register_claim(
    "madpo", "offline",
    "weights from a reward model margin; beats DPO and beta-DPO on mixed-quality data",
    """MADPO (c_max = 2, c_min = 0.5, λ = 1, τ ≈ 6.9: the paper's defaults), DPO and β-DPO (a = 0.6,
    ρ = 0.2) on the mixed-margins task's pairs, each with β searched over 0.1, 0.3, 1. MADPO's reward
    model is the annotator's own utilities (the scores an annotated data set carries), so its weights
    see the margins the labels came from and nothing more. Two parts: MADPO − DPO and MADPO − β-DPO on
    gold reward.""",
    arms=(MADPO.name, DPO_MARGINS.name, BETA_DPO.name))
def madpo_claim(ev):
    return [ev.compare(MADPO.name, DPO_MARGINS.name, "gold_reward"),
            ev.compare(MADPO.name, BETA_DPO.name, "gold_reward")]


@register_claim(
    "brain", "offline",
    "reduces to DPO for two samples; beats DPO on gold reward with a reward model",
    """BRAIn distils the reward-conditioned posterior p_SFT·exp(r/β_post) from each prompt's four SFT
    samples (proposal = the SFT model that drew them; r = the annotator's utilities on mixed-margins;
    β_post searched over 0.1, 0.3, 1). DPO trains on the best-vs-worst pair of the same four samples.
    Same prompts, samples, steps and batch (lists for BRAIn, pairs for DPO). The reduction to DPO is
    its exact check in `preftune verify brain`.""",
    arms=(BRAIN.name, DPO_MARGINS.name), verify=("brain",))
def brain_claim(ev):
    return [ev.tabular("brain"), ev.compare(BRAIN.name, DPO_MARGINS.name, "gold_reward")]


@register_claim(
    "curry-dpo", "offline",
    "multi-response data -> easy-to-hard pair curriculum with per-stage reference refresh; beats single-pair DPO "
    "on gold reward",
    """Curry-DPO cuts each prompt's four scored samples into three pairs (the best against each other,
    chosen fixed), orders them by rating gap (easy first) and trains three stages, each from the last
    stage's policy with the reference refreshed to it; the stages share the preference budget (a third
    of the steps each), so the total steps equal DPO's. DPO trains on the single best-vs-worst pair of
    the same samples. Both search β over 0.1, 0.3, 1. Task: mixed-margins (graded answers, annotator
    utilities as ratings).""",
    arms=(CURRY.name, DPO_MARGINS.name))
def curry_claim(ev):
    return [ev.compare(CURRY.name, DPO_MARGINS.name, "gold_reward")]
