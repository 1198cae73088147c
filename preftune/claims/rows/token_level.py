"""Token-level claims (TGDPO, From r to Q*) on the `multistep` task.

The mechanism: `12+7+30=` is answered `12+7=19;19+30=49`, about 16 tokens of which the results of
the steps decide correctness. A wrong sample usually differs from a right one in a few digits and
carries the error forward, so a pair has several informative tokens among many shared ones: room
for token weights (TGDPO) and for token-level credit and search (From r to Q*).
"""
from __future__ import annotations

from preftune.claims.arms import DPO_BETAS, arm
from preftune.claims.registry import Extra, register_claim
from preftune.claims.rows.baselines import DPO_MULTISTEP

TGDPO = arm("tgdpo@multistep", "multistep", "tgdpo", grid=DPO_BETAS, fixed={"alpha": 0.5},
            aux={"guidance": DPO_MULTISTEP.name})
BEAMS = 4                       # From r to Q*: gains at small beam counts (up to about 5)


def beam_vs_greedy(cfg_dict: dict, seed: int, models: dict, chosen: dict) -> dict:
    """Gold reward of the DPO policy's greedy answers and of its beam-search answers (likelihood search,
    BEAMS beams) on the test prompts."""
    from preftune.claims.assets import split_prompts, task_of, task_setting
    from preftune.claims.config import ClaimsConfig
    from preftune.config import from_dict
    from preftune.eval.search import beam_search
    from preftune.models import load_causal_lm, load_tokenizer
    from preftune.sampling import sample

    cfg = from_dict(ClaimsConfig, cfg_dict)
    task_name = DPO_MULTISTEP.task
    task, prompts = task_of(cfg, task_name), split_prompts(cfg, task_name, "test")
    max_new = task_setting(cfg, task_name, "max_new_tokens", 24)
    model_path = models[DPO_MULTISTEP.name]
    tokenizer, policy = load_tokenizer(model_path), load_causal_lm(model_path)
    greedy = sample(policy, tokenizer, prompts, 1, 0.0, 1.0, max_new, cfg.splits.batch_size, seed, False).texts
    beams = beam_search(policy, tokenizer, prompts, BEAMS, max_new)
    greedy_gold = sum(task.score(p, t[0]) for p, t in zip(prompts, greedy)) / len(prompts)
    beam_gold = sum(task.score(p, b.text) for p, b in zip(prompts, beams)) / len(prompts)
    return {"greedy": greedy_gold, "beam": beam_gold, "beams": BEAMS, "prompts": len(prompts)}


@register_claim(
    "tgdpo", "offline",
    "token weights from a guidance model; reduces to DPO at alpha=0; beats DPO on gold reward",
    """TGDPO (α = 0.5, the paper's default) with the guidance model of its paper's setting: a DPO model
    trained on the same pairs (here the DPO arm's model of the same seed at DPO's chosen setting; in
    the search, the search seed's). Both TGDPO and DPO search β over 0.1, 0.3, 1 and train from the
    SFT model on the multistep task's pairs. The reduction to DPO at α = 0 is an exact check of
    `preftune verify tgdpo`.""",
    arms=(TGDPO.name, DPO_MULTISTEP.name), verify=("tgdpo",))
def tgdpo_claim(ev):
    return [ev.tabular("tgdpo"), ev.compare(TGDPO.name, DPO_MULTISTEP.name, "gold_reward")]


@register_claim(
    "r2q", "offline",
    "per-token implicit rewards are exposed; beam search with the DPO policy raises gold reward over greedy",
    f"""The DPO arm's final policy on the multistep task (each seed, DPO's chosen setting) decodes every
    test prompt twice: greedily, and by likelihood beam search with {BEAMS} beams (the paper's gains are at
    small beam counts). Gold reward = final-answer correctness; the claim is beam − greedy > 0, paired per
    seed. The per-token credits (c_t = β·δ_t, summing to the sequence reward) are the exact check of
    `preftune verify dpo_token_credit`.""",
    arms=(DPO_MULTISTEP.name,), extras=(Extra("r2q-beam", beam_vs_greedy, needs=(DPO_MULTISTEP.name,)),),
    verify=("dpo_token_credit",))
def r2q_claim(ev):
    return [ev.tabular("dpo_token_credit"),
            ev.difference("gold reward: beam search − greedy (DPO policy)", ev.extra("r2q-beam", "beam"),
                          ev.extra("r2q-beam", "greedy"), "gold_reward")]
