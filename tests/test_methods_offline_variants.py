"""Unit tests of the offline variants asft, ld_dpo, tgdpo, madpo, beta_dpo, tpo, fdpo, flex_dpo, sft_dpo, modpo.

Every expected number is worked by hand with `math` from offline.md §3, §6-§11, §15 (or the equation
restated in the method's docstring), never by calling the method under test. All tensors are float64.

The worked example (as in test_methods_core.py):
    lp(y_w)  = -3.0,  lp(y_l)  = -5.0      policy sums
    lpr(y_w) = -4.0,  lpr(y_l) = -4.5      reference sums
    |y_w| = 2,  |y_l| = 4
hence Delta_w = 1, Delta_l = -0.5, Delta = 1.5; with beta = 0.5, h = 0.75; avg(y_w) = -1.5, avg(y_l) = -1.25.
"""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from handworked import F64, ell, sigmoid
from preftune.methods import build_objective, get
from preftune.methods.beta_dpo import MarginStatistics
from preftune.records import Logps
from preftune.tabular.expected import single_threaded

LP_W, LP_L, REF_W, REF_L, LEN_W, LEN_L = -3.0, -5.0, -4.0, -4.5, 2.0, 4.0


def records(policy_sums, reference_sums=None, lengths=None, requires_grad=False) -> tuple[Logps, Logps]:
    """(B, K) policy and reference records (reference 0 when not given; lengths 1 when not given)."""
    sums = torch.as_tensor(policy_sums, dtype=F64).reshape(len(policy_sums), -1).clone().requires_grad_(requires_grad)
    length = torch.ones_like(sums.detach()) if lengths is None else \
        torch.as_tensor(lengths, dtype=F64).expand(sums.shape).clone()
    reference = torch.zeros_like(sums.detach()) if reference_sums is None else \
        torch.as_tensor(reference_sums, dtype=F64).reshape(sums.shape)
    return Logps(sum=sums, length=length), Logps(sum=reference, length=length.clone())


def example(requires_grad=False) -> tuple[Logps, Logps]:
    return records([[LP_W, LP_L]], [[REF_W, REF_L]], [LEN_W, LEN_L], requires_grad)


def random_pairs(n: int, seed: int = 0, k: int = 2, requires_grad: bool = False) -> tuple[Logps, Logps]:
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(1, 9, (n, k), generator=g).to(F64)
    policy = -3.0 * length * torch.rand(n, k, generator=g, dtype=F64)
    reference = policy + torch.randn(n, k, generator=g, dtype=F64)
    return Logps(sum=policy.requires_grad_(requires_grad), length=length), Logps(sum=reference, length=length)


def random_token_records(n: int, seed: int = 0, max_len: int = 7, offset: int = 2,
                         equal_lengths: bool = False) -> tuple[Logps, Logps, Logps]:
    """Policy, reference and a third model's per-token (n, 2, T) records; responses start at `offset`
    (a prompt before them) and have 1..max_len tokens each."""
    g = torch.Generator().manual_seed(seed)
    T = offset + max_len
    lengths = torch.randint(1, max_len + 1, (n, 2), generator=g)
    if equal_lengths:
        lengths[:, 1] = lengths[:, 0]
    position = torch.arange(T).reshape(1, 1, T)
    mask = (position >= offset) & (position < offset + lengths.unsqueeze(-1))
    made = [Logps.from_tokens(-2.0 * torch.rand(n, 2, T, generator=g, dtype=F64), mask) for _ in range(3)]
    return made[0], made[1], made[2]


def call(name: str, policy: Logps, reference: Logps | None = None, **kwargs):
    spec = get(name)
    return spec.fn(*((policy, reference) if spec.needs_reference else (policy,)), **kwargs)


def dpo_loss(policy: Logps, reference: Logps, beta: float):
    return call("dpo", policy, reference, beta=beta).loss


# =========================================================================== ASFT (offline.md §3)

def odds(avg: float) -> float:
    return avg - math.log(1 - math.exp(avg))


@pytest.mark.method("asft", "value")
def test_asft_value_on_the_worked_example():
    # lam 0.5, beta 2: L = 1.5 + 0.5 [l(2 o(-1.5)) + l(-2 o(-1.25))].
    policy, _ = example()
    expected = 1.5 + 0.5 * (ell(2 * odds(-1.5)) + ell(-2 * odds(-1.25)))
    out = call("asft", policy, lam=0.5, beta=2.0)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.rewards[0].tolist() == pytest.approx([2 * odds(-1.5), 2 * odds(-1.25)], abs=1e-12)


@pytest.mark.method("asft", "value")
def test_asft_identity_at_beta_one_is_nll_plus_unlikelihood():
    # offline.md §3 Test: beta = 1 gives L = -(1 + lam) avg_w - lam log(1 - exp(avg_l)).
    policy, _ = random_pairs(16, seed=1)
    lam = 0.3
    out = call("asft", policy, lam=lam, beta=1.0)
    avg = policy.mean
    expected = -(1 + lam) * avg[:, 0] - lam * torch.log1p(-avg[:, 1].exp())
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-12)


@pytest.mark.method("asft", "reduction")
def test_asft_without_the_alignment_term_is_sft_on_the_chosen_response():
    policy, _ = random_pairs(8, seed=2)
    torch.testing.assert_close(call("asft", policy, lam=0.0).loss, call("sft", policy).loss, rtol=0, atol=0)


@pytest.mark.method("asft", "gradient")
def test_asft_gradients_are_decoupled_and_match_the_formula():
    # d L/d lp(y_w) = -(nll + lam beta sigmoid(-beta o_w)/(1 - p_w)) / |y_w|;
    # d L/d lp(y_l) = lam beta sigmoid(beta o_l)/(1 - p_l) / |y_l|, whatever lp(y_w) is.
    lam, beta = 0.4, 1.5
    for lp_w in (-9.0, -3.0, -0.4):
        policy, _ = records([[lp_w, -5.0]], lengths=[LEN_W, LEN_L], requires_grad=True)
        call("asft", policy, lam=lam, beta=beta).loss.sum().backward()
        a_w, a_l = lp_w / LEN_W, -5.0 / LEN_L
        p_w, p_l = math.exp(a_w), math.exp(a_l)
        d_chosen = -(1 + lam * beta * sigmoid(-beta * odds(a_w)) / (1 - p_w)) / LEN_W
        d_rejected = lam * beta * sigmoid(beta * odds(a_l)) / (1 - p_l) / LEN_L
        assert policy.sum.grad[0].tolist() == pytest.approx([d_chosen, d_rejected], abs=1e-12)


def test_asft_stays_finite_when_a_response_is_certain():
    policy, _ = records([[0.0, 0.0]], lengths=[1.0, 1.0], requires_grad=True)
    out = call("asft", policy)
    out.loss.sum().backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(policy.sum.grad).all()


# =========================================================================== LD-DPO (offline.md §6)

def token_pair(chosen_policy, chosen_ref, rejected_policy, rejected_ref, offset=2, requires_grad=False):
    """One pair as (1, 2, T) per-token records, responses after `offset` prompt positions."""
    T = offset + max(len(chosen_policy), len(rejected_policy)) + 1
    policy = torch.zeros(1, 2, T, dtype=F64)
    reference = torch.zeros(1, 2, T, dtype=F64)
    mask = torch.zeros(1, 2, T, dtype=torch.bool)
    for k, (p, r) in enumerate(((chosen_policy, chosen_ref), (rejected_policy, rejected_ref))):
        policy[0, k, offset:offset + len(p)] = torch.tensor(p, dtype=F64)
        reference[0, k, offset:offset + len(r)] = torch.tensor(r, dtype=F64)
        mask[0, k, offset:offset + len(p)] = True
    policy.requires_grad_(requires_grad)
    return Logps.from_tokens(policy, mask), Logps.from_tokens(reference, mask), policy


# The 3-vs-5-token example: a 3-token chosen and a 5-token rejected response, l_p = 3.
CHOSEN_P, CHOSEN_R = [-0.5, -1.0, -0.2], [-0.6, -0.8, -0.5]                       # delta 0.1, -0.2, 0.3
REJECTED_P, REJECTED_R = [-0.3, -0.9, -1.1, -0.4, -2.0], [-0.5, -0.7, -1.0, -0.9, -1.2]  # 0.2, -0.2, -0.1 | 0.5, -0.8


@pytest.mark.method("ld_dpo", "value")
def test_ld_dpo_hand_computed_three_versus_five_tokens():
    # Delta_w = 0.1 - 0.2 + 0.3 = 0.2 (all within l_p = 3);
    # Delta_l = (0.2 - 0.2 - 0.1) + alpha (0.5 - 0.8) = -0.1 + 0.5 * (-0.3) = -0.25;
    # z = beta (0.2 + 0.25) = 0.5 * 0.45 = 0.225. Plain DPO would use Delta_l = -0.4 (z = 0.3).
    policy, reference, _ = token_pair(CHOSEN_P, CHOSEN_R, REJECTED_P, REJECTED_R)
    out = call("ld_dpo", policy, reference, beta=0.5, alpha=0.5)
    assert out.loss.item() == pytest.approx(ell(0.225), abs=1e-12)
    assert out.rewards[0].tolist() == pytest.approx([0.5 * 0.2, 0.5 * -0.25], abs=1e-12)
    assert out.metrics["public_length"].item() == 3


@pytest.mark.method("ld_dpo", "reduction")
def test_ld_dpo_with_alpha_one_is_dpo():
    policy, reference, _ = random_token_records(12, seed=3)
    torch.testing.assert_close(call("ld_dpo", policy, reference, beta=0.3, alpha=1.0).loss,
                               dpo_loss(policy, reference, 0.3), rtol=0, atol=1e-12)


@pytest.mark.method("ld_dpo", "reduction")
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_ld_dpo_with_equal_lengths_is_dpo_for_any_alpha(alpha):
    policy, reference, _ = random_token_records(12, seed=4, equal_lengths=True)
    torch.testing.assert_close(call("ld_dpo", policy, reference, beta=0.3, alpha=alpha).loss,
                               dpo_loss(policy, reference, 0.3), rtol=0, atol=1e-12)


@pytest.mark.method("ld_dpo", "reduction")
def test_ld_dpo_with_alpha_zero_is_dpo_on_responses_truncated_to_the_public_length():
    policy, reference, _ = random_token_records(12, seed=5)
    public = torch.minimum(policy.length[:, 0], policy.length[:, 1])
    position = policy.mask.long().cumsum(-1)
    truncated_mask = policy.mask & (position <= public.reshape(-1, 1, 1))
    truncated_policy = Logps.from_tokens(policy.tokens, truncated_mask)
    truncated_reference = Logps.from_tokens(reference.tokens, truncated_mask)
    torch.testing.assert_close(call("ld_dpo", policy, reference, beta=0.3, alpha=0.0).loss,
                               dpo_loss(truncated_policy, truncated_reference, 0.3), rtol=0, atol=1e-12)


@pytest.mark.method("ld_dpo", "gradient")
def test_ld_dpo_token_gradients_are_one_inside_and_alpha_beyond_the_public_length():
    # d L/d log pi(y_t) = -/+ beta w_t sigmoid(-z) with w_t = 1 for t <= l_p and alpha after.
    alpha, beta, z = 0.5, 0.5, 0.225
    _, _, leaf = token_pair(CHOSEN_P, CHOSEN_R, REJECTED_P, REJECTED_R, requires_grad=True)
    policy, reference, _ = token_pair(CHOSEN_P, CHOSEN_R, REJECTED_P, REJECTED_R)
    policy = Logps.from_tokens(leaf, policy.mask)
    call("ld_dpo", policy, reference, beta=beta, alpha=alpha).loss.sum().backward()
    s = sigmoid(-z)
    assert leaf.grad[0, 0, 2:5].tolist() == pytest.approx([-beta * s] * 3, abs=1e-12)
    assert leaf.grad[0, 1, 2:7].tolist() == pytest.approx([beta * s] * 3 + [beta * alpha * s] * 2, abs=1e-12)
    assert leaf.grad[0, :, :2].abs().max() == 0  # prompt positions


def test_ld_dpo_counts_tokens_along_the_mask_not_the_row_position():
    # The same responses placed after prompts of different lengths give the same loss.
    losses = []
    for offset in (0, 3):
        policy, reference, _ = token_pair(CHOSEN_P, CHOSEN_R, REJECTED_P, REJECTED_R, offset=offset)
        losses.append(call("ld_dpo", policy, reference, beta=0.5, alpha=0.5).loss.item())
    assert losses == pytest.approx([ell(0.225)] * 2, abs=1e-12)


def test_ld_dpo_without_token_logps_is_a_clear_error():
    policy, reference = example()
    with pytest.raises(ValueError, match="per-token"):
        call("ld_dpo", policy, reference)
    assert get("ld_dpo").needs_token_logps


# =========================================================================== TGDPO (offline.md §7)

def tgdpo_example(requires_grad=False):
    """Chosen: 2 tokens, rejected: 1 token (positions after a 1-token prompt)."""
    mask = torch.tensor([[[False, True, True], [False, True, False]]])
    policy = torch.tensor([[[0.0, -1.0, -0.5], [0.0, -2.0, 0.0]]], dtype=F64).requires_grad_(requires_grad)
    reference = torch.tensor([[[0.0, -1.2, -0.4], [0.0, -1.5, 0.0]]], dtype=F64)
    guidance = torch.tensor([[[0.0, -0.7, -0.6], [0.0, -2.5, 0.0]]], dtype=F64)
    return (Logps.from_tokens(policy, mask), Logps.from_tokens(reference, mask), Logps.from_tokens(guidance, mask),
            policy)


@pytest.mark.method("tgdpo", "value")
def test_tgdpo_hand_computed_value():
    # beta 0.5, alpha 0.8: alpha beta = 0.4.
    # chosen:   delta = (0.2, -0.1), r = (0.5, -0.2), weights 1 + 0.4 r = (1.2, 0.92)
    # rejected: delta = -0.5, r = -1.0, weight 1 - 0.4 r = 1.4
    # z = 0.5 [(1.2*0.2 + 0.92*(-0.1)) - 1.4*(-0.5)] = 0.5 * 0.848 = 0.424.
    policy, reference, guidance, _ = tgdpo_example()
    out = call("tgdpo", policy, reference, guidance=guidance, beta=0.5, alpha=0.8)
    assert out.loss.item() == pytest.approx(ell(0.424), abs=1e-12)
    assert out.rewards[0].tolist() == pytest.approx([0.5 * 0.148, 0.5 * -0.7], abs=1e-12)


@pytest.mark.method("tgdpo", "reduction")
def test_tgdpo_with_alpha_zero_is_dpo():
    policy, reference, guidance = random_token_records(10, seed=6)
    torch.testing.assert_close(call("tgdpo", policy, reference, guidance=guidance, beta=0.3, alpha=0.0).loss,
                               dpo_loss(policy, reference, 0.3), rtol=0, atol=1e-12)


@pytest.mark.method("tgdpo", "reduction")
def test_tgdpo_with_zero_token_rewards_is_dpo():
    # r = 0 everywhere: the guidance model equals the reference.
    policy, reference, _ = random_token_records(10, seed=7)
    torch.testing.assert_close(call("tgdpo", policy, reference, guidance=reference, beta=0.3, alpha=0.5).loss,
                               dpo_loss(policy, reference, 0.3), rtol=0, atol=1e-12)


@pytest.mark.method("tgdpo", "gradient")
def test_tgdpo_gradient_per_token():
    # d L/d log pi(y^w_t) = -beta (1 + alpha beta r^w_t) sigmoid(-z); rejected: +beta (1 - alpha beta r^l_t) sigmoid(-z).
    policy, reference, guidance, leaf = tgdpo_example(requires_grad=True)
    call("tgdpo", policy, reference, guidance=guidance, beta=0.5, alpha=0.8).loss.sum().backward()
    s = sigmoid(-0.424)
    assert leaf.grad[0, 0, 1:].tolist() == pytest.approx([-0.5 * 1.2 * s, -0.5 * 0.92 * s], abs=1e-12)
    assert leaf.grad[0, 1, 1].item() == pytest.approx(0.5 * 1.4 * s, abs=1e-12)


@pytest.mark.method("tgdpo", "value")
def test_tgdpo_clip_weight_min_clamps_the_token_weights():
    # alpha 3: chosen weights 1 + 1.5 r = (1.75, 0.7), rejected 1 - 1.5 r = 2.5; clip at 0.8 -> (1.75, 0.8), 2.5.
    policy, reference, guidance, _ = tgdpo_example()
    out = call("tgdpo", policy, reference, guidance=guidance, beta=0.5, alpha=3.0, clip_weight_min=0.8)
    z = 0.5 * ((1.75 * 0.2 + 0.8 * -0.1) - 2.5 * -0.5)
    assert out.loss.item() == pytest.approx(ell(z), abs=1e-12)
    assert out.metrics["token_weight/chosen"].item() == pytest.approx((1.75 + 0.8) / 2, abs=1e-12)


def test_tgdpo_takes_the_guidance_model_as_a_data_extra():
    spec = get("tgdpo")
    assert spec.extras == ("guidance",) and spec.needs_token_logps and spec.needs_reference
    policy, reference, guidance = random_token_records(4, seed=8)
    out = build_objective("tgdpo")(policy, reference, {"guidance": guidance})
    assert out.loss.shape == (4,)
    with pytest.raises(ValueError, match="guidance"):
        build_objective("tgdpo")(policy, reference, {})


# =========================================================================== MADPO (offline.md §8)

TAU = math.log(0.999 / 0.001)


def madpo_c(m: float, c_max=2.0, c_min=0.5, lam=1.0, tau=TAU) -> float:
    return c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * math.exp(lam * (abs(m) - tau)))


def madpo_weights(margins, **params):
    policy, reference = records([[0.0, 0.0]] * len(margins))
    scores = torch.stack([torch.tensor(margins, dtype=F64), torch.zeros(len(margins), dtype=F64)], -1)
    return call("madpo", policy, reference, rm_scores=scores, **params).metrics["instance_weight"]


@pytest.mark.method("madpo", "value")
def test_madpo_value_on_the_worked_example():
    # m = 1.5 - (-0.5) = 2: c = 0.5 + 1.5 / (1 + 2 e^(2 - tau)), w = sigmoid(2c)/sigmoid(2), L = w l(0.75).
    policy, reference = example()
    c = madpo_c(2.0)
    w = sigmoid(2 * c) / sigmoid(2.0)
    out = call("madpo", policy, reference, rm_scores=torch.tensor([[1.5, -0.5]], dtype=F64), beta=0.5)
    assert out.loss.item() == pytest.approx(w * ell(0.75), abs=1e-12)
    assert out.metrics["instance_weight"].item() == pytest.approx(w, abs=1e-12) and w > 1


@pytest.mark.method("madpo", "value")
def test_madpo_weight_is_one_at_plus_and_minus_tau_and_below():
    weights = madpo_weights([TAU, -TAU, -TAU - 5.0])
    torch.testing.assert_close(weights, torch.ones(3, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.method("madpo", "value")
def test_madpo_weight_is_above_one_for_hard_pairs_and_below_for_easy_ones():
    hard = madpo_weights([0.1, 1.0, 3.0, 6.0])
    easy = madpo_weights([7.5, 10.0, 20.0])
    assert (hard > 1).all() and (easy < 1).all()
    # and w = sigmoid(c m)/sigmoid(m) with the paper's c, point by point
    for m, w in zip([0.1, 1.0, 3.0, 6.0], hard.tolist()):
        assert w == pytest.approx(sigmoid(madpo_c(m) * m) / sigmoid(m), abs=1e-12)


@pytest.mark.method("madpo", "reduction")
def test_madpo_with_c_max_equal_c_min_equal_one_is_dpo():
    policy, reference = random_pairs(12, seed=9)
    scores = torch.randn(12, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 5
    out = call("madpo", policy, reference, rm_scores=scores, beta=0.2, c_max=1.0, c_min=1.0)
    torch.testing.assert_close(out.loss, dpo_loss(policy, reference, 0.2), rtol=0, atol=1e-12)


@pytest.mark.method("madpo", "gradient")
def test_madpo_weight_is_detached_and_scales_the_dpo_gradient():
    policy, reference = example(requires_grad=True)
    call("madpo", policy, reference, rm_scores=torch.tensor([[1.5, -0.5]], dtype=F64), beta=0.5).loss.sum().backward()
    w = sigmoid(2 * madpo_c(2.0)) / sigmoid(2.0)
    g = 0.5 * sigmoid(-0.75) * w
    assert policy.sum.grad[0].tolist() == pytest.approx([-g, g], abs=1e-12)


def test_madpo_rejects_an_inverted_schedule_and_a_wrong_score_shape():
    policy, reference = example()
    with pytest.raises(ValueError, match="c_min <= 1 <= c_max"):
        call("madpo", policy, reference, rm_scores=torch.tensor([[1.0, 0.0]]), c_max=0.5, c_min=2.0)
    with pytest.raises(ValueError, match="rm_scores"):
        call("madpo", policy, reference, rm_scores=torch.tensor([1.0]))


def test_reward_model_scores_reach_madpo_from_two_data_columns():
    # data.extra_columns: [{rm_scores: [chosen_score, rejected_score]}] stacks the columns into (B, 2).
    from preftune.data.collate import collate
    from preftune.data.formats import DataError, load_examples
    from preftune.data.tokenize import Tokenization
    from preftune.models import build_tiny_tokenizer

    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3", "chosen_score": 1.0, "rejected_score": 0},
            {"prompt": "2+2=", "chosen": "4", "rejected": "44", "chosen_score": 0.5, "rejected_score": -2.5}]
    examples, _ = load_examples(rows, extra_columns=({"rm_scores": ["chosen_score", "rejected_score"]},))
    tokenizer = build_tiny_tokenizer()
    batch = collate(Tokenization(tokenizer, 32, 16).many(examples), tokenizer.pad_token_id)
    assert batch.extras["rm_scores"].tolist() == [[1.0, 0.0], [0.5, -2.5]]
    policy, reference = records([[LP_W, LP_L]] * 2, [[REF_W, REF_L]] * 2)
    out = build_objective({"madpo": {"beta": 0.5}})(policy, reference, batch.extras)
    assert out.metrics["rm_margin"].tolist() == [1.0, 3.0]
    with pytest.raises(DataError, match="extra_columns"):
        load_examples(rows, extra_columns=({"rm_scores": 3},))
    with pytest.raises(DataError, match="twice"):
        load_examples(rows, extra_columns=("chosen_score", {"chosen_score": "rejected_score"}))


def test_stacked_columns_of_several_reward_models_give_per_response_score_vectors():
    # Two margin reward models: each response column holds a list of 2 scores -> margin_scores (B, 2, 2).
    from preftune.data.formats import DataError, load_examples

    row = {"prompt": "1+1=", "chosen": "2", "rejected": "3", "safety_w": [0.3, 1.0], "safety_l": [0.8, 0.0]}
    examples, _ = load_examples([row], extra_columns=({"margin_scores": ["safety_w", "safety_l"]},))
    scores = torch.tensor([examples[0].extras["margin_scores"]], dtype=F64)
    assert scores.shape == (1, 2, 2)
    policy, reference = example()
    out = call("modpo", policy, reference, margin_scores=scores, beta=0.5, objective_weight=0.4,
               margin_weights=[0.6, -0.2])
    assert out.loss.item() == pytest.approx(ell(3.125), abs=1e-12)  # as in the MODPO value test below
    with pytest.raises(DataError, match="same length"):
        load_examples([dict(row, safety_l=0.5)], extra_columns=({"margin_scores": ["safety_w", "safety_l"]},))


# =========================================================================== beta-DPO (offline.md §8)

def frozen_statistics(mean: float, std: float = 1.0) -> MarginStatistics:
    state = MarginStatistics(seed=0)
    state.mean, state.std, state.frozen = mean, std, True
    return state


def margin_pairs(margins, requires_grad=False):
    """Pairs whose log-ratio margins Delta_w - Delta_l are `margins` (reference 0, rejected 0)."""
    return records([[m, 0.0] for m in margins], requires_grad=requires_grad)


@pytest.mark.method("beta_dpo", "reduction")
def test_beta_dpo_with_alpha_zero_and_no_filter_is_dpo():
    policy, reference = random_pairs(10, seed=10)
    out = call("beta_dpo", policy, reference, beta=0.2, alpha=0.0, filter_ratio=0.0)
    torch.testing.assert_close(out.loss, dpo_loss(policy, reference, 0.2), rtol=0, atol=1e-12)
    # ... also batch after batch inside an objective whose running state moves.
    objective = build_objective({"beta_dpo": {"beta": 0.2, "alpha": 0.0, "filter_ratio": 0.0}})
    for seed in (11, 12, 13):
        policy, reference = random_pairs(6, seed=seed)
        torch.testing.assert_close(objective(policy, reference).loss, dpo_loss(policy, reference, 0.2), rtol=0,
                                   atol=1e-12)
    assert objective.terms[0].state.updates == 3


@pytest.mark.method("beta_dpo", "value")
def test_beta_dpo_batch_beta_by_hand_with_frozen_statistics():
    # M = (1.5, -0.5, 0.7), M0 = 0.2 frozen: beta_batch = 0.5 (1 + 0.6 (1.7/3 - 0.2)) = 0.5 * 1.22 = 0.61;
    # a frozen state keeps every example: L = mean_i l(0.61 M_i).
    policy, reference = margin_pairs([1.5, -0.5, 0.7])
    out = call("beta_dpo", policy, reference, beta=0.5, alpha=0.6, filter_ratio=0.2, state=frozen_statistics(0.2))
    assert out.metrics["beta_batch"][0].item() == pytest.approx(0.61, abs=1e-12)
    assert out.loss.mean().item() == pytest.approx((ell(0.915) + ell(-0.305) + ell(0.427)) / 3, abs=1e-12)
    assert out.metrics["kept"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.method("beta_dpo", "value")
def test_beta_dpo_clamps_the_batch_beta_at_one_thousandth():
    policy, reference = margin_pairs([-3.0, -4.0])
    out = call("beta_dpo", policy, reference, beta=0.1, alpha=2.0, filter_ratio=0.0, state=frozen_statistics(1.0))
    assert out.metrics["beta_batch"][0].item() == 1e-3  # 0.1 (1 + 2 (-3.5 - 1)) = -0.8 -> 0.001


@pytest.mark.method("beta_dpo", "value")
def test_beta_dpo_ema_includes_the_current_batch_before_the_loss():
    # Zero init, momentum 0.9. Batch 1, M = (1, 2, 4): mean 7/3, unbiased std sqrt(7/3)
    #   -> M0 = 0.1 * 7/3, sigma = 0.1 sqrt(7/3); beta_batch = 0.5 (1 + 0.6 (7/3 - 0.7/3)) = 0.5 (1 + 0.6 * 2.1).
    # Batch 2, M = (0, 2): mean 1, std sqrt(2) -> M0 = 0.9 * 0.7/3 + 0.1, sigma = 0.09 sqrt(7/3) + 0.1 sqrt(2).
    state = MarginStatistics(seed=0)
    policy, reference = margin_pairs([1.0, 2.0, 4.0])
    out = call("beta_dpo", policy, reference, beta=0.5, alpha=0.6, filter_ratio=0.0, state=state)
    assert (state.mean, state.std) == pytest.approx((0.7 / 3, 0.1 * math.sqrt(7 / 3)), abs=1e-14)
    assert out.metrics["beta_batch"][0].item() == pytest.approx(0.5 * (1 + 0.6 * 2.1), abs=1e-12)
    policy, reference = margin_pairs([0.0, 2.0])
    call("beta_dpo", policy, reference, beta=0.5, alpha=0.6, filter_ratio=0.0, state=state)
    assert (state.mean, state.std) == pytest.approx((0.9 * 0.7 / 3 + 0.1, 0.09 * math.sqrt(7 / 3) + 0.1 * math.sqrt(2)),
                                                    abs=1e-14)
    assert state.updates == 2


@pytest.mark.method("beta_dpo", "value")
def test_beta_dpo_filtered_mean_is_spread_over_the_examples():
    # filter_ratio 0.5 on 6 examples keeps 3; the batch mean of the per-example losses is the mean over kept.
    margins = [0.5, 1.0, -0.2, 2.0, 0.1, 0.8]
    policy, reference = margin_pairs(margins)
    state = MarginStatistics(seed=1)
    state.mean, state.std = 0.6, 0.5
    out = call("beta_dpo", policy, reference, beta=0.5, alpha=0.6, filter_ratio=0.5, momentum=1.0, state=state)
    kept = out.metrics["kept"].bool()
    assert int(kept.sum()) == 3
    beta_batch = 0.5 * (1 + 0.6 * (sum(m for m, k in zip(margins, kept.tolist()) if k) / 3 - 0.6))
    expected = sum(ell(beta_batch * m) for m, k in zip(margins, kept.tolist()) if k) / 3
    assert out.loss.mean().item() == pytest.approx(expected, abs=1e-12)
    assert (out.loss[~kept] == 0).all()


@pytest.mark.method("beta_dpo", "gradient")
def test_beta_dpo_batch_beta_is_detached():
    # d L_i / d lp(y_w,i) = -(B/n_kept) beta_batch sigmoid(-beta_batch M_i) / B  for the batch mean.
    policy, reference = margin_pairs([1.5, -0.5, 0.7], requires_grad=True)
    call("beta_dpo", policy, reference, beta=0.5, alpha=0.6, state=frozen_statistics(0.2)).loss.mean().backward()
    expected = [-0.61 * sigmoid(-0.61 * m) / 3 for m in (1.5, -0.5, 0.7)]
    assert policy.sum.grad[:, 0].tolist() == pytest.approx(expected, abs=1e-12)


def test_beta_dpo_filter_draws_one_example_in_proportion_to_the_gaussian_weights():
    # Seeded chi-square test (offline.md §8): keep 1 of 4 with fixed statistics (momentum 1 freezes the EMAs
    # but not the filter); the kept index is distributed as w_i / sum(w), w_i = exp(-(M_i - M0)^2 / (2 sigma^2)).
    margins, m0, sd, draws = [0.0, 0.5, 1.5, -1.0], 0.3, 0.8, 4000
    state = MarginStatistics(seed=123)
    state.mean, state.std = m0, sd
    policy, reference = margin_pairs(margins)
    counts = torch.zeros(4)
    with single_threaded():  # thousands of calls on 4-element tensors: a thread pool only costs time here
        for _ in range(draws):
            out = call("beta_dpo", policy, reference, filter_ratio=0.75, momentum=1.0, state=state)
            counts += out.metrics["kept"].float()
    w = torch.tensor([math.exp(-(m - m0) ** 2 / (2 * sd * sd)) for m in margins])
    assert counts.sum() == draws and (state.mean, state.std) == (m0, sd)
    assert chisquare(counts.numpy(), (draws * w / w.sum()).numpy()).pvalue > 1e-3
    # The same test has the power to reject sampling that ignores the weights.
    assert chisquare(counts.numpy(), [draws / 4] * 4).pvalue < 1e-6


def test_beta_dpo_filter_keeps_pairs_as_successive_draws_without_replacement():
    # Keep 2 of 4: P({i, j}) = w_i/W * w_j/(W - w_i) + w_j/W * w_i/(W - w_j).
    margins, m0, sd, draws = [0.0, 0.5, 1.5, -1.0], 0.3, 0.8, 4000
    state = MarginStatistics(seed=7)
    state.mean, state.std = m0, sd
    w = [math.exp(-(m - m0) ** 2 / (2 * sd * sd)) for m in margins]
    W = sum(w)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = [w[i] / W * w[j] / (W - w[i]) + w[j] / W * w[i] / (W - w[j]) for i, j in pairs]
    counts = {p: 0 for p in pairs}
    for _ in range(draws):
        kept = tuple(torch.nonzero(state.draw_kept(torch.tensor(margins, dtype=F64), 0.5)[0]).flatten().tolist())
        counts[kept] += 1
    assert sum(expected) == pytest.approx(1.0)
    assert chisquare([counts[p] for p in pairs], [draws * e for e in expected]).pvalue > 1e-3


def test_beta_dpo_state_round_trip_continues_the_same_draws_and_statistics():
    batches = [margin_pairs(torch.randn(8, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(6)]
    params = {"beta_dpo": {"beta": 0.5, "alpha": 0.6, "filter_ratio": 0.5}}
    straight = build_objective(params)
    straight.terms[0].state = MarginStatistics(seed=5)
    losses = [straight(p, r).loss for p, r in batches]
    first = build_objective(params)
    first.terms[0].state = MarginStatistics(seed=5)
    for p, r in batches[:3]:
        first(p, r)
    resumed = build_objective(params)  # a fresh objective, as after a restart
    resumed.load_state_dict(first.state_dict())
    for (p, r), loss in zip(batches[3:], losses[3:]):
        assert torch.equal(resumed(p, r).loss, loss)
    assert resumed.state_dict()["0:beta_dpo"]["mean"] == straight.state_dict()["0:beta_dpo"]["mean"]


def test_beta_dpo_frozen_state_neither_updates_nor_draws():
    objective = build_objective({"beta_dpo": {"filter_ratio": 0.5}})
    policy, reference = margin_pairs([0.1, 0.2, 0.3, 0.4])
    objective(policy, reference)
    saved = objective.state_dict()
    with objective.frozen_state():
        out = objective(policy, reference)
    assert out.metrics["kept"].tolist() == [1.0] * 4
    after = objective.state_dict()["0:beta_dpo"]
    assert after["mean"] == saved["0:beta_dpo"]["mean"] and torch.equal(after["rng"], saved["0:beta_dpo"]["rng"])


def test_beta_dpo_statistics_are_summed_over_processes():
    # Two processes: this one holds M = (1, 2), the other M = (4, 0, 3). A fake all-reduce adds the
    # other's statistics, in the order the state asks: (n, sum, sum of squares), then (n_kept, kept sum).
    other = [torch.tensor([3.0, 7.0, 25.0], dtype=F64), torch.tensor([3.0, 7.0], dtype=F64)]
    state = MarginStatistics(seed=0)
    state.sync = lambda stats: stats + other.pop(0)
    policy, reference = margin_pairs([1.0, 2.0])
    out = call("beta_dpo", policy, reference, beta=0.5, alpha=0.6, filter_ratio=0.0, state=state)
    union = torch.tensor([1.0, 2.0, 4.0, 0.0, 3.0], dtype=F64)
    assert (state.mean, state.std) == pytest.approx((0.1 * 2.0, 0.1 * float(union.std())), abs=1e-14)
    assert out.metrics["beta_batch"][0].item() == pytest.approx(0.5 * (1 + 0.6 * (2.0 - 0.2)), abs=1e-12)
    assert not other


@pytest.mark.slow
def test_beta_dpo_stop_and_resume_gives_the_same_run_as_an_uninterrupted_one(tiny_sft_model, tmp_path):
    # The EMAs and the filter's generator are checkpointed with the model: a run stopped after step 3
    # and resumed ends with the same weights and the same per-step beta_batch, kept sets and losses.
    import json
    import random

    from safetensors.torch import load_file

    from preftune.config import load_config
    from preftune.tasks import get_task
    from preftune.train.runner import run_training

    task, rng = get_task("arithmetic"), random.Random(0)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": task.answer(p), "rejected": task.wrong_answer(p, rng)})
                             + "\n" for p in task.prompts("train", 64)))

    def config(name):
        return load_config(None, [f"--name={name}", f"--output_dir={tmp_path}/{{name}}",
                                  f"--model.name_or_path={tiny_sft_model}", f"--data.source={pairs}",
                                  "--data.max_length=32", "--data.max_prompt_length=16", "--loss=beta_dpo",
                                  "--loss.beta_dpo.beta=0.5", "--loss.beta_dpo.filter_ratio=0.5", "--train.lr=1e-3", "--train.batch_size=8",
                                  "--train.steps=6", "--train.progress=false"])

    def stop_at_step_three(step, _):
        if step == 3:
            raise KeyboardInterrupt

    straight = run_training(config("straight"))
    resumed_cfg = config("resumed")
    with pytest.raises(KeyboardInterrupt):
        run_training(resumed_cfg, on_step_end=stop_at_step_three)
    resumed = run_training(resumed_cfg, resume=True)

    def metrics(run_dir):
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    for key in ("loss", "beta_batch", "margin_mean_ema", "margin_std_ema"):
        assert [m[key] for m in metrics(resumed)] == [m[key] for m in metrics(straight)], key
    a, b = (load_file(str(run / "model" / "model.safetensors")) for run in (straight, resumed))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0


# =========================================================================== TPO (offline.md §9)

def triples(gold_sums, gold_lengths, requires_grad=False) -> Logps:
    """The worked example's pair plus a gold response per example."""
    n = len(gold_sums)
    sums = torch.tensor([[LP_W, LP_L, g] for g in gold_sums], dtype=F64).requires_grad_(requires_grad)
    lengths = torch.tensor([[LEN_W, LEN_L, n_g] for n_g in gold_lengths], dtype=F64)
    assert lengths.shape[0] == n
    return Logps(sum=sums, length=lengths)


@pytest.mark.method("tpo", "value")
def test_tpo_hand_computed_value():
    # Gold lp -2.4 over 3 tokens: NLL_tok = 0.8. TPO, beta 0.5, alpha 0.7: l(0.5 * (-3 + 5)) + 0.7 * 0.8.
    out = call("tpo", triples([-2.4], [3.0]), beta=0.5, alpha=0.7)
    assert out.loss.item() == pytest.approx(ell(1.0) + 0.56, abs=1e-12)


@pytest.mark.method("tpo", "value")
def test_tpo_l_hand_computed_value():
    # TPO-L, beta 2, gamma 0.5: z = 2 (-1.5 + 1.25) - 0.5 = -1.0; plus 0.7 * 0.8.
    out = call("tpo", triples([-2.4], [3.0]), beta=2.0, alpha=0.7, length_normalize=True, gamma=0.5)
    assert out.loss.item() == pytest.approx(ell(-1.0) + 0.56, abs=1e-12)


@pytest.mark.method("tpo", "value")
def test_tpo_gold_nll_is_a_token_mean_over_the_batch():
    # Gold sums (-2.4, -1.0) over (3, 5) tokens: batch NLL = 3.4 / 8 = 0.425, not (0.8 + 0.2)/2 = 0.5.
    out = call("tpo", triples([-2.4, -1.0], [3.0, 5.0]), beta=0.5, alpha=1.0)
    assert out.loss.mean().item() == pytest.approx(ell(1.0) + 0.425, abs=1e-12)
    assert out.loss.tolist() == pytest.approx([ell(1.0) + 2.4 * 2 / 8, ell(1.0) + 1.0 * 2 / 8], abs=1e-12)


@pytest.mark.method("tpo", "gradient")
def test_tpo_gold_gradient_is_minus_alpha_over_all_gold_tokens():
    policy = triples([-2.4, -1.0], [3.0, 5.0], requires_grad=True)
    call("tpo", policy, beta=0.5, alpha=0.7).loss.mean().backward()
    assert policy.sum.grad[:, 2].tolist() == pytest.approx([-0.7 / 8, -0.7 / 8], abs=1e-15)
    g = 0.5 * sigmoid(-1.0) / 2
    assert policy.sum.grad[:, 0].tolist() == pytest.approx([-g, -g], abs=1e-12)


@pytest.mark.method("tpo", "reduction")
def test_tpo_l_without_the_gold_term_is_simpo():
    policy, _ = random_pairs(10, seed=14, k=3)
    out = call("tpo", policy, beta=2.0, alpha=0.0, length_normalize=True, gamma=1.2)
    simpo = call("simpo", policy.responses([0, 1]), beta=2.0, gamma_beta_ratio=1.2 / 2.0)
    torch.testing.assert_close(out.loss, simpo.loss, rtol=0, atol=1e-12)


@pytest.mark.method("tpo", "reduction")
def test_tpo_without_the_gold_term_is_the_reference_free_sigmoid_loss():
    policy, _ = random_pairs(10, seed=15, k=3)
    out = call("tpo", policy, beta=0.3, alpha=0.0)
    expected = -torch.nn.functional.logsigmoid(0.3 * (policy.sum[:, 0] - policy.sum[:, 1]))
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-12)


def test_tpo_gold_nll_equals_hugging_face_cross_entropy_on_gold_labels():
    # The tiny Llama model's own loss with labels = the gold tokens (prompt and padding -100) is the
    # token mean over the batch's gold tokens; TPO's NLL term must equal it.
    from preftune.data.collate import collate
    from preftune.data.formats import load_examples
    from preftune.data.tokenize import Tokenization
    from preftune.logps import sequence_logps
    from preftune.models import build_tiny_model, build_tiny_tokenizer

    rows = [{"prompt": "12+30=", "chosen": "42", "rejected": "41", "gold": "42"},
            {"prompt": "7+5=", "chosen": "12", "rejected": "1200", "gold": "twelve"},
            {"prompt": "1+1=", "chosen": "2", "rejected": "3", "gold": "2"}]
    examples, _ = load_examples(rows, extra_responses=("gold",))
    tokenizer = build_tiny_tokenizer()
    batch = collate(Tokenization(tokenizer, 32, 16).many(examples), tokenizer.pad_token_id)
    model = build_tiny_model(tokenizer).eval()
    with torch.no_grad():
        policy = sequence_logps(model, batch)
        gold_rows = torch.arange(2, batch.input_ids.shape[0], 3)
        labels = batch.input_ids[gold_rows].masked_fill(~batch.response_mask[gold_rows], -100)
        hf = model(input_ids=batch.input_ids[gold_rows], attention_mask=batch.attention_mask[gold_rows],
                   labels=labels).loss
    with_gold = call("tpo", policy, beta=0.5, alpha=1.0).loss.mean()
    without = call("tpo", policy, beta=0.5, alpha=0.0).loss.mean()
    assert (with_gold - without).item() == pytest.approx(hf.item(), rel=1e-5)


@pytest.mark.method("tpo", "value")
@pytest.mark.parametrize("loss_type, expected", [("hinge", max(0.0, 1 - 1.0)), ("ipo", (-0.25 - 1.0) ** 2)])
def test_tpo_variants(loss_type, expected):
    # hinge: max(0, 1 - z), z = 0.5 * 2 = 1; ipo on length-averaged log-probs:
    # (avg gap - 1/(2 beta))^2 = (-3/2 + 5/4 - 1)^2 (gold term off).
    out = call("tpo", triples([-2.4], [3.0]), beta=0.5, alpha=0.0, loss_type=loss_type)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.method("tpo", "value")
@pytest.mark.parametrize("length_normalize", [False, True])
def test_tpo_ipo_uses_length_averaged_log_probs(length_normalize):
    # The official trainer averages the log-probs for loss_type ipo (and tpo-l): chosen -6 over 3
    # tokens, rejected -20 over 10, beta 0.01, alpha 0: (-2 - (-2) - 1/0.02)^2 = 2500, not (14 - 50)^2.
    policy = Logps(sum=torch.tensor([[-6.0, -20.0, -1.0]], dtype=F64),
                   length=torch.tensor([[3.0, 10.0, 1.0]], dtype=F64))
    out = call("tpo", policy, beta=0.01, alpha=0.0, loss_type="ipo", length_normalize=length_normalize)
    assert out.loss.item() == pytest.approx(2500.0, abs=1e-9)
    assert out.rewards[0, :2].tolist() == pytest.approx([0.01 * -2.0, 0.01 * -2.0], abs=1e-12)


def test_tpo_without_a_gold_response_is_a_clear_error():
    policy, _ = example()
    with pytest.raises(ValueError, match="extra_responses"):
        call("tpo", policy)


# =========================================================================== f-DPO (offline.md §10)

@pytest.mark.method("fdpo", "reduction")
def test_fdpo_reverse_kl_is_dpo_exactly():
    policy, reference = random_pairs(12, seed=16)
    assert torch.equal(call("fdpo", policy, reference, beta=0.3, divergence="reverse_kl").loss,
                       dpo_loss(policy, reference, 0.3))


@pytest.mark.method("fdpo", "value")
@pytest.mark.parametrize("divergence, score_w, score_l", [
    # Delta_w = 1, Delta_l = -0.5 (worked example); scores from offline.md §10's table.
    ("forward_kl", -math.exp(-1.0), -math.exp(0.5)),
    ("js", math.log(sigmoid(1.0)), math.log(sigmoid(-0.5))),
    ("alpha", (1 - math.exp(-0.5)) / 0.5, (1 - math.exp(0.25)) / 0.5),
])
def test_fdpo_values_on_the_worked_example(divergence, score_w, score_l):
    policy, reference = example()
    out = call("fdpo", policy, reference, beta=0.5, divergence=divergence, alpha=0.5)
    assert out.loss.item() == pytest.approx(ell(0.5 * (score_w - score_l)), abs=1e-12)


@pytest.mark.method("fdpo", "value")
def test_fdpo_js_score_is_log_sigmoid_which_is_f_prime_up_to_a_constant():
    # f'(u) = log(2u/(1+u)) = log 2 + log sigmoid(Delta): the rewards are beta log sigmoid(Delta).
    policy, reference = random_pairs(8, seed=17)
    out = call("fdpo", policy, reference, beta=1.0, divergence="js")
    u = (policy.sum - reference.sum).exp()
    torch.testing.assert_close(out.rewards, torch.log(2 * u / (1 + u)) - math.log(2), rtol=0, atol=1e-12)


@pytest.mark.method("fdpo", "value")
def test_fdpo_alpha_divergence_interpolates_between_reverse_and_forward_kl():
    policy, reference = example()
    near_reverse = call("fdpo", policy, reference, beta=0.5, divergence="alpha", alpha=1e-6).loss.item()
    near_forward = call("fdpo", policy, reference, beta=0.5, divergence="alpha", alpha=1 - 1e-6).loss.item()
    assert near_reverse == pytest.approx(ell(0.75), abs=1e-6)
    # alpha -> 1: (1 - 1/u) = 1 + f'_forward(u): the same differences as forward KL.
    assert near_forward == pytest.approx(ell(0.5 * (math.exp(0.5) - math.exp(-1.0))), abs=1e-5)


@pytest.mark.method("fdpo", "gradient")
def test_fdpo_forward_kl_is_bounded_and_its_push_on_the_chosen_response_saturates():
    # score -exp(-Delta) <= 0; d L/d lp(y_w) = -beta exp(-Delta_w) sigmoid(-z) -> 0 as Delta_w grows.
    beta = 0.5
    for delta_w in (0.0, 5.0, 20.0):
        policy, reference = records([[delta_w, -0.5]], requires_grad=True)
        out = call("fdpo", policy, reference, beta=beta, divergence="forward_kl")
        out.loss.sum().backward()
        z = beta * (-math.exp(-delta_w) + math.exp(0.5))
        assert out.rewards[0, 0].item() <= 0
        assert policy.sum.grad[0, 0].item() == pytest.approx(-beta * math.exp(-delta_w) * sigmoid(-z), abs=1e-15)
    assert abs(policy.sum.grad[0, 0].item()) < 1e-9


def test_fdpo_clamps_the_exponent():
    policy, reference = records([[-500.0, -0.5]], requires_grad=True)
    for divergence in ("forward_kl", "alpha"):
        out = call("fdpo", policy, reference, divergence=divergence, max_exponent=80.0)
        assert torch.isfinite(out.loss).all() and torch.isfinite(out.rewards).all()
    with pytest.raises(ValueError, match="divergence"):
        call("fdpo", policy, reference, divergence="chi2")


# =========================================================================== 3D-properties (offline.md §11)

@pytest.mark.method("flex_dpo", "value")
def test_flex_dpo_hand_computed_value():
    # z = 0.5 * 1 - 0.3 * (-0.5) = 0.65.
    policy, reference = example()
    out = call("flex_dpo", policy, reference, beta_chosen=0.5, beta_rejected=0.3)
    assert out.loss.item() == pytest.approx(ell(0.65), abs=1e-12)


@pytest.mark.method("flex_dpo", "reduction")
def test_flex_dpo_with_equal_temperatures_is_dpo():
    policy, reference = random_pairs(12, seed=18)
    torch.testing.assert_close(call("flex_dpo", policy, reference, beta_chosen=0.3, beta_rejected=0.3).loss,
                               dpo_loss(policy, reference, 0.3), rtol=0, atol=0)


@pytest.mark.method("flex_dpo", "gradient")
def test_flex_dpo_gradient_ratio_in_probability_space():
    # offline.md §11: |dL/d pi_l| / |dL/d pi_w| = (beta-/beta+) pi_w / pi_l, autograd with pi as leaves.
    probs = torch.tensor([[0.3, 0.02], [0.6, 0.1]], dtype=F64, requires_grad=True)
    length = torch.ones(2, 2, dtype=F64)
    reference = Logps(sum=torch.full((2, 2), math.log(0.25), dtype=F64), length=length)
    call("flex_dpo", Logps(sum=probs.log(), length=length), reference, beta_chosen=0.4,
         beta_rejected=0.3).loss.sum().backward()
    ratio = probs.grad[:, 1].abs() / probs.grad[:, 0].abs()
    assert ratio.tolist() == pytest.approx([0.75 * 0.3 / 0.02, 0.75 * 0.6 / 0.1], rel=1e-12)


@pytest.mark.method("sft_dpo", "value")
@pytest.mark.parametrize("normalization, nll", [("token_mean", 3.0 / 2), ("sum", 3.0)])
def test_sft_dpo_hand_computed_value(normalization, nll):
    # l(0.75) + 0.2 * NLL(y_w), NLL = -(-3)/2 or -(-3).
    policy, reference = example()
    out = call("sft_dpo", policy, reference, beta=0.5, sft_weight=0.2, nll_normalization=normalization)
    assert out.loss.item() == pytest.approx(ell(0.75) + 0.2 * nll, abs=1e-12)


@pytest.mark.method("sft_dpo", "reduction")
def test_sft_dpo_reduces_to_dpo_and_equals_the_dpo_plus_sft_objective():
    policy, reference = random_pairs(12, seed=19)
    torch.testing.assert_close(call("sft_dpo", policy, reference, beta=0.3, sft_weight=0.0).loss,
                               dpo_loss(policy, reference, 0.3), rtol=0, atol=0)
    combined = build_objective({"dpo": {"beta": 0.3}, "sft": {"weight": 0.4}})(policy, reference).loss
    torch.testing.assert_close(call("sft_dpo", policy, reference, beta=0.3, sft_weight=0.4).loss, combined,
                               rtol=0, atol=1e-12)


@pytest.mark.method("sft_dpo", "gradient")
def test_sft_dpo_gradient():
    policy, reference = example(requires_grad=True)
    call("sft_dpo", policy, reference, beta=0.5, sft_weight=0.2).loss.sum().backward()
    g = 0.5 * sigmoid(-0.75)
    assert policy.sum.grad[0].tolist() == pytest.approx([-g - 0.2 / LEN_W, g], abs=1e-12)


# =========================================================================== MODPO (offline.md §15)

@pytest.mark.method("modpo", "value")
def test_modpo_hand_computed_value():
    # w_k = 0.4, w_-k = 0.6, margin scores (0.3, 0.8): z = (0.75 - 0.6 * (-0.5)) / 0.4 = 2.625.
    policy, reference = example()
    out = call("modpo", policy, reference, margin_scores=torch.tensor([[0.3, 0.8]], dtype=F64), beta=0.5,
               objective_weight=0.4)
    assert out.loss.item() == pytest.approx(ell(2.625), abs=1e-12)


@pytest.mark.method("modpo", "value")
def test_modpo_with_two_margin_models_and_the_hinge():
    # scores (B, 2, M=2): margins (0.3 - 0.8, 1.0 - 0.0) = (-0.5, 1.0), w_-k = (0.6, -0.2): w.m = -0.5;
    # z = (0.75 + 0.5)/0.4 = 3.125. Hinge on margin 1.5 (one model): z = (0.75 - 0.9)/0.4 = -0.375 -> 1.375.
    policy, reference = example()
    two = torch.tensor([[[0.3, 1.0], [0.8, 0.0]]], dtype=F64)
    out = call("modpo", policy, reference, margin_scores=two, beta=0.5, objective_weight=0.4, margin_weights=[0.6, -0.2])
    assert out.loss.item() == pytest.approx(ell(3.125), abs=1e-12)
    hinge = call("modpo", policy, reference, margin_scores=torch.tensor([[1.5, 0.0]], dtype=F64), beta=0.5,
                 objective_weight=0.4, loss_type="hinge")
    assert hinge.loss.item() == pytest.approx(1.375, abs=1e-12)


@pytest.mark.method("modpo", "reduction")
def test_modpo_with_weights_one_and_zero_is_dpo():
    policy, reference = random_pairs(12, seed=20)
    scores = torch.randn(12, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(call("modpo", policy, reference, margin_scores=scores, beta=0.3,
                                    objective_weight=1.0).loss, dpo_loss(policy, reference, 0.3), rtol=0, atol=1e-12)


@pytest.mark.method("modpo", "gradient")
def test_modpo_gradient_is_dpo_scaled_by_one_over_w_k():
    policy, reference = example(requires_grad=True)
    call("modpo", policy, reference, margin_scores=torch.tensor([[0.3, 0.8]], dtype=F64), beta=0.5,
         objective_weight=0.4).loss.sum().backward()
    g = 0.5 / 0.4 * sigmoid(-2.625)
    assert policy.sum.grad[0].tolist() == pytest.approx([-g, g], abs=1e-12)


def test_modpo_checks_the_number_of_margin_weights():
    policy, reference = example()
    with pytest.raises(ValueError, match="margin_weights"):
        call("modpo", policy, reference, margin_scores=torch.zeros(1, 2, 3, dtype=F64), margin_weights=[0.5])
