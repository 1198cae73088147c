"""From r to Q*: Your Language Model is Secretly a Q-Function (Rafailov, Hejna, Park, Finn 2024, arXiv 2404.12358).

The token-level view of DPO: in the token MDP (state = prompt and prefix, action = next token) a
DPO policy's per-token log-ratio is a credit assignment, c_t = beta log pi(y_t|s_t)/pi_ref(y_t|s_t),
equal at the optimum to the optimal advantage Q*(s_t, y_t) - V*(s_t), so that the credits of a
response sum to its sequence implicit reward beta * Delta_y (offline.md §14). The users' side of
it lives in eval/: `eval.token_credit.token_credit` (credits of a batch under a model and its
reference) and `eval.search.beam_search` (likelihood search on a DPO policy).
"""
from __future__ import annotations

import torch
from torch import Tensor

from preftune.methods.common import neg_log_sigmoid
from preftune.methods.registry import register, tabular_check, taxonomy
from preftune.records import Logps, MethodOutput, pairwise_metrics


def token_credits(policy: Logps, reference: Logps, beta: float) -> Tensor:
    """(B, K, T) per-token implicit rewards c_t = beta (log pi(y_t|s_t) - log pi_ref(y_t|s_t)),
    0 off the response tokens. Needs records with per-token log-probs."""
    if policy.tokens is None or reference.tokens is None:
        raise ValueError("token credits need per-token log-probs (register the method with needs_token_logps=True)")
    credits = beta * (policy.tokens - reference.tokens)
    return torch.where(policy.mask, credits, torch.zeros((), dtype=credits.dtype, device=credits.device))


def _masked_extreme(values: Tensor, mask: Tensor, largest: bool) -> Tensor:
    fill = float("-inf") if largest else float("inf")
    masked = torch.where(mask, values, torch.full((), fill, dtype=values.dtype, device=values.device))
    return masked.amax(-1) if largest else masked.amin(-1)


@register(
    name="dpo_token_credit", seed="r2q", family="offline-token", input_kind="pairwise", needs_reference=True,
    needs_token_logps=True, status="stable",
    paper="Rafailov, Hejna, Park, Finn 2024, From r to Q*: Your Language Model is Secretly a Q-Function, "
          "arXiv 2404.12358",
    taxonomy=taxonomy(["pairwise", "token-level"], ["offline"], ["fixed-reference", "reverse-kl"],
                      ["credit-assignment"]),
)
def dpo_token_credit(policy: Logps, reference: Logps, *, beta: float = 0.1) -> MethodOutput:
    """DPO in the token MDP: L = -log sigmoid(sum_t c^w_t - sum_t c^l_t), c_t = beta delta_t (offline.md §14).

    delta_t = log pi(y_t|s_t) - log pi_ref(y_t|s_t) per response token; sum_t c_t = beta * Delta_y,
    so the loss and its gradient are DPO's (paper Eq. 6 with the token-level rewards of §4). What
    the token view adds are the credits themselves: the paper shows they locate the tokens that
    make a response worse. Logged per example: credit_min/credit_max over the tokens of the
    chosen and of the rejected response (the most blamed and the most credited token).
    beta: 0.1 (DPO's). Shapes: (B, 2) sums and (B, 2, T) per-token values in, (B,) loss.
    """
    credits = token_credits(policy, reference, beta)
    rewards = credits.sum(-1)
    loss = neg_log_sigmoid(rewards[:, 0] - rewards[:, 1])
    metrics = pairwise_metrics(rewards[:, 0], rewards[:, 1])
    for index, name in enumerate(("chosen", "rejected")):
        metrics[f"credit_min/{name}"] = _masked_extreme(credits[:, index], policy.mask[:, index], largest=False)
        metrics[f"credit_max/{name}"] = _masked_extreme(credits[:, index], policy.mask[:, index], largest=True)
    return MethodOutput(loss, rewards, metrics)


@tabular_check("dpo_token_credit")
def dpo_token_credit_tabular_check(fn=dpo_token_credit):
    """The r -> Q* theorem, exactly, in a tabular autoregressive LM (tabular/token_tree.py: one logit
    vector per prefix, 3 tokens with EOS, at most 3 of them, 15 responses, 7 decision nodes).

    A random reference and a random sequence-level reward r (not a sum over tokens) label every
    pair of responses by Bradley-Terry; pairs are drawn from the reference. The expected loss,
    computed from per-token records, is minimised over all 7 x 3 logits. Then:
    1. the optimum is pi* = pi_ref exp(r/beta) / Z on all 15 responses;
    2. its token credits beta log pi*(a|s)/pi_ref(a|s) equal Q*(s, a) - V*(s) from the soft Bellman
       recursion on r, at every decision of every response (the paper's Theorem);
    3. likelihood search is reward search: exhaustive beam search on pi* returns
       argmax_y r(y)/beta + log pi_ref(y).
    """
    from preftune.eval.search import beam_search_core
    from preftune.tabular.checks import compare, compare_vectors, method_loss
    from preftune.tabular.expected import independent_pair_sampling, minimise, pairwise_dataset
    from preftune.tabular.preferences import PreferenceModel
    from preftune.tabular.token_tree import TokenTree
    from preftune.tabular.tokens import EOS, TokenLM

    beta = 0.5
    tree = TokenTree(TokenLM(vocab_size=3, max_length=3))
    responses = tree.responses
    generator = torch.Generator().manual_seed(0)
    ref_logits = tree.random_logits(generator)
    r = torch.randn(len(responses), generator=generator, dtype=torch.float64)
    ref_seq = tree.sequence_logp(ref_logits)
    data = pairwise_dataset(PreferenceModel.bradley_terry(r), independent_pair_sampling(ref_seq.exp()))
    rows = [[responses[w], responses[l]] for w, l in data.responses.tolist()]
    reference = tree.records(ref_logits, rows)
    loss = method_loss("dpo_token_credit", fn, beta=beta)
    found = minimise(lambda logits: (data.weight * loss(tree.records(logits, rows), reference, {})).sum(),
                     ref_logits.clone())
    results = [compare_vectors("dpo_token_credit", "optimum pi* = pi_ref exp(r/beta)/Z on every response",
                               torch.softmax(ref_seq + r / beta, -1), tree.sequence_logp(found.x).exp(), 1e-9,
                               labels=[str(y) for y in responses])]

    value, q = tree.soft_values(ref_logits, r, beta)
    log_policy, log_ref = torch.log_softmax(found.x, -1), torch.log_softmax(ref_logits, -1)
    node = tree.node_of
    decisions = [(s, a) for s in tree.prefixes for a in range(tree.lm.vocab_size)]
    credits = torch.stack([beta * (log_policy[node[s], a] - log_ref[node[s], a]) for s, a in decisions])
    advantages = torch.tensor([q[(s, a)] - value[s] for s, a in decisions], dtype=torch.float64)
    results.append(compare_vectors("dpo_token_credit", "token credit beta*log pi*/pi_ref(a|s) = Q*(s,a) - V*(s)",
                                   advantages, credits, 1e-9, labels=[f"{s}->{a}" for s, a in decisions]))

    def next_logprobs(prefixes):
        return torch.stack([log_policy[node[p]] for p in prefixes])

    best = beam_search_core(next_logprobs, EOS, beams=len(responses), max_length=tree.lm.max_length)
    found_response = tuple(t for t in best.ids if t != EOS)
    search_value = (r / beta + ref_seq)[responses.index(found_response)]
    results.append(compare("dpo_token_credit", "exhaustive beam search on pi* finds argmax r/beta + log pi_ref",
                           float((r / beta + ref_seq).max()), float(search_value), 1e-12))
    return results
