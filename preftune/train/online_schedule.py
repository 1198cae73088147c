"""The schedule of an online run: what each method's algorithm does by default (online.md §1-8, §15),
and the config's "auto" settings resolved against it."""
from __future__ import annotations

from dataclasses import dataclass

from preftune.methods import Objective
from preftune.train.online_config import OnlineConfig

# What each method's online algorithm does by default (online.md §1-8, §15); "auto" settings of
# the config take these, anything set explicitly wins (e.g. egpo with phases: single is online IPO).
METHOD_DEFAULTS = {
    "online_dpo": dict(reference="fixed", builder="best_worst"),
    "dno": dict(reference="previous", builder="dno_margin"),
    "sppo": dict(reference="previous", builder="best_worst"),
    "inpo": dict(reference="fixed", builder="tournament"),
    "egpo": dict(reference="fixed", builder="best_worst", phases="extragradient"),
    "nash_mp": dict(reference="fixed", builder="opponent", phases="mirror_prox", opponent_samples=2),
    "mnpo": dict(reference="fixed", builder="best_worst"),
    "apo": dict(reference="previous", builder="best_worst", momentum=0.3),
    "ofs_dpo": dict(reference="fixed", builder="best_worst", fast_slow=True),
}
GENERIC_DEFAULTS = dict(reference="fixed", builder="best_worst", phases="single", momentum=0.0, opponent_samples=0,
                        fast_slow=False)
DATA_EXTRAS = ("win_rate", "soft_label")
POLICY_EXTRAS = ("previous", "history", "slow")


@dataclass
class Schedule:
    """The resolved schedule of a run: config values, with "auto" replaced by the method's defaults."""

    reference: str
    phases: str
    momentum: float
    opponent_samples: int
    fast_slow: bool
    builder: str
    history: int  # MNPO players (0 when the objective takes no history)


def resolve_schedule(cfg: OnlineConfig, objective: Objective) -> Schedule:
    defaults = {**GENERIC_DEFAULTS, **METHOD_DEFAULTS.get(objective.terms[0].spec.name, {})}
    s = cfg.schedule
    pick = lambda value, key: defaults[key] if value == "auto" else value  # noqa: E731
    schedule = Schedule(reference=pick(s.reference, "reference"), phases=pick(s.phases, "phases"),
                        momentum=float(pick(s.momentum, "momentum")),
                        opponent_samples=int(pick(s.opponent_samples, "opponent_samples")),
                        fast_slow=bool(pick(s.fast_slow.enabled, "fast_slow")),
                        builder=pick(cfg.pairs.builder, "builder"), history=history_players(objective))
    unknown = sorted(set(objective.extras) - set(DATA_EXTRAS) - set(POLICY_EXTRAS))
    if unknown:
        raise ValueError(f"the online loop provides the extras {DATA_EXTRAS + POLICY_EXTRAS}; "
                         f"{objective.describe()} also needs {unknown}")
    if schedule.reference not in ("fixed", "previous"):
        raise ValueError(f"schedule.reference must be fixed or previous, got {schedule.reference!r}")
    if schedule.phases not in ("single", "extragradient", "mirror_prox"):
        raise ValueError(f"schedule.phases must be single, extragradient or mirror_prox, got {schedule.phases!r}")
    if ("slow" in objective.extras) != schedule.fast_slow:
        raise ValueError("the fast/slow schedule and a method taking `slow` (ofs_dpo) go together")
    if (schedule.builder == "opponent") != (schedule.opponent_samples > 0):
        raise ValueError("the opponent pair builder needs schedule.opponent_samples > 0, and only it uses them")
    return schedule


def history_players(objective: Objective) -> int:
    for term in objective.terms:
        if "history" in term.spec.extras:
            return len(term.params.get("history_weights", term.spec.hyperparameters["history_weights"]))
    return 0
