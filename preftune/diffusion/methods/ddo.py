"""DDO: Direct Discriminative Optimization (Zheng et al., ICML 2025, arXiv 2503.01103) (diffusion.md §7)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from preftune.diffusion.methods.common import FAMILY, diffusion_taxonomy, error_gap, require_samples
from preftune.diffusion.records import Denoise
from preftune.methods.registry import register, tabular_check
from preftune.records import MethodOutput


@register(
    name="ddo", seed="ddo", family=FAMILY, input_kind="unpaired", needs_reference=True, status="stable",
    paper="Zheng et al. 2025, Direct Discriminative Optimization: Your Likelihood-Based Generative Model is "
          "Secretly a GAN Discriminator, ICML 2025, arXiv 2503.01103",
    reconstructed="training code is unreleased: alpha, beta, rounds and the weight w(t) are not pinned "
                  "(diffusion.md §13.3); w(t) = 1 on mean-reduced errors here",
    taxonomy=diffusion_taxonomy(["unpaired", "real-vs-generated"], ["offline", "gan", "self-play-rounds"],
                                ["fixed-reference"]),
)
def ddo(policy: Denoise, reference: Denoise, *, alpha: float = 1.0, beta: float = 0.05) -> MethodOutput:
    """GAN with the implicit discriminator d = sigmoid(beta log p_theta/p_ref): real data true, reference samples fake.

    L = softplus(-beta l(x_real)) + alpha softplus(beta l(x_fake)), with sample 0 a real x0 and sample 1
    a sample of the frozen reference, and l = -(E_theta - E_ref) at the same (t, eps) (the Jensen-bounded
    diffusion form, sigmoid inside the expectation over t and eps). With alpha = beta = 1 and an
    unconstrained model the optimum is p_theta = p_data. Rounds: refresh ref <- theta and regenerate
    the fakes. Paper ranges alpha in [0.5, 50], beta in [0.01, 0.1] (EDM weighting); beta 0.05 for
    mean-reduced errors with w(t) = 1 (the §12 toy setting).
    """
    require_samples(policy, 2, "ddo")
    log_ratio = -error_gap(policy, reference)
    real, fake = beta * log_ratio[:, 0], beta * log_ratio[:, 1]
    loss = F.softplus(-real) + alpha * F.softplus(fake)
    return MethodOutput(loss, beta * log_ratio,
                        {"d_real": torch.sigmoid(real).detach(), "d_fake": torch.sigmoid(fake).detach(),
                         "accuracy": (real > fake).float()})


def ar_fixed_point(fn, alpha: float, beta: float = 1.0, seed: int = 0, grad_tol: float = 1e-6):
    """Minimise DDO on the exact tabular AR model: (p_theta, p_data, p_ref) over the 27 outcomes.

    The expected loss E_data softplus(-beta l) + alpha E_ref softplus(beta l) is evaluated exactly
    through `fn` on records whose error is -log p (so l = log p_theta - log p_ref), over all
    (real, fake) outcome pairs weighted by p_data(real) p_ref(fake).
    """
    from preftune.diffusion.tabular_ar import TabularAR, minimise

    model = TabularAR()
    g = torch.Generator().manual_seed(seed)
    data_logits, ref_logits = model.init_logits(g, 1.5), model.init_logits(g, 1.5)
    log_data, log_ref = model.log_probs(data_logits), model.log_probs(ref_logits)
    # The expected loss is separable, L(i, j) = f(i) + alpha g(j) for a (real i, fake j) example, so
    # E = sum_i p_data(i) L(i, 0) + sum_j p_ref(j) L(0, j) - L(0, 0) needs 2N + 1 examples, not N^2.
    n = len(model.outcomes)
    first = torch.zeros(n, dtype=torch.long)
    real_index = torch.cat([torch.arange(n), first, first[:1]])
    fake_index = torch.cat([first, torch.arange(n), first[:1]])
    weights = torch.cat([log_data.exp(), log_ref.exp(), -torch.ones(1, dtype=log_data.dtype)])
    reference = Denoise(torch.stack([-log_ref[real_index], -log_ref[fake_index]], dim=-1))

    def expected_loss(logits):
        log_theta = model.log_probs(logits)
        policy = Denoise(torch.stack([-log_theta[real_index], -log_theta[fake_index]], dim=-1))
        return (weights * fn(policy, reference, alpha=alpha, beta=beta).loss).sum()

    fitted = minimise(expected_loss, ref_logits, grad_tol)
    return model.log_probs(fitted).exp(), log_data.exp(), log_ref.exp()


@tabular_check("ddo")
def ddo_check(fn=ddo):
    """diffusion.md §12.1, §12.3: (1 + alpha) log 2 at theta = ref, with gradient (beta/2) grad(E_real -
    alpha E_fake) there; on the exact tabular AR model
    (27 outcomes, p_ref != p_data) alpha = beta = 1 converges to p_data (TV < 1e-3), and alpha moves
    the fixed point predictably: a heavier fake term (larger alpha) pushes it further from the
    reference, so TV(p_theta, p_ref) grows with alpha (0.5 < 1)."""
    from preftune.diffusion.methods import checks
    from preftune.diffusion.tabular_ar import total_variation

    alpha = 3.0
    p = checks.problem(share_noise=False)
    theta = p.theta()
    policy = p.denoise(theta)
    loss = checks.mean_loss(fn, policy, p.reference(), alpha=alpha, beta=0.05)
    results = [checks.close("ddo", "loss at theta = ref is (1 + alpha) log 2", (1 + alpha) * checks.LOG2, loss.item())]
    want = 0.05 / 2 * checks.grad((policy.error[:, 0] - alpha * policy.error[:, 1]).mean(), theta)
    results.append(checks.gradient_identity("ddo", "grad at theta = ref equals beta/2 * grad(E_real - alpha E_fake)",
                                            checks.grad(loss, theta), want))
    fitted, data, ref = ar_fixed_point(fn, alpha=1.0)
    results.append(checks.close("ddo", "AR model, alpha = beta = 1: TV(p_theta, p_data) at the fixed point", 0.0,
                                total_variation(fitted, data), 1e-3))
    results.append(checks.CheckResult("ddo", "AR model: TV(p_ref, p_data) is large (setup)", 0.1,
                                      total_variation(ref, data), 0.0, bound=">="))
    lighter = total_variation(ar_fixed_point(fn, alpha=0.5)[0], ref)
    results.append(checks.CheckResult("ddo", "AR model: TV(p_theta, p_ref) at the fixed point grows with alpha "
                                      "(0.5 < 1)", 1.0, float(lighter < total_variation(fitted, ref)), 0.0))
    return results
