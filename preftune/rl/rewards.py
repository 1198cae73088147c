"""Rewards of sampled responses: the task's gold score, its per-aspect gold scores, or a reward model
(a ValueModel with K outputs read at the last token), including the multi-output regression model that
multi-objective GRPO trains on scored samples of the starting policy (online.md §13, multi-output MSE)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from preftune.data.collate import collate
from preftune.data.tokenize import TokenizedExample
from preftune.rl.value_model import ValueModel, last_token_values
from preftune.sampling import sample


def aspect_names(task, cfg) -> list[str]:
    names = list(cfg.reward.aspects) or list(getattr(task, "objectives", ()))
    if not names:
        raise ValueError(f"task {task.name!r} has no reward aspects (objectives); use reward.source: task")
    return names


def gold_aspects(task, names: list[str], prompts: list, texts: list[str]) -> list[list[float]]:
    """(N, A) the task's gold per-aspect scores of each response."""
    rows = []
    for prompt, text in zip(prompts, texts):
        scores = task.objective_scores(prompt, text)
        missing = [n for n in names if n not in scores]
        if missing:
            raise ValueError(f"task {task.name!r} scores aspects {sorted(scores)}, not {missing}")
        rows.append([float(scores[n]) for n in names])
    return rows


@torch.no_grad()
def model_scores(model: ValueModel, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_token_id: int,
                 batch_size: int = 64) -> list[list[float]]:
    """(N, K) a reward model's outputs at the last token of each prompt + response."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = [TokenizedExample(p, [r], "rollout") for p, r in zip(prompt_ids[start:start + batch_size],
                                                                   response_ids[start:start + batch_size])]
        batch = collate(rows, pad_token_id).to(device)
        values = model(batch.input_ids, batch.attention_mask)
        out += last_token_values(values, batch.attention_mask).float().cpu().tolist()
    return out


def train_reward_model(cfg, task, policy, tokenizer, path: Path, device) -> ValueModel:
    """The multi-output reward model of multi-objective GRPO: K aspect scores regressed (MSE) on the
    starting policy's samples, scored by the task's gold aspects; saved to `path` (and reused from it)."""
    names = aspect_names(task, cfg)
    if (path / "value_head.json").exists():
        return ValueModel.from_pretrained(str(path)).to(device)
    r = cfg.reward
    prompts = task.prompts("train")
    random.Random(cfg.train.seed + 17).shuffle(prompts)
    per_prompt = max(1, cfg.rollout.samples_per_prompt)
    chosen = prompts[:max(1, r.samples // per_prompt)]
    samples = sample(policy, tokenizer, chosen, per_prompt, cfg.rollout.temperature, 1.0, cfg.rollout.max_new_tokens,
                     cfg.rollout.batch_size, cfg.train.seed + 17, False)
    items = list(samples.flat())
    targets = torch.tensor(gold_aspects(task, names, [p for _, p, _, _ in items], [t for _, _, t, _ in items]))
    examples = [TokenizedExample(samples.prompt_ids[i], [ids], "rollout") for i, _, _, ids in items]
    held = max(1, len(examples) // 10)
    model = (ValueModel.from_policy(policy, len(names), names) if cfg.value.name_or_path == "policy" else
             ValueModel.from_pretrained(cfg.value.name_or_path, len(names), names, **cfg.model.loading)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=r.lr)
    generator = torch.Generator().manual_seed(cfg.train.seed + 17)
    train_ids = list(range(held, len(examples)))
    for _ in range(r.steps):
        pick = [train_ids[i] for i in torch.randint(len(train_ids), (min(r.batch_size, len(train_ids)),),
                                                    generator=generator).tolist()]
        loss = _regression_loss(model, [examples[i] for i in pick], targets[pick], tokenizer.pad_token_id, device)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        held_out = float(_regression_loss(model, examples[:held], targets[:held], tokenizer.pad_token_id, device))
    model.save_pretrained(path, tokenizer)
    (path / "reward_model.json").write_text(json.dumps({"aspects": names, "samples": len(examples),
                                                        "held_out_mse": held_out, "steps": r.steps}, indent=1))
    return model


def _regression_loss(model: ValueModel, examples, targets, pad_token_id: int, device):
    batch = collate(examples, pad_token_id).to(device)
    predicted = last_token_values(model(batch.input_ids, batch.attention_mask), batch.attention_mask)
    return ((predicted - targets.to(predicted)) ** 2).mean()

