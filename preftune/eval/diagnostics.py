"""Training diagnostics that warn before preference training goes wrong.

What the analysis papers of the catalogue measure, as pure functions on logits and log-probs,
and `TrainingDiagnostics`, which the training loop calls every `diagnostics.every` steps on
held-out data (train/loop.py, config section `diagnostics`):

- chosen and rejected log-likelihood trajectories (Yan et al., "3D-Properties", ICLR 2025;
  offline.md §11): a drastic drop of the rejected likelihood, with the chosen one following it
  down, is the first of the three D's;
- top-k entropy H_k and top-k probability mass M_k, k = 10 (Shi et al., "Understanding
  Likelihood Over-optimisation in DAAs", 2024; offline.md §12): H_k turning from rising to
  falling marks over-optimisation; H_k rising while M_k falls means mass leaks outside the top k;
- KL to the reference (Rafailov et al., "Scaling Laws for Reward Model Over-optimisation in
  DAAs", NeurIPS 2024; offline.md §13): the Monte-Carlo sequence KL under policy samples, the
  paper's x-axis, and the exact per-token KL along held-out chosen responses;
- mean sampled length, implicit-reward accuracy, and, on a built-in task, the gold reward of the
  samples, against which the indicators above are read.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from preftune.data.collate import collate
from preftune.data.tokenize import TokenizedExample
from preftune.records import response_names


# --------------------------------------------------------------------------- pure functions

def topk_entropy_and_mass(logits: Tensor, k: int = 10, renormalize: bool = True) -> tuple[Tensor, Tensor]:
    """H_k (bits) and M_k of every next-token distribution in `logits` (..., V) -> two (...) tensors.

    M_k(s) = Σ_{i∈T_k} p_i, the probability of the k most likely tokens. H_k(s) = −Σ_{i∈T_k} p̃_i
    log₂ p̃_i, with p̃ = p/M_k renormalised over the top k (Shi et al. §3: "the probability
    distribution over the top k tokens"; offline.md §12 makes renormalisation the default) or,
    with renormalize=False, the unnormalised p_i. Uniform logits over V give H_k = log₂ k and
    M_k = k/V; a one-hot distribution gives H_k = 0 and M_k = 1.
    """
    # Only the k largest logits and the normaliser are needed; the full (..., V) softmax is never
    # formed, and the k probabilities are finished in float64.
    logits = logits if logits.dtype == torch.float64 else logits.float()
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    top = (logits.topk(min(k, logits.shape[-1]), dim=-1).values - log_norm).double().exp()
    mass = top.sum(-1)
    p = top / mass.unsqueeze(-1) if renormalize else top
    entropy = -torch.special.xlogy(p, p).sum(-1) / math.log(2.0)  # xlogy: 0·log 0 = 0
    return entropy, mass


def token_kl(policy_logits: Tensor, reference_logits: Tensor) -> Tensor:
    """KL(π(·|s) ‖ π_ref(·|s)) in nats at every position: (..., V) logits -> (...)."""
    log_p = torch.log_softmax(policy_logits if policy_logits.dtype == torch.float64 else policy_logits.float(), -1)
    log_q = torch.log_softmax(reference_logits if reference_logits.dtype == torch.float64 else reference_logits.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).double()


def sequence_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked positions of each sequence: (N, T) -> (N,) (0 for an empty mask)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def monte_carlo_kl(policy_logps: Tensor, reference_logps: Tensor) -> float:
    """KL(π ‖ π_ref) ≈ mean over samples y ~ π of log π(y|x) − log π_ref(y|x) (offline.md §13).

    Unbiased when the samples were drawn from π at temperature 1 (a single sample can be negative).
    """
    return float((policy_logps.double() - reference_logps.double()).mean())


def implicit_reward_accuracy(policy_logps: Tensor, reference_logps: Tensor) -> float:
    """Fraction of pairs whose DPO implicit reward ranks chosen above rejected.

    policy_logps, reference_logps: (B, 2) sequence log-probs of (chosen, rejected). The implicit
    reward β(log π − log π_ref) orders a pair the same way for every β > 0, so β is not needed;
    a tie (policy = reference) is not counted as correct.
    """
    ratio = policy_logps.double() - reference_logps.double()
    return float((ratio[:, 0] > ratio[:, 1]).double().mean())


def peak_before_end(values: list[float], tolerance: float = 0.01) -> int | None:
    """Index of the maximum of a trajectory when it is followed by a fall of more than
    `tolerance`·|max| by the last value (a turn from rising to falling); None otherwise."""
    if len(values) < 3:
        return None
    peak = max(range(len(values)), key=lambda i: values[i])
    if peak == len(values) - 1 or values[peak] - values[-1] <= tolerance * abs(values[peak]):
        return None
    return peak


def diagnostic_warnings(rows: list[dict], k: int = 10) -> list[str]:
    """Plain-language warnings from logged diagnostics (rows of metrics.jsonl with diag/ keys).

    Reads the signals of offline.md §11-12: the top-k entropy turning from rising to falling
    (over-optimisation, Shi et al.), top-k mass falling while the entropy rises (mass leaking
    outside the top k), the chosen log-likelihood falling with the rejected one (3D-properties),
    and, on a task, where the gold reward peaked.
    """
    rows = [r for r in rows if f"diag/top{k}_entropy" in r]
    if len(rows) < 3:
        return []
    steps = [r["step"] for r in rows]
    series = lambda key: [r.get(key, float("nan")) for r in rows]  # noqa: E731
    warnings = []
    entropy, mass = series(f"diag/top{k}_entropy"), series(f"diag/top{k}_mass")
    turn = peak_before_end(entropy)
    if turn is not None and turn > 0:
        warnings.append(f"top-{k} entropy rose until step {steps[turn]} and then fell: the over-optimisation "
                        f"signal of Shi et al. (gold quality tends to peak there)")
    if entropy[-1] > entropy[0] and mass[-1] < mass[0] - 0.01 * abs(mass[0]):
        warnings.append(f"top-{k} entropy rose while top-{k} mass fell ({mass[0]:.3f} -> {mass[-1]:.3f}): "
                        f"probability is leaking outside the top {k} tokens")
    chosen, rejected = series("diag/logps/chosen"), series("diag/logps/rejected")
    if chosen[-1] < chosen[0] and rejected[-1] < rejected[0] and rejected[0] - rejected[-1] > chosen[0] - chosen[-1]:
        warnings.append(f"both log-likelihoods fell, the rejected one faster (chosen {chosen[0]:.2f} -> {chosen[-1]:.2f}, "
                        f"rejected {rejected[0]:.2f} -> {rejected[-1]:.2f}): the drastic drop of 3D-properties")
    if "diag/gold_reward" in rows[0]:
        gold_peak = peak_before_end(series("diag/gold_reward"))
        if gold_peak is not None:
            warnings.append(f"gold reward peaked at step {steps[gold_peak]} ({rows[gold_peak]['diag/gold_reward']:.3f}) "
                            f"and ended at {rows[-1]['diag/gold_reward']:.3f}")
    return warnings


# --------------------------------------------------------------------------- measured on models

@torch.no_grad()
def teacher_forced_statistics(policy, reference, examples: list[TokenizedExample], pad_token_id: int,
                              k: int = 10, batch_size: int = 8) -> dict[str, Tensor]:
    """Teacher-forced statistics of every response of `examples`, each a (N, K) float64 tensor:

    policy_logps, reference_logps: sequence log-probs; policy_logps_per_token: their token mean;
    topk_entropy, topk_mass: H_k and M_k of the policy, averaged over the response's positions;
    token_kl: KL(π ‖ π_ref) of the next-token distributions, averaged over the same positions.
    Policy and reference run batch by batch in float32, so only a batch's (B·K, T, V) logits
    are ever held (twice: policy and reference); lower `batch_size` for large vocabularies.
    """
    device = next(policy.parameters()).device
    columns: dict[str, list[Tensor]] = {}
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad_token_id).to(device)
        policy_logits = _next_token_logits(policy, batch)
        with _as_context(reference) as ref_model:
            reference_logits = _next_token_logits(ref_model, batch)
        targets, mask = batch.input_ids[:, 1:], batch.response_mask[:, 1:]
        policy_tokens = _picked_logps(policy_logits, targets)
        entropy, mass = topk_entropy_and_mass(policy_logits, k)
        values = {"policy_logps": (policy_tokens * mask).sum(-1),
                  "reference_logps": (_picked_logps(reference_logits, targets) * mask).sum(-1),
                  "policy_logps_per_token": sequence_mean(policy_tokens, mask),
                  "topk_entropy": sequence_mean(entropy, mask), "topk_mass": sequence_mean(mass, mask),
                  "token_kl": sequence_mean(token_kl(policy_logits, reference_logits), mask)}
        for name, value in values.items():
            columns.setdefault(name, []).append(value.double().view(batch.num_examples, batch.num_responses).cpu())
    return {name: torch.cat(parts) for name, parts in columns.items()}


def _next_token_logits(model, batch) -> Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return logits[:, :-1].float()


def _picked_logps(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)).double()


class TrainingDiagnostics:
    """Measures the policy against its reference on fixed held-out data; returns `diag/...` metrics.

    examples: held-out tokenized examples (pairs: response 0 chosen, 1 rejected), teacher-forced;
    the top-k indicators and token KL are read on response 0 (the chosen one, offline.md §12).
    prompts: prompts to sample (text, chat messages or token ids); empty to skip sampled metrics.
    task: a built-in task, to score the samples with its gold reward (and its own metrics).
    """

    def __init__(self, examples: list[TokenizedExample], tokenizer, *, prompts=(), task=None, top_k: int = 10,
                 samples_per_prompt: int = 2, max_new_tokens: int = 16, seed: int = 0,
                 names=("chosen", "rejected")):
        self.examples, self.tokenizer, self.prompts, self.task = examples, tokenizer, list(prompts), task
        self.top_k, self.samples_per_prompt, self.max_new_tokens = top_k, samples_per_prompt, max_new_tokens
        self.seed, self.names = seed, names

    @torch.no_grad()
    def __call__(self, policy, reference) -> dict[str, float]:
        """`reference`: a model, or a zero-argument callable returning a context manager that
        yields one (the reference of a LoRA run is the policy with its adapters disabled)."""
        was_training = policy.training
        policy.eval()
        try:
            return {**self._teacher_forced(policy, reference), **self._sampled(policy, reference)}
        finally:
            policy.train(was_training)

    def _teacher_forced(self, policy, reference) -> dict[str, float]:
        if not self.examples:
            return {}
        stats = teacher_forced_statistics(policy, reference, self.examples, self.tokenizer.pad_token_id, self.top_k)
        out = {}
        for index in range(stats["policy_logps"].shape[1]):
            name = self.names[index] if index < len(self.names) else f"response_{index}"
            out[f"diag/logps/{name}"] = float(stats["policy_logps"][:, index].mean())
            out[f"diag/logps_per_token/{name}"] = float(stats["policy_logps_per_token"][:, index].mean())
        out[f"diag/top{self.top_k}_entropy"] = float(stats["topk_entropy"][:, 0].mean())
        out[f"diag/top{self.top_k}_mass"] = float(stats["topk_mass"][:, 0].mean())
        out["diag/token_kl"] = float(stats["token_kl"][:, 0].mean())
        if tuple(self.names[:2]) == ("chosen", "rejected"):  # pairs only (not KTO's mismatched completions)
            out["diag/reward_accuracy"] = implicit_reward_accuracy(stats["policy_logps"][:, :2],
                                                                   stats["reference_logps"][:, :2])
        return out

    def _sampled(self, policy, reference) -> dict[str, float]:
        if not self.prompts:
            return {}
        from preftune.eval.task_eval import sample_logps
        from preftune.sampling import sample

        pad = self.tokenizer.pad_token_id
        samples = sample(policy, self.tokenizer, self.prompts, self.samples_per_prompt, 1.0, 1.0,
                         self.max_new_tokens, 64, self.seed, False)
        policy_logps = sample_logps(policy, samples, pad)
        with _as_context(reference) as ref_model:
            reference_logps = sample_logps(ref_model, samples, pad)
        out = {"diag/kl": monte_carlo_kl(policy_logps, reference_logps),
               "diag/length": float(torch.tensor([len(ids) for *_, ids in samples.flat()], dtype=torch.float64).mean())}
        if self.task is not None:
            prompts = [p for _, p, _, _ in samples.flat()]
            texts = [t for _, _, t, _ in samples.flat()]
            out["diag/gold_reward"] = sum(self.task.score(p, t) for p, t in zip(prompts, texts)) / len(texts)
            if hasattr(self.task, "metrics"):
                out.update({f"diag/{k}": v for k, v in self.task.metrics(prompts, texts).items()})
        return out


class _as_context:
    """Use a model directly, or enter the context manager that a callable returns."""

    def __init__(self, reference):
        self.reference, self.context = reference, None

    def __enter__(self):
        if isinstance(self.reference, torch.nn.Module):
            return self.reference
        self.context = self.reference()
        return self.context.__enter__()

    def __exit__(self, *exc):
        return self.context.__exit__(*exc) if self.context is not None else False


def monitor_for_run(cfg, data, tokenizer, policy, reference, unwrap=lambda m: m):
    """The diagnostics of a training run (config section `diagnostics`), as `measure(policy) -> dict`.

    Held-out pairs are `data.eval` (data.eval_fraction or data.eval_source); without any, the
    first training examples stand in and the run summary says so. Prompts to sample are the
    task's test prompts for a `task:` source (whose gold reward is then logged too), otherwise
    the prompts of those examples. A run without a reference model (a reference-free objective)
    gets a frozen copy of its initial policy for measurement only: it costs a second copy of
    the weights in memory, but no training computation.
    """
    import copy

    settings = cfg.diagnostics
    held_out = bool(data.eval)
    examples = (data.eval if held_out else data.train)[:settings.examples]
    task, prompts = None, [ex.prompt_ids for ex in examples[:settings.prompts]]
    if cfg.data.source.startswith("task:"):
        from preftune.tasks import get_task

        task = get_task(cfg.data.source.split(":", 1)[1], **cfg.data.task.options)
        prompts = task.prompts("test", settings.prompts)
    if reference.kind == "none":
        ref = copy.deepcopy(policy).eval().requires_grad_(False)
    elif reference.kind == "model":
        ref = reference.frozen
    else:
        ref = lambda: reference.model(unwrap)  # noqa: E731  (the LoRA policy with adapters disabled)
    names = tuple(response_names(data.kind, len(examples[0].response_ids) if examples else 2))
    monitor = TrainingDiagnostics(examples, tokenizer, prompts=prompts if settings.prompts else (), task=task,
                                  top_k=settings.top_k, samples_per_prompt=settings.samples_per_prompt,
                                  max_new_tokens=settings.max_new_tokens, seed=cfg.train.seed, names=names)
    monitor.source = "held-out" if held_out else "train (no held-out data was configured)"
    return monitor, ref
