"""TGDPO: token-level reward guidance for DPO (Zhu et al., ICML 2025, arXiv 2506.14574)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.methods.common import neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


def guidance_token_weights(guidance: Logps, reference: Logps, beta: float, alpha: float,
                           clip_weight_min: float | None) -> Tensor:
    """(B, 2, T) detached weights 1 + alpha beta r_t on chosen tokens and 1 - alpha beta r_t on rejected
    ones, r_t = log pi_guidance(y_t|s_t) - log pi_ref(y_t|s_t); optionally clamped below at clip_weight_min."""
    reward = (guidance.tokens[:, :2] - reference.tokens[:, :2]).detach()
    sign = torch.tensor([1.0, -1.0], dtype=reward.dtype, device=reward.device).reshape(1, 2, 1)
    weights = 1 + sign * alpha * beta * reward
    return weights if clip_weight_min is None else weights.clamp_min(clip_weight_min)


@register(
    name="tgdpo", seed="tgdpo", family="offline-token", input_kind="pairwise", needs_reference=True,
    needs_token_logps=True, extras=("guidance",), status="stable",
    paper="Zhu et al. 2025, TGDPO: Harnessing Token-Level Reward Guidance for Enhancing Direct Preference "
          "Optimization, ICML 2025, arXiv 2506.14574",
    taxonomy=taxonomy(["pairwise", "token-level"], ["offline"], ["fixed-reference", "reverse-kl"],
                      ["credit-assignment"]),
    reconstructed="clip_weight_min (a lower clamp on the token weights) is our safety option, not in the "
                  "official code (offline.md §7, §20.5); it is off by default",
)
def tgdpo(policy: Logps, reference: Logps, *, guidance: Logps, beta: float = 0.1, alpha: float = 0.5,
          clip_weight_min: float | None = None) -> MethodOutput:
    """DPO whose per-token log-ratios are weighted by a frozen guidance model's token rewards.

    offline.md §7: with delta_t = log pi(y_t|s_t) - log pi_ref(y_t|s_t) and the guidance model's
    unscaled token reward r_t = log pi_rm(y_t|s_t) - log pi_ref(y_t|s_t) (detached),
        z = sum_{t in y_w} beta (1 + alpha beta r^w_t) delta^w_t - sum_{t in y_l} beta (1 - alpha beta r^l_t) delta^l_t,
        L = -log sigmoid(z),
    so chosen tokens the guidance model likes, and rejected tokens it dislikes, deviate more from
    the reference: d L / d log pi(y^w_t) = -beta (1 + alpha beta r^w_t) sigmoid(-z).
    guidance: the guidance model's per-token `Logps` of the same batch (the trainer passes the
    auxiliary model `aux_models: {guidance: PATH}` this way); any DPO- or SimPO-trained model on
    the same data, as in the paper. beta: 0.1, alpha: 0.5 (official config). clip_weight_min:
    None (official code: no clipping); a number clamps every token weight below at it.
    alpha = 0, or a guidance model equal to the reference, is DPO.
    Shapes: per-token (B, 2, T) records in, (B,) loss. Rewards: the weighted token sums beta * sum_t w_t delta_t.
    """
    for name, record in (("policy", policy), ("reference", reference), ("guidance", guidance)):
        if record.tokens is None:
            raise ValueError(f"tgdpo needs per-token log-probs of the {name} (Logps.tokens)")
    weights = guidance_token_weights(guidance, reference, beta, alpha, clip_weight_min)
    delta = policy.tokens[:, :2] - reference.tokens[:, :2]
    mask = policy.mask[:, :2]
    rewards = beta * torch.where(mask, weights * delta, torch.zeros_like(delta)).sum(-1)
    margin = rewards[:, 0] - rewards[:, 1]
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    token_count = mask.sum(-1).clamp_min(1)
    mean_weight = torch.where(mask, weights, torch.zeros_like(weights)).sum(-1) / token_count
    metrics["token_weight/chosen"], metrics["token_weight/rejected"] = mean_weight[:, 0], mean_weight[:, 1]
    return MethodOutput(neg_log_sigmoid(margin), rewards, metrics)


def one_token_records(logps: Logps) -> Logps:
    """A sequence-level record seen as responses of one token each (a bandit arm is one token)."""
    return Logps.from_tokens(logps.sum.unsqueeze(-1), torch.ones_like(logps.sum, dtype=torch.bool).unsqueeze(-1))


@tabular_check("tgdpo")
def tgdpo_tabular_check(fn=tgdpo):
    """offline.md §7 Tests. (1) Gradient per token, on the toy token LM with random policy, reference and
    guidance tables and pairs of different lengths: autograd of L through the per-token log-probs
    equals -beta (1 + alpha beta r^w_t) sigmoid(-z) on chosen tokens and +beta (1 - alpha beta r^l_t)
    sigmoid(-z) on rejected ones, with r and z recomputed here from the tables; also with
    clip_weight_min, where the weights are max(w, clip). (2) Reductions: on the standard bandit
    (each arm one token) under Bradley-Terry labels, alpha = 0 with a random guidance model, and
    a guidance model equal to the reference with alpha = 0.5, reach DPO's optimum
    beta (Delta_i - Delta_j) = r_i - r_j."""
    from preftune.tabular.bandit import Bandit
    from preftune.tabular.checks import (DEFAULT_LENGTHS, DEFAULT_REF, DEFAULT_REWARDS, compare_vectors, log_ratio)
    from preftune.tabular.expected import optimise_policy, pairwise_dataset, reference_pair_sampling
    from preftune.tabular.preferences import PreferenceModel
    from preftune.tabular.tokens import TokenLM

    beta, alpha = 0.5, 0.8
    lm = TokenLM(vocab_size=5, max_length=4)
    g = torch.Generator().manual_seed(3)
    policy_t, ref_t, guide_t = (lm.random_tables(g) for _ in range(3))
    rows = [[(1, 2, 3), (4,)], [(2,), (3, 3, 1, 4)], [(4, 4), (1, 3)]]
    results = []
    for clip in (None, 0.9):
        tokens = lm.records(policy_t, rows).tokens.clone().requires_grad_(True)
        mask = lm.records(policy_t, rows).mask
        reference, guidance = lm.records(ref_t, rows), lm.records(guide_t, rows)
        loss = fn(Logps.from_tokens(tokens, mask), reference, guidance=guidance, beta=beta, alpha=alpha,
                  clip_weight_min=clip).loss
        grad, = torch.autograd.grad(loss.sum(), tokens)
        # Independent recomputation: token rewards, weights, z, and the formula of the spec.
        r = guidance.tokens - reference.tokens
        w = torch.stack([1 + alpha * beta * r[:, 0], 1 - alpha * beta * r[:, 1]], 1)
        if clip is not None:
            w = torch.maximum(w, torch.full_like(w, clip))
        delta = (tokens.detach() - reference.tokens) * mask
        z = beta * ((w[:, 0] * delta[:, 0]).sum(-1) - (w[:, 1] * delta[:, 1]).sum(-1))
        sign = torch.tensor([-1.0, 1.0], dtype=z.dtype).reshape(1, 2, 1)
        expected = sign * beta * w * torch.sigmoid(-z).reshape(-1, 1, 1) * mask
        results.append(compare_vectors("tgdpo", f"toy LM: dL/d log pi(y_t) = -/+ beta w_t sigmoid(-z), "
                                                f"clip_weight_min = {clip}", expected, grad, 1e-14))

    bandit = Bandit.create(DEFAULT_REF, DEFAULT_LENGTHS)
    data = pairwise_dataset(PreferenceModel.bradley_terry(DEFAULT_REWARDS), reference_pair_sampling(bandit))
    random_guidance = torch.log_softmax(torch.randn(1, 4, generator=g, dtype=torch.float64), -1)
    r = torch.as_tensor(DEFAULT_REWARDS, dtype=torch.float64)
    i, j = torch.triu_indices(4, 4, offset=1)
    for label, guide_logp, a in (("alpha = 0, random guidance", random_guidance, 0.0),
                                 ("guidance = reference, alpha = 0.5", bandit.ref_logp, 0.5)):
        def loss(policy, reference, extras, guide_logp=guide_logp, a=a):
            guidance = bandit.records(guide_logp, data.prompt, data.responses)
            return fn(one_token_records(policy), one_token_records(reference),
                      guidance=one_token_records(guidance), beta=beta, alpha=a).loss

        implicit = beta * log_ratio(bandit, optimise_policy(loss, bandit, data).logp)
        results.append(compare_vectors("tgdpo", f"{label}: BT optimum beta*(D_i-D_j) = r_i-r_j (DPO)",
                                       r[i] - r[j], implicit[i] - implicit[j], 1e-9,
                                       labels=[f"{a},{b}" for a, b in zip(i.tolist(), j.tolist())]))
    return results
