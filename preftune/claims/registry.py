"""The registry of claim experiments: one entry per catalogue row, defined in rows/<family>.py
(catalogue.py imports them all and lists them).

A claim names the arms it compares (arms.py), optional per-seed jobs that measure something other
than a trained arm on a split (beam search on the DPO policy, a probe, a sweep: `Extra`), the
methods whose exact `preftune verify` checks it quotes, and a judge that turns the evidence into
the parts of the verdict (stats.py). The statement is the catalogue's last column, copied so that
the command runs without ../shared (a test checks the copy against the catalogue when it is there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

FAMILIES = ("offline", "online", "analysis")


@dataclass(frozen=True)
class Extra:
    """A per-seed job of a row: fn(cfg_dict, seed, models, chosen) -> dict of numbers, where models maps
    each arm in `needs` to its final model directory at that seed, and chosen every settled arm to its
    chosen setting."""

    name: str
    fn: Callable[..., dict]
    needs: tuple[str, ...] = ()          # arms whose final models it reads
    seeds: str = "final"                 # final: every final seed; none: once (seed None)
    after: tuple[str, ...] = ()          # arms whose chosen settings it reads


@dataclass(frozen=True)
class Claim:
    row: str                              # catalogue id
    family: str                           # offline | online | analysis
    statement: str                        # the catalogue's claim
    miniature: str                        # what is run, and why it is a fair miniature
    judge: Callable                       # judge(evidence) -> list[PartResult]
    arms: tuple[str, ...] = ()
    extras: tuple[Extra, ...] = ()
    verify: tuple[str, ...] = ()          # methods whose exact tabular checks are quoted
    sort_key: int = field(default=0, compare=False)


_CLAIMS: dict[str, Claim] = {}


def register_claim(row: str, family: str, statement: str, miniature: str, *, arms=(), extras=(), verify=()):
    """Decorator: register `judge` as the claim experiment of catalogue row `row`."""
    if family not in FAMILIES:
        raise ValueError(f"claims: family must be one of {FAMILIES}, got {family!r}")

    def decorate(judge):
        if row in _CLAIMS:
            raise ValueError(f"claims: row {row!r} registered twice")
        _CLAIMS[row] = Claim(row, family, " ".join(statement.split()), " ".join(miniature.split()), judge,
                             tuple(arms), tuple(extras), tuple(verify), len(_CLAIMS))
        return judge
    return decorate


def registered() -> dict[str, Claim]:
    """The claims registered so far (catalogue.py imports every row module first)."""
    return dict(_CLAIMS)
