"""Per-token implicit rewards of a DPO policy (From r to Q*, Rafailov et al. 2024; offline.md §14).

c_t = beta * [log pi(y_t|s_t) - log pi_ref(y_t|s_t)] is the credit the policy gives token y_t of a
response; it equals the optimal advantage Q*(s_t, y_t) - V*(s_t) for the policy DPO converges to,
and the credits of a response sum to its implicit reward beta * Delta_y. Use them to see which
tokens a preference-trained model holds responsible, e.g. the wrong digits of a wrong answer.

    python -m preftune.eval.token_credit --model RUN/model --reference builtin:arithmetic-sft \\
        --prompt "37+48=" --response "84" --beta 0.1
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import Tensor

from preftune.data.collate import Batch, collate
from preftune.data.tokenize import TokenizedExample, encode_prompt
from preftune.logps import sequence_logps
from preftune.methods.r2q import token_credits


@torch.no_grad()
def token_credit(model, reference, batch: Batch, beta: float = 0.1) -> Tensor:
    """(N, T-1) credits of a collated batch, N = its B*K rows: entry [n, t] is the credit of token
    batch.input_ids[n, t+1] (labels are shifted by one), 0 on prompt and padding tokens; the
    response mask is batch.response_mask[:, 1:]. Each row sums to beta * Delta of its response."""
    policy_logps = sequence_logps(model, batch, token_level=True)
    reference_logps = sequence_logps(reference, batch, token_level=True)
    credits = token_credits(policy_logps, reference_logps, beta)
    return credits.reshape(batch.input_ids.shape[0], -1)


def explain(model, reference, tokenizer, prompt, response: str, beta: float = 0.1) -> list[tuple[str, float]]:
    """(token text, credit) for every token of `response` (EOS included) after `prompt`,
    tokenised as training does (plain text: BOS + prompt, the response, EOS)."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    batch = collate([TokenizedExample(prompt_ids, [response_ids], "sft")], tokenizer.pad_token_id).to(device)
    credits = token_credit(model, reference, batch, beta)[0, len(prompt_ids) - 1:].tolist()
    return [(tokenizer.decode([token]), c) for token, c in zip(response_ids, credits)]


def main(argv: list[str] | None = None) -> int:
    from preftune.model_source import add_loading_flags, flag_loading
    from preftune.models import load_causal_lm, load_tokenizer_and_model

    parser = argparse.ArgumentParser(prog="python -m preftune.eval.token_credit",
                                     description="Print the per-token implicit rewards of a response.")
    parser.add_argument("--model", required=True, help="the preference-trained policy")
    parser.add_argument("--reference", required=True, help="its reference model (e.g. the SFT model)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--response", required=True)
    parser.add_argument("--beta", type=float, default=0.1, help="the beta the policy was trained with")
    parser.add_argument("--json", action="store_true")
    add_loading_flags(parser)
    args = parser.parse_args(argv)
    loading = flag_loading(args)
    tokenizer, model = load_tokenizer_and_model(args.model, **loading)
    rows = explain(model, load_causal_lm(args.reference, **loading), tokenizer, args.prompt, args.response, args.beta)
    if args.json:
        print(json.dumps([{"token": t, "credit": c} for t, c in rows]))
    else:
        for token, credit in rows:
            print(f"{token!r:>12} {credit:+.4f}")
        print(f"{'total':>12} {sum(c for _, c in rows):+.4f}  (= beta * log pi/pi_ref of the response)")
    return 0


if __name__ == "__main__":
    import preftune.train  # noqa: F401  (the program registers builtin:arithmetic-sft)

    sys.exit(main())
