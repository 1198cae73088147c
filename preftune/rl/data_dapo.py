"""Make data for dapo_step (online.md §10): a step critic from Monte-Carlo labels, then candidate steps.

Stage A (once, or every iteration with dapo.critic_every_iteration): the policy answers
`dapo.critic_prompts` training prompts; every step prefix of every answer (the bare prompt included)
gets the label V^(s) = mean gold outcome of `dapo.completions` completions sampled from it; the critic
(a value model on a copy of the policy's backbone) regresses onto the labels (MSE at the prefix's last
token) and is saved in RUN_DIR/critic. It is never co-trained with the actor.

Stage B (every iteration): for `dapo.states` states (a prompt and a prefix of the policy's own answer,
its cut point drawn uniformly) sample K = `dapo.candidates` next steps from the policy (pi_ref <- pi at
the start of each iteration) and set A(s, a_k) = V(s + a_k) - V(s), using the gold outcome when a_k ends
the answer [R]. One row per state: the state as prompt, the K steps as responses.
"""
from __future__ import annotations

import json
import random

import torch

from preftune.data.collate import collate
from preftune.data.tokenize import encode_prompt, TokenizedExample
from preftune.rl.advantages import monte_carlo_value
from preftune.rl.context import RLContext, attach_frozen
from preftune.rl.rewards import model_scores
from preftune.rl.rows import Row
from preftune.rl.segment import first_step, split_steps
from preftune.rl.value_model import last_token_values
from preftune.sampling import sample


class DapoMaker:
    def __init__(self, ctx: RLContext):
        self.ctx = ctx
        self.prompts = ctx.task.prompts("train")
        random.Random(ctx.cfg.train.seed).shuffle(self.prompts)
        self.critic_path = ctx.run_dir / "critic"
        self.critic_stats: dict = {}

    def _slice(self, t: int, n: int, offset: int) -> list:
        return [self.prompts[(offset + t * n + i) % len(self.prompts)] for i in range(n)]

    def _answers(self, prompts: list, seed: int) -> list[list[int]]:
        r = self.ctx.cfg.rollout
        return [ids[0] for ids in sample(self.ctx.policy, self.ctx.tokenizer, prompts, 1, r.temperature, r.top_p,
                                         r.max_new_tokens, r.batch_size, seed, False).ids]

    def _steps(self, ids: list[int]) -> list[list[int]]:
        return split_steps(ids, self.ctx.decode_token, self.ctx.cfg.steps.separator)

    def train_critic(self, t: int) -> None:
        ctx, d, r = self.ctx, self.ctx.cfg.dapo, self.ctx.cfg.rollout
        prompts = self._slice(t, d.critic_prompts, 10_000)
        states = []
        for prompt, ids in zip(prompts, self._answers(prompts, ctx.seed(t, 10))):
            steps = self._steps(ids)
            states += [(prompt, [tok for step in steps[:j] for tok in step]) for j in range(len(steps))]
        starts = [encode_prompt(ctx.tokenizer, p) + prefix for p, prefix in states]
        completions = sample(ctx.policy, ctx.tokenizer, starts, d.completions, r.temperature, r.top_p,
                             r.max_new_tokens, r.batch_size, ctx.seed(t, 11), False).ids
        labels = [monte_carlo_value([ctx.task.score(p, ctx.tokenizer.decode(prefix + c, skip_special_tokens=True))
                                     for c in outs]) for (p, prefix), outs in zip(states, completions)]
        examples = [TokenizedExample(ids[:-1], [ids[-1:]], "rollout") for ids in starts]
        self.critic_stats = {"critic/prefixes": len(examples), "critic/label_mean": sum(labels) / len(labels),
                             "critic/mse": regress(ctx, examples, torch.tensor(labels), ctx.seed(t, 12))}
        ctx.value_model.save_pretrained(self.critic_path, ctx.tokenizer)
        (self.critic_path / "critic.json").write_text(json.dumps(self.critic_stats, indent=1))

    def make(self, t: int) -> tuple[list[Row], list[list[int]], dict]:
        ctx, d, r = self.ctx, self.ctx.cfg.dapo, self.ctx.cfg.rollout
        if d.critic_every_iteration or t == 0 or not self.critic_stats:
            saved = self.critic_path / "critic.json"
            if not d.critic_every_iteration and saved.exists():  # resumed run: the critic of stage A is kept
                from preftune.rl.value_model import ValueModel

                ctx.value_model.load_state_dict(ValueModel.from_pretrained(str(self.critic_path)).state_dict())
                self.critic_stats = json.loads(saved.read_text())
            else:
                self.train_critic(t)
        prompts = self._slice(t, d.states, 0)
        picker = random.Random(ctx.seed(t, 22))
        states = []
        for prompt, ids in zip(prompts, self._answers(prompts, ctx.seed(t, 20))):
            steps = self._steps(ids)
            cut = picker.randrange(len(steps)) if steps else 0
            states.append((prompt, encode_prompt(ctx.tokenizer, prompt) + [tok for step in steps[:cut] for tok in step]))
        continuations = sample(ctx.policy, ctx.tokenizer, [ids for _, ids in states], d.candidates, r.temperature,
                               r.top_p, r.max_new_tokens, r.batch_size, ctx.seed(t, 21), False).ids
        eos, rows = ctx.tokenizer.eos_token_id, []
        state_values = model_scores(ctx.value_model, [ids[:-1] for _, ids in states], [ids[-1:] for _, ids in states],
                                    ctx.pad)
        for (prompt, state), outs, v_state in zip(states, continuations, state_values):
            candidates = [first_step(ids, ctx.decode_token, ctx.cfg.steps.separator) or [eos] for ids in outs]
            after = model_scores(ctx.value_model, [state] * len(candidates), candidates, ctx.pad)
            values = []
            for step, v in zip(candidates, after):
                if step[-1] == eos:  # the answer ended: its outcome is known
                    full = ctx.tokenizer.decode(state[len(encode_prompt(ctx.tokenizer, prompt)):] + step,
                                                skip_special_tokens=True)
                    values.append(ctx.task.score(prompt, full))
                else:
                    values.append(v[0])
            rows.append(Row(state, candidates, {"advantages": [v - v_state[0] for v in values]}))
        attach_frozen(ctx, rows)
        advantages = [a for row in rows for a in row.values["advantages"]]
        stats = {**self.critic_stats, "rollout/states": len(rows),
                 "rollout/advantage_abs": sum(map(abs, advantages)) / len(advantages)}
        return rows, [[i] for i in range(len(rows))], stats


def regress(ctx: RLContext, examples: list[TokenizedExample], labels: torch.Tensor, seed: int) -> float:
    """Fit the critic's value at each example's last token to `labels` (MSE); returns the final batch MSE."""
    v = ctx.cfg.value
    model = ctx.value_model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=v.lr)
    generator = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(v.steps):
        pick = torch.randint(len(examples), (min(v.batch_size, len(examples)),), generator=generator).tolist()
        batch = collate([examples[i] for i in pick], ctx.pad).to(ctx.device)
        predicted = last_token_values(model(batch.input_ids, batch.attention_mask), batch.attention_mask)[:, 0]
        loss = ((predicted - labels[pick].to(predicted)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())
