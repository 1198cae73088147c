"""Fast log-probs give the plain path's values and gradients: prompt sharing, packing, chunked lm-head.

Every fast layout is compared with `sequence_logps` (one right-padded row per response, full
logits) in float32 to 1e-5: sequence sums, per-token values in the plain (B, K, T-1) layout, and
the gradients of every parameter, on three architectures saved locally and loaded by path
(Llama with sdpa and with eager attention, GPT-2, Qwen2 with grouped KV heads), and on text, chat,
truncated, listwise and pointwise batches.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from preftune.data import Tokenization, collate, load_examples
from preftune.data.formats import pairs_to_unpaired
from preftune.fastpath import (FastPathOptions, batch_logps, block_attention_mask, block_layout, capabilities,
                               choose_layout, plain_layout, run_model, to_logps)
from preftune.logps import chunked_token_logps, sequence_logps, token_logps_from_logits
from preftune.models import build_tiny_tokenizer

TOLERANCE = 1e-5


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model_paths(tokenizer, tmp_path_factory) -> dict[str, str]:
    """Small random models of three architectures, saved with save_pretrained."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("arch")
    special = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                                         **special))
    # No dropout, so that two computations of the same values can be compared in train mode.
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, **special))
    qwen2 = Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                         **special))
    return {"llama": _save(llama, tokenizer, root / "llama"), "gpt2": _save(gpt2, tokenizer, root / "gpt2"),
            "qwen2": _save(qwen2, tokenizer, root / "qwen2")}


def load(model_paths, name: str):
    """A freshly loaded float32 model; `llama-eager` is the Llama with eager attention (float masks)."""
    from transformers import AutoModelForCausalLM

    architecture, _, attention = name.partition("-")
    model = AutoModelForCausalLM.from_pretrained(model_paths[architecture], dtype=torch.float32,
                                                 attn_implementation=attention or "sdpa")
    return model.train()


PAIRS = [
    {"prompt": "What is 12+30? Show your work, please, step by step.", "chosen": "42", "rejected": "It is 41."},
    {"prompt": "Hi", "chosen": "Hello there, how can I help?", "rejected": "Go away"},
    {"prompt": "Name a colour that is also a fruit.", "chosen": "orange", "rejected": "A banana is yellow."},
    {"prompt": "Q", "chosen": "A", "rejected": "B"},
]
CHAT = [
    {"prompt": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"},
                {"role": "user", "content": "And 4 more?"}],
     "chosen": [{"role": "assistant", "content": "9"}], "rejected": [{"role": "assistant", "content": "8, I think"}]},
    {"prompt": [{"role": "user", "content": "Say yes."}],
     "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no way"}]},
]
LISTS = [{"prompt": "Rank these:", "responses": ["a", "bb", "ccc"], "scores": [1.0, 2.0, 3.0]},
         {"prompt": "Another prompt, longer", "responses": ["x y", "z", "w w w w"], "scores": [0.0, 1.0, 0.5]}]


def make_batch(tokenizer, name: str):
    """Batches whose layouts differ: plain text, chat template, prompts cut at the start (the
    prompt keeps its end), responses cut at the end, three responses, pointwise KTO rows."""
    if name == "text":
        rows, sizes = PAIRS, (64, 48)
    elif name == "chat":
        rows, sizes = CHAT, (96, 80)
    elif name == "truncated-prompts":
        rows, sizes = PAIRS, (24, 10)
    elif name == "truncated-responses":
        rows, sizes = PAIRS, (20, 16)
    elif name == "listwise":
        rows, sizes = LISTS, (64, 32)
    else:
        rows, sizes = PAIRS, (64, 48)
    examples, _ = load_examples(rows)
    if name == "pointwise":
        examples = pairs_to_unpaired(examples)
    tokenization = Tokenization(tokenizer, *sizes)
    tokenized = tokenization.many(examples)
    if name.startswith("truncated"):
        assert tokenization.stats.prompts_truncated + tokenization.stats.responses_truncated > 0
    return collate(tokenized, tokenizer.pad_token_id)


MODELS = ["llama", "llama-eager", "gpt2", "qwen2"]
BATCHES = ["text", "chat", "truncated-prompts", "truncated-responses", "listwise", "pointwise"]
LAYOUTS = {  # name -> (layout builder, chunked head)
    "plain rows, chunked head": (plain_layout, True),
    "shared prompt, full logits": (lambda b: block_layout(b, share_prompt=True, pack=False), False),
    "shared prompt, chunked head": (lambda b: block_layout(b, share_prompt=True, pack=False), True),
    "shared prompt, packed, chunked head": (lambda b: block_layout(b, share_prompt=True, pack=True), True),
    "packed rows, full logits": (lambda b: block_layout(b, share_prompt=False, pack=True), False),
}


def logps_and_gradients(model, compute, batch, seed=0):
    """Sums, per-token values and parameter gradients of a fixed random linear function of them."""
    model.zero_grad()
    logps = compute(model, batch)
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(logps.sum.shape, generator=generator)
    token_weights = torch.randn(logps.tokens.shape, generator=generator)
    ((logps.sum * weights).sum() + (logps.tokens * token_weights).sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logps.sum.detach(), logps.tokens.detach(), grads


def assert_same(a, b):
    sums_a, tokens_a, grads_a = a
    sums_b, tokens_b, grads_b = b
    torch.testing.assert_close(sums_a, sums_b, atol=TOLERANCE, rtol=TOLERANCE)
    assert tokens_a.shape == tokens_b.shape
    torch.testing.assert_close(tokens_a, tokens_b, atol=TOLERANCE, rtol=TOLERANCE)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=TOLERANCE, rtol=TOLERANCE, msg=name)


# --------------------------------------------------------------------------- the chunked head alone

@pytest.mark.parametrize("chunk", [1, 5, 64, 0])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_head_has_the_values_and_gradients_of_full_logits(chunk, bias):
    generator = torch.Generator().manual_seed(chunk)
    hidden = torch.randn(37, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, requires_grad=True)
    b = torch.randn(50, generator=generator, requires_grad=True) if bias else None
    targets = torch.randint(0, 50, (37,), generator=generator)
    upstream = torch.randn(37, generator=generator)
    inputs = [hidden, weight] + ([b] if bias else [])

    got = chunked_token_logps(hidden, weight, b, targets, chunk)
    got_grads = torch.autograd.grad((got * upstream).sum(), inputs)
    expected = token_logps_from_logits(nn.functional.linear(hidden, weight, b), targets)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), inputs)
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=TOLERANCE)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=TOLERANCE, rtol=TOLERANCE)


def test_chunked_head_under_bf16_autocast_matches_full_logits_in_bf16():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 32, generator=generator, requires_grad=True)
    weight = torch.randn(300, 32, generator=generator, requires_grad=True)
    targets = torch.randint(0, 300, (40,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_token_logps(hidden, weight, None, targets, 7)
        expected = token_logps_from_logits(nn.functional.linear(hidden, weight), targets)
    # The same bf16 matmul feeds both, so the forward values agree exactly.
    assert torch.equal(got, expected)
    got_grad = torch.autograd.grad(got.sum(), weight)[0]
    expected_grad = torch.autograd.grad(expected.sum(), weight)[0]
    assert got_grad.dtype == torch.float32
    torch.testing.assert_close(got_grad, expected_grad, atol=0.05, rtol=0.02)


# --------------------------------------------------------------------------- layouts

def test_block_layout_of_one_example_has_the_expected_mask_positions_and_sources():
    from preftune.data.tokenize import TokenizedExample

    a, b, c, d, e = 10, 11, 12, 13, 14
    batch = collate([TokenizedExample([a, b], [[c], [d, e]], "pairwise")], pad_token_id=0)
    layout = block_layout(batch, share_prompt=True, pack=False)
    assert layout.input_ids.tolist() == [[a, b, c, d, e]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 2, 3]]  # d restarts right after the prompt
    assert layout.branch.tolist() == [[0, 0, 1, 2, 2]]
    allowed = block_attention_mask(layout, "sdpa")[0, 0].int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],   # c sees the prompt
                       [1, 1, 0, 1, 0],   # d sees the prompt but not c
                       [1, 1, 0, 1, 1]]
    # c and d are predicted from b (position 1), e from d (position 3).
    assert layout.source.tolist() == [1, 1, 3] and layout.targets.tolist() == [c, d, e]
    additive = block_attention_mask(layout, "eager")[0, 0]
    assert bool((additive == 0).eq(torch.tensor(allowed).bool()).all())


def test_packing_puts_short_examples_in_one_row_and_never_lengthens_rows(tokenizer):
    rows = [{"prompt": "A long prompt that sets the row length", "chosen": "long answer", "rejected": "no"}] + \
           [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(6)]
    batch = collate(Tokenization(tokenizer, 64, 48).many(load_examples(rows)[0]), tokenizer.pad_token_id)
    shared = block_layout(batch, share_prompt=True, pack=False)
    packed = block_layout(batch, share_prompt=True, pack=True)
    assert shared.input_ids.shape[0] == 7 and packed.input_ids.shape[0] == 2
    assert packed.input_ids.shape[1] == shared.input_ids.shape[1]
    assert packed.cost(128) < shared.cost(128) < plain_layout(batch).cost(128)


@pytest.mark.parametrize("model_name", MODELS)
def test_every_architecture_takes_both_fast_paths(model_paths, model_name):
    caps = capabilities(load(model_paths, model_name))
    assert caps.block_mask and caps.chunked_head, caps.reason


def layout_cases() -> list[tuple[str, str, str]]:
    """Every layout on every model (chat batch), every layout on every batch (Llama), and every
    batch on every model with the layout that combines all three savings."""
    everything = "shared prompt, packed, chunked head"
    cases = [(m, "chat", layout) for m in MODELS for layout in LAYOUTS]
    cases += [("llama", b, layout) for b in BATCHES for layout in LAYOUTS]
    cases += [(m, b, everything) for m in MODELS for b in BATCHES]
    return list(dict.fromkeys(cases))


@pytest.mark.parametrize("model_name, batch_name, layout_name", layout_cases())
def test_fast_layouts_match_the_plain_path(model_paths, tokenizer, model_name, batch_name, layout_name):
    model = load(model_paths, model_name)
    batch = make_batch(tokenizer, batch_name)
    build, chunked = LAYOUTS[layout_name]
    layout = build(batch)
    assert layout is not None

    def fast(model, batch):
        return to_logps(batch, layout, run_model(model, layout, chunked, chunk_tokens=7), token_level=True)

    assert_same(logps_and_gradients(model, fast, batch),
                logps_and_gradients(model, lambda m, b: sequence_logps(m, b, token_level=True), batch))


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_batch_logps_with_default_options_takes_a_block_layout_and_matches(model_paths, tokenizer, model_name):
    model = load(model_paths, model_name)
    batch = make_batch(tokenizer, "text")
    layout = choose_layout(batch, FastPathOptions(), capabilities(model))
    assert layout is not None and layout.is_block  # the prompts are long enough for sharing to pay
    assert_same(logps_and_gradients(model, lambda m, b: batch_logps(m, b, True), batch),
                logps_and_gradients(model, lambda m, b: sequence_logps(m, b, True), batch))
    sums_only = batch_logps(model, batch)
    assert sums_only.tokens is None and sums_only.length.tolist() == sequence_logps(model, batch).length.tolist()


def test_bf16_autocast_fast_path_stays_close_to_the_plain_path(model_paths, tokenizer):
    model = load(model_paths, "llama")
    batch = make_batch(tokenizer, "chat")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast, plain = batch_logps(model, batch, True), sequence_logps(model, batch, True)
    assert fast.sum.dtype == plain.sum.dtype == torch.float32
    # Two bf16 computations of the same values (different op order): within bf16 resolution.
    torch.testing.assert_close(fast.tokens, plain.tokens, atol=0.1, rtol=0.02)


# --------------------------------------------------------------------------- falling back

class IgnoresBlockMask(nn.Module):
    """A causal LM that drops attention masks and position ids, as code written for 2-D padding
    masks may do. Right padding keeps its plain path correct, but a block layout is not."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


class ScaledLogits(IgnoresBlockMask):
    """A causal LM whose logits are its lm-head output times 2 (like logit scaling in some models)."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        out.logits = out.logits * 2
        return out


def test_a_model_that_ignores_the_block_mask_falls_back_to_plain_rows(model_paths, tokenizer):
    model = IgnoresBlockMask(load(model_paths, "llama"))
    caps = capabilities(model)
    assert not caps.block_mask and "block mask" in caps.reason
    assert caps.chunked_head
    batch = make_batch(tokenizer, "text")
    layout = choose_layout(batch, FastPathOptions(), caps)
    assert layout is not None and not layout.is_block
    assert_same(logps_and_gradients(model, lambda m, b: batch_logps(m, b, True), batch),
                logps_and_gradients(model, lambda m, b: sequence_logps(m, b, True), batch))


def test_a_model_whose_logits_are_not_the_plain_head_output_keeps_full_logits(model_paths, tokenizer):
    model = ScaledLogits(load(model_paths, "llama"))
    caps = capabilities(model)
    assert not caps.chunked_head and "differ" in caps.reason
    assert caps.block_mask
    batch = make_batch(tokenizer, "text")
    assert_same(logps_and_gradients(model, lambda m, b: batch_logps(m, b, True), batch),
                logps_and_gradients(model, lambda m, b: sequence_logps(m, b, True), batch))


def test_an_attention_implementation_not_known_to_take_4d_masks_keeps_plain_rows(model_paths, tokenizer):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("registered_elsewhere", sdpa_attention_forward)
    model = load(model_paths, "gpt2")
    model.config._attn_implementation_internal = "registered_elsewhere"
    caps = capabilities(model)
    assert not caps.block_mask and "registered_elsewhere" in caps.reason and caps.chunked_head
    batch = make_batch(tokenizer, "text")
    assert not choose_layout(batch, FastPathOptions(), caps).is_block
    torch.testing.assert_close(batch_logps(model, batch).sum, sequence_logps(model, batch).sum,
                               atol=TOLERANCE, rtol=TOLERANCE)


def test_sliding_window_models_use_block_layouts_only_inside_the_window(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=16,
                         max_window_layers=0)
    model = Qwen2ForCausalLM(config)
    caps = capabilities(model)
    assert caps.sliding_window == 16
    short = collate(Tokenization(tokenizer, 16, 8).many(load_examples(PAIRS)[0]), tokenizer.pad_token_id)
    long = make_batch(tokenizer, "text")
    assert short.input_ids.shape[1] <= 16 < long.input_ids.shape[1]
    assert choose_layout(short, FastPathOptions(), caps).is_block
    assert not choose_layout(long, FastPathOptions(), caps).is_block


def test_all_fast_paths_off_is_the_plain_function(model_paths, tokenizer, monkeypatch):
    import preftune.fastpath as fastpath

    model = load(model_paths, "llama")
    batch = make_batch(tokenizer, "text")
    monkeypatch.setattr(fastpath, "capabilities", lambda m: pytest.fail("no probe when every fast path is off"))
    off = FastPathOptions(prompt_sharing=False, packing=False, chunked_head=False)
    assert torch.equal(batch_logps(model, batch, True, off).tokens, sequence_logps(model, batch, True).tokens)
