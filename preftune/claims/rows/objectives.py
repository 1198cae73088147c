"""Claims about the objective's shape: f-DPO's divergences and MODPO's objective weight.

- f-DPO on arithmetic: reverse KL (DPO exactly) against forward KL, both from the SFT model on
  the same pairs, each with its own search. Diversity is the Monte-Carlo entropy of the policy's
  own samples (nats per response), from the same evaluation prompts.
- MODPO on `two-objective`: pairs labelled by the helpful reward (show the work), the concise
  reward's margin as MODPO's margin model; the weight w on the labelled objective is swept over
  the paper's 0.1, 0.5, 0.9. The β and learning rate are searched once, at w = 0.5, with the sum
  of both gold rewards as the validation score, and used at every w (the weight is what the claim
  varies, not a setting to tune).
"""
from __future__ import annotations

from preftune.claims.arms import DPO_BETAS, arm
from preftune.claims.registry import register_claim
from preftune.claims.rows.baselines import DPO_ARITHMETIC

FORWARD_KL = arm("fdpo-forward-kl@arithmetic", "arithmetic", "fdpo", grid=DPO_BETAS,
                 fixed={"divergence": "forward_kl"}, extra_metrics=("entropy",))

MODPO_WEIGHTS = (0.1, 0.5, 0.9)
CONCISE_MARGIN = {"extra_columns": [{"margin_scores": ["chosen_concise", "rejected_concise"]}]}


def modpo_arm(weight: float):
    return arm(f"modpo-w{weight:g}@two-objective", "two-objective", "modpo", grid=DPO_BETAS,
               fixed={"objective_weight": weight}, data=CONCISE_MARGIN, selection="gold/helpful+gold/concise",
               search_as=None if weight == 0.5 else "modpo-w0.5@two-objective")


MODPO = {w: modpo_arm(w) for w in sorted(MODPO_WEIGHTS, key=lambda w: w != 0.5)}


@register_claim(
    "f-dpo", "offline",
    "the divergences trade gold reward against generation diversity in the documented direction",
    """The documented direction (Wang et al. 2023): reverse KL (DPO) reaches the higher reward and the
    lower diversity, forward KL the lower reward and the higher diversity (α-divergences lie between).
    fdpo with forward KL and DPO (reverse KL) train from each seed's SFT model on the arithmetic task's
    pairs, each searching β over 0.1, 0.3, 1. Two parts: gold reward, reverse − forward; sample entropy,
    forward − reverse.""",
    arms=(DPO_ARITHMETIC.name, FORWARD_KL.name))
def fdpo_claim(ev):
    return [ev.compare(DPO_ARITHMETIC.name, FORWARD_KL.name, "gold_reward"),
            ev.compare(FORWARD_KL.name, DPO_ARITHMETIC.name, "entropy", unit="nats")]


@register_claim(
    "modpo", "offline",
    "sweeping the objective weight traces a Pareto front of two gold rewards",
    """MODPO at w = 0.1, 0.5 and 0.9 on the two-objective task (helpful: show the work; concise: the bare
    sum; both need the right sum, so no response is best for both). Pairs are labelled by helpfulness;
    MODPO's margin model is the concise reward. A front is traced when more weight on helpfulness buys
    helpfulness and costs conciseness: helpful(w = 0.9) − helpful(w = 0.1) > 0 and
    concise(w = 0.1) − concise(w = 0.9) > 0, paired per seed; the middle weight is reported.""",
    arms=tuple(a.name for a in MODPO.values()))
def modpo_claim(ev):
    low, mid, high = (MODPO[w].name for w in MODPO_WEIGHTS)
    parts = [ev.difference("helpful: w=0.9 − w=0.1", ev.final(high, "gold/helpful"), ev.final(low, "gold/helpful"),
                           "gold_reward"),
             ev.difference("concise: w=0.1 − w=0.9", ev.final(low, "gold/concise"), ev.final(high, "gold/concise"),
                           "gold_reward")]
    for name, arm_name in (("helpful", mid), ("concise", mid)):
        parts.append(ev.part(f"{name} at w=0.5 (reported)", ev.final(arm_name, f"gold/{name}"), "gold_reward",
                             kind="reported"))
    return parts
