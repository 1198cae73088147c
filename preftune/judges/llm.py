"""LLM-as-judge over an OpenAI-compatible `/chat/completions` HTTP API, with the standard library only.

Robustness is the point of this module:
- timeouts on every request, retries with exponential backoff on timeouts, connection errors,
  HTTP 429 and 5xx (other 4xx are not retried: asking again will not help);
- a rejected key (HTTP 401/403) stops at the first request with `JudgeError`, naming where the key
  comes from, and no further request is sent;
- bounded concurrency: `compare_many` runs at most `max_concurrency` requests at a time;
- position bias: each comparison shows the two candidates in a random (seeded) order, records
  the order, and maps the answer back, so a judge that always says "A" is right only half the
  time instead of always favouring the first candidate; `stats.first_shown_won` measures it;
- a reply that is not a verdict (no "A"/"B", both, a malformed body) is counted in
  `stats.unparseable` and returned as None, never as a preference; a request that fails after
  its retries is counted in `stats.failed` and returned as None. `stats.first_error` keeps the
  first failure's text (the online loop stops an iteration that fails too often and shows it).

The base URL and key come from the arguments or the environment (`PREFTUNE_JUDGE_BASE_URL` /
`OPENAI_BASE_URL`, and the variable named by `api_key_env`, default `OPENAI_API_KEY`).
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from preftune.judges.base import Comparison, Judge, JudgeError

SYSTEM = "You are a careful, impartial judge of responses to user prompts."
COMPARE = ("Which response to the prompt is better?{instructions}\n\n[Prompt]\n{prompt}\n\n[Response A]\n{a}\n\n"
           "[Response B]\n{b}\n\nAnswer with a single letter: A or B.")
SCORE = ("Rate the response to the prompt from 1 (worst) to 10 (best).{instructions}\n\n[Prompt]\n{prompt}\n\n"
         "[Response]\n{response}\n\nAnswer with the number only.")
RANK = ("Rank the responses to the prompt from best to worst.{instructions}\n\n[Prompt]\n{prompt}\n\n{responses}\n\n"
        "Answer with the response numbers only, best first, separated by commas (e.g. 2, 1, 3).")
_RETRY_STATUS = {429, 500, 502, 503, 504}


class MalformedReply(ValueError):
    """The endpoint answered, but not with a chat completion."""


class RequestFailed(RuntimeError):
    """A request that failed for good (retries exhausted, or an error that retrying cannot fix)."""


class LLMJudge(Judge):
    """An LLM behind an OpenAI-compatible chat-completions endpoint (see the module docstring).

    base_url:        e.g. http://localhost:8000/v1 (the `/chat/completions` path is appended).
    model:           the model name sent with each request.
    timeout:         seconds per attempt. max_retries: attempts after the first one.
    backoff:         first retry delay in seconds, doubled on each further retry, capped at max_backoff.
    max_concurrency: requests in flight at most, in compare_many.
    shuffle:         show the two candidates in a random order (seeded by `seed`).
    instructions:    extra judging instructions appended to the question (e.g. "Prefer shorter answers.").
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, model: str = "gpt-4o-mini",
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 30.0, max_retries: int = 3,
                 backoff: float = 1.0, max_backoff: float = 30.0, max_concurrency: int = 4,
                 temperature: float = 0.0, max_tokens: int = 16, shuffle: bool = True, seed: int = 0,
                 instructions: str = ""):
        super().__init__()
        self.base_url = (base_url or os.environ.get("PREFTUNE_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
                         or "").rstrip("/")
        if not self.base_url:
            raise ValueError("the LLM judge needs a base URL: judge.options.base_url, or PREFTUNE_JUDGE_BASE_URL / "
                             "OPENAI_BASE_URL in the environment")
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env, "")
        self.key_source = "judge.options.api_key" if api_key is not None else f"the environment variable {api_key_env}"
        self.api_key_env, self.key_rejected, self.reached = api_key_env, None, False
        self.model, self.timeout, self.max_retries = model, timeout, max_retries
        self.backoff, self.max_backoff, self.max_concurrency = backoff, max_backoff, max_concurrency
        self.temperature, self.max_tokens, self.shuffle = temperature, max_tokens, shuffle
        self.instructions = f" {instructions.strip()}" if instructions.strip() else ""
        self.rng = random.Random(seed)

    # -- transport -------------------------------------------------------------------------------------

    def complete(self, user: str) -> str:
        """The assistant's reply to one user message; raises RequestFailed after the retries."""
        body = json.dumps({"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                           "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.add(retries=1)
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body.encode(), headers=headers,
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code} from {self.base_url}: {_body(error)}"
                if error.code in (401, 403):
                    raise self.rejected_key(problem) from error
                if error.code not in _RETRY_STATUS:
                    raise RequestFailed(problem) from error
            except (TimeoutError, socket.timeout):
                self.stats.add(timeouts=1)
                problem = f"no reply from {self.base_url} within {self.timeout} s"
            except urllib.error.URLError as error:
                if isinstance(error.reason, (TimeoutError, socket.timeout)):
                    self.stats.add(timeouts=1)
                problem = f"{self.base_url}: {error.reason}"
            except (ConnectionError, http.client.HTTPException) as error:  # reset, dropped, garbled status line
                problem = f"{self.base_url}: {type(error).__name__} {error}"
            except (ValueError, KeyError, IndexError, TypeError) as error:  # a body that is not a completion
                raise MalformedReply(f"a reply that is not a chat completion ({type(error).__name__}: {error})") \
                    from error
        raise RequestFailed(f"no answer after {self.max_retries + 1} attempts; the last: {problem}")

    def rejected_key(self, problem: str) -> JudgeError:
        """The error for HTTP 401/403, naming where the key comes from; later requests raise it unsent."""
        source = f"the key from {self.key_source} was refused" if self.api_key else \
            f"no key was sent ({self.api_key_env} is not set)"
        self.key_rejected = JudgeError(
            f"the LLM judge cannot authenticate ({problem}): {source}. Set judge.options.api_key, or the "
            f"environment variable {self.api_key_env} (judge.options.api_key_env names another variable)")
        return self.key_rejected

    def _ask(self, user: str) -> str | None:
        """complete() with the outcome counted: the reply, or None after a failure."""
        if self.key_rejected is not None:  # another request was refused the key: stop, send nothing
            raise self.key_rejected
        self.stats.add(requests=1)
        try:
            reply = self.complete(user)
            self.reached = True
            return reply
        except MalformedReply as error:
            self.stats.error(str(error), unparseable=1)
        except RequestFailed as error:
            self.stats.error(str(error), failed=1)
        return None

    # -- questions -------------------------------------------------------------------------------------

    def compare_many(self, items: Sequence[Comparison]) -> list[float | None]:
        # Orders are drawn before any request is sent, so results do not depend on thread timing.
        swapped = [self.shuffle and self.rng.random() < 0.5 for _ in items]
        # The judge's first request goes alone: a rejected key then stops the run after one request.
        head = [self._compare_in_order(items[0], swapped[0])] if items and not self.reached else []
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return head + list(pool.map(self._compare_in_order, items[len(head):], swapped[len(head):]))

    def compare(self, prompt, a: str, b: str) -> float | None:
        return self.compare_many([(prompt, a, b)])[0]

    def _compare_in_order(self, item: Comparison, swapped: bool) -> float | None:
        prompt, a, b = item
        first, second = (b, a) if swapped else (a, b)
        reply = self._ask(COMPARE.format(instructions=self.instructions, prompt=_text(prompt), a=first, b=second))
        if reply is None:
            return None
        letter = parse_choice(reply)
        if letter is None:
            self.stats.error(_not_a_verdict(reply), unparseable=1)
            return None
        first_won = letter == "A"
        self.stats.add(answered=1, decided=1, first_shown_won=int(first_won))
        return float(first_won != swapped)  # the verdict for `a`, whichever position it was shown in

    def score(self, prompt, response: str) -> float | None:
        reply = self._ask(SCORE.format(instructions=self.instructions, prompt=_text(prompt), response=response))
        value = None if reply is None else parse_score(reply)
        if reply is not None and value is None:
            self.stats.error(_not_a_verdict(reply), unparseable=1)
        elif value is not None:
            self.stats.add(answered=1)
        return value

    def rank(self, prompt, responses: Sequence[str]) -> list[int] | None:
        order = list(range(len(responses)))
        if self.shuffle:
            self.rng.shuffle(order)
        listing = "\n\n".join(f"[Response {n + 1}]\n{responses[k]}" for n, k in enumerate(order))
        reply = self._ask(RANK.format(instructions=self.instructions, prompt=_text(prompt), responses=listing))
        shown = None if reply is None else parse_ranking(reply, len(responses))
        if reply is not None and shown is None:
            self.stats.error(_not_a_verdict(reply), unparseable=1)
            return None
        if shown is None:
            return None
        self.stats.add(answered=1)
        return [order[n] for n in shown]


def _body(error: urllib.error.HTTPError) -> str:
    """The first line of an error response's body (what the endpoint said), or its reason."""
    try:
        text = error.read().decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return (text.splitlines()[0][:200] if text else "") or str(error.reason)


def _not_a_verdict(reply: str) -> str:
    return f"a reply that is not a verdict: {reply[:80]!r}"


def _text(prompt) -> str:
    """A chat prompt (list of messages) shown as a transcript; a text prompt as is."""
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return str(prompt)


def parse_choice(reply: str) -> str | None:
    """"A" or "B" when the reply names exactly one of them as a standalone letter, else None."""
    letters = set(re.findall(r"(?<![A-Za-z])([AB])(?![A-Za-z])", reply.strip()))
    return letters.pop() if len(letters) == 1 else None


def parse_score(reply: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """The single number in the reply if it lies in [low, high], else None."""
    numbers = re.findall(r"-?\d+(?:\.\d+)?", reply)
    if len(numbers) != 1:
        return None
    value = float(numbers[0])
    return value if low <= value <= high else None


def parse_ranking(reply: str, k: int) -> list[int] | None:
    """A permutation of 1..k written in the reply (0-based result), else None."""
    shown = [int(n) - 1 for n in re.findall(r"\d+", reply)]
    return shown if sorted(shown) == list(range(k)) else None
