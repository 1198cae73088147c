"""Exact expected loss of a method on a bandit, and the full-batch optimiser that minimises it.

A `Dataset` is the whole data distribution written out: every row (a prompt and the responses
the method sees, chosen first) with the probability of drawing it, which folds in both the
sampling distribution of the responses and the label probabilities of the preference model.
The expected loss is then the finite sum  E[L] = sum_m weight_m * loss_m  (offline.md §0,
"Expected loss"), twice differentiable in the policy logits for smooth losses, and its
minimiser is the population optimum that the closed forms in `closed_forms.py` describe.

Methods that use a batch statistic (KTO's reference point z0) see the whole dataset as one batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import torch
import numpy as np
from scipy.optimize import minimize, minimize_scalar
from torch import Tensor

from preftune.methods.objective import Objective
from preftune.methods.registry import MethodSpec, get
from preftune.records import Logps
from preftune.tabular.bandit import DTYPE, Bandit, as_float64
from preftune.tabular.preferences import PreferenceModel

# (policy, reference, extras) -> (M,) per-example losses: what a method or an objective computes.
LossFn = Callable[[Logps, "Logps | None", Mapping[str, Tensor]], Tensor]


@dataclass(frozen=True)
class Dataset:
    """An exact data distribution: row m is (prompt[m], responses[m]) with probability weight[m].

    responses: (M, R) response indices; for pairwise data column 0 is the chosen response and
    column 1 the rejected one (records.py). extras: per-row data columns a method declares
    (e.g. KTO's `label`), each (M, ...).
    """

    prompt: Tensor
    responses: Tensor
    weight: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if abs(float(self.weight.sum()) - 1) > 1e-12:
            raise ValueError("dataset weights are probabilities and must sum to 1")

    @property
    def num_rows(self) -> int:
        return self.responses.shape[0]

    @staticmethod
    def concat(parts: list["Dataset"], weights: list[float] | None = None) -> "Dataset":
        """Mix datasets (e.g. one per prompt), part i drawn with probability weights[i]."""
        weights = [1 / len(parts)] * len(parts) if weights is None else [w / sum(weights) for w in weights]
        keys = set(parts[0].extras)
        if any(set(p.extras) != keys for p in parts):
            raise ValueError("datasets to concatenate must have the same extras")
        return Dataset(prompt=torch.cat([p.prompt for p in parts]),
                       responses=torch.cat([p.responses for p in parts]),
                       weight=torch.cat([w * p.weight for w, p in zip(weights, parts)]),
                       extras={k: torch.cat([p.extras[k] for p in parts]) for k in keys})


def uniform_pair_sampling(num_responses: int) -> Tensor:
    """mu[i, j] = 1 for every i != j: each unordered pair equally likely."""
    return 1 - torch.eye(num_responses, dtype=DTYPE)


def reference_pair_sampling(bandit: Bandit, prompt: int = 0) -> Tensor:
    """mu[i, j] = pi_ref(i) pi_ref(j) for i != j: two distinct samples from the reference."""
    p = bandit.ref_probs[prompt]
    return torch.outer(p, p) * (1 - torch.eye(len(p), dtype=p.dtype))


def pairwise_dataset(preferences: PreferenceModel, sampling: Tensor | None = None, prompt: int = 0) -> Dataset:
    """All labelled ordered pairs of one prompt: row (i chosen, j rejected) has weight mu_ij P[i, j].

    sampling: symmetric (K, K) matrix mu of unnormalised pair probabilities, zero diagonal
    (default: uniform over pairs). The label of a sampled pair {i, j} says i > j with
    probability P[i, j], so E[L] = sum_{i != j} mu_ij P_ij L(i > j) / sum_{i < j} mu_ij.
    """
    K = preferences.num_responses
    mu = uniform_pair_sampling(K) if sampling is None else as_float64(sampling)
    if (mu - mu.T).abs().max() > 1e-12 or mu.diagonal().abs().max() > 0:
        raise ValueError("pair sampling weights must be symmetric with a zero diagonal")
    chosen, rejected = torch.nonzero(~torch.eye(K, dtype=torch.bool), as_tuple=True)
    weight = mu[chosen, rejected] * preferences.matrix[chosen, rejected]
    keep = weight > 0
    chosen, rejected, weight = chosen[keep], rejected[keep], weight[keep]
    return Dataset(prompt=torch.full_like(chosen, prompt), responses=torch.stack([chosen, rejected], -1),
                   weight=weight / weight.sum())


def single_pair_dataset(p: float) -> Dataset:
    """A two-response prompt whose only pair is labelled 0 > 1 with probability p (and 1 > 0 otherwise)."""
    return pairwise_dataset(PreferenceModel.from_matrix([[0.5, p], [1 - p, 0.5]]))


def pointwise_dataset(desirability, sampling=None, prompt: int = 0) -> Dataset:
    """Unpaired binary feedback (KTO-style): response k is drawn with probability sampling[k] and
    labelled desirable with probability desirability[k]. Rows: K desirable, then K undesirable,
    with the boolean extra `label`; responses has one column (R = 1)."""
    q = as_float64(desirability)
    K = len(q)
    mu = torch.full((K,), 1 / K, dtype=DTYPE) if sampling is None else as_float64(sampling) / sum(sampling)
    responses = torch.arange(K).repeat(2).unsqueeze(-1)
    label = torch.cat([torch.ones(K, dtype=torch.bool), torch.zeros(K, dtype=torch.bool)])
    weight = torch.cat([mu * q, mu * (1 - q)])
    keep = weight > 0
    return Dataset(prompt=torch.full((int(keep.sum()),), prompt), responses=responses[keep],
                   weight=weight[keep], extras={"label": label[keep]})


# -- what is being verified: a method (possibly a modified copy of its function) or an objective --

def method_loss(method: str | MethodSpec, fn: Callable | None = None, **params) -> LossFn:
    """The per-example loss of a registered method with hyperparameters `params`.

    fn replaces the registered function (same signature): checks accept it so that a
    deliberately broken copy of a loss can be run through the very same check (mutation tests).
    """
    spec = get(method) if isinstance(method, str) else method
    spec.validate_params(params)
    fn = spec.fn if fn is None else fn

    def loss(policy: Logps, reference: Logps | None, extras: Mapping[str, Tensor]) -> Tensor:
        args = (policy, reference) if spec.needs_reference else (policy,)
        return fn(*args, **{e: extras[e] for e in spec.extras}, **params).loss

    return loss


def objective_loss(objective: Objective) -> LossFn:
    """The per-example loss of a combined objective such as `dpo + 0.2*sft`."""
    return lambda policy, reference, extras: objective(policy, reference, extras).loss


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one thread inside the block. The engine's tensors have a handful of entries,
    where waking a thread pool costs more than the arithmetic (milliseconds per op with two
    threads against microseconds with one, measured for log-sigmoid on CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def expected_loss(loss: LossFn, bandit: Bandit, data: Dataset, logits: Tensor) -> Tensor:
    """E[L](theta) = sum_m weight_m loss_m for the softmax policy with these (X, K) logits."""
    policy = bandit.records(Bandit.log_policy(logits), data.prompt, data.responses)
    reference = bandit.reference_records(data.prompt, data.responses)
    return (data.weight * loss(policy, reference, data.extras)).sum()


@dataclass(frozen=True)
class PolicyOptimum:
    """The result of an optimisation: the optimal policy and how well its optimality is certified."""

    logits: Tensor
    logp: Tensor
    loss: float
    grad_norm: float  # max-abs gradient of the expected loss at `logits` (0 for the scalar search)
    converged: bool

    @property
    def probs(self) -> Tensor:
        return self.logp.exp()


def optimise_policy(loss: LossFn, bandit: Bandit, data: Dataset, init_logits: Tensor | None = None,
                    grad_tol: float = 1e-14, max_iter: int = 500, polish_steps: int = 10) -> PolicyOptimum:
    """Minimise the exact expected loss over the softmax logits, full batch, in float64.

    A trust-region Newton method with the exact Hessian (scipy's "trust-exact"; gradient and
    Hessian of the expected loss by torch autograd). Being second order it converges
    quadratically near the optimum, so it certifies a gradient near machine precision, which a
    line-search method stalls short of once loss decreases fall below float64 resolution. The
    Hessian is singular along the gauge direction (adding a constant to one prompt's logits),
    which the exact trust-region subproblem handles, and it copes with non-convex losses (KTO).
    A few Newton steps finish the job (see below). `converged` says whether the largest
    gradient entry reached grad_tol. Starts from the reference policy unless init_logits is given.
    """
    shape = bandit.ref_logp.shape
    start = bandit.reference_logits() if init_logits is None else as_float64(init_logits)

    def value(flat: Tensor) -> Tensor:
        return expected_loss(loss, bandit, data, flat.reshape(shape))

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        flat = torch.from_numpy(x).requires_grad_(True)
        v = value(flat)
        grad, = torch.autograd.grad(v, flat)
        return float(v.detach()), grad.numpy()

    def hessian(x: np.ndarray) -> np.ndarray:
        return torch.autograd.functional.hessian(value, torch.from_numpy(x)).numpy()

    with single_threaded():
        result = minimize(value_and_grad, start.flatten().numpy(), jac=True, hess=hessian, method="trust-exact",
                          options={"gtol": grad_tol, "maxiter": max_iter})
        x, fun, grad = result.x, result.fun, result.jac
        # The trust region judges a step by the loss decrease it achieves, which float64 can no
        # longer resolve near the optimum; plain Newton steps, kept while the gradient shrinks,
        # take the gradient the rest of the way (pseudo-inverse: the gauge direction is singular).
        for _ in range(polish_steps):
            if np.abs(grad).max() <= grad_tol:
                break
            candidate = x - np.linalg.pinv(hessian(x), rcond=1e-13, hermitian=True) @ grad
            candidate_fun, candidate_grad = value_and_grad(candidate)
            if not np.abs(candidate_grad).max() < np.abs(grad).max():
                break
            x, fun, grad = candidate, candidate_fun, candidate_grad
    grad_norm = float(np.abs(grad).max())
    logits = torch.from_numpy(x).reshape(shape)
    return PolicyOptimum(logits, Bandit.log_policy(logits), float(fun), grad_norm, grad_norm <= grad_tol)


def optimise_two_response_policy(loss: LossFn, bandit: Bandit, data: Dataset, bound: float = 60.0,
                                 tol: float = 1e-12) -> PolicyOptimum:
    """Minimise a one-prompt, two-response expected loss over its single free logit, theta_0 - theta_1.

    For non-smooth losses (hinge, SLiC) whose expected loss is piecewise linear, where Newton
    stalls on the kink: a bounded Brent / golden-section search on a unimodal function of one
    variable, to an absolute tolerance `tol` in the logit. |theta_0 - theta_1| is kept below bound.
    """
    if bandit.num_prompts != 1 or bandit.num_responses != 2:
        raise ValueError("the scalar search is for one prompt with two responses")

    def logits_of(gap: float) -> Tensor:
        return torch.tensor([[gap, 0.0]], dtype=DTYPE)

    def objective(gap: float) -> float:
        with torch.no_grad():
            return float(expected_loss(loss, bandit, data, logits_of(gap)))

    with single_threaded():
        result = minimize_scalar(objective, bounds=(-bound, bound), method="bounded", options={"xatol": tol})
    logits = logits_of(float(result.x))
    return PolicyOptimum(logits, Bandit.log_policy(logits), float(result.fun), 0.0, bool(result.success))
