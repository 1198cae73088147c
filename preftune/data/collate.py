"""Token ids to padded tensors: K responses per example, each after its prompt, in one batch."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from preftune.data.tokenize import TokenizedExample


@dataclass
class Batch:
    """B examples with K responses each, laid out as B*K rows (example-major).

    input_ids, attention_mask: (B*K, T), right-padded.
    response_mask: (B*K, T) bool, True on response tokens (the tokens whose log-prob counts).
    extras: per-example data columns for the methods, e.g. label (B,), scores (B, K).
    example_ids: (B,) which examples of the prepared data these are, when the caller says so (the
    reference cache looks its values up by them).
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    num_examples: int
    num_responses: int
    extras: dict[str, Tensor] = field(default_factory=dict)
    example_ids: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device),
                     self.num_examples, self.num_responses, {k: v.to(device) for k, v in self.extras.items()},
                     None if self.example_ids is None else self.example_ids.to(device))


def mismatched_completions(examples: list[TokenizedExample]) -> list[list[int]]:
    """For each example, the completion of the next example (cyclically) whose prompt differs.

    Rows made from pairs sit side by side, so "the next example" would often be the same prompt's
    other reply in a batch taken in data order (evaluation, or `shuffle: false`), and KTO's z0
    would then not be a KL estimate. A batch holding a single prompt has no mismatched completion:
    it gets an empty one (log-ratio 0, so z0 = 0, as with no mismatched column at all) and keeps
    two responses per example, like every other batch.
    """
    n = len(examples)
    out = []
    for i, example in enumerate(examples):
        other = next((examples[(i + step) % n] for step in range(1, n)
                      if examples[(i + step) % n].prompt_ids != example.prompt_ids), None)
        out.append([] if other is None else other.response_ids[0])
    return out


def collate(examples: list[TokenizedExample], pad_token_id: int, pad_to_multiple_of: int = 1,
            example_ids: list[int] | None = None) -> Batch:
    """Pad a list of tokenized examples into a Batch (`example_ids`: their indices in the data, if known).

    Pointwise examples (one completion with a label) get a second response: a completion of
    another prompt under this example's prompt, a mismatched pair from which KTO estimates its KL
    reference point (Ethayarajh et al. 2024, §4.1); see `mismatched_completions`.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    kinds = {ex.kind for ex in examples}
    if len(kinds) > 1:
        raise ValueError(f"a batch mixes data kinds {sorted(kinds)}")
    kind = kinds.pop()
    responses = [list(ex.response_ids) for ex in examples]
    if kind == "pointwise":
        for i, mismatched in enumerate(mismatched_completions(examples)):
            responses[i].append(mismatched)
    k = len(responses[0])
    if any(len(r) != k for r in responses):
        raise ValueError("every example in a batch must have the same number of responses")
    rows = [(ex.prompt_ids, resp) for ex, rs in zip(examples, responses) for resp in rs]
    length = max(len(p) + len(r) for p, r in rows)
    length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    response_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for row, (prompt, response) in enumerate(rows):
        ids = prompt + response
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        response_mask[row, len(prompt):len(ids)] = True
    extras: dict[str, Tensor] = {}
    if kind == "pointwise":
        extras["label"] = torch.tensor([bool(ex.label) for ex in examples])
    if examples[0].scores is not None:
        extras["scores"] = torch.tensor([ex.scores for ex in examples], dtype=torch.float32)
    for key in examples[0].extras:
        extras[key] = torch.tensor([ex.extras[key] for ex in examples])
    ids = None if example_ids is None else torch.as_tensor(list(example_ids), dtype=torch.long)
    return Batch(input_ids, attention_mask, response_mask, len(examples), k, extras, ids)
