"""Loading policies and references: the built-in tiny model, any Hugging Face causal LM, LoRA.

The built-in tiny model takes the same path as a real one: it is a `LlamaForCausalLM` with a
byte-level tokenizer built offline, saved with `save_pretrained` and read back with
`from_pretrained`.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from preftune.model_source import CONFIG_SWITCHES, explain_load_error, hub_options

BUILTIN_TINY = "builtin:tiny"
# The tiny model after the quickstart's SFT stage, trained once and cached (train/builtin_models.py).
BUILTIN_ARITHMETIC_SFT = "builtin:arithmetic-sft"
SPECIAL_TOKENS = {"pad": "<|pad|>", "bos": "<|bos|>", "eos": "<|eos|>"}
# A minimal chat template so chat-format data works with the tiny model as with real ones.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass
class TinyModelShape:
    """Size of the built-in model; the defaults train the arithmetic task in about a minute on 2 cores."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 256


def build_tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + pad/bos/eos) built offline with `tokenizers`.

    No merges are learned, so any text round-trips exactly and the vocabulary is 259 tokens.
    A post-processor prepends BOS, as Llama-style tokenizers do.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {SPECIAL_TOKENS["pad"]: 0, SPECIAL_TOKENS["bos"]: 1, SPECIAL_TOKENS["eos"]: 2}
    for symbol in sorted(byte_alphabet):
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS['bos']} $A", pair=f"{SPECIAL_TOKENS['bos']} $A $B",
        special_tokens=[(SPECIAL_TOKENS["bos"], 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=SPECIAL_TOKENS["bos"], eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"])
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer, shape: TinyModelShape | None = None, seed: int = 0):
    """A randomly initialised Llama-architecture causal LM sized by `shape`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = shape or TinyModelShape()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads, max_position_embeddings=shape.max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, attention_dropout=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def save_tiny_model(path: str | Path, shape: TinyModelShape | None = None, seed: int = 0) -> Path:
    """Build the tiny model and its tokenizer and save both to `path` with save_pretrained."""
    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, shape, seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def resolve_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
              "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(dtypes)}")
    return dtypes[name]


# Named built-in models other than builtin:tiny ("builtin:arithmetic-sft", ...): each name maps to a
# function that returns the model's directory, building it first if needed. Building one takes a
# training run, which lives in a higher layer, so that layer registers its models here
# (train/builtin_models.py, imported with the preftune.train package); this module never imports it.
_BUILTIN_MODELS: dict[str, Callable[[], str]] = {}


def register_builtin_model(name: str, provide: Callable[[], str]) -> None:
    """Make `name` (e.g. "builtin:arithmetic-sft") loadable: `provide()` returns its directory."""
    if not name.startswith("builtin:") or name == BUILTIN_TINY:
        raise ValueError(f"a built-in model's name starts with 'builtin:' and is not {BUILTIN_TINY!r}, got {name!r}")
    _BUILTIN_MODELS[name] = provide


def builtin_model_names() -> list[str]:
    return [BUILTIN_TINY, *sorted(_BUILTIN_MODELS)]


def resolve_model_name(name_or_path: str) -> str:
    """Map a registered built-in name (`builtin:arithmetic-sft`) to its directory, building the model
    first if needed; `builtin:tiny`, paths and hub ids are returned unchanged."""
    if not name_or_path.startswith("builtin:") or name_or_path == BUILTIN_TINY:
        return name_or_path
    if name_or_path not in _BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name_or_path!r}; registered: {', '.join(builtin_model_names())} "
                         f"(builtin:arithmetic-sft is registered by importing preftune.train, as the CLI does)")
    return str(_BUILTIN_MODELS[name_or_path]())


def build_once(path: Path, marker: str, build) -> Path:
    """The cached directory `path`, built by `build(scratch_dir) -> built_dir` if `path/marker` is missing.

    Concurrent processes wait on a file lock, and the directory appears only once complete (built
    in a scratch folder, then renamed), so they share one build.
    """
    import fcntl
    import shutil
    import tempfile

    path = Path(path)
    if (path / marker).exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / marker).exists():
            scratch = Path(tempfile.mkdtemp(prefix="building-", dir=path.parent))
            built = build(scratch / "build")
            shutil.rmtree(path, ignore_errors=True)
            Path(built).rename(path)
            shutil.rmtree(scratch, ignore_errors=True)
    return path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, switches: tuple[str, str] = CONFIG_SWITCHES):
    """A model's tokenizer (model_source.py: a hub id must be fetchable; no model code runs unless trusted)."""
    from transformers import AutoTokenizer

    name_or_path = resolve_model_name(name_or_path)
    if name_or_path == BUILTIN_TINY:
        return build_tiny_tokenizer()
    options = hub_options(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **options)
    except (OSError, ValueError) as error:
        raise explain_load_error(name_or_path, error, True, trust_remote_code, switches) from None
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padding is always masked, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(auto_class, name_or_path: str, trust_remote_code: bool = False, allow_pickle: bool = False,
                    switches: tuple[str, str] = CONFIG_SWITCHES, **kwargs):
    """`auto_class.from_pretrained` (any transformers Auto model class), safely: safetensors weights
    only unless allow_pickle, no code shipped with the model unless trust_remote_code, and a hub
    id that cannot be fetched fails at once (model_source.py). A refusal names `switches`, the
    keys or flags that allow it where the model was named."""
    options = hub_options(name_or_path)
    try:
        return auto_class.from_pretrained(name_or_path, use_safetensors=None if allow_pickle else True,
                                          trust_remote_code=trust_remote_code, **options, **kwargs)
    except (OSError, ValueError) as error:
        raise explain_load_error(name_or_path, error, allow_pickle, trust_remote_code, switches) from None


def load_causal_lm(name_or_path: str, dtype: str = "float32", seed: int = 0, tokenizer=None,
                   trust_remote_code: bool = False, allow_pickle: bool = False,
                   switches: tuple[str, str] = CONFIG_SWITCHES):
    """Load a causal LM from a local directory or hub id (load_pretrained's safe rules); `builtin:tiny`
    builds a fresh tiny model."""
    from transformers import AutoModelForCausalLM

    name_or_path = resolve_model_name(name_or_path)
    if name_or_path == BUILTIN_TINY:
        model = build_tiny_model(tokenizer or build_tiny_tokenizer(), seed=seed)
        return model.to(resolve_dtype(dtype))
    return load_pretrained(AutoModelForCausalLM, name_or_path, trust_remote_code, allow_pickle, switches,
                           dtype=resolve_dtype(dtype))


def load_tokenizer_and_model(name_or_path: str, trust_remote_code: bool = False, allow_pickle: bool = False,
                             switches: tuple[str, str] = CONFIG_SWITCHES):
    """A causal LM in float32 and its tokenizer, both under the same safe-loading options."""
    tokenizer = load_tokenizer(name_or_path, trust_remote_code, switches)
    return tokenizer, load_causal_lm(name_or_path, tokenizer=tokenizer, trust_remote_code=trust_remote_code,
                                     allow_pickle=allow_pickle, switches=switches)


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


def add_lora(model, settings: LoraSettings, task_type: str | None = "CAUSAL_LM"):
    """Wrap `model` with trainable LoRA adapters (peft); the base weights are frozen. task_type None
    gives a plain PeftModel, for networks that are not causal LMs (diffusion UNets, transformers)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type=task_type)
    return get_peft_model(model, config)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


class Reference:
    """Where reference log-probs come from: a frozen model, the policy with LoRA disabled, or nowhere.

    Use it as a context manager around the reference forward pass: `with reference.model() as m:`.
    Once `use_cache` is called the values come from a precomputed table (reference_cache.py) and a
    frozen model is let go; `kind` still says what the reference is.
    """

    def __init__(self, kind: str, frozen: nn.Module | None = None, policy: nn.Module | None = None):
        if kind not in ("model", "lora-disabled", "none"):
            raise ValueError(f"unknown reference kind {kind!r}")
        self.kind, self.frozen, self.policy = kind, frozen, policy
        self.cache = None
        if frozen is not None:
            frozen.eval()
            frozen.requires_grad_(False)

    def use_cache(self, cache) -> None:
        """Serve reference log-probs from `cache` (a ReferenceLogpsCache) and release the frozen model."""
        self.cache, self.frozen = cache, None

    @contextmanager
    def model(self, unwrap=lambda m: m):
        if self.kind == "none":
            raise RuntimeError("this objective has no reference model")
        if self.kind == "model":
            if self.frozen is None:
                raise RuntimeError("the reference is served from its cache; no reference model is held")
            yield self.frozen
            return
        peft_model = unwrap(self.policy)
        with peft_model.disable_adapter():
            yield self.policy


def make_reference(kind: str, policy, name_or_path: str, dtype: str, needs_reference: bool,
                   seed: int = 0, **loading) -> Reference:
    """Decide the reference from the objective's needs and the config's `reference` value.

    kind: "auto" (none if no method needs one; the LoRA-disabled policy for LoRA runs; otherwise
    a frozen copy of the initial policy), "model" (a frozen copy), "lora-disabled", "none", or a
    path/hub id of a different reference model.
    """
    if not needs_reference:
        return Reference("none")
    if kind == "none":
        raise ValueError("the objective needs a reference model but reference: none was configured")
    if kind == "auto":
        kind = "lora-disabled" if is_peft_model(policy) else "model"
    if kind == "lora-disabled":
        if not is_peft_model(policy):
            raise ValueError("reference: lora-disabled needs a LoRA policy (set model.lora)")
        return Reference("lora-disabled", policy=policy)
    if kind == "model":
        frozen = copy.deepcopy(policy)
        return Reference("model", frozen=frozen)
    return Reference("model", frozen=load_causal_lm(kind, dtype, seed, **loading))
