"""From r to Q* (offline.md §14): the dpo_token_credit method, per-token credits of a model, the
prefix-tree toy LM with its soft Bellman values, and likelihood beam search."""
from __future__ import annotations


import pytest
import torch

from handworked import F64, ell, sigmoid
from preftune.eval.search import beam_search, beam_search_core
from preftune.methods import get
from preftune.records import Logps
from preftune.tabular.token_tree import TokenTree
from preftune.tabular.tokens import EOS, TokenLM


def token_record(chosen, rejected, requires_grad=False) -> Logps:
    """A (1, 2, T) record from lists of per-token log-probs (T = the longer list)."""
    width = max(len(chosen), len(rejected))
    values = torch.zeros(1, 2, width, dtype=F64)
    mask = torch.zeros(1, 2, width, dtype=torch.bool)
    for k, tokens in enumerate((chosen, rejected)):
        values[0, k, :len(tokens)] = torch.tensor(tokens, dtype=F64)
        mask[0, k, :len(tokens)] = True
    values.requires_grad_(requires_grad)
    return Logps(sum=(values * mask).sum(-1), length=mask.sum(-1).to(F64), tokens=values, mask=mask)


# Worked example, beta = 0.5:
#   chosen   policy (-0.5, -1.0)        reference (-0.7, -0.6)       credits 0.5*(0.2, -0.4) = (0.1, -0.2)
#   rejected policy (-2.0, -0.1, -0.3)  reference (-1.0, -0.2, -0.4) credits 0.5*(-1.0, 0.1, 0.1) = (-0.5, 0.05, 0.05)
#   rewards: chosen -0.1, rejected -0.4; margin 0.3
def worked(requires_grad=False):
    return (token_record([-0.5, -1.0], [-2.0, -0.1, -0.3], requires_grad),
            token_record([-0.7, -0.6], [-1.0, -0.2, -0.4]))


@pytest.mark.method("dpo_token_credit", "value")
def test_dpo_token_credit_hand_worked_value_and_credit_metrics():
    policy, reference = worked()
    out = get("dpo_token_credit").fn(policy, reference, beta=0.5)
    assert out.loss.item() == pytest.approx(ell(0.3), abs=1e-12)
    assert out.rewards[0].tolist() == pytest.approx([-0.1, -0.4], abs=1e-12)
    expected = {"credit_min/chosen": -0.2, "credit_max/chosen": 0.1, "credit_min/rejected": -0.5,
                "credit_max/rejected": 0.05, "margin": 0.3, "accuracy": 1.0}
    assert {k: out.metrics[k].item() for k in expected} == pytest.approx(expected, abs=1e-12)


@pytest.mark.method("dpo_token_credit", "gradient")
def test_dpo_token_credit_gradient_per_token():
    # dL/d log pi(y_t) = -beta sigmoid(-margin) on every chosen token, +beta sigmoid(-margin) on every rejected one.
    policy, reference = worked(requires_grad=True)
    get("dpo_token_credit").fn(policy, reference, beta=0.5).loss.sum().backward()
    g = 0.5 * sigmoid(-0.3)
    assert policy.tokens.grad[0, 0].tolist() == pytest.approx([-g, -g, 0.0], abs=1e-12)
    assert policy.tokens.grad[0, 1].tolist() == pytest.approx([g, g, g], abs=1e-12)


@pytest.mark.method("dpo_token_credit", "reduction")
def test_dpo_token_credit_is_dpo_on_the_sequence_sums():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(16, 2, 6, generator=g) < 0.7
    mask[..., 0] = True
    policy_tokens = -2 * torch.rand(16, 2, 6, generator=g, dtype=F64)
    reference_tokens = policy_tokens + 0.3 * torch.randn(16, 2, 6, generator=g, dtype=F64)
    policy = Logps.from_tokens(policy_tokens, mask)
    reference = Logps.from_tokens(reference_tokens, mask)
    got = get("dpo_token_credit").fn(policy, reference, beta=0.3)
    want = get("dpo").fn(policy, reference, beta=0.3)
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.rewards, want.rewards, rtol=0, atol=1e-12)


def test_dpo_token_credit_needs_token_logps():
    assert get("dpo_token_credit").needs_token_logps
    with pytest.raises(ValueError, match="per-token"):
        get("dpo_token_credit").fn(Logps.pair(torch.zeros(1), torch.zeros(1)), Logps.pair(torch.zeros(1), torch.zeros(1)))


# --------------------------------------------------------------------------- credits of a real model

@pytest.fixture(scope="module")
def two_tiny_models():
    from preftune.models import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    return tokenizer, build_tiny_model(tokenizer, seed=0).eval(), build_tiny_model(tokenizer, seed=1).eval()


def arithmetic_batch(tokenizer):
    from preftune.data.collate import collate
    from preftune.data.formats import row_to_example
    from preftune.data.tokenize import Tokenization

    rows = [{"prompt": "12+30=", "chosen": "42", "rejected": "41"}, {"prompt": "7+5=", "chosen": "12", "rejected": "102"}]
    tokenization = Tokenization(tokenizer, 32, 16)
    return collate([tokenization(row_to_example(r, "row")) for r in rows], tokenizer.pad_token_id)


@pytest.mark.method("dpo_token_credit", "value")
def test_token_credits_of_a_model_sum_to_the_sequence_implicit_reward(two_tiny_models):
    from preftune.eval.token_credit import token_credit
    from preftune.logps import sequence_logps

    tokenizer, policy, reference = two_tiny_models
    batch = arithmetic_batch(tokenizer)
    credits = token_credit(policy, reference, batch, beta=0.1)
    assert credits.shape == (4, batch.input_ids.shape[1] - 1)
    with torch.no_grad():
        delta = sequence_logps(policy, batch).sum - sequence_logps(reference, batch).sum
    # offline.md §14 Test 1: sum_t c_t == beta * Delta to 1e-6.
    torch.testing.assert_close(credits.sum(-1), 0.1 * delta.flatten(), rtol=0, atol=1e-6)
    assert (credits[~batch.response_mask[:, 1:]] == 0).all() and (credits[batch.response_mask[:, 1:]] != 0).all()
    # offline.md §14 Test 2: pi = pi_ref gives all-zero credits.
    assert torch.equal(token_credit(policy, policy, batch, beta=0.1), torch.zeros_like(credits))


def test_explain_lists_every_response_token_with_its_credit(two_tiny_models):
    from preftune.eval.token_credit import explain
    from preftune.logps import sequence_logps

    tokenizer, policy, reference = two_tiny_models
    rows = explain(policy, reference, tokenizer, "12+30=", "42", beta=0.1)
    assert [t for t, _ in rows] == ["4", "2", tokenizer.eos_token]
    batch = arithmetic_batch(tokenizer)
    with torch.no_grad():
        delta = float(sequence_logps(policy, batch).sum[0, 0] - sequence_logps(reference, batch).sum[0, 0])
    assert sum(c for _, c in rows) == pytest.approx(0.1 * delta, abs=1e-6)


# --------------------------------------------------------------------------- the toy LMs

TREE = TokenTree(TokenLM(vocab_size=3, max_length=3))


def test_token_tree_represents_every_distribution_exactly():
    g = torch.Generator().manual_seed(3)
    target = torch.log_softmax(torch.randn(len(TREE.responses), generator=g, dtype=F64), -1)
    logits = TREE.logits_of(target)
    torch.testing.assert_close(TREE.sequence_logp(logits), target, rtol=0, atol=1e-12)
    assert torch.logsumexp(TREE.sequence_logp(TREE.random_logits(g)), 0).item() == pytest.approx(0.0, abs=1e-12)
    # records: per-token values summing to the sequence log-prob, EOS only after a short response.
    rec = TREE.records(logits, [[(1, 2), (2, 2, 1)]])
    assert rec.length[0].tolist() == [3.0, 3.0] and rec.sum[0].tolist() == pytest.approx(
        TREE.sequence_logp(logits, [(1, 2), (2, 2, 1)]).tolist(), abs=1e-12)


def test_soft_bellman_values_give_the_optimal_policy():
    # V*(root) = beta log Z and beta log pi*(a|s)/pi_ref(a|s) = Q*(s,a) - V*(s) for pi* = pi_ref exp(r/beta)/Z.
    g = torch.Generator().manual_seed(4)
    ref_logits, r, beta = TREE.random_logits(g), torch.randn(len(TREE.responses), generator=g, dtype=F64), 0.7
    ref_seq = TREE.sequence_logp(ref_logits)
    value, q = TREE.soft_values(ref_logits, r, beta)
    assert value[()] == pytest.approx(beta * torch.logsumexp(ref_seq + r / beta, 0).item(), abs=1e-12)
    optimal = torch.log_softmax(TREE.logits_of(torch.log_softmax(ref_seq + r / beta, 0)), -1)
    log_ref = torch.log_softmax(ref_logits, -1)
    for s in TREE.prefixes:
        for a in range(3):
            n = TREE.node_of[s]
            assert beta * float(optimal[n, a] - log_ref[n, a]) == pytest.approx(q[(s, a)] - value[s], abs=1e-10)


def tree_search(logits, beams):
    log_probs = torch.log_softmax(logits, -1)
    result = beam_search_core(lambda prefixes: torch.stack([log_probs[TREE.node_of[p]] for p in prefixes]), EOS,
                              beams, TREE.lm.max_length)
    return tuple(t for t in result.ids if t != EOS), result


@pytest.mark.method("dpo_token_credit", "value")
def test_exhaustive_likelihood_search_on_the_optimal_policy_is_reward_search():
    # offline.md §14 Test 3, on a toy LM set to pi* ~ pi_ref exp(r/beta): argmax log pi* = argmax r/beta + log pi_ref,
    # and exhaustive beam search on pi* finds it.
    for seed in range(5):
        g = torch.Generator().manual_seed(10 + seed)
        ref_logits, r, beta = TREE.random_logits(g), 2 * torch.randn(len(TREE.responses), generator=g, dtype=F64), 0.5
        ref_seq = TREE.sequence_logp(ref_logits)
        optimal_logits = TREE.logits_of(torch.log_softmax(ref_seq + r / beta, 0))
        reward_argmax = TREE.responses[int((r / beta + ref_seq).argmax())]
        assert TREE.responses[int(TREE.sequence_logp(optimal_logits).argmax())] == reward_argmax
        found, result = tree_search(optimal_logits, beams=len(TREE.responses))
        assert found == reward_argmax
        assert result.score == pytest.approx(TREE.sequence_logp(optimal_logits, [found]).item(), abs=1e-12)


def test_beam_search_on_the_position_table_lm():
    # tabular/tokens.py: pi(y_t) depends on the position only; exhaustive search finds the most likely response.
    lm = TokenLM(vocab_size=4, max_length=3)
    tables = lm.random_tables(torch.Generator().manual_seed(0), scale=2.0)
    log_probs = torch.log_softmax(tables, -1)
    result = beam_search_core(lambda prefixes: torch.stack([log_probs[len(p)] for p in prefixes]), EOS,
                              beams=100, max_length=3)
    responses = lm.all_responses()
    best = responses[int(lm.sequence_logp(tables, responses).argmax())]
    assert tuple(t for t in result.ids if t != EOS) == best
    assert result.score == pytest.approx(lm.sequence_logp(tables, [best]).item(), abs=1e-12)


def test_beam_search_returns_the_best_hypothesis_it_completed_and_one_beam_is_greedy():
    g = torch.Generator().manual_seed(7)
    logits = TREE.random_logits(g, scale=2.0)
    for beams in (1, 2, 3):
        found, result = tree_search(logits, beams)
        assert result.score == max(score for _, score in result.finished)
        for ids, score in result.finished:  # every completed hypothesis is scored by its exact log-prob
            response = tuple(t for t in ids if t != EOS)
            assert score == pytest.approx(TREE.sequence_logp(logits, [response]).item(), abs=1e-12)
    # One beam: the greedy path (argmax token at every step).
    log_probs, prefix = torch.log_softmax(logits, -1), ()
    while len(prefix) < 3:
        token = int(log_probs[TREE.node_of[prefix]].argmax())
        if token == EOS:
            break
        prefix += (token,)
    assert tree_search(logits, 1)[0] == prefix


# --------------------------------------------------------------------------- beam search on a causal LM

def test_beam_search_on_a_tiny_lm_scores_by_log_likelihood(two_tiny_models):
    from preftune.data.collate import collate
    from preftune.data.tokenize import TokenizedExample, encode_prompt
    from preftune.logps import sequence_logps
    from preftune.sampling import sample

    tokenizer, policy, reference = two_tiny_models
    prompts = ["3+4=", "10+21="]
    one = beam_search(policy, tokenizer, prompts, beams=1, max_new_tokens=5)
    greedy = sample(policy, tokenizer, prompts, 1, temperature=0.0, max_new_tokens=5, progress=False)
    assert [list(r.ids) for r in one] == [ids[0] for ids in greedy.ids]
    three = beam_search(policy, tokenizer, prompts, beams=3, max_new_tokens=5)
    for prompt, result in zip(prompts, three):
        assert result.score == max(s for _, s in result.finished)
        batch = collate([TokenizedExample(encode_prompt(tokenizer, prompt), [list(result.ids)], "sft")],
                        tokenizer.pad_token_id)
        with torch.no_grad():
            assert result.score == pytest.approx(sequence_logps(policy, batch).sum.item(), abs=1e-4)
    # reward_weight 1 with a reference is likelihood search again.
    weighted = beam_search(policy, tokenizer, prompts, beams=3, max_new_tokens=5, reference=reference, reward_weight=1.0)
    assert [r.ids for r in weighted] == [r.ids for r in three]


@pytest.mark.slow
def test_beam_search_decodes_the_arithmetic_model(tiny_sft_model):
    from preftune.models import load_causal_lm, load_tokenizer
    from preftune.sampling import sample
    from preftune.tasks import get_task

    task, tokenizer, model = get_task("arithmetic"), load_tokenizer(tiny_sft_model), load_causal_lm(tiny_sft_model)
    prompts = task.prompts("test", 40)
    results = beam_search(model, tokenizer, prompts, beams=4, max_new_tokens=6)
    greedy = sample(model, tokenizer, prompts, 1, temperature=0.0, max_new_tokens=6, progress=False)
    beam_accuracy = sum(task.score(p, r.text) for p, r in zip(prompts, results)) / len(prompts)
    greedy_accuracy = sum(task.score(p, t[0]) for p, t in zip(prompts, greedy.texts)) / len(prompts)
    assert beam_accuracy >= 0.6 and beam_accuracy >= greedy_accuracy - 0.1, (beam_accuracy, greedy_accuracy)
    assert all(r.ids[-1] == tokenizer.eos_token_id for r in results)  # answers stop by themselves


# --------------------------------------------------------------------------- command lines

@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
    from preftune.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_generate_with_beams_prints_the_beam_search_result(saved_tiny_model, capsys):
    import json

    from preftune.cli import main
    from preftune.models import load_causal_lm, load_tokenizer

    assert main(["generate", "--model", str(saved_tiny_model), "--prompt", "3+4=", "--beams", "2",
                 "--max-new-tokens", "4", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = beam_search(load_causal_lm(str(saved_tiny_model)), load_tokenizer(str(saved_tiny_model)), ["3+4="],
                           beams=2, max_new_tokens=4)[0]
    assert printed == {"prompt": "3+4=", "response": expected.text, "logp": pytest.approx(expected.score)}


def test_token_credit_command_prints_zero_credits_against_itself(saved_tiny_model, capsys):
    import json

    from preftune.eval.token_credit import main

    assert main(["--model", str(saved_tiny_model), "--reference", str(saved_tiny_model), "--prompt", "3+4=",
                 "--response", "7", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["token"] for r in rows] == ["7", "<|eos|>"] and all(r["credit"] == 0.0 for r in rows)
