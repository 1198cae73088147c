"""Typed run configuration: YAML recipes in configs/ plus `--section.key=value` overrides.

Every key is declared below with its type and default; an unknown key or a value of the wrong
type is an error that names the key and lists the valid ones. The `loss` section is the one
free-form mapping (method name -> hyperparameters); its keys are checked against the method
signatures when the objective is built.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from preftune.config_values import ConfigError, check_values


class NamedRun:
    """A recipe whose outputs go to `output_dir` with `{name}` filled in (every recipe kind has both keys)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Union[str, list[str]] = "all-linear"


@dataclass
class ModelConfig:
    name_or_path: str = "builtin:tiny"   # a local directory, a hub id, or builtin:tiny
    dtype: str = "float32"               # float32 | bfloat16: loaded, frozen copies and saved in it (trained in fp32)
    lora: LoraConfig = field(default_factory=LoraConfig)
    trust_remote_code: bool = False      # run code shipped with the model (auto_map); read it first
    allow_pickle: bool = False           # load pytorch_model.bin (a pickle can run code); else safetensors only

    @property
    def loading(self) -> dict:
        """What a model load may do (preftune/model_source.py): keyword arguments of load_causal_lm."""
        return {"trust_remote_code": self.trust_remote_code, "allow_pickle": self.allow_pickle}


@dataclass
class TaskDataConfig:
    """How rows are made when data.source is `task:<name>` (a built-in task)."""

    options: dict = field(default_factory=dict)   # task constructor options, e.g. {max_operand: 50}
    demonstrations: int = 20000          # SFT rows (data kind sft)
    noise: float = 0.0                   # fraction of SFT rows with a wrong answer
    prompts: int | None = None           # train prompts sampled for pairs (None: all)
    samples_per_prompt: int = 4          # on-policy samples per prompt, labelled by the gold oracle
    temperature: float = 1.0
    max_new_tokens: int = 16
    pairing: str = "best-worst"          # best-worst | all | listwise (all k samples with their scores)
    labeller: dict = field(default_factory=dict)  # who labels pairs (default: the task's own, else gold):
                                                  # {length_bias: p, flip_rate: eps, temperature: tau}


@dataclass
class DataConfig:
    source: str = ""                     # a file, a datasets dir, hf:owner/name, or task:<name> (built-in)
    split: str = "train"
    eval_source: str | None = None       # held-out preference data for eval loss/accuracy
    eval_fraction: float = 0.0           # or hold out this fraction of `source`
    kind: str = "auto"                   # auto | pairwise | pointwise | sft | listwise
    format: str = "auto"                 # auto | text | chat | hh (HH-RLHF dialogue strings -> chat messages) |
                                         # sharegpt (LLaMA-Factory's conversations of from/value turns)
    columns: dict = field(default_factory=dict)  # the dataset's field names: {prompt: question, chosen: response_j}
    on_bad_row: str = "error"            # error | skip (skipped rows are counted in the summary)
    max_length: int = 512
    max_prompt_length: int = 256
    truncation: str = "truncate"         # truncate | drop | error (counted in the summary)
    limit: int | None = None             # use at most this many rows
    extra_columns: list[Union[str, dict]] = field(default_factory=list)  # numeric columns passed to methods (e.g.
    # margins); an entry {name: [column, ...]} stacks one column per response into one extra (B, K)
    extra_responses: list[str] = field(default_factory=list)  # text columns appended as responses (e.g. gold)
    task: TaskDataConfig = field(default_factory=TaskDataConfig)


@dataclass
class TrainConfig:
    steps: int | None = None             # optimizer steps; None: `epochs` over the data
    epochs: float = 1.0
    batch_size: int = 8                  # examples per process per micro-step
    grad_accum: int = 1                  # micro-steps per optimizer step
    lr: float = 5e-7
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    schedule: str = "linear"             # linear | cosine | constant (after warmup)
    max_grad_norm: float = 1.0           # 0 disables clipping
    precision: str = "fp32"              # fp32 | bf16 (autocast; trainable weights are fp32 master weights)
    seed: int = 0
    log_every: int = 1
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # accelerate trackers (wandb, mlflow, ...); [] none
    checkpoint_every: int = 0            # 0: only the final model
    save_model: bool = True              # false: no final model/ (benchmarks, sweeps that keep metrics only)
    keep_checkpoints: int = 2
    eval_every: int = 0                  # 0: evaluate held-out data only at the end (if any)
    progress: bool = True
    shuffle: bool = True                 # false: every epoch takes the rows in data order (a curriculum)


@dataclass
class CurriculumConfig:
    """Train on pairs cut from ranked lists, easy to hard (Curry-DPO, offline.md §4; train/curriculum.py).

    Off while `pairs` is empty. The data are ranked rows {prompt, responses, scores|ranks}: a file,
    or for task:<name> k samples per prompt of the initial model scored by the gold oracle.
    """

    pairs: str = ""                      # "" (off) | chosen_fixed | rejected_fixed | all_pairs
    min_gap: float = 0.0                 # drop pairs whose score gap is below this (ties always dropped)
    order: str = "rating_gap"            # difficulty: rating_gap | ref_implicit_margin | random
    schedule: str = "iterative"          # iterative: stage k = k-th easiest pair per prompt, reference =
                                         # stage k-1 policy | sorted: one run easy to hard, fixed reference
    stages: int | None = None            # iterative: at most this many stages
    shuffle_within: bool = False         # sorted: shuffle the pairs of each difficulty stage


@dataclass
class DiagnosticsConfig:
    """Training diagnostics on held-out data every `every` steps (eval/diagnostics.py, offline.md §11-13)."""

    every: int = 0                       # 0: off
    examples: int = 64                   # held-out pairs teacher-forced (log-likelihoods, top-k indicators)
    top_k: int = 10                      # k of the top-k entropy and mass (Shi et al. use 10)
    prompts: int = 32                    # prompts sampled for KL, length (and gold reward on task data); 0: none
    samples_per_prompt: int = 2
    max_new_tokens: int = 16


@dataclass
class SpeedConfig:
    """Fast paths for log-probs and the reference (preftune/fastpath/, preftune/reference_cache.py).

    Each fast path gives the plain path's values; a model that cannot take one (probed once)
    silently uses the plain concatenated batch instead.
    """

    prompt_sharing: bool = True          # prompt once per example, its responses after it under a block mask
    packing: bool = True                 # several examples per row (padding-free) where that saves rows
    chunked_logps: bool = True           # lm-head + log-softmax on response tokens only, in chunks (no (B,T,V) logits)
    logits_chunk_tokens: int = 0         # tokens per lm-head chunk; 0: as many as fit ~32 MiB of float32 logits
    reference_cache: Union[str, bool] = "auto"  # auto | on | off (YAML reads on/off as true/false; both work):
                                         # reference log-probs computed once, stored and reused, no reference
                                         # model held; auto where it applies (not pointwise data), on insists
    reference_cache_dir: str | None = None  # None: <run dir's parent>/reference-cache, shared by sibling runs


@dataclass
class RunConfig(NamedRun):
    name: str = "run"
    output_dir: str = "runs/{name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: str = "auto"              # auto | model | lora-disabled | none | a path or hub id
    aux_models: dict = field(default_factory=dict)  # name -> path of frozen models whose log-probs a method
                                                     # takes as the data extra of that name (e.g. guidance)
    loss: Union[str, dict] = "dpo"       # "dpo + 0.2*sft" or {dpo: {beta: 0.1}, sft: {weight: 0.2}}
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)


# --------------------------------------------------------------------------- typed conversion

def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict or hint is dict:
        return "mapping"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type `hint`; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    if hint is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return from_dict(hint, value, key)
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(v, typing.get_args(hint)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build the dataclass `cls` from a mapping, checking keys and types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f" under '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown key '{_join(prefix, unknown[0])}'; valid keys{where}: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], _join(prefix, k)) for k, v in data.items()}
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


# --------------------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[list[str], Any]:
    """`--train.lr=1e-4` -> (["train", "lr"], 1e-4); the value is read as YAML (numbers, bools, lists)."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise ConfigError(f"override {text!r} must look like --section.key=value")
    key, raw = body.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    # YAML reads 1e-4 as a string (it wants 1.0e-4); accept the usual float spellings.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and value.strip() else value
        except ValueError:
            pass
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    if len(path) == 3 and path[0] == "loss":
        _check_loss_term_named(data.get("loss"), path)
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None or not isinstance(child, str) else _loss_string_to_dict(child)
            node[part] = child
        node = child
    node[path[-1]] = value


def _check_loss_term_named(loss: Any, path: list[str]) -> None:
    """`--loss.M.P=v` sets a hyperparameter of a method already in `loss`; it never adds a term
    (a misspelt or forgotten method would otherwise train silently as an extra loss)."""
    from preftune.methods.objective import build_objective

    if loss is None:
        return
    try:
        names = [t.spec.name for t in build_objective(loss).terms]
    except (KeyError, ValueError):
        return  # the loss itself is wrong: that error comes when the config is checked
    if path[1] not in names:
        raise ConfigError(f"--{'.'.join(path)} sets a hyperparameter of {path[1]}, which is not in loss "
                          f"({' + '.join(names)}); set --loss={path[1]} (or add it to the recipe's loss) first")


def _loss_string_to_dict(loss: str) -> dict:
    """Overriding `loss.dpo.beta` on a recipe that wrote `loss: dpo` needs the mapping form."""
    from preftune.methods.objective import build_objective

    objective = build_objective(loss)
    return {t.spec.name: ({"weight": t.weight} if t.weight != 1 else {}) for t in objective.terms}


def read_recipe(path: str | Path, what: str = "a recipe") -> dict:
    """The YAML mapping in `path`, with a clear error for a missing file or a non-mapping."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: {what} must be a YAML mapping")
    return loaded


def merge_recipe(defaults: dict, recipe: dict, replaced: tuple[str, ...] = ("loss",)) -> dict:
    """Merge a recipe into the defaults section by section (in place). Keys in `replaced` take the
    recipe's value whole: a recipe's loss replaces the default objective, never merges into it."""
    for key, value in recipe.items():
        if key in replaced or not (isinstance(value, dict) and isinstance(defaults.get(key), dict)):
            defaults[key] = value
        else:
            merge_recipe(defaults[key], value, replaced)
    return defaults


def with_overrides(cls: type, data: dict, overrides: list[str] | None):
    """Apply `--key=value` overrides to `data`, build the typed configuration `cls` and check its values.

    Overrides of a whole section apply before overrides of keys inside it (`--loss=simpo` before
    `--loss.simpo.beta=3`), so their order on the command line does not matter."""
    parsed = [parse_override(text) for text in overrides or []]
    loss = next((f for f in dataclasses.fields(cls) if f.name == "loss"), None)
    if loss is not None and "loss" not in data and any(path[0] == "loss" for path, _ in parsed):
        data["loss"] = loss.default  # so that --loss.M.P=v is checked against the default objective
    for key_path, value in sorted(parsed, key=lambda item: len(item[0])):
        apply_override(data, key_path, value)
    config = from_dict(cls, data)
    check_values(config)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> RunConfig:
    """Read a YAML recipe (or start from `base`/defaults) and apply `--key=value` overrides."""
    data: dict = dict(base or {})
    if path is not None:
        data.update(read_recipe(path))
    return with_overrides(RunConfig, data, overrides)


def valid_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """All dotted keys of the configuration (for --help and error messages)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(valid_keys(hint, _join(prefix, f.name)))
        else:
            keys.append(_join(prefix, f.name))
    return keys

