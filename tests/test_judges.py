"""Judges: the protocol's defaults, the task oracle, local classifier models, and the LLM judge against a
local OpenAI-compatible server that the tests start (scripted replies: good, malformed, slow, 500s)."""
from __future__ import annotations

import time

import pytest
import torch
from judge_server import ScriptedServer

from preftune.judges import Judge, JudgeCapabilityError, TaskJudge, build_judge, preference_matrix
from preftune.judges.llm import LLMJudge, parse_choice, parse_ranking, parse_score
from preftune.tasks import get_task


def shown(user: str) -> tuple[str, str]:
    """The two candidates as the judge showed them (A first)."""
    a = user.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
    b = user.split("[Response B]\n")[1].split("\n\nAnswer")[0]
    return a, b


def prefers_good(user: str):
    """A sensible judge: the candidate containing "good" wins, wherever it is shown."""
    a, _ = shown(user)
    return 200, "A" if "good" in a else "B", 0.0


def judge(server, **options) -> LLMJudge:
    return LLMJudge(base_url=server.url, api_key="test-key", model="judge-model", backoff=0.01, **options)


# -- LLM judge ---------------------------------------------------------------------------------------------------

def test_llm_judge_maps_the_answer_back_through_the_shuffle():
    with ScriptedServer(prefers_good) as server:
        j = judge(server, seed=0)
        items = [("say hi", "good answer", "bad answer"), ("say hi", "bad answer", "good answer")] * 10
        verdicts = j.compare_many(items)
    assert verdicts == [1.0, 0.0] * 10
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer test-key"
    assert request["body"]["model"] == "judge-model" and request["body"]["messages"][0]["role"] == "system"
    assert j.stats.requests == 20 and j.stats.answered == 20 and j.stats.unparseable == 0


def test_llm_judge_shuffles_positions_against_position_bias():
    # A judge that always says "A" would always favour the first candidate; with shuffling the
    # candidate passed first wins about half of the time, and the stats show the bias.
    with ScriptedServer(lambda user: (200, "A", 0.0)) as server:
        j = judge(server, seed=1, max_concurrency=1)  # one at a time: requests arrive in item order
        verdicts = j.compare_many([("p", "x", "y")] * 200)
        first_shown = [shown(r["body"]["messages"][-1]["content"])[0] for r in server.requests]
    assert 0.4 < sum(verdicts) / len(verdicts) < 0.6
    assert 0.4 < first_shown.count("x") / len(first_shown) < 0.6
    assert j.stats.first_shown_won == j.stats.decided == 200
    # The verdict for "x" is 1 exactly when "x" was shown first (as A): the order is recorded and mapped back.
    assert verdicts == [float(s == "x") for s in first_shown]


def test_llm_judge_without_shuffle_keeps_the_order():
    with ScriptedServer(lambda user: (200, "A", 0.0)) as server:
        assert judge(server, shuffle=False).compare_many([("p", "x", "y")] * 5) == [1.0] * 5


def test_unparseable_replies_are_counted_and_never_a_preference():
    replies = iter(["I cannot decide.", "A and B are both fine", "", "Answer: B"])
    with ScriptedServer(lambda user: (200, next(replies), 0.0)) as server:
        j = judge(server, max_concurrency=1, shuffle=False)
        verdicts = j.compare_many([("p", "x", "y")] * 4)
    assert verdicts == [None, None, None, 0.0]
    assert j.stats.unparseable == 3 and j.stats.answered == 1 and j.stats.failed == 0


def test_a_body_that_is_not_a_completion_is_unparseable():
    with ScriptedServer(lambda user: (200, {"unexpected": True}, 0.0)) as server:
        j = judge(server)
        assert j.compare("p", "x", "y") is None
    assert j.stats.unparseable == 1 and j.stats.retries == 0


def test_server_errors_are_retried_with_backoff_then_succeed():
    calls = []

    def flaky(user):
        calls.append(time.perf_counter())
        return (500, "internal error", 0.0) if len(calls) <= 2 else (200, "A", 0.0)

    with ScriptedServer(flaky) as server:
        j = LLMJudge(base_url=server.url, api_key="k", backoff=0.05, max_retries=3, shuffle=False)
        assert j.compare("p", "x", "y") == 1.0
    assert len(calls) == 3 and j.stats.retries == 2 and j.stats.failed == 0
    assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1  # exponential: 0.05 s, then 0.1 s


def test_rate_limits_are_retried_and_give_up_after_max_retries():
    with ScriptedServer(lambda user: (429, "slow down", 0.0)) as server:
        j = judge(server, max_retries=2)
        assert j.compare("p", "x", "y") is None
    assert len(server.requests) == 3 and j.stats.retries == 2 and j.stats.failed == 1


def test_client_errors_are_not_retried():
    with ScriptedServer(lambda user: (404, "no such model", 0.0)) as server:
        j = judge(server, max_retries=3)
        assert j.compare("p", "x", "y") is None
    assert len(server.requests) == 1 and j.stats.failed == 1 and j.stats.retries == 0
    assert j.stats.first_error.startswith("HTTP 404") and "no such model" in j.stats.first_error


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_key_stops_at_the_first_request_and_says_where_the_key_comes_from(status, monkeypatch):
    from preftune.judges import JudgeError

    with ScriptedServer(lambda user: (status, "invalid api key", 0.0)) as server:
        j = judge(server, max_retries=3)
        with pytest.raises(JudgeError, match=f"HTTP {status}.*judge.options.api_key was refused"):
            j.compare_many([("p", f"x{i}", "y") for i in range(8)])
        with pytest.raises(JudgeError):  # and nothing more is sent
            j.compare("p", "x", "y")
        assert len(server.requests) == 1
        monkeypatch.delenv("JUDGE_KEY", raising=False)
        unset = LLMJudge(base_url=server.url, api_key_env="JUDGE_KEY")
        with pytest.raises(JudgeError, match="no key was sent \\(JUDGE_KEY is not set\\).*judge.options.api_key"):
            unset.compare("p", "x", "y")


def test_failures_are_counted_with_the_first_error_text_since_a_mark():
    replies = iter([(500, "overloaded", 0.0), (200, "A", 0.0), (200, "no idea", 0.0)])
    with ScriptedServer(lambda user: next(replies)) as server:
        j = judge(server, max_retries=0, shuffle=False)
        mark = j.stats.mark()
        assert j.compare("p", "x", "y") is None  # HTTP 500, not retried (max_retries 0)
        between = j.stats.mark()
        assert j.compare("p", "x", "y") == 1.0 and j.compare("p", "x", "y") is None
    first, second = j.stats.since(mark), j.stats.since(between)
    assert (first["requests"], first["failed"], first["unparseable"]) == (3, 1, 1)
    assert first["first_error"] == f"no answer after 1 attempts; the last: HTTP 500 from {server.url}: overloaded"
    assert (second["requests"], second["failed"], second["unparseable"]) == (2, 0, 1)
    assert second["first_error"] == "a reply that is not a verdict: 'no idea'"
    assert j.stats.first_error == first["first_error"]


def test_slow_replies_time_out_and_are_retried():
    delays = iter([1.0, 0.0])
    with ScriptedServer(lambda user: (200, "B", next(delays))) as server:
        j = judge(server, timeout=0.2, max_retries=1, shuffle=False)
        assert j.compare("p", "x", "y") == 0.0
    assert j.stats.timeouts == 1 and j.stats.retries == 1


def test_concurrency_is_bounded():
    with ScriptedServer(lambda user: (200, "A", 0.05)) as server:
        j = judge(server, max_concurrency=3)
        j.compare_many([("p", f"x{i}", "y") for i in range(24)])
    assert server.max_in_flight == 3  # requests do overlap, and never more than the bound


def test_llm_judge_scores_and_ranks_through_the_shuffle():
    def rank_by_length(user):
        if "Rank the responses" in user:
            listed = user.split("[Response ")[1:]
            texts = {int(chunk.split("]")[0]): chunk.split("]\n", 1)[1].split("\n\n")[0] for chunk in listed}
            best_first = sorted(texts, key=lambda n: -len(texts[n]))
            return 200, ", ".join(map(str, best_first)), 0.0
        return 200, "7", 0.0

    with ScriptedServer(rank_by_length) as server:
        j = judge(server, seed=3)
        assert j.rank("p", ["aa", "a", "aaaa", "aaa"]) == [2, 3, 0, 1]
        assert j.score("p", "anything") == 7.0


def test_base_url_from_the_environment_and_a_clear_error_without_one(monkeypatch):
    monkeypatch.delenv("PREFTUNE_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="base URL"):
        LLMJudge()
    monkeypatch.setenv("PREFTUNE_JUDGE_BASE_URL", "http://example.invalid/v1/")
    monkeypatch.setenv("MY_KEY", "secret")
    j = LLMJudge(api_key_env="MY_KEY")
    assert j.base_url == "http://example.invalid/v1" and j.api_key == "secret"


@pytest.mark.parametrize("reply, expected", [("A", "A"), (" b", None), ("[[B]]", "B"), ("Answer: A.", "A"),
                                             ("A or B", None), ("Both", None), ("", None)])
def test_parse_choice(reply, expected):
    assert parse_choice(reply) == expected


def test_parse_score_and_ranking():
    assert parse_score("8") == 8.0 and parse_score("score: 11") is None and parse_score("7 or 8") is None
    assert parse_ranking("3, 1, 2", 3) == [2, 0, 1] and parse_ranking("1, 1, 2", 3) is None


# -- protocol defaults, task oracle ------------------------------------------------------------------------------

class Lengths(Judge):
    def score(self, prompt, response):
        return float(len(response))


class AlwaysFirst(Judge):
    def compare(self, prompt, a, b):
        return 1.0


def test_scoring_judges_compare_by_bradley_terry_and_rank_by_score():
    j = Lengths()
    assert j.compare("p", "aaa", "a") == pytest.approx(1 / (1 + torch.e ** -2))
    assert j.rank("p", ["a", "aaa", "aa"]) == [1, 2, 0]


def test_comparing_judges_cannot_score_and_rank_by_copeland():
    j = AlwaysFirst()
    with pytest.raises(JudgeCapabilityError):
        j.score("p", "x")
    # P(i > j) = 1 for i < j (asked once per unordered pair): the first response wins everything.
    assert j.rank("p", ["x", "y", "z"]) == [0, 1, 2]


def test_preference_matrix_asks_each_pair_once_and_skips_identical_texts():
    asked = []

    class Recording(Judge):
        def compare(self, prompt, a, b):
            asked.append((a, b))
            return 0.8

    matrix = preference_matrix(Recording(), [("p", ["x", "y", "x"])])[0]
    assert sorted(asked) == [("x", "y"), ("y", "x")]
    assert matrix == [[0.5, 0.8, 0.5], [pytest.approx(0.2), 0.5, 0.8], [0.5, pytest.approx(0.2), 0.5]]
    rectangular = preference_matrix(Recording(), [("p", ["x", "y"])], opponents=[["z"]])[0]
    assert rectangular == [[0.8], [0.8]]


def test_task_judge_uses_the_panel_of_the_intransitive_task_and_scores_elsewhere():
    task = get_task("intransitive")
    formal, casual, poetic = task.canonical_responses()
    j = build_judge("task", task)
    P = task.preference_matrix().matrix
    assert j.compare("p", formal, casual) == pytest.approx(float(P[0, 1]))
    assert j.compare("p", poetic, formal) == pytest.approx(float(P[2, 0]))
    assert j.compare("p", casual, "gibberish") == 1.0 and j.compare("p", "x", "y") == 0.5
    arithmetic = TaskJudge(get_task("arithmetic"))
    assert arithmetic.compare("2+3=", "5", "6") == 1.0 and arithmetic.compare("2+3=", "4", "6") == 0.5


# -- local classifier models -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny LlamaForSequenceClassification with the built-in byte tokenizer, saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from preftune.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None  # plain text layout: prompt + response
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("classifier")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def reference_logit(path, text):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        return float(model(**tokenizer(text, return_tensors="pt")).logits[0, 0])


def test_reward_model_judge_scores_with_the_model_and_compares_by_bradley_terry(classifier_dir):
    j = build_judge("reward_model", path=classifier_dir, batch_size=2)
    scores = j.score_many([("Greet Ana: ", "Hey!"), ("Greet Ana: ", "Good day."), ("Greet Ana: ", "O fair morn!")])
    expected = [reference_logit(classifier_dir, "Greet Ana: " + r) for r in ("Hey!", "Good day.", "O fair morn!")]
    assert scores == pytest.approx(expected, abs=1e-5)  # batched with padding = one at a time
    p = j.compare("Greet Ana: ", "Hey!", "Good day.")
    assert p == pytest.approx(1 / (1 + torch.e ** (expected[1] - expected[0])), abs=1e-6)
    assert j.rank("Greet Ana: ", ["Hey!", "Good day.", "O fair morn!"]) == sorted(range(3), key=lambda k: -expected[k])
    assert j.stats.requests >= 3


def test_pairwise_model_judge_is_order_symmetric(classifier_dir):
    j = build_judge("pairwise_model", path=classifier_dir)
    ab, ba = j.compare_many([("Greet Ana: ", "Hey!", "Good day."), ("Greet Ana: ", "Good day.", "Hey!")])
    assert ab + ba == pytest.approx(1.0, abs=1e-12) and 0 < ab < 1
    template = j.template.format(prompt="Greet Ana: ", a="Hey!", b="Good day.")
    swapped = j.template.format(prompt="Greet Ana: ", a="Good day.", b="Hey!")
    sigmoid = lambda z: 1 / (1 + torch.e ** -z)  # noqa: E731
    expected = (sigmoid(reference_logit(classifier_dir, template)) + 1 - sigmoid(reference_logit(classifier_dir, swapped))) / 2
    assert ab == pytest.approx(expected, abs=1e-5)
    with pytest.raises(JudgeCapabilityError):
        j.score("p", "x")


def test_build_judge_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="judge.path"):
        build_judge("reward_model")
    with pytest.raises(ValueError, match="unknown judge kind"):
        build_judge("oracle")
