"""Where a pretrained model comes from, and what loading it may do.

- A name that is not a local directory is a Hugging Face hub id. Before transformers is asked
  (it retries for more than a minute without network), the hub is asked once with a short
  timeout; a model that cannot be fetched (no network, `HF_HUB_OFFLINE`, no such repository)
  fails at once with one line saying how to pass a local directory. A model already in the
  local hub cache is used from there when the hub cannot be reached.
- Weights load from safetensors files only: a pickle checkpoint (`pytorch_model.bin`) can run
  code when it is read, so it needs `model.allow_pickle: true`. A model that ships its own code
  (`auto_map` in its config) runs it only with `model.trust_remote_code: true`.
"""
from __future__ import annotations

import os
from pathlib import Path

from preftune.hub import HUB_ID

HUB_TIMEOUT_S = 5.0
_TRUE = {"1", "true", "yes", "on"}


class ModelSourceError(FileNotFoundError):
    """A model that cannot be loaded as configured; the message is one line that says what to do."""


def _local_hint(name: str) -> str:
    return (f"download it where there is network (huggingface-cli download {name} --local-dir DIR) and pass "
            "the directory: --model.name_or_path=DIR")


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def hub_options(name: str) -> dict:
    """from_pretrained options for `name` (a local directory or a hub id), after checking that a
    hub id can be fetched: {"local_files_only": True} when it is served from the local cache."""
    if Path(name).exists():
        return {}
    if not HUB_ID.match(name):
        raise ModelSourceError(f"model {name!r} is neither a local directory nor a hub id (owner/name); use "
                               "'builtin:tiny' for the built-in tiny model")
    if _offline():
        if _cached(name):
            return {"local_files_only": True}
        raise ModelSourceError(f"model {name!r} cannot be fetched: HF_HUB_OFFLINE is set and it is not in the "
                               f"local hub cache; {_local_hint(name)}")
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(name, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise ModelSourceError(f"model {name!r} is gated on the hub: accept its terms and log in "
                               f"(huggingface-cli login), or {_local_hint(name)}") from None
    except RepositoryNotFoundError:
        raise ModelSourceError(f"model {name!r} is not a local directory and the hub has no such repository "
                               "(or it is private: log in with huggingface-cli login)") from None
    except Exception as error:  # no network: a DNS, connection or timeout error of the HTTP client
        if _cached(name):
            return {"local_files_only": True}
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelSourceError(f"model {name!r} cannot be fetched from the Hugging Face hub ({reason}); "
                               f"{_local_hint(name)}") from None
    return {}


# How a user opts in to each of the two risky loads, by where the model was named: a config's
# `model` section, the flags of a command that takes --model, or a judge's options.
CONFIG_SWITCHES = ("model.allow_pickle: true", "model.trust_remote_code: true")
FLAG_SWITCHES = ("--allow-pickle", "--trust-remote-code")
JUDGE_SWITCHES = ("judge.options.allow_pickle: true", "judge.options.trust_remote_code: true")


def add_loading_flags(parser) -> None:
    """--allow-pickle and --trust-remote-code for a command that loads the models it is given."""
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle checkpoints (pytorch_model.bin), which can run code; default: safetensors only")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the code a model ships with (auto_map in its config); read it first")


def flag_loading(args) -> dict:
    """The keyword arguments of load_causal_lm for the flags add_loading_flags defined."""
    return {"allow_pickle": args.allow_pickle, "trust_remote_code": args.trust_remote_code,
            "switches": FLAG_SWITCHES}


def explain_load_error(name: str, error: Exception, allow_pickle: bool, trust_remote_code: bool,
                       switches: tuple[str, str] = CONFIG_SWITCHES) -> Exception:
    """A one-line error for the two refusals of a safe load, naming the switch that allows it
    (`switches`: allow_pickle's, trust_remote_code's), or the original error."""
    pickle_switch, code_switch = switches
    text = str(error)
    if not trust_remote_code and "trust_remote_code" in text:
        return ModelSourceError(f"model {name!r} ships its own code (auto_map in its config), which preftune runs "
                                f"only with {code_switch} (read the code first)")
    if not allow_pickle and "safetensors" in text.lower():
        return ModelSourceError(f"model {name!r} has no safetensors weights; a pickle checkpoint (pytorch_model.bin) "
                                f"can run code when it is loaded, so preftune loads one only with {pickle_switch} "
                                "(or convert it to safetensors)")
    return error
