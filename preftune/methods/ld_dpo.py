"""LD-DPO: length desensitisation of DPO (Liu et al. 2024, arXiv 2409.06411)."""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.methods.dpo import dpo
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput


def public_length_weights(logps: Logps, public_length: Tensor, alpha: float) -> Tensor:
    """(B, K, T) per-token weights: 1 on the first `public_length` response tokens of each response, alpha after.

    Tokens are counted along the response mask (a cumulative sum), so the weights do not depend
    on where the response starts in the row or on the padding.
    """
    position = logps.mask.long().cumsum(-1)  # 1 for the first response token, 2 for the second, ...
    inside = position <= public_length.reshape(-1, 1, 1)
    ones = torch.ones((), dtype=logps.tokens.dtype, device=logps.tokens.device)
    return torch.where(inside, ones, alpha * ones)


def length_desensitised(logps: Logps, public_length: Tensor, alpha: float) -> Logps:
    """The record whose sums are lp_LD(y) = sum_{t <= l_p} log pi(y_t) + alpha * sum_{t > l_p} log pi(y_t)."""
    if logps.tokens is None:
        raise ValueError("ld_dpo needs per-token log-probs (Logps.tokens); the trainer provides them when "
                         "the objective has needs_token_logps")
    return logps.with_tokens(logps.tokens * public_length_weights(logps, public_length, alpha), logps.mask)


@register(
    name="ld_dpo", seed="ld-dpo", family="offline-pairwise", input_kind="pairwise", needs_reference=True,
    needs_token_logps=True, status="stable",
    paper="Liu et al. 2024, LD-DPO: Length Desensitization in Direct Preference Optimization, arXiv 2409.06411",
    taxonomy=taxonomy(["pairwise", "token-level"], ["offline"], ["fixed-reference", "reverse-kl"], ["length"]),
)
def ld_dpo(policy: Logps, reference: Logps, *, beta: float = 0.1, alpha: float = 0.5) -> MethodOutput:
    """DPO on length-desensitised log-probs: tokens beyond the pair's public length count alpha times.

    offline.md §6: l_p = min(|y_w|, |y_l|) and, for each response y of the pair and for the
    policy AND the reference,
        lp_LD(y) = sum_{t <= l_p} log pi(y_t|s_t) + alpha * sum_{t > l_p} log pi(y_t|s_t),
    then L = -log sigmoid(beta * [(lp_LD(y_w) - lpr_LD(y_w)) - (lp_LD(y_l) - lpr_LD(y_l))]).
    The shorter response is unchanged; alpha = 1 is DPO, alpha = 0 is DPO on both responses
    truncated to l_p. beta: 0.1 as DPO. alpha: in [0, 1], the paper's best value for
    Llama3-8B-Instruct is 0.5 (it is model-specific; 1 - alpha* is its "length sensitivity").
    Shapes: per-token (B, 2, T) records in, (B,) loss. Rewards: beta * the LD log-ratios.
    """
    public_length = torch.minimum(policy.length[:, 0], policy.length[:, 1])
    out = dpo(length_desensitised(policy, public_length, alpha),
              length_desensitised(reference, public_length, alpha), beta=beta)
    out.metrics["public_length"] = public_length.detach()
    return out


@tabular_check("ld_dpo")
def ld_dpo_tabular_check(fn=ld_dpo):
    """On the toy token LM (per-position logit tables as the parameters), one pair of a 5-token and
    a 3-token response (content plus EOS), labelled 5-token > 3-token with probability p. The expected
    loss is a function of the LD margin z alone, p l(z) + (1-p) l(-z), so every optimum has
    z = beta * [LD log-ratio(y_a) - LD log-ratio(y_b)] = logit(p), where the check recomputes the LD
    log-ratios from the optimal tables with weight 1 on the first l_p = 3 tokens and alpha after,
    on policy and reference alike. For alpha = 0.5 and alpha = 0 (truncation)."""
    from preftune.tabular.bandit import DTYPE
    from preftune.tabular.checks import compare
    from preftune.tabular.closed_forms import logit
    from preftune.tabular.expected import minimise
    from preftune.tabular.tokens import TokenLM

    lm, beta, p = TokenLM(vocab_size=5, max_length=5), 0.5, 0.8
    long, short = (3, 1, 4, 2), (1, 2)  # 5 and 3 response tokens
    ref_tables = lm.random_tables(torch.Generator().manual_seed(1))
    rows, weights = [[long, short], [short, long]], torch.tensor([p, 1 - p], dtype=DTYPE)
    reference = lm.records(ref_tables, rows)

    def ld_margin(tables: Tensor, alpha: float) -> float:
        # The check's own LD log-ratio, written from the definition (not from the method's helpers).
        delta, mask = lm.token_logps(tables, [long, short])
        delta = delta - lm.token_logps(ref_tables, [long, short])[0]
        public = int(mask.sum(-1).min())
        ratio = [float(d[m][:public].sum() + alpha * d[m][public:].sum()) for d, m in zip(delta, mask)]
        return beta * (ratio[0] - ratio[1])

    results = []
    for alpha in (0.5, 0.0):
        def expected_loss(tables: Tensor) -> Tensor:
            loss = fn(lm.records(tables, rows), reference, beta=beta, alpha=alpha).loss
            return (weights * loss).sum()

        found = minimise(expected_loss, ref_tables.clone())
        results.append(compare("ld_dpo", f"toy LM, 5- vs 3-token pair, alpha = {alpha:g}: optimum LD margin = "
                                         f"logit(p), p = {p}", logit(p), ld_margin(found.x, alpha), 1e-9))
    return results
