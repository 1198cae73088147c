"""MCTS over reasoning steps with a language model (MCTS-DPO, online.md §12), many prompts in lockstep.

The statistics, selection and backup are tree.py's; this module expands nodes with the policy and
values them. Expanding a node samples `children` next steps from the policy (each cut at the step
separator; exact duplicates merged, where the official code filters near-duplicates by embedding
similarity [R]); a child's prior is exp(sum log pi(step) / len^1.25). Node values (`mcts.node_value`):
  outcome   0 until the answer ends, then +1 (right) or -1 (wrong): the outcome reward only;
  verifier  the fraction of steps so far the task's step checker accepts, plus the outcome at the end;
  self_eval the policy's probability of " yes" after "<answer so far>\nIs this correct so far?", plus the
            outcome at the end (the official self-evaluation prompt, simplified).
Each committed step runs `simulations` simulations (x `root_multiplier` for the first): select by PUCT,
then expand and descend until a terminal node or `depth_limit` steps below the committed node, then back
up. The committed next step is the most visited child; the search ends at a terminal node.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from preftune.data.tokenize import encode_prompt
from preftune.rl.context import RLContext, frozen_token_logps
from preftune.rl.rows import Row
from preftune.rl.segment import first_step
from preftune.rl.tree import Node, backup, most_visited, puct, select_path, step_prior, stops
from preftune.sampling import sample


@dataclass
class Tree:
    prompt: object
    prompt_ids: list[int]
    root: Node
    current: Node  # the committed node the simulations start from


def prefix_ids(node: Node) -> list[int]:
    return [tok for n in node.path()[1:] for tok in n.payload]


class StepSearch:
    def __init__(self, ctx: RLContext, prompts: list, seed: int):
        self.ctx, self.m, self.seed, self.calls = ctx, ctx.cfg.mcts, seed, 0
        self.trees = []
        for prompt in prompts:
            root = Node(0.0, payload=[])
            self.trees.append(Tree(prompt, encode_prompt(ctx.tokenizer, prompt), root, root))

    def run(self) -> list[Tree]:
        first = True
        while any(not tree.current.terminal and tree.current.depth < 64 for tree in self.trees):
            active = [tree for tree in self.trees if not tree.current.terminal]
            for _ in range(self.m.simulations * (self.m.root_multiplier if first else 1)):
                self.simulate(active)
            for tree in active:
                if tree.current.children:
                    tree.current = most_visited(tree.current)
                else:  # nothing could be expanded (the answer hit the token budget): stop here
                    tree.current.terminal = True
            first = False
        return self.trees

    def simulate(self, trees: list[Tree]) -> None:
        """One simulation in every tree: select, then expand and descend level by level, then back up."""
        limit, w = self.m.depth_limit, self.m.exploration
        paths = [select_path(tree.current, w, limit) for tree in trees]
        done = [False] * len(trees)
        while not all(done):
            pending = [(tree, path) for tree, path, finished in zip(trees, paths, done)
                       if not finished and not path[-1].expanded and not stops(path[-1], tree.current, limit)]
            if pending:
                self.expand(pending)
            for k, (tree, path) in enumerate(zip(trees, paths)):
                if done[k]:
                    continue
                if stops(path[-1], tree.current, limit) or not path[-1].children:
                    done[k] = True
                else:
                    path.append(max(path[-1].children, key=lambda c: puct(c, w)))
        for path in paths:
            backup(path)

    def expand(self, pending: list[tuple[Tree, list[Node]]]) -> None:
        ctx, m = self.ctx, self.m
        starts = [tree.prompt_ids + prefix_ids(path[-1]) for tree, path in pending]
        self.calls += 1
        continuations = sample(ctx.policy, ctx.tokenizer, starts, m.children, ctx.cfg.rollout.temperature,
                               ctx.cfg.rollout.top_p, m.max_step_tokens, ctx.cfg.rollout.batch_size,
                               self.seed * 1_000_003 + self.calls, False).ids
        eos, budget = ctx.tokenizer.eos_token_id, ctx.cfg.rollout.max_new_tokens
        new = []
        for (tree, path), start, outs in zip(pending, starts, continuations):
            node, seen = path[-1], set()
            node.expanded = True
            for ids in outs:
                step = first_step(ids, ctx.decode_token, ctx.cfg.steps.separator) or [eos]
                if tuple(step) in seen:
                    continue
                seen.add(tuple(step))
                terminal = step[-1] == eos or len(start) - len(tree.prompt_ids) + len(step) >= budget
                new.append((tree, node, start, step, terminal))
        if not new:
            return
        rows = [Row(start, [step]) for _, _, start, step, _ in new]
        logps = frozen_token_logps(ctx.policy, rows, ctx.pad, ctx.device)
        values = self.values([(tree, node, step, terminal) for tree, node, _, step, terminal in new])
        for (tree, node, _, step, terminal), lp, value in zip(new, logps, values):
            child = Node(value=value, prior=step_prior(sum(lp[0]), len(step), m.length_penalty), parent=node,
                         payload=step, terminal=terminal)
            node.children.append(child)

    def values(self, items: list[tuple[Tree, Node, list[int], bool]]) -> list[float]:
        ctx, mode = self.ctx, self.m.node_value
        if mode not in ("outcome", "verifier", "self_eval"):
            raise ValueError(f"mcts.node_value must be outcome, verifier or self_eval, got {mode!r}")
        out = []
        texts = [ctx.tokenizer.decode(prefix_ids(node) + step, skip_special_tokens=True) for _, node, step, _ in items]
        judged = self.self_evaluations([tree.prompt for tree, *_ in items], texts) if mode == "self_eval" else None
        for k, ((tree, _, _, terminal), text) in enumerate(zip(items, texts)):
            value = 0.0
            if mode == "verifier" and hasattr(ctx.task, "step_scores"):
                scores = ctx.task.step_scores(tree.prompt, text)
                written = len([s for s in text.split(ctx.cfg.steps.separator) if s.strip()])
                value = sum(scores[:written]) / max(1, written)
            elif judged is not None:
                value = judged[k]
            if terminal:
                value += 1.0 if ctx.task.score(tree.prompt, text) > 0.5 else -1.0
            out.append(value)
        return out

    @torch.no_grad()
    def self_evaluations(self, prompts: list, texts: list[str]) -> list[float]:
        """P(" yes") / (P(" yes") + P(" no")) of the policy after the question "Is this correct so far?"."""
        tok, policy = self.ctx.tokenizer, self.ctx.policy
        yes, no = tok(" yes", add_special_tokens=False)["input_ids"][0], tok(" no", add_special_tokens=False)["input_ids"][0]
        out = []
        for prompt, text in zip(prompts, texts):
            ids = encode_prompt(tok, f"{prompt}{text}\nIs this correct so far?")
            logits = policy(input_ids=torch.tensor([ids], device=self.ctx.device)).logits[0, -1].float()
            pair = torch.softmax(logits[[yes, no]], -1)
            out.append(float(pair[0]))
        return out
