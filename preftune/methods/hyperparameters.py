"""Checks of method hyperparameters given in a config: the type of the default, and the range a
hyperparameter of that name must lie in (so that `--loss.dpo.beta=0` fails when the config is
read, naming the key, rather than training on a loss that is constant or infinite)."""
from __future__ import annotations

from typing import Any, Callable

# name -> (test, allowed range as said in the error). Names mean the same in every method that has them.
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    **{name: _POSITIVE for name in ("beta", "beta_chosen", "beta_rejected", "beta_post", "eta", "tau", "c_max", "c_min",
                                    "kde_bandwidth", "reward_temperature", "max_exponent")},
    **{name: _NON_NEGATIVE for name in ("gamma", "gamma_beta_ratio", "margin", "desirable_weight", "undesirable_weight",
                                        "chase_weight", "sft_weight", "nll_weight", "reg_weight")},
    **{name: _UNIT for name in ("filter_ratio", "momentum", "ratio", "tau_ratio", "objective_weight")},
    "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_hyperparameter(method: str, name: str, value: Any, default: Any, ranges: bool = True) -> None:
    """Raise ValueError naming `loss.<method>.<name>` when `value` has the wrong type for the
    default or (with `ranges`) lies outside the range a hyperparameter of that name allows."""
    key = f"loss.{method}.{name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return
    if isinstance(default, (int, float)):
        if not _is_number(value) or value != value:  # NaN is never a setting
            raise ValueError(f"{key} must be a number, got {value!r}")
        if isinstance(default, int) and not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    if ranges and name in RANGES and _is_number(value):
        test, allowed = RANGES[name]
        if not test(value):
            raise ValueError(f"{key} must be {allowed}, got {value!r}")
