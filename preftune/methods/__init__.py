"""Preference-optimisation methods: one file per paper, each registering a pure loss function.

Importing this package imports every module in it, so a new method file registers itself:
there is no central list to edit.
"""
import importlib
import pkgutil

from preftune.methods.registry import (CheckResult, MethodSpec, all_methods, get, load_method_packages, register,
                                       tabular_check, taxonomy)
from preftune.methods.objective import Objective, build_objective

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("registry", "objective", "common", "state"):
        importlib.import_module(f"{__name__}.{_module.name}")

# Method packages that live outside this folder but on this layer (pure loss functions that register
# themselves the same way): registry.METHOD_PACKAGES, e.g. the reinforcement-learning hybrids of
# preftune/rl/methods. A family that does not exist yet is skipped.
load_method_packages()

__all__ = ["CheckResult", "MethodSpec", "Objective", "all_methods", "build_objective", "get",
           "register", "tabular_check", "taxonomy"]
