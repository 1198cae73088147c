"""Pair and target builders: from k judged samples per prompt to the rows an online method trains on.

Input, per prompt (a `Group`): the k sampled responses and the judge's matrix P[i][j] = P(y_i > y_j)
(None where the judge gave no verdict), or, for methods that play against an opponent policy,
a rectangular matrix against the opponent's samples. Output: `Row`s that pick one or two of the
samples and carry the targets the methods declare as extras:

  win_rate:   P^(y > pi_t) = (1/k) sum_j P[y][j] over the prompt's samples, j = y included (the
              SPPO estimate, online.md §2 step 3; over the judged entries only when some are missing);
              against an opponent, the mean of P(y > y'_j) over its samples (Nash-MP, online.md §5b);
  soft_label: DNO's label sigmoid(r_t(chosen) - r_t(rejected)) with r_t = win_rate (Alg. 1,
              online.md §1a), or 1.0 for DNO-Prct's hard pairs (`dno_margin`).
Each pair row also keeps the judge's own P(chosen > rejected) as `preference`, for the record.

Builders (online.md): best_worst (SPPO, APO, MNPO, online DPO; with k = 2 and the win-rates it
is EGPO's variance-reduced target), all_pairs, tournament (INPO's knockout: winners' bracket
gives y_w, losers' bracket y_l, kept when y_w beats y_l), dno_margin (DNO-Prct: a positive
scoring at least `min_positive` paired with every sample at least `margin` below it), and
opponent (one row per sample, for the policy-gradient methods).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

BUILDERS = ("best_worst", "all_pairs", "tournament", "dno_margin", "opponent")

Matrix = list[list[float | None]]


@dataclass
class Group:
    """One prompt's samples and the judge's verdicts on them."""

    prompt: object
    responses: list[str]
    matrix: Matrix                      # square: P(responses[i] > responses[j])
    opponent_matrix: Matrix | None = None  # rectangular: P(responses[i] > opponent sample j)

    def win_rates(self) -> list[float | None]:
        """P^(y_k > pi_t): mean over the judged entries of row k, the diagonal 1/2 included."""
        out = []
        for row in self.matrix:
            judged = [p for p in row if p is not None]
            out.append(sum(judged) / len(judged) if len(judged) > 1 else None)
        return out


@dataclass
class Row:
    """A training row: sample indices `picks` of group `group` (chosen first for pairs) and its targets."""

    group: int
    picks: tuple[int, ...]
    win_rate: list[float]
    soft_label: float | None = None
    preference: float | None = None


def sample_labels(groups: list[Group], rng: random.Random) -> None:
    """Replace each judged probability by a Bernoulli draw (a binary winner, as a human annotator
    gives): P[i][j] becomes 1 or 0 and P[j][i] its complement. In place; opponents too."""
    for group in groups:
        k = len(group.matrix)
        for i in range(k):
            for j in range(i + 1, k):
                p = group.matrix[i][j]
                if p is not None:
                    group.matrix[i][j] = float(rng.random() < p)
                    group.matrix[j][i] = 1 - group.matrix[i][j]
        for row in group.opponent_matrix or []:
            for j, p in enumerate(row):
                if p is not None:
                    row[j] = float(rng.random() < p)


def build_rows(builder: str, groups: list[Group], margin: float = 0.0, min_positive: float = 0.5) -> list[Row]:
    """The rows of one iteration (see the module docstring); pairs of identical texts are never made."""
    if builder not in BUILDERS:
        raise ValueError(f"unknown pair builder {builder!r}; use one of {', '.join(BUILDERS)}")
    make = {"best_worst": _best_worst, "all_pairs": _all_pairs, "tournament": _tournament,
            "dno_margin": _dno_margin, "opponent": _opponent}[builder]
    rows = []
    for g, group in enumerate(groups):
        for row in make(group, margin=margin, min_positive=min_positive):
            row.group = g
            rows.append(row)
    return rows


def _pair(group: Group, winner: int, loser: int, rates: list[float | None]) -> Row | None:
    p = group.matrix[winner][loser]
    if p is None or rates[winner] is None or rates[loser] is None or \
            group.responses[winner] == group.responses[loser]:
        return None
    return Row(0, (winner, loser), [rates[winner], rates[loser]],
               soft_label=1 / (1 + math.exp(rates[loser] - rates[winner])), preference=p)


def _best_worst(group: Group, **_) -> list[Row]:
    rates = group.win_rates()
    judged = [k for k, r in enumerate(rates) if r is not None]
    if not judged:
        return []
    best = max(judged, key=lambda k: rates[k])   # ties: the first sample
    worst = min(judged, key=lambda k: rates[k])
    if rates[best] <= rates[worst]:
        return []
    row = _pair(group, best, worst, rates)
    return [row] if row else []


def _all_pairs(group: Group, margin: float = 0.0, **_) -> list[Row]:
    rates, rows = group.win_rates(), []
    k = len(group.responses)
    for i in range(k):
        for j in range(i + 1, k):
            p = group.matrix[i][j]
            if p is None or abs(p - 0.5) <= margin:
                continue
            row = _pair(group, i, j, rates) if p > 0.5 else _pair(group, j, i, rates)
            if row:
                rows.append(row)
    return rows


def _match(group: Group, a: int, b: int) -> tuple[int, int] | None:
    """(winner, loser) of a match between samples a and b; a tie goes to a, the first listed (INPO)."""
    p = group.matrix[a][b]
    return None if p is None else ((a, b) if p >= 0.5 else (b, a))


def _bracket(group: Group, players: list[int], keep_winner: bool) -> int | None:
    """Knockout rounds until one player is left; the winner (or, in a losers' bracket, the loser) of
    each match advances, an odd player out gets a bye."""
    while len(players) > 1:
        advancing = []
        for a, b in zip(players[::2], players[1::2]):
            result = _match(group, a, b)
            if result is None:
                return None
            advancing.append(result[0] if keep_winner else result[1])
        players = advancing + players[len(players) - len(players) % 2:]
    return players[0]


def _tournament(group: Group, **_) -> list[Row]:
    """INPO's knockout (online.md §3): adjacent samples play a first round; its winners play on and
    the champion is y_w, its losers play a bracket in which the loser advances and the last one is
    y_l; the pair is kept when y_w beats y_l. k = 8 asks 4 + 3 + 3 + 1 = 11 questions."""
    k = len(group.responses)
    if k < 2:
        return []
    firsts = [_match(group, a, b) for a, b in zip(range(0, k - 1, 2), range(1, k, 2))]
    if any(m is None for m in firsts):
        return []
    winners = [w for w, _ in firsts] + ([k - 1] if k % 2 else [])
    best, worst = _bracket(group, winners, True), _bracket(group, [l for _, l in firsts], False)
    if best is None or worst is None or best == worst or not (group.matrix[best][worst] or 0) > 0.5:
        return []
    row = _pair(group, best, worst, group.win_rates())
    return [row] if row else []


def _dno_margin(group: Group, margin: float = 1 / 3, min_positive: float = 0.5, **_) -> list[Row]:
    """DNO-Prct's large-margin pairs (online.md §1b step 3): score r(y) = fraction of the other samples
    y is judged better than; a positive needs r >= min_positive, a negative r <= r(positive) - margin.
    Hard labels: soft_label = 1."""
    k = len(group.responses)
    if k < 2:
        return []
    score = []
    for i in range(k):
        verdicts = [group.matrix[i][j] for j in range(k) if j != i]
        score.append(None if any(v is None for v in verdicts) else sum(v > 0.5 for v in verdicts) / (k - 1))
    rates, rows = group.win_rates(), []
    for i in range(k):
        if score[i] is None or score[i] < min_positive:
            continue
        for j in range(k):
            if j != i and score[j] is not None and score[i] - score[j] >= max(margin, 1e-12):
                row = _pair(group, i, j, rates)
                if row:
                    row.soft_label = 1.0
                    rows.append(row)
    return rows


def _opponent(group: Group, **_) -> list[Row]:
    """One row per sample with its win-rate against the opponent's samples (policy-gradient methods)."""
    if group.opponent_matrix is None:
        raise ValueError("the opponent builder needs samples of an opponent policy (schedule.opponent)")
    rows = []
    for k, row in enumerate(group.opponent_matrix):
        judged = [p for p in row if p is not None]
        if judged:
            rows.append(Row(0, (k,), [sum(judged) / len(judged)]))
    return rows
