"""Examples to token ids: chat templates, prompt tokenised once per example, explicit truncation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from preftune.data.errors import UNTOKENIZABLE, BadRow, DataError
from preftune.data.formats import Example
from preftune.data.load_report import LoadReport


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


# Roles every chat template renders; a message of another role must show in the rendered text.
KNOWN_ROLES = ("system", "user", "assistant")


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
        """(prompt text, response texts, whether the prompt text already carries special tokens).

        Raises BadRow naming the field when the chat template cannot render a message list, or
        renders it without a message of a role it does not know."""
        if not example.is_chat:
            return example.prompt, list(example.responses), False
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise DataError(f"{example.origin}: the data holds chat messages but the tokenizer has no chat template")
        fields = example.fields or ("prompt", *(f"response {i}" for i in range(len(example.responses))))
        prompt_text = self._render(example.prompt, fields[0], add_generation_prompt=True)
        responses = []
        for response, name in zip(example.responses, fields[1:]):
            full = self._render(example.prompt + response, name)
            if not full.startswith(prompt_text):
                raise BadRow("the chat template renders the prompt differently with and without this reply, so "
                             "the reply cannot be split off", name, UNTOKENIZABLE)
            responses.append(full[len(prompt_text):])
        return prompt_text, responses, True

    def _render(self, messages: list[dict], name: str, add_generation_prompt: bool = False) -> str:
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as error:  # jinja's TemplateError (a template's raise_exception), KeyError, TypeError ...
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BadRow(f"the chat template cannot render it: {reason}", name, UNTOKENIZABLE) from None
        for message in messages:
            if message["role"] not in KNOWN_ROLES and message["content"].strip() not in text:
                raise BadRow(f"the chat template drops the message of role {message['role']!r} (a role it does not "
                             "know)", name, UNTOKENIZABLE)
        return text

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

    def many(self, examples: list[Example], on_bad_row: str = "error",
             report: LoadReport | None = None) -> list[TokenizedExample]:
        """Tokenize every example; a row the chat template cannot render obeys `on_bad_row` like a
        bad row found at loading (skipped rows are counted in `report`)."""
        out = []
        for example in examples:
            try:
                tokenized = self(example)
            except BadRow as bad:
                message = f"{example.origin}: {bad.describe()}"
                if on_bad_row == "error":
                    raise DataError(message + " (set data.on_bad_row: skip to drop such rows and count them)") from None
                if report is not None:
                    report.drop_after_load(example.origin, message, bad.category)
                continue
            if tokenized is not None:
                out.append(tokenized)
        return out
