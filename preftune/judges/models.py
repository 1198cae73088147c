"""Judges backed by local classifier models: a reward model and a pairwise preference model.

Both load an `AutoModelForSequenceClassification` (and its tokenizer) from a directory written by
`save_pretrained`, run it without gradients in batches, and count what they did in `stats`. They
load as the policy does (models.load_pretrained): safetensors only unless
`judge.options.allow_pickle`, no shipped code unless `judge.options.trust_remote_code`.
Text is laid out as the policy's training sees it: the tokenizer's chat template when it has one
(prompt as the user turn, response as the assistant turn), otherwise prompt and response joined.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from preftune.judges.base import Comparison, Judge


def _conversation(tokenizer, prompt, response: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    return f"{prompt}{response}"


class _ClassifierJudge(Judge):
    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32, max_length: int = 1024,
                 allow_pickle: bool = False, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification

        from preftune.model_source import JUDGE_SWITCHES
        from preftune.models import load_pretrained, load_tokenizer

        super().__init__()
        self.tokenizer = load_tokenizer(path, trust_remote_code, JUDGE_SWITCHES)  # pad = EOS when it has none
        self.model = load_pretrained(AutoModelForSequenceClassification, path, trust_remote_code, allow_pickle,
                                     JUDGE_SWITCHES).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    @torch.no_grad()
    def _logits(self, texts: Sequence[str]) -> list[float]:
        """The first output logit of every text, in batches (templated texts carry their own specials)."""
        values = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(list(texts[start:start + self.batch_size]), return_tensors="pt", padding=True,
                                     truncation=True, max_length=self.max_length,
                                     add_special_tokens=not getattr(self.tokenizer, "chat_template", None))
            logits = self.model(**encoded.to(self.device)).logits
            values.extend(logits[:, 0].float().cpu().tolist())
        return values


class RewardModelJudge(_ClassifierJudge):
    """A scalar reward model r(x, y): score = r, compare = sigmoid(r_a - r_b) (Bradley-Terry, online.md §0 (b))."""

    def score(self, prompt, response: str) -> float:
        return self.score_many([(prompt, response)])[0]

    def score_many(self, items: Sequence[tuple]) -> list[float]:
        scores = self._logits([_conversation(self.tokenizer, p, r) for p, r in items])
        self.stats.add(requests=len(items), answered=len(items))
        return scores

    def compare_many(self, items: Sequence[Comparison]) -> list[float]:
        unique = sorted({(p, r) for p, a, b in items for r in (a, b)}, key=str)
        reward = dict(zip(unique, self.score_many(unique)))
        out = [1 / (1 + math.exp(reward[(p, b)] - reward[(p, a)])) for p, a, b in items]
        self.stats.add(decided=sum(v != 0.5 for v in out), first_shown_won=sum(v > 0.5 for v in out))
        return out

    def compare(self, prompt, a: str, b: str) -> float:
        return self.compare_many([(prompt, a, b)])[0]


class PairwiseModelJudge(_ClassifierJudge):
    """A pairwise preference model (PairRM-style, online.md §0 (c)): one logit l(x, a, b) for "a is better".

    The model sees `template` filled with the prompt and both candidates; it is asked in both orders
    and the answers are averaged, P(a > b) = (sigmoid(l(a, b)) + 1 - sigmoid(l(b, a))) / 2, which
    removes a constant position bias and makes P(a > b) + P(b > a) = 1 exactly.
    """

    TEMPLATE = "Prompt: {prompt}\nResponse A: {a}\nResponse B: {b}\nIs A better than B?"

    def __init__(self, path: str, template: str = TEMPLATE, **options):
        super().__init__(path, **options)
        self.template = template

    def compare_many(self, items: Sequence[Comparison]) -> list[float]:
        texts = [self.template.format(prompt=p, a=a, b=b) for p, a, b in items]
        texts += [self.template.format(prompt=p, a=b, b=a) for p, a, b in items]
        logits = self._logits(texts)
        n = len(items)
        sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
        out = [(sigmoid(logits[i]) + 1 - sigmoid(logits[n + i])) / 2 for i in range(n)]
        self.stats.add(requests=n, answered=n, decided=sum(v != 0.5 for v in out),
                       first_shown_won=sum(v > 0.5 for v in out))
        return out

    def compare(self, prompt, a: str, b: str) -> float:
        return self.compare_many([(prompt, a, b)])[0]
