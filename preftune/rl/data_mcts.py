"""Make data for mcts_dpo (online.md §12): step-level pairs from tree search with the current policy.

Iteration t searches the next `rollout.prompts_per_iteration` training prompts with the current policy
(mcts_search.py; the search policy is refreshed every iteration, i.e. every `prompts_per_iteration`
prompts, the official `iteration_interval`). Along each committed path, at every node with at least two
children, the children of highest and lowest Q make a pair (siblings of one parent), each extended
through its single-child chain; pairs whose Q are equal carry no preference and are skipped [R]. A row:
the prompt and the committed steps above the node as prompt, the two continuations as responses, their
visit counts and the index of their first differing token.
"""
from __future__ import annotations

import random

from preftune.rl.context import RLContext, attach_frozen
from preftune.rl.mcts_search import StepSearch, prefix_ids
from preftune.rl.rows import Row
from preftune.rl.tree import first_difference, sibling_pair, single_child_chain


class MctsMaker:
    def __init__(self, ctx: RLContext):
        self.ctx = ctx
        self.prompts = ctx.task.prompts("train")
        random.Random(ctx.cfg.train.seed).shuffle(self.prompts)

    def make(self, t: int) -> tuple[list[Row], list[list[int]], dict]:
        ctx = self.ctx
        n = ctx.cfg.rollout.prompts_per_iteration
        prompts = [self.prompts[(t * n + i) % len(self.prompts)] for i in range(n)]
        search = StepSearch(ctx, prompts, ctx.seed(t, 40))
        trees = search.run()
        rows, ties, correct = [], 0, 0
        for tree in trees:
            correct += ctx.task.score(tree.prompt, ctx.tokenizer.decode(prefix_ids(tree.current),
                                                                         skip_special_tokens=True)) > 0.5
            for node in tree.current.path()[:-1]:
                pair = sibling_pair(node)
                if pair is None:
                    continue
                chosen, rejected = pair
                if chosen.q == rejected.q:
                    ties += 1
                    continue
                good = [tok for n in single_child_chain(chosen) for tok in n.payload]
                bad = [tok for n in single_child_chain(rejected) for tok in n.payload]
                rows.append(Row(tree.prompt_ids + prefix_ids(node), [good, bad],
                                {"visits": [chosen.visits, rejected.visits], "diverge_at": first_difference(good, bad)}))
        stats = {"rollout/pairs": len(rows), "rollout/tied_pairs": ties, "rollout/search_gold": correct / len(trees),
                 "rollout/expansion_calls": search.calls}
        if rows:  # a search whose siblings all tie (e.g. every answer wrong) gives nothing to learn from
            attach_frozen(ctx, rows)
        return rows, [[i] for i in range(len(rows))], stats
