"""The online rows. Tabular claims are exact and quoted from `preftune verify`; the LM claims run the
online loop on the intransitive task (three greeting styles, a panel of three annotators with
different rankings and noise whose majority vote is cyclic), where the policy's distribution over
the answer set, and so its duality gap and its win-rate against the initial policy, are exact.

Every online arm runs the same iterations, prompts, samples and optimizer steps (the claims
config's `online` budget), from the warm-started SFT model of its seed, and searches its step size
(η or β) and the shared learning-rate grid on held-out validation guests.
"""
from __future__ import annotations

from preftune.claims.arms import arm, betas
from preftune.claims.registry import register_claim

ONLINE_TASK = "intransitive"


def online_arm(name: str, method: str, recipe: str, grid, selection: str, **settings):
    return arm(f"{name}@{ONLINE_TASK}", ONLINE_TASK, method, grid=grid, kind="online", selection=selection,
               online={"recipe": recipe, **settings})


SPPO = online_arm("sppo", "sppo", "configs/online/sppo.yaml", betas("eta", 1.0, 2.0, 4.0), "win_rate_vs_initial")
DNO = online_arm("dno", "dno", "configs/online/dno.yaml", betas("eta", 0.5, 1.0, 2.0), "win_rate_vs_initial")
MNPO = online_arm("mnpo", "mnpo", "configs/online/mnpo.yaml", betas("eta", 0.5, 1.0, 2.0), "-duality_gap")
INPO = online_arm("inpo", "inpo", "configs/online/inpo.yaml", betas("eta", 0.5, 1.0, 2.0), "-duality_gap")
OFS = online_arm("ofs_dpo-domains", "ofs_dpo", "configs/online/ofs_dpo_domains.yaml", betas("beta", 0.3, 1.0, 3.0),
                 "-mean_domain_gap", domains=True)
ONLINE_DPO = online_arm("online_dpo-domains", "online_dpo", "configs/online/online_dpo_domains.yaml",
                        betas("beta", 0.3, 1.0, 3.0), "-mean_domain_gap", domains=True)


def rising(ev, arm_name: str) -> list:
    """The LM part of SPPO and DNO: the exact win-rate against the initial policy at the last iteration
    minus after the first, and its value at the last iteration minus 1/2."""
    last, first = ev.final(arm_name, "win_rate_vs_initial"), ev.final(arm_name, "win_rate_vs_initial@1")
    return [ev.difference("LM: win-rate vs initial, last iteration − first", last, first, "game"),
            ev.part("LM: win-rate vs initial at the last iteration − 1/2", {s: v - 0.5 for s, v in last.items()},
                    "game")]


SELF_PLAY = """{method} from each seed's warm-started SFT model for the online budget's iterations (≥ 3): samples of the
    current policy, the panel's exact preference probabilities as the judge, {method}'s pairs and loss; step
    size {step} and learning rate searched on validation guests by the final win-rate against the initial
    policy. The LM claim is that the win-rate against the initial policy keeps rising: last iteration
    minus first > 0, and above 1/2 at the end (exact, from the policy's distribution over the answer set, on
    the test guests). The tabular claim is quoted from `preftune verify {name}`."""


@register_claim(
    "sppo", "online",
    "tabular: converges to the Nash equilibrium; LM: win-rate vs the initial policy rises over iterations",
    SELF_PLAY.format(method="SPPO", step="η ∈ {1, 2, 4}", name="sppo"), arms=(SPPO.name,), verify=("sppo",))
def sppo_claim(ev):
    return [ev.tabular("sppo"), *rising(ev, SPPO.name)]


@register_claim(
    "dno", "online",
    "tabular: average iterate reaches an epsilon-Nash of an intransitive preference game; LM: iterative "
    "self-improvement raises gold win-rate vs the initial policy over >=3 iterations",
    SELF_PLAY.format(method="DNO-Prct", step="η ∈ {0.5, 1, 2}", name="dno"), arms=(DNO.name,), verify=("dno",))
def dno_claim(ev):
    return [ev.tabular("dno"), *rising(ev, DNO.name)]


@register_claim(
    "mnpo", "online",
    "tabular: converges in an n-player preference game; LM: beats INPO under heterogeneous annotators",
    """MNPO (the mixture of the last two policies, λ = (0.5, 0.5)) and INPO, each from the seed's warm-started
    SFT model with binary winners drawn from the panel of three heterogeneous annotators (different
    rankings, different noise), the same budget, and η ∈ {0.5, 1, 2} and the learning rate searched on
    validation guests by the final duality gap. "Beats": a smaller final duality gap to the panel's Nash
    equilibrium on the test guests (exact): INPO's gap − MNPO's. The tabular claim is quoted from
    `preftune verify mnpo`.""",
    arms=(MNPO.name, INPO.name), verify=("mnpo",))
def mnpo_claim(ev):
    return [ev.tabular("mnpo"), ev.compare(MNPO.name, INPO.name, "duality_gap", lower_is_better=True, margin="game")]


@register_claim(
    "ofs-dpo", "online",
    "two LoRA modules at different speeds; on a domain-shift sequence forgets less than plain online DPO",
    """COFS-DPO (fast and slow LoRA adapters, slow at a quarter of the learning rate, the fast adapter
    recombined across domains at the end of the second) and online DPO with one LoRA adapter of the same
    size, on two domains of two iterations each (the panel, then the panel with its cycle reversed).
    β ∈ {0.3, 1, 3} and the learning rate searched on validation guests by the mean over domains of the
    final duality gap. Forgetting = the duality gap under the first domain's panel at the end minus at the
    end of the first domain (exact, test guests); the part: online DPO's forgetting − COFS-DPO's. The
    two-module mechanism is the exact check of `preftune verify ofs_dpo`.""",
    arms=(OFS.name, ONLINE_DPO.name), verify=("ofs_dpo",))
def ofs_claim(ev):
    return [ev.tabular("ofs_dpo"), ev.compare(OFS.name, ONLINE_DPO.name, "forgetting", lower_is_better=True,
                                              margin="game")]


TABULAR = {
    "apo": ("tabular: reaches a target gap in fewer iterations than plain iterative DPO on the same game", "apo"),
    "nash-mp": ("tabular: last iterate converges linearly to the regularised Nash equilibrium at the stated rate",
                "nash_mp"),
    "inpo": ("tabular: population loss update equals the OMD closed form; converges to the Nash equilibrium", "inpo"),
    "egpo": ("tabular: last iterate converges to the Nash equilibrium where plain online IPO cycles", "egpo"),
}


def _tabular_row(row: str, statement: str, method: str) -> None:
    @register_claim(row, "online", statement,
                    f"""The claim is about the exact tabular engine, where the policy is a softmax over a finite
                    response set and expectations are exact: it is quoted from `preftune verify {method}`, which
                    checks the stated property against its closed form (no seeds: nothing is sampled).""",
                    verify=(method,))
    def judge(ev):
        return [ev.tabular(method)]


for _row, (_statement, _method) in TABULAR.items():
    _tabular_row(_row, _statement, _method)
