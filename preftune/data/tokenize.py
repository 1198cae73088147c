"""Examples to token ids: chat templates, prompt tokenised once per example, explicit truncation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from preftune.data.formats import DataError, Example


@dataclass
class TokenizedExample:
    """Token ids of one example: the prompt once, and each response after it."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    kind: str
    label: bool | None = None
    scores: list[float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False


@dataclass
class TruncationStats:
    """Counted in the run summary so that no truncation is silent."""

    prompts_truncated: int = 0
    responses_truncated: int = 0
    examples_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"prompts_truncated": self.prompts_truncated,
                "responses_truncated": self.responses_truncated,
                "examples_dropped": self.examples_dropped}


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt exactly as training sees it: BOS for text, the chat template (with
    the generation prompt) for messages, and token ids (a list of ints, e.g. a tokenized
    example's prompt_ids) unchanged. Used by the sampler so generation matches training."""
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    if isinstance(prompt, list):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


class Tokenization:
    """Turns examples into token ids.

    max_length: prompt + response tokens of one row at most. max_prompt_length: prompt tokens at
    most; a longer prompt keeps its end (the most recent turns). truncation: "truncate" cuts and
    counts; "drop" drops an example that would need cutting and counts it; "error" raises.
    Plain text gets the tokenizer's special tokens on the prompt (BOS) and EOS after each
    response; chat messages go through the tokenizer's chat template.
    """

    def __init__(self, tokenizer, max_length: int = 512, max_prompt_length: int = 256,
                 truncation: str = "truncate"):
        if truncation not in ("truncate", "drop", "error"):
            raise ValueError(f"truncation must be 'truncate', 'drop' or 'error', got {truncation!r}")
        if max_prompt_length >= max_length:
            raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})")
        self.tokenizer, self.max_length, self.max_prompt_length = tokenizer, max_length, max_prompt_length
        self.truncation = truncation
        self.stats = TruncationStats()

    def texts(self, example: Example) -> tuple[str, list[str], bool]:
        """(prompt text, response texts, whether the prompt text already carries special tokens)."""
        if not example.is_chat:
            return example.prompt, list(example.responses), False
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise DataError(f"{example.origin}: the data holds chat messages but the tokenizer has no chat template")
        template = self.tokenizer.apply_chat_template
        prompt_text = template(example.prompt, tokenize=False, add_generation_prompt=True)
        responses = []
        for response in example.responses:
            full = template(example.prompt + response, tokenize=False)
            if not full.startswith(prompt_text):
                raise DataError(f"{example.origin}: the chat template renders the prompt differently "
                                f"with and without the reply, so the reply cannot be split off")
            responses.append(full[len(prompt_text):])
        return prompt_text, responses, True

    def __call__(self, example: Example) -> TokenizedExample | None:
        prompt_text, response_texts, templated = self.texts(example)
        tok = self.tokenizer
        prompt_ids = tok(prompt_text, add_special_tokens=not templated)["input_ids"]
        response_ids = []
        for text in response_texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if not templated and (not ids or ids[-1] != tok.eos_token_id):
                ids = ids + [tok.eos_token_id]
            response_ids.append(ids)
        prompt_cut = len(prompt_ids) > self.max_prompt_length
        room = self.max_length - min(len(prompt_ids), self.max_prompt_length)
        response_cut = any(len(ids) > room for ids in response_ids)
        if prompt_cut or response_cut:
            if self.truncation == "error":
                raise DataError(f"{example.origin}: {len(prompt_ids)} prompt and up to "
                                f"{max(map(len, response_ids))} response tokens exceed max_prompt_length="
                                f"{self.max_prompt_length} / max_length={self.max_length}")
            if self.truncation == "drop":
                self.stats.examples_dropped += 1
                return None
            self.stats.prompts_truncated += prompt_cut
            self.stats.responses_truncated += response_cut
            prompt_ids = prompt_ids[-self.max_prompt_length:]
            response_ids = [ids[:room] for ids in response_ids]
        return TokenizedExample(prompt_ids, response_ids, example.kind, example.label, example.scores,
                                dict(example.extras), prompt_cut or response_cut)

    def many(self, examples: list[Example]) -> list[TokenizedExample]:
        out = [self(ex) for ex in examples]
        return [t for t in out if t is not None]
