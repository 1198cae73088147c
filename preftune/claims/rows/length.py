"""Length claims (SimPO, LD-DPO) on the `length-bias` task.

The mechanism: arithmetic answers trail 0-3 filler words drawn independently of correctness, so
responses range from 1 to about 17 tokens and length says nothing about quality; half the prompts'
pairs are judged by length (the longer response wins), so fitting the labels rewards padding. Gold
reward is correctness of the leading number alone. DPO, SimPO and LD-DPO train on the same pairs
for the same steps, each at the setting its own search chose.
"""
from __future__ import annotations

from preftune.claims import stats
from preftune.claims.arms import DPO_BETAS, arm, betas
from preftune.claims.registry import register_claim
from preftune.claims.rows.baselines import DPO_LENGTH

SIMPO = arm("simpo@length-bias", "length-bias", "simpo", grid=betas("beta", 0.5, 2.0, 8.0),
            fixed={"gamma_beta_ratio": 0.5})
LD_DPO = arm("ld_dpo@length-bias", "length-bias", "ld_dpo", grid=DPO_BETAS, fixed={"alpha": 0.5})


@register_claim(
    "simpo", "offline",
    "no reference model is loaded; on a length-biased preference task gold win-rate >= DPO's without longer responses",
    """SimPO and DPO from each seed's SFT model on the length-bias task's pairs (half judged by length).
    SimPO's β is searched over 0.5, 2 and 8 (its paper's default is 2) with γ/β fixed at the recommended
    0.5; DPO's over 0.1, 0.3 and 1. Scored on held-out prompts by gold win-rate against the SFT model's
    samples and by mean response length. Fair: same pairs, steps and batch; the mechanism (a labeller
    that rewards padding, padding that earns nothing) is the one SimPO's length normalisation targets.
    "Gold win-rate >= DPO's" and "without longer responses" are non-inferiority parts (within δ).""",
    arms=(SIMPO.name, DPO_LENGTH.name))
def simpo_claim(ev):
    from preftune.methods import get

    return [ev.exact("no reference model: simpo is registered reference-free", not get("simpo").needs_reference,
                     f"needs_reference = {get('simpo').needs_reference}"),
            ev.compare(SIMPO.name, DPO_LENGTH.name, "win_rate", stats.NON_INFERIORITY),
            ev.compare(SIMPO.name, DPO_LENGTH.name, "length", stats.NON_INFERIORITY, lower_is_better=True,
                       unit="tokens"),
            padding(ev)]


@register_claim(
    "ld-dpo", "offline",
    "on a length-biased task responses stay shorter than DPO's at equal or better gold reward",
    """LD-DPO (α = 0.5, the paper's best) and DPO from each seed's SFT model on the length-bias task's pairs,
    both searched over β ∈ {0.1, 0.3, 1}. LD-DPO counts the tokens beyond the shorter response's length
    at weight α, so the padding the labeller rewards moves its loss less. Shorter: DPO's mean length
    minus LD-DPO's, superiority (δ = half a token). Equal or better gold reward: non-inferiority.""",
    arms=(LD_DPO.name, DPO_LENGTH.name))
def ld_dpo_claim(ev):
    return [ev.compare(LD_DPO.name, DPO_LENGTH.name, "length", lower_is_better=True, unit="tokens"),
            ev.compare(LD_DPO.name, DPO_LENGTH.name, "gold_reward", stats.NON_INFERIORITY),
            padding(ev)]


def padding(ev):
    """The mechanism, reported: how much longer DPO's answers are than the SFT model's."""
    return ev.difference("mechanism: length, DPO − SFT model (reported)", ev.final(DPO_LENGTH.name, "length"),
                         ev.start_model(DPO_LENGTH.task, "length"), "length", kind=stats.REPORTED, unit="tokens")
