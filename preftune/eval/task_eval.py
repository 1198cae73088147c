"""Evaluate a policy on a built-in task: gold reward, win-rate vs a baseline, KL to a reference, length."""
from __future__ import annotations

import torch

from preftune.data.collate import collate
from preftune.data.tokenize import TokenizedExample
from preftune.logps import sequence_logps
from preftune.sampling import Samples, sample


@torch.no_grad()
def sample_logps(model, samples: Samples, pad_token_id: int, batch_size: int = 64) -> torch.Tensor:
    """log pi(y|x) of every sample under `model`, in the order of Samples.flat()."""
    rows = [TokenizedExample(samples.prompt_ids[i], [ids], "sft") for i, _, _, ids in samples.flat()]
    values = []
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start:start + batch_size], pad_token_id).to(device)
        values.append(sequence_logps(model, batch).sum[:, 0].float().cpu())
    return torch.cat(values)


def gold_scores(task, samples: Samples) -> torch.Tensor:
    return torch.tensor([task.score(prompt, text) for _, prompt, text, _ in samples.flat()], dtype=torch.float64)


def win_rate(policy_scores: torch.Tensor, baseline_scores: torch.Tensor) -> float:
    """P(policy beats baseline) by the gold oracle, ties counted as half a win."""
    return float(((policy_scores > baseline_scores).double() + 0.5 * (policy_scores == baseline_scores).double()).mean())


def evaluate_on_task(model, tokenizer, task, prompts: list[str], *, baseline=None, reference=None,
                     samples_per_prompt: int = 4, temperature: float = 1.0, max_new_tokens: int = 16,
                     seed: int = 0, batch_size: int = 64, progress: bool = True,
                     baseline_scores: torch.Tensor | None = None) -> dict:
    """Metrics of `model` on `prompts`:

    gold_reward: mean gold score of samples at `temperature` (accuracy for arithmetic);
    gold_reward_greedy: the same for greedy decoding;
    win_rate: P(a sample beats the baseline's sample for the same prompt and seed) by the oracle;
    kl: Monte-Carlo KL(pi || pi_ref) = mean over policy samples of log pi(y|x) - log pi_ref(y|x)
        (unbiased at temperature 1, the default);
    length: mean response length in tokens;
    and whatever the task's optional `metrics(prompts, responses)` adds from the same samples
    (attack success rate for `safety`, each gold reward for `two-objective`, ...).

    baseline_scores: the gold scores of baseline samples drawn once (`baseline_samples_scores`),
    instead of sampling `baseline` again; many evaluations against one baseline share them.
    """
    policy_samples = sample(model, tokenizer, prompts, samples_per_prompt, temperature, 1.0, max_new_tokens,
                            batch_size, seed, progress, desc="eval sample")
    scores = gold_scores(task, policy_samples)
    greedy = sample(model, tokenizer, prompts, 1, 0.0, 1.0, max_new_tokens, batch_size, seed, False)
    metrics = {
        "gold_reward": float(scores.mean()),
        "gold_reward_greedy": float(gold_scores(task, greedy).mean()),
        "length": float(torch.tensor([len(ids) for *_, ids in policy_samples.flat()], dtype=torch.float64).mean()),
        "prompts": len(prompts),
        "samples": len(scores),
    }
    if hasattr(task, "metrics"):
        metrics.update(task.metrics([p for _, p, _, _ in policy_samples.flat()],
                                    [t for _, _, t, _ in policy_samples.flat()]))
    if baseline is not None and baseline_scores is None:
        baseline_scores = baseline_samples_scores(baseline, tokenizer, task, prompts, samples_per_prompt=samples_per_prompt,
                                                  temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                                                  batch_size=batch_size)
    if baseline_scores is not None:
        metrics["win_rate"] = win_rate(scores, baseline_scores)
    if reference is not None:
        pad = tokenizer.pad_token_id
        log_ratio = sample_logps(model, policy_samples, pad, batch_size) - sample_logps(reference, policy_samples, pad, batch_size)
        metrics["kl"] = float(log_ratio.mean())
    return metrics


def baseline_samples_scores(baseline, tokenizer, task, prompts: list[str], *, samples_per_prompt: int = 4,
                            temperature: float = 1.0, max_new_tokens: int = 16, seed: int = 0,
                            batch_size: int = 64) -> torch.Tensor:
    """Gold scores of the baseline's samples exactly as `evaluate_on_task(..., baseline=...)` draws
    them (seed + 1, so they are independent of the policy's samples at the same seed)."""
    samples = sample(baseline, tokenizer, prompts, samples_per_prompt, temperature, 1.0, max_new_tokens,
                     batch_size, seed + 1, False)
    return gold_scores(task, samples)
