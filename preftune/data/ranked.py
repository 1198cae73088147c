"""Ranked multi-response rows -> preference pairs, and the easy-to-hard orders a curriculum uses.

A ranked row is {"prompt", "responses", "scores"} (higher is better) or {"prompt", "responses",
"ranks"} (1 is best), the listwise format of formats.py. Curriculum methods (Curry-DPO,
offline.md §4) do not train on the list: they rank it, cut it into pairs, and order the pairs
by difficulty. Everything here is deterministic: equal scores keep the order of the row, equal
difficulties keep the order of the pairs, and the one random order is seeded.

Pair construction for a list ranked R1 > R2 > ... > RN (R1 best):

    chosen_fixed   (paper; alias best_vs_rest):   (R1,RN), (R1,RN-1), ..., (R1,R2)
    rejected_fixed (alias worst_vs_rest):         (R1,RN), (R2,RN), ..., (RN-1,RN)
    all_pairs:                                    every (Ri,Rj), i < j, widest rank spread first

A pair whose scores are equal says nothing and is always dropped; `min_gap` drops pairs whose
score gap is smaller still. The pairs of one list come easiest first: largest score gap first,
the order above breaking ties (so chosen_fixed keeps the paper's (R1,RN) first).

Listwise batches with varying K: a batch holds one K (collate.py stacks (B, K) records). Rows of
different list sizes are kept apart by the batch plan (`BatchPlan(groups=...)`: every global
batch is drawn from one K, see train/plan.py), never padded, so no listwise method has to know
about padding.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

PAIR_MODES = ("chosen_fixed", "rejected_fixed", "all_pairs")
PAIR_MODE_ALIASES = {"best_vs_rest": "chosen_fixed", "worst_vs_rest": "rejected_fixed"}
DIFFICULTY_SIGNALS = ("rating_gap", "ref_implicit_margin", "random")
# Columns of a ranked row that describe the list itself; every other column is copied to its pairs.
LIST_COLUMNS = ("prompt", "responses", "scores", "ranks")


def scores_of(row: dict) -> list[float]:
    """The scores of a ranked row, higher is better: `scores`, or minus `ranks` (rank 1 is best)."""
    if row.get("scores") is not None:
        values = row["scores"]
    elif row.get("ranks") is not None:
        values = [-r for r in row["ranks"]]
    else:
        raise ValueError("a ranked row needs 'scores' (higher is better) or 'ranks' (1 is best)")
    if len(values) != len(row["responses"]):
        raise ValueError(f"a ranked row has {len(row['responses'])} responses but {len(values)} scores")
    return [float(v) for v in values]


def ranking(scores: Sequence[float]) -> list[int]:
    """Response indices best first; equal scores keep their order in the row."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


@dataclass(frozen=True)
class RankedPair:
    """One pair of a ranked list: indices into the row's responses and their score gap (> 0)."""

    chosen: int
    rejected: int
    gap: float


def build_pairs(scores: Sequence[float], mode: str = "chosen_fixed", min_gap: float = 0.0) -> list[RankedPair]:
    """The pairs of one ranked list, easiest (largest score gap) first; see the module docstring."""
    mode = PAIR_MODE_ALIASES.get(mode, mode)
    if mode not in PAIR_MODES:
        raise ValueError(f"pair mode must be one of {PAIR_MODES + tuple(PAIR_MODE_ALIASES)}, got {mode!r}")
    order = ranking(scores)
    n = len(order)
    if mode == "chosen_fixed":
        positions = [(0, j) for j in range(n - 1, 0, -1)]
    elif mode == "rejected_fixed":
        positions = [(i, n - 1) for i in range(n - 1)]
    else:
        positions = sorted(((i, j) for i in range(n) for j in range(i + 1, n)), key=lambda p: (p[0] - p[1], p[0]))
    pairs = [RankedPair(order[i], order[j], scores[order[i]] - scores[order[j]]) for i, j in positions]
    pairs = [p for p in pairs if p.gap > 0 and p.gap >= min_gap]
    return sorted(pairs, key=lambda p: -p.gap)  # stable: equal gaps keep the construction order


def pairs_from_ranked_rows(rows: Sequence[dict], mode: str = "chosen_fixed", min_gap: float = 0.0) -> list[dict]:
    """Pairwise rows from ranked rows, list by list, each list's pairs easiest first.

    Each pair row is {prompt, chosen, rejected, chosen_score, rejected_score, score_gap,
    list_index, pair_index} plus every other column of its ranked row (e.g. a gold answer);
    list_index is the row's position in `rows`, pair_index the pair's position (0 = easiest by
    score gap) among the pairs of its list. A list may hold the same text twice with different
    scores (a noisy rater, a sampler that repeats itself); a pair of identical texts teaches
    nothing and the data layer rejects it, so it is left out and pair_index counts kept pairs.
    """
    out = []
    for list_index, row in enumerate(rows):
        scores = scores_of(row)
        carried = {k: v for k, v in row.items() if k not in LIST_COLUMNS}
        kept = [p for p in build_pairs(scores, mode, min_gap)
                if row["responses"][p.chosen] != row["responses"][p.rejected]]
        for pair_index, pair in enumerate(kept):
            out.append({**carried, "prompt": row["prompt"], "chosen": row["responses"][pair.chosen],
                        "rejected": row["responses"][pair.rejected], "chosen_score": scores[pair.chosen],
                        "rejected_score": scores[pair.rejected], "score_gap": pair.gap,
                        "list_index": list_index, "pair_index": pair_index})
    return out


def pair_ease(pairs: Sequence[dict], signal: str = "rating_gap", ref_margins: Sequence[float] | None = None,
              seed: int = 0) -> list[float]:
    """How easy each pair is (larger = easier), by one of DIFFICULTY_SIGNALS:

    rating_gap:          score(chosen) - score(rejected) (Curry-DPO's signal: a large gap is easy);
    ref_implicit_margin: log pi_ref(chosen) - log pi_ref(rejected), given as `ref_margins`
                         (a pair the reference already gets right is easy);
    random:              a seeded uniform draw (the ablation).
    """
    if signal == "rating_gap":
        return [float(p["score_gap"]) for p in pairs]
    if signal == "ref_implicit_margin":
        if ref_margins is None or len(ref_margins) != len(pairs):
            raise ValueError("ref_implicit_margin needs one reference log-prob margin per pair")
        return [float(m) for m in ref_margins]
    if signal == "random":
        rng = random.Random(seed)
        return [rng.random() for _ in pairs]
    raise ValueError(f"difficulty signal must be one of {DIFFICULTY_SIGNALS}, got {signal!r}")


def stage_of_each_pair(pairs: Sequence[dict], ease: Sequence[float]) -> list[int]:
    """0-based difficulty rank of each pair within its list: 0 for the easiest pair of every list."""
    by_list: dict[Any, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_list.setdefault(pair["list_index"], []).append(index)
    stage = [0] * len(pairs)
    for members in by_list.values():
        for rank, index in enumerate(sorted(members, key=lambda i: -ease[i])):  # stable on ties
            stage[index] = rank
    return stage


def curriculum_stages(pairs: Sequence[dict], ease: Sequence[float], max_stages: int | None = None) -> list[list[dict]]:
    """Stage k holds the k-th easiest pair of every list that has one (iterative Curry-DPO).

    Within a stage the pairs keep their order in `pairs` (list by list), so a one-stage
    curriculum over one pair per list trains on exactly the rows a plain run would.
    """
    stage = stage_of_each_pair(pairs, ease)
    count = max(stage, default=-1) + 1 if max_stages is None else min(max(stage, default=-1) + 1, max_stages)
    return [[p for p, s in zip(pairs, stage) if s == k] for k in range(count)]


def easy_to_hard(pairs: Sequence[dict], ease: Sequence[float], shuffle_within: bool = False,
                 seed: int = 0) -> list[dict]:
    """One sequence for a single sorted run (non-iterative Curry-DPO): the stages one after the
    other (every list's easiest pair, then every list's second easiest, ...), and inside a stage
    the easier pairs first. There is no shuffle across stages; `shuffle_within` shuffles the
    pairs of each stage (seeded) instead of sorting them.
    """
    stage = stage_of_each_pair(pairs, ease)
    order = sorted(range(len(pairs)), key=lambda i: (stage[i], -ease[i]))
    if shuffle_within:
        rng = random.Random(seed)
        grouped: dict[int, list[int]] = {}
        for i in order:
            grouped.setdefault(stage[i], []).append(i)
        order = []
        for k in sorted(grouped):
            members = grouped[k]
            rng.shuffle(members)
            order.extend(members)
    return [pairs[i] for i in order]
