"""Single-stage claims (ASFT, TPO): alignment straight from the base model, against two-stage or
plain-SFT baselines on equal data and equal steps.

The base model of a seed is the bench's: the tiny model pretrained on every task's noisy
demonstrations, which knows the formats and is right only some of the time. The data are the
arithmetic task's best-vs-worst pairs of the SFT model's samples (every arm sees the same
prompts and responses); TPO and its baseline also see each prompt's gold answer.
"""
from __future__ import annotations

from preftune.claims.arms import DPO_BETAS, SFT_ON_CHOSEN, SFT_THEN_DPO, arm, betas
from preftune.claims.registry import register_claim

ASFT = arm("asft-from-base@arithmetic", "arithmetic", "asft", grid=betas("lam", 0.1, 0.3, 1.0), fixed={"beta": 1.0},
           start="base")
SFT_CHOSEN = arm("sft-on-chosen-from-base@arithmetic", "arithmetic", SFT_ON_CHOSEN, start="base")
TPO = arm("tpo-from-base@arithmetic", "arithmetic", "tpo", grid=betas("beta", 0.01, 0.1, 1.0), fixed={"alpha": 1.0},
          start="base", data={"extra_responses": ["gold"]})
SFT_DPO = arm("sft-then-dpo-from-base@arithmetic", "arithmetic", SFT_THEN_DPO, grid=DPO_BETAS, start="base")


@register_claim(
    "asft", "offline",
    "identity and decoupling tests hold; single-stage from a base model beats plain SFT on gold reward",
    """From each seed's base model, ASFT (β = 1 as in the original; λ, the weight of its alignment
    term, searched over 0.1, 0.3, 1 as in the Blur paper's grid) on the pairs, against plain SFT on the
    chosen responses of the same pairs (learning rate searched, nothing else to search). Same prompts,
    chosen responses and steps: ASFT adds only the rejected responses' unlikelihood. The identity and
    decoupling tests are ASFT's exact check in `preftune verify asft`.""",
    arms=(ASFT.name, SFT_CHOSEN.name), verify=("asft",))
def asft_claim(ev):
    return [ev.tabular("asft"), ev.compare(ASFT.name, SFT_CHOSEN.name, "gold_reward")]


@register_claim(
    "tpo", "offline",
    "single step from a base model, no separate SFT stage, beats SFT-then-DPO at equal data on gold reward",
    """From each seed's base model: TPO (α = 1, the paper's base-model setting; β searched over 0.01,
    0.1, 1) trains one stage on triples (gold answer, chosen, rejected). The baseline spends half the
    steps on SFT of the same gold answers and the other half on DPO (β over 0.1, 0.3, 1) of the same
    pairs from that SFT model. Equal data (the same triples) and equal optimizer steps in total.""",
    arms=(TPO.name, SFT_DPO.name))
def tpo_claim(ev):
    return [ev.compare(TPO.name, SFT_DPO.name, "gold_reward")]
