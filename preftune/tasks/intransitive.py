"""`intransitive`: greet a guest in one of three styles; a panel of annotators votes, and the majority cycles.

Three annotators rank the styles differently (formal > casual > poetic, casual > poetic >
formal, poetic > formal > casual), each flipping a label with its own probability. The
majority vote of the panel is intransitive (Condorcet's paradox): formal beats casual, casual
beats poetic, poetic beats formal, with unequal probabilities, so the Nash equilibrium is mixed
and not uniform (about (1/3, 1/6, 1/2) with the default noise (0.1, 0.3, 0.2), close to
online.md §16). No scalar reward explains these preferences, which is the setting the Nash
methods target and where best-vs-worst DPO on a reward has no fixed point to reach.

Because the answers form a finite set, the game is exact for a language model too:
`style_distribution` scores each style's canonical response under the model (one forward
pass) and renormalises over the set. Scoring, not classifying samples, gives the policy's
exact distribution with no sampling noise, at the cost of ignoring off-set responses; their
total probability is returned as well (`mass`), so a policy that leaks mass is visible, and
the judge lets any on-set response beat an off-set one. `game_metrics` turns the distribution
into exploitability, duality gap and win-rate against the initial policy, the same
quantities tabular/games.py computes for the tabular engine.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch

from preftune.tabular.games import exploitability
from preftune.tabular.preferences import PreferenceModel
from preftune.tasks.base import register_task

STYLES = ("formal", "casual", "poetic")
# Canonical answers: their first bytes differ, so the style is decided by the first token, and they
# have the same length, so SFT's token-mean loss weighs the styles as the demonstrations do.
CANONICAL = {"formal": "Good day.", "casual": "Hey mate!", "poetic": "Lo, morn!"}
RANKINGS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))  # best first, one per annotator
NOISE = (0.1, 0.3, 0.2)                       # each annotator's label-flip probability
REFERENCE_MIX = (0.6, 0.3, 0.1)               # style frequencies of the demonstrations (the SFT policy)
_SYLLABLES = ("ka", "lo", "mi", "ra", "sen", "tu", "vo", "zel", "ni", "pa", "dor", "bi", "an", "is", "ul")


@register_task("intransitive")
class IntransitiveTask:
    """Greeting prompts, three answer styles, a majority-vote preference (see the module docstring).

    rankings / noise: one entry per annotator (rankings best first over style indices).
    reference_mix: style frequencies of `demonstrations`, hence of the SFT policy.
    prompts: number of distinct guests; the first `test_fraction` of them (after a seeded
    shuffle) are the test prompts, the next `validation_fraction` the validation prompts (none by
    default), the rest the train prompts: the three splits never share a guest.
    """

    name = "intransitive"

    def __init__(self, rankings: Sequence[Sequence[int]] = RANKINGS, noise: Sequence[float] = NOISE,
                 reference_mix: Sequence[float] = REFERENCE_MIX, prompts: int = 225, test_fraction: float = 0.2,
                 seed: int = 0, validation_fraction: float = 0.0):
        if len(rankings) != len(noise):
            raise ValueError("intransitive: one noise level per annotator ranking")
        if len(reference_mix) != len(STYLES) or abs(sum(reference_mix) - 1) > 1e-9:
            raise ValueError(f"intransitive: reference_mix must be {len(STYLES)} probabilities summing to 1")
        self.annotators = [PreferenceModel.from_ranking(r).with_label_noise(e) for r, e in zip(rankings, noise)]
        self.preferences = PreferenceModel.majority_vote(self.annotators, name="annotator majority")
        self.reference_mix = tuple(reference_mix)
        names = [a + b for a in _SYLLABLES for b in _SYLLABLES][:prompts]
        if len(names) < prompts:
            raise ValueError(f"intransitive: at most {len(names)} prompts")
        random.Random(seed).shuffle(names)
        n_test = max(1, int(prompts * test_fraction))
        n_validation = int(prompts * validation_fraction)
        if n_test + n_validation >= prompts:
            raise ValueError("intransitive: test and validation guests leave no train guests")
        self._splits = {"test": names[:n_test], "validation": names[n_test:n_test + n_validation],
                        "train": names[n_test + n_validation:]}

    # -- the Task protocol -------------------------------------------------------------------------

    @staticmethod
    def format_prompt(guest: str) -> str:
        return f"Greet {guest.capitalize()}: "

    def prompts(self, split: str, n: int | None = None) -> list[str]:
        if split not in self._splits or not self._splits[split]:
            raise KeyError(f"intransitive has splits {', '.join(repr(k) for k, v in self._splits.items() if v)}, "
                           f"not {split!r} (a validation split needs validation_fraction > 0)")
        guests = self._splits[split] if n is None else self._splits[split][:n]
        return [self.format_prompt(g) for g in guests]

    def score(self, prompt: str, response: str) -> float:
        """A scalar summary only (there is no reward behind these preferences): the style's win-rate
        against a uniformly random style, P(style > uniform); 0 for an off-set response."""
        style = self.style_of(response)
        return 0.0 if style is None else float(self.preferences.matrix[style].mean())

    def demonstrations(self, n: int, noise: float = 0.0, seed: int = 0) -> list[dict]:
        """`n` SFT rows whose styles follow reference_mix; a fraction `noise` has a uniformly random style."""
        rng = random.Random(seed)
        train = self.prompts("train")
        rows = []
        for _ in range(n):
            mix = [1 / len(STYLES)] * len(STYLES) if rng.random() < noise else self.reference_mix
            style = rng.choices(range(len(STYLES)), weights=mix)[0]
            rows.append({"prompt": rng.choice(train), "completion": CANONICAL[STYLES[style]]})
        return rows

    # -- the preference oracle ---------------------------------------------------------------------

    @staticmethod
    def canonical_responses() -> list[str]:
        return [CANONICAL[s] for s in STYLES]

    @staticmethod
    def style_of(response: str) -> int | None:
        """The style index of a response that is exactly a canonical answer (surrounding whitespace
        ignored), else None: only exact answers count, so the scored distribution is exact."""
        text = response.strip()
        return next((k for k, s in enumerate(STYLES) if CANONICAL[s] == text), None)

    def preference_matrix(self) -> PreferenceModel:
        """P[i, j] = probability that the panel's majority prefers style i to style j (exact)."""
        return self.preferences

    def compare(self, prompt: str, a: str, b: str) -> float:
        """P(a > b) by the panel: the majority-vote probability between styles; an answer in a style
        beats an off-set one; two off-set answers tie."""
        sa, sb = self.style_of(a), self.style_of(b)
        if sa is None or sb is None:
            return 0.5 if sa is None and sb is None else float(sa is not None)
        return float(self.preferences.matrix[sa, sb])


@torch.no_grad()
def style_distribution(model, tokenizer, prompts: list, responses: Sequence[str] = tuple(CANONICAL.values()),
                       batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's exact distribution over a finite answer set, per prompt.

    Returns (probs, mass): probs (N, K) is softmax over k of log pi(response_k | prompt), the
    policy conditioned on answering within the set; mass (N,) is sum_k pi(response_k | prompt),
    the probability it does. Responses are tokenized as training and sampling see them (prompt
    as encode_prompt, response ids then EOS).
    """
    from preftune.data.collate import collate
    from preftune.data.tokenize import TokenizedExample, encode_prompt
    from preftune.logps import sequence_logps

    eos = tokenizer.eos_token_id
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in responses]
    rows = [TokenizedExample(encode_prompt(tokenizer, p), response_ids, "listwise") for p in prompts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logps = []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start:start + batch_size], tokenizer.pad_token_id).to(device)
        logps.append(sequence_logps(model, batch).sum.double().cpu())
    model.train(was_training)
    logp = torch.cat(logps)
    return torch.softmax(logp, dim=-1), torch.logsumexp(logp, dim=-1).exp()


def game_metrics(preferences: PreferenceModel, probs: torch.Tensor, initial: torch.Tensor | None = None,
                 beta: float = 0.0) -> dict:
    """Equilibrium metrics of per-prompt policies probs (N, K) in the preference game, averaged over prompts.

    exploitability: max_y P(y > pi) - 1/2 (0 at the Nash equilibrium); duality_gap = 2 x that
    (games.duality_gap); with beta > 0 and `initial` as pi_ref, the KL-regularised ones too.
    win_rate_vs_initial: P(pi > pi_0) = pi^T P pi_0, exactly, against `initial` (N, K).
    """
    N = probs.shape[0]
    gaps = [exploitability(preferences, probs[i]) for i in range(N)]
    metrics = {"exploitability": sum(gaps) / N, "duality_gap": 2 * sum(gaps) / N,
               "style_probs": probs.mean(0).tolist()}
    if initial is not None:
        metrics["win_rate_vs_initial"] = float(sum(preferences.preference(probs[i], initial[i]) for i in range(N)) / N)
        if beta > 0:
            regularised = [exploitability(preferences, probs[i], beta, initial[i]) for i in range(N)]
            metrics["duality_gap_regularised"] = 2 * sum(regularised) / N
    return metrics
