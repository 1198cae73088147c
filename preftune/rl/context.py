"""What the parts of an RL run share (RLContext), and the frozen per-token quantities every data maker
attaches to its rows: log-probs under a frozen model, the critic's values, step ids, rewards."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from preftune.logps import sequence_logps
from preftune.rl.rows import Row, collate_rows, token_lists
from preftune.rl.segment import step_ids

# The per-example and per-token extras a data maker attaches to rows; the rest (values, token_kl,
# entropy) are computed with gradient during the update.
FROZEN_TOKEN_EXTRAS = ("old", "dpo", "old_values", "step_ids")
LIVE_EXTRAS = ("values", "token_kl", "entropy")


@dataclass
class RLContext:
    cfg: Any
    task: Any
    tokenizer: Any
    policy: Any                       # the unwrapped policy (sampling, frozen log-probs)
    objective: Any
    device: Any
    run_dir: Path
    reference: Any = None             # frozen reference model (or None: reference = the policy at make-data time)
    value_model: Any = None           # the trained critic (a ValueModel), or None
    value_head: Any = None            # a ValueHead on the policy's backbone (value.shared_backbone)
    reward_model: Any = None          # a K-output ValueModel scoring responses (reward.source model / learned)
    dpo_model: Any = None             # RTO's DPO policy
    aspect_names: list[str] = field(default_factory=list)

    @property
    def pad(self) -> int:
        return self.tokenizer.pad_token_id

    def wants(self, extra: str) -> bool:
        return extra in self.objective.extras

    def seed(self, *parts: int) -> int:
        """A sampling seed from the run's seed and the given counters (iteration, phase, ...)."""
        value = self.cfg.train.seed
        for part in parts:
            value = value * 1_000_003 + part
        return value % (2 ** 62)

    def decode_token(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def step_ids(self, response: list[int]) -> list[int]:
        return step_ids(response, self.decode_token, self.cfg.steps.separator)


@torch.no_grad()
def frozen_token_logps(model, rows: list[Row], pad: int, device, batch_size: int = 64) -> list[list[list[float]]]:
    """Per response, the per-token log-probs under a frozen `model` (rows in order)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        rb = collate_rows(rows[start:start + batch_size], pad).to(device)
        logps = sequence_logps(model, rb.batch, token_level=True)
        out += token_lists(logps.tokens.float().cpu(), rb.mask.cpu())
    model.train(was_training)
    return out


@torch.no_grad()
def critic_token_values(ctx: RLContext, rows: list[Row], batch_size: int = 64) -> list[list[list[float]]]:
    """Per response, the critic's value at the state before each token (the rollout's V_old)."""
    from preftune.rl.forward import policy_forward, value_forward

    out = []
    for start in range(0, len(rows), batch_size):
        rb = collate_rows(rows[start:start + batch_size], ctx.pad).to(ctx.device)
        if ctx.value_head is not None:
            hidden = policy_forward(ctx.policy, rb.batch, hidden=True).hidden
            values = ctx.value_head(hidden)[..., 0]
        else:
            values = value_forward(ctx.value_model, rb.batch, rb.mask)[..., 0]
        out += token_lists(values.float().cpu(), rb.mask.cpu())
    return out


def attach_frozen(ctx: RLContext, rows: list[Row], reference=None) -> None:
    """Add to `rows` the frozen per-token extras the objective asks for: old / reference / DPO log-probs,
    the critic's rollout values and step ids. `reference`: the frozen reference model (default ctx.reference;
    None means the policy as it is now, DAPO's pi_ref <- pi)."""
    policy_logps = None
    if ctx.wants("old") or (ctx.objective.needs_reference and (reference or ctx.reference) is None):
        policy_logps = frozen_token_logps(ctx.policy, rows, ctx.pad, ctx.device)
    if ctx.wants("old"):
        for row, values in zip(rows, policy_logps):
            row.tokens["old"] = values
    if ctx.objective.needs_reference:
        model = reference or ctx.reference
        values = policy_logps if model is None else frozen_token_logps(model, rows, ctx.pad, ctx.device)
        for row, v in zip(rows, values):
            row.tokens["reference"] = v
    if ctx.wants("dpo"):
        for row, values in zip(rows, frozen_token_logps(ctx.dpo_model, rows, ctx.pad, ctx.device)):
            row.tokens["dpo"] = values
    if ctx.wants("old_values"):
        for row, values in zip(rows, critic_token_values(ctx, rows)):
            row.tokens["old_values"] = values
    if ctx.wants("step_ids"):
        for row in rows:
            row.tokens["step_ids"] = [ctx.step_ids(r) for r in row.responses]
