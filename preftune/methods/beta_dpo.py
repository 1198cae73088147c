"""beta-DPO: DPO with a dynamic, batch-level beta and beta-guided data filtering
(Wu et al., NeurIPS 2024, arXiv 2407.08639); the baseline that MADPO (offline.md §8) compares against."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from preftune.methods.common import log_ratios, neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.methods.state import MethodState
from preftune.records import Logps, MethodOutput, pairwise_metrics


class MarginStatistics(MethodState):
    """beta-DPO's running state: EMAs of the batch mean and std of the margins, and the filter's RNG.

    Zero-initialised, as in the official code. `update` folds a batch in (all processes' margins,
    through `processes`) before the loss uses the statistics, so they include the current batch. The
    filter draws from its own generator, seeded from the run's seed (torch.initial_seed() when the
    objective is built, the same on every process) unless `seed` is given; its state is checkpointed
    with the EMAs, so a resumed run draws the same subsets as an uninterrupted one. A frozen state
    (evaluation) neither updates nor draws, and uses its own process's batch.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.mean = 0.0
        self.std = 0.0
        self.updates = 0
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)

    def update(self, margins: Tensor, momentum: float) -> None:
        """mean <- momentum mean + (1 - momentum) batch mean; std likewise with the batch std (unbiased)."""
        if self.frozen:
            return
        m = margins.detach().double().flatten()
        n, total, squares = self.sum_over_processes(torch.stack([
            torch.tensor(float(m.numel()), dtype=m.dtype, device=m.device), m.sum(), (m * m).sum()])).tolist()
        batch_mean = total / n
        batch_var = max(squares - n * batch_mean ** 2, 0.0) / (n - 1) if n > 1 else 0.0
        self.mean = momentum * self.mean + (1 - momentum) * batch_mean
        self.std = momentum * self.std + (1 - momentum) * math.sqrt(batch_var)
        self.updates += 1

    def draw_kept(self, margins: Tensor, filter_ratio: float) -> tuple[Tensor, float]:
        """Keep floor((1 - filter_ratio) n) (at least one) of the n margins of the global batch, drawn
        without replacement with probability ~ exp(-(M - mean)^2 / (2 std^2)); returns this process's
        (B,) bool share of the kept set and n / (number kept).

        The global batch is every process's margins gathered in rank order (a frozen state keeps them
        all). Every process draws the same numbers from its generator (seeded alike, advanced alike),
        so all agree on the kept set without another exchange. Gumbel top-k: the `count` largest
        log w_i + G_i (G_i standard Gumbel) are distributed as successive draws without replacement
        proportional to w (Kool et al. 2019), and log-weights never underflow as the weights would.
        """
        size = margins.shape[0]
        everyone = margins.detach() if self.frozen else self.processes.gather(margins.detach())
        n = everyone.shape[0]
        count = max(1, math.floor(round((1 - filter_ratio) * n, 9)))
        if self.frozen or count == n:
            return torch.ones(size, dtype=torch.bool, device=margins.device), 1.0
        std = max(self.std, 1e-12)
        log_weight = -(everyone.double().cpu() - self.mean) ** 2 / (2 * std ** 2)
        uniform = torch.rand(n, generator=self.generator, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0)))
        kept = torch.zeros(n, dtype=torch.bool)
        kept[torch.topk(log_weight + gumbel, count).indices] = True
        start = self.processes.rank * size if not self.frozen else 0
        return kept[start:start + size].to(margins.device), n / count

    def kept_mean(self, margins: Tensor, kept: Tensor) -> float:
        """Mean of the kept margins over all processes."""
        m = margins.detach().double()
        count, total = self.sum_over_processes(torch.stack([kept.double().sum(), (m * kept).sum()])).tolist()
        return total / count

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "updates": self.updates, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.std, self.updates = float(state["mean"]), float(state["std"]), int(state["updates"])
        self.generator.set_state(state["rng"])


@register(
    name="beta_dpo", seed="madpo", family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    status="stable", state=MarginStatistics,
    paper="Wu et al. 2024, beta-DPO: Direct Preference Optimization with Dynamic beta, NeurIPS 2024, "
          "arXiv 2407.08639 (the baseline of MADPO, arXiv 2510.05342, catalogue seed 'madpo')",
    taxonomy=taxonomy(["pairwise", "data-quality", "data-filtering"], ["offline"],
                      ["fixed-reference", "reverse-kl", "dynamic-beta"]),
    reconstructed="under gradient accumulation every micro-batch is one beta-DPO batch (its margins "
                  "gathered over all processes, as the official code gathers the batch)",
)
def beta_dpo(policy: Logps, reference: Logps, *, beta: float = 0.1, alpha: float = 0.6, filter_ratio: float = 0.2,
             momentum: float = 0.9, state: MarginStatistics | None = None) -> MethodOutput:
    """DPO with a batch-level beta calibrated by the batch's margins, on a Gaussian-filtered subset of it.

    offline.md §8, per batch:
      1. M_i = Delta_w - Delta_l, the unscaled log-ratio margin (detached);
      2. EMAs, zero-initialised, updated BEFORE the loss (so they include this batch):
         M0 <- momentum M0 + (1 - momentum) mean(M),  sigma <- momentum sigma + (1 - momentum) std(M);
      3. keep floor((1 - filter_ratio) B) examples (at least one), drawn without replacement with
         probability ~ exp(-(M_i - M0)^2 / (2 sigma^2)); B is the global batch (every process's
         margins gathered, as the official code does), so W processes draw what one would;
      4. beta_batch = max(beta (1 + alpha (mean_kept M - M0)), 1e-3), detached;
      5. L = mean over kept of l(beta_batch M_i).
    The filtered mean is a batch-level reduction; it is expressed per example as
    loss_i = kept_i * l(beta_batch M_i) * B / n_kept, whose plain batch mean (what the trainer
    takes) is the mean over kept examples.
    beta: beta_0 = 0.1. alpha: 0.6 (README example; the config default is 0.01). filter_ratio:
    rho = 0.2 (`mode_weight`). momentum: 0.9. alpha = 0 and filter_ratio = 0 give DPO.
    state: the running `MarginStatistics`, kept and checkpointed by the objective; when called
    without one (unit tests, the tabular engine) a fresh zero state with seed 0 sees this batch
    only. A frozen state (evaluation) keeps every example and draws nothing.
    Shapes: (B, 2) in, (B,) loss. Rewards: beta_batch * log-ratios.
    """
    state = MarginStatistics(seed=0) if state is None else state
    ratios = log_ratios(policy, reference)
    margins = ratios[:, 0] - ratios[:, 1]
    state.update(margins, momentum)
    kept, scale = state.draw_kept(margins, filter_ratio)
    batch_beta = max(beta * (1 + alpha * (state.kept_mean(margins, kept) - state.mean)), 1e-3)
    loss = torch.where(kept, neg_log_sigmoid(batch_beta * margins) * scale, torch.zeros_like(margins))
    rewards = batch_beta * ratios
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    metrics.update(beta_batch=torch.full_like(margins, batch_beta), kept=kept.to(margins.dtype),
                   margin_mean_ema=torch.full_like(margins, state.mean),
                   margin_std_ema=torch.full_like(margins, state.std))
    return MethodOutput(loss, rewards, metrics)


@tabular_check("beta_dpo")
def beta_dpo_tabular_check(fn=beta_dpo):
    """A pair whose batch holds the labels in proportion: 4 rows 0 > 1 and 1 row 1 > 0 (p = 0.8), each
    of weight 1/5, so the batch mean margin is 0.6 d with d = Delta_0 - Delta_1; no filtering
    (rho = 0). With beta_batch detached, the expected loss is stationary where beta_batch d = logit(0.8)
    = log 4, and beta_batch = beta (1 + alpha (0.6 d - M0)) there; eliminating d gives the quadratic
        beta*^2 - beta (1 - alpha M0) beta* - 0.6 alpha beta log 4 = 0.
    (1) Frozen statistics M0: the exact gradient of the expected loss vanishes at the policy with
    d = log 4 / beta*. (2) One EMA update from M0 before the loss (the current batch included):
    M0' = momentum M0 + (1 - momentum) 0.6 d, so 0.6 d - M0' = momentum (0.6 d - M0), the same
    quadratic with alpha replaced by alpha * momentum; the gradient vanishes again.
    (3) alpha = 0, rho = 0: DPO's Bradley-Terry optimum."""
    from preftune.tabular.bandit import Bandit, DTYPE
    from preftune.tabular.checks import PAIR_REF, compare, optimum_matches_reward
    from preftune.tabular.expected import Dataset, expected_loss

    beta, alpha, momentum, start_mean = 0.5, 0.6, 0.9, 0.3
    bandit = Bandit.create(PAIR_REF)
    data = Dataset(prompt=torch.zeros(5, dtype=torch.long),
                   responses=torch.tensor([[0, 1]] * 4 + [[1, 0]]), weight=torch.full((5,), 0.2, dtype=DTYPE))
    log4 = math.log(4.0)

    def stationarity(frozen: bool) -> tuple[float, float]:
        # beta* from the quadratic in the docstring; returns (beta*, largest |dE/dtheta| at d = log 4 / beta*).
        if frozen:
            b, c = beta * (1 - alpha * start_mean), 0.6 * alpha * beta * log4
        else:  # M0' = momentum M0 + (1 - momentum) 0.6 d, so 0.6 d - M0' = 0.6 momentum d - momentum M0
            b, c = beta * (1 - alpha * momentum * start_mean), 0.6 * momentum * alpha * beta * log4
        beta_star = (b + math.sqrt(b * b + 4 * c)) / 2
        gap = log4 / beta_star + float(bandit.ref_logp[0, 0] - bandit.ref_logp[0, 1])
        logits = torch.tensor([[gap, 0.0]], dtype=DTYPE, requires_grad=True)

        def loss(policy, reference, extras):
            state = MarginStatistics(seed=0)
            state.mean, state.std, state.frozen = start_mean, 1.0, frozen
            return fn(policy, reference, beta=beta, alpha=alpha, filter_ratio=0.0, momentum=momentum,
                      state=state).loss

        grad, = torch.autograd.grad(expected_loss(loss, bandit, data, logits), logits)
        return beta_star, float(grad.abs().max())

    results = []
    for frozen, label in ((True, f"frozen M0 = {start_mean}"), (False, f"one EMA update from M0 = {start_mean}")):
        beta_star, grad = stationarity(frozen)
        results.append(compare("beta_dpo", f"{label}: dE/dtheta = 0 at beta_batch d = log 4, beta* = {beta_star:.6g}",
                               0.0, grad, 1e-12))
    results.append(optimum_matches_reward("beta_dpo", fn, params=dict(beta=beta, alpha=0.0, filter_ratio=0.0),
                                          beta=beta))
    return results
