"""Training rows from a built-in task: demonstrations for SFT, or on-policy preference pairs.

On-policy pairs follow the quickstart recipe of the issue: sample k responses per prompt from
the model being trained (its initial weights), score them with the gold oracle, and pair the
best against the worst. Prompts whose samples all score the same give no pair. Every row also
carries the gold scores of its responses and, when the task has one, the gold answer ("gold"),
so methods that take margins or a gold response can train on task data too.
"""
from __future__ import annotations

import json
from pathlib import Path

from preftune.sampling import sample


def pairs_from_samples(task, samples, pairing: str = "best-worst") -> list[dict]:
    """Label sampled responses with the gold oracle and turn them into preference rows."""
    if pairing not in ("best-worst", "all", "listwise"):
        raise ValueError(f"pairing must be 'best-worst', 'all' or 'listwise', got {pairing!r}")
    gold = getattr(task, "answer", None)
    rows = []
    for prompt, texts in zip(samples.prompts, samples.texts):
        # A blank sample (the model stopped at once) is not a usable response: the data layer
        # rejects empty text, so such samples take no part in pairs (counted by the caller).
        scored = [(task.score(prompt, t), t) for t in texts if t.strip()]
        if not scored:
            continue
        extra = {"gold": gold(prompt)} if gold else {}
        if pairing == "listwise":
            if len(scored) == len(texts) and len({s for s, _ in scored}) > 1:
                rows.append({"prompt": prompt, "responses": [t for _, t in scored],
                             "scores": [s for s, _ in scored], **extra})
        elif pairing == "best-worst":
            best = max(scored, key=lambda s: s[0])
            worst = min(scored, key=lambda s: s[0])
            if best[0] > worst[0]:
                rows.append({"prompt": prompt, "chosen": best[1], "rejected": worst[1],
                             "chosen_score": best[0], "rejected_score": worst[0], **extra})
        else:
            seen = set()
            for s_a, a in scored:
                for s_b, b in scored:
                    if s_a > s_b and (a, b) not in seen:
                        seen.add((a, b))
                        rows.append({"prompt": prompt, "chosen": a, "rejected": b,
                                     "chosen_score": s_a, "rejected_score": s_b, **extra})
    return rows


def build_task_rows(task, task_cfg, kind: str, model, tokenizer, seed: int, progress: bool = True) -> tuple[list[dict], dict]:
    """Rows for `kind` ("sft" demonstrations or "pairwise" on-policy pairs) and a stats dict."""
    if kind == "sft":
        rows = task.demonstrations(task_cfg.demonstrations, task_cfg.noise, seed)
        return rows, {"demonstrations": len(rows), "noise": task_cfg.noise}
    prompts = task.prompts("train", task_cfg.prompts)
    samples = sample(model, tokenizer, prompts, task_cfg.samples_per_prompt, task_cfg.temperature, 1.0,
                     task_cfg.max_new_tokens, 256, seed, progress, desc="sample pairs")
    rows = pairs_from_samples(task, samples, "listwise" if kind == "listwise" else task_cfg.pairing)
    scores = [task.score(p, t) for _, p, t, _ in samples.flat()]
    blank = sum(not t.strip() for _, _, t, _ in samples.flat())
    stats = {"prompts": len(prompts), "samples": len(scores), "blank_samples": blank, "pairs": len(rows),
             "sample_gold_reward": sum(scores) / len(scores), "sampling_tokens_per_s": samples.tokens_per_s}
    return rows, stats


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path
