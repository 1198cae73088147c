"""The toy token LM: a proper distribution, and records consistent with its sequence probabilities."""
import pytest
import torch

from preftune.tabular import TokenLM, repeat_response_tokens

LM = TokenLM(vocab_size=5, max_length=4)
TABLES = LM.random_tables(torch.Generator().manual_seed(3), scale=1.5)


def test_sequence_probabilities_sum_to_one_over_all_responses():
    responses = LM.all_responses()
    assert len(responses) == 1 + 4 + 16 + 64 + 256
    assert LM.sequence_logp(TABLES, responses).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_response_tokens_include_eos_unless_truncated():
    ids, mask = LM.token_ids([(), (2, 3), (1, 2, 3, 4)])
    assert mask.sum(-1).tolist() == [1, 3, 4]
    assert ids[1, :3].tolist() == [2, 3, 0]
    log_probs = torch.log_softmax(TABLES, -1)
    expected = log_probs[0, 2] + log_probs[1, 3] + log_probs[2, 0]
    assert LM.sequence_logp(TABLES, [(2, 3)]).item() == pytest.approx(expected.item(), abs=1e-15)


def test_records_and_bandit_agree_with_sequence_logps():
    rows = [[(1, 2), (3,)], [(4, 4, 4, 4), ()]]
    record = LM.records(TABLES, rows)
    flat = [y for row in rows for y in row]
    assert torch.allclose(record.sum.flatten(), LM.sequence_logp(TABLES, flat))
    assert record.length.flatten().tolist() == [3, 2, 4, 1]
    bandit = LM.as_bandit(TABLES, flat)
    assert bandit.lengths[0].tolist() == [3, 2, 4, 1]
    assert bandit.ref_probs.sum().item() == pytest.approx(1.0)


def test_repeating_tokens_doubles_the_sum_and_keeps_the_mean():
    record = LM.records(TABLES, [[(1, 2, 3), (4,)]])
    repeated = repeat_response_tokens(record, 0)
    assert repeated.sum[0, 0].item() == pytest.approx(2 * record.sum[0, 0].item())
    assert repeated.mean[0, 0].item() == pytest.approx(record.mean[0, 0].item())
    assert repeated.sum[0, 1].item() == record.sum[0, 1].item()


def test_rejects_responses_outside_the_lm():
    with pytest.raises(ValueError):
        LM.token_ids([(0, 1)])
    with pytest.raises(ValueError):
        LM.token_ids([(1, 1, 1, 1, 1)])
