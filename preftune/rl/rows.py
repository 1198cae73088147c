"""What the RL data makers produce and the update consumes: rows of sampled responses with their extras.

A `Row` is one example: a prompt, K responses (K = 1 for a rollout, K candidate steps for DAPO, 2 for
an MCTS pair), per-example values (a score, a group id, visit counts, ...) and per-token values of each
response (log-probs under the sampling policy, the reference, the DPO model; the critic's values; step
ids). `collate_rows` pads them into the library's `Batch` and aligns the per-token values with the
(B, K, T) layout of `Logps.tokens`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from preftune.data.collate import Batch, collate
from preftune.data.tokenize import TokenizedExample
from preftune.records import Logps

# Per-token values that are log-probs of the responses under some model: they reach a method as Logps.
LOGPS_KEYS = ("old", "reference", "dpo")


@dataclass
class Row:
    prompt_ids: list[int]
    responses: list[list[int]]
    values: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, list[list[float]]] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "responses": self.responses, "values": self.values, "tokens": self.tokens}

    @staticmethod
    def from_json(data: dict) -> "Row":
        return Row(data["prompt_ids"], data["responses"], data.get("values", {}), data.get("tokens", {}))


@dataclass
class RowBatch:
    """A collated batch: the padded ids, per-example values (B, ...) and per-token values (B, K, T)."""

    batch: Batch
    values: dict[str, Tensor]
    tokens: dict[str, Tensor]

    @property
    def mask(self) -> Tensor:
        """(B, K, T) True on response tokens, aligned with `Logps.tokens` (positions 1..L-1 of the rows)."""
        return self.batch.response_mask[:, 1:].view(self.batch.num_examples, self.batch.num_responses, -1)

    def logps(self, key: str) -> Logps:
        return Logps.from_tokens(self.tokens[key], self.mask)

    def to(self, device) -> "RowBatch":
        return RowBatch(self.batch.to(device), {k: v.to(device) for k, v in self.values.items()},
                        {k: v.to(device) for k, v in self.tokens.items()})


def collate_rows(rows: list[Row], pad_token_id: int) -> RowBatch:
    batch = collate([TokenizedExample(r.prompt_ids, r.responses, "rollout") for r in rows], pad_token_id)
    mask = batch.response_mask[:, 1:]
    values = {key: torch.tensor([r.values[key] for r in rows]) for key in rows[0].values}
    tokens = {}
    for key in rows[0].tokens:
        flat = torch.zeros(mask.shape, dtype=torch.long if key == "step_ids" else torch.float32)
        for i, per_response in enumerate(v for r in rows for v in r.tokens[key]):
            positions = mask[i].nonzero().squeeze(-1)
            if len(per_response) != len(positions):
                raise ValueError(f"row value '{key}' has {len(per_response)} entries for {len(positions)} response tokens")
            flat[i, positions] = torch.tensor(per_response, dtype=flat.dtype)
        tokens[key] = flat.view(batch.num_examples, batch.num_responses, -1)
    return RowBatch(batch, values, tokens)


def token_lists(values: Tensor, mask: Tensor) -> list[list[list[float]]]:
    """(B, K, T) per-token values back to per-response lists (the inverse of collate_rows' alignment)."""
    return [[values[b, k][mask[b, k]].tolist() for k in range(values.shape[1])] for b in range(values.shape[0])]


def write_rows(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row.as_json()) + "\n")


def read_rows(path: Path) -> list[Row]:
    return [Row.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
