"""Monte-Carlo tree search over reasoning steps, the model-free parts (MCTS-DPO, online.md §12; pure).

A `Node` is a state (the prompt and the steps so far); the search that owns the tree attaches what it
needs in `payload` (token ids, text). The statistics follow the official MCTS-DPO code:

- v (`value`): the node's evaluation (self-evaluation, a verifier, or the outcome at a terminal);
  the edge reward of a node is r = v(node) - v(parent);
- selection by PUCT: Q(c) + w p(c) sqrt(N(parent)) / (1 + N(c)), with the prior
  p(c) = exp(sum log pi(step) / len^1.25);
- backup along the selected path: Q(leaf) = r + gamma V(leaf); above it
  V(n) = sum_c max(1, N_c) Q_c / sum_c max(1, N_c), Q(n) = r(n) + gamma V(n); N += 1 on the path;
- the next root is the child with most visits (ties: higher Q, then higher V);
- training pairs: at a node, the children with the highest and the lowest Q (siblings of one parent),
  with a label-smoothing epsilon from their visit counts.
The official code also counts the root twice per simulation; here every node on the path counts once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Node:
    value: float = 0.0
    prior: float = 1.0
    parent: "Node | None" = None
    payload: Any = None
    terminal: bool = False
    children: list["Node"] = field(default_factory=list)
    expanded: bool = False
    visits: int = 0
    mean_value: float = 0.0  # V: visit-weighted mean of the children's Q
    q: float = 0.0

    def __post_init__(self) -> None:
        # A new node's Q is its edge reward on top of its parent's current V (as the official code).
        self.q = self.reward + (self.parent.mean_value if self.parent is not None else 0.0)

    @property
    def reward(self) -> float:
        return self.value - (self.parent.value if self.parent is not None else 0.0)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def add_child(self, value: float, prior: float = 1.0, payload: Any = None, terminal: bool = False) -> "Node":
        child = Node(value=value, prior=prior, parent=self, payload=payload, terminal=terminal)
        self.children.append(child)
        self.expanded = True
        return child

    def path(self) -> list["Node"]:
        """The nodes from the root down to this one."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


def step_prior(sum_logp: float, length: int, length_penalty: float = 1.25) -> float:
    """p(c) = exp(sum of the step's token log-probs / length^penalty) (official `MCTSNode.p`)."""
    return math.exp(sum_logp / max(length, 1) ** length_penalty)


def puct(node: Node, exploration: float = 1.0) -> float:
    return node.q + exploration * node.prior * math.sqrt(node.parent.visits) / (1 + node.visits)


def select_path(root: Node, exploration: float = 1.0, depth_limit: int | None = None) -> list[Node]:
    """Follow the PUCT-best child from `root` down to a node that is unexpanded, terminal or at the depth limit."""
    path = [root]
    while path[-1].children and not stops(path[-1], root, depth_limit):
        path.append(max(path[-1].children, key=lambda c: puct(c, exploration)))
    return path


def stops(node: Node, root: Node, depth_limit: int | None) -> bool:
    """A simulation ends at a terminal node or at `depth_limit` steps below the search root."""
    return node.terminal or (depth_limit is not None and node.depth - root.depth >= depth_limit)


def backup(path: list[Node], gamma: float = 1.0) -> None:
    """Back the leaf's value up the path (module docstring); every node on the path gains one visit."""
    leaf = path[-1]
    leaf.q = leaf.reward + gamma * leaf.mean_value
    leaf.visits += 1
    for node in reversed(path[:-1]):
        weights = [max(1, c.visits) for c in node.children]
        node.mean_value = sum(w * c.q for w, c in zip(weights, node.children)) / sum(weights)
        node.visits += 1
        if node.parent is not None:
            node.q = node.reward + gamma * node.mean_value


def most_visited(node: Node) -> Node:
    """The child to commit to (temperature 0): most visits, then higher Q, then higher V."""
    return max(node.children, key=lambda c: (c.visits, c.q, c.mean_value))


def sibling_pair(node: Node) -> tuple[Node, Node] | None:
    """(highest-Q child, lowest-Q child) of `node`: the chosen and rejected steps of a pair; None
    with fewer than two children (`choose_worst` in the official code)."""
    if len(node.children) < 2:
        return None
    ranked = sorted(node.children, key=lambda c: c.q)
    return ranked[-1], ranked[0]


def single_child_chain(node: Node) -> list[Node]:
    """A node and the descendants reached through single-child links: a sibling's continuation is
    extended this way before it becomes a training response (official `post_tree_construct`)."""
    chain = [node]
    while len(chain[-1].children) == 1:
        chain.append(chain[-1].children[0])
    return chain


def conservative_epsilon(chosen_visits: int, rejected_visits: int) -> float:
    """Label smoothing from visit counts: confidence = 1 / (1 + N_r / max(1, N_c)), eps = min(1 - confidence, 0.5)."""
    confidence = 1.0 / (1.0 + rejected_visits / max(1, chosen_visits))
    return min(1.0 - confidence, 0.5)


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first token where two sequences differ (the shorter length if one extends the other)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))
