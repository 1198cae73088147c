"""Diffusion and flow preference methods: one file per paper, registered in preftune's method registry.

Pure functions in the style of preftune/methods/: they take `Denoise` or `Steps` records
(preftune/diffusion/records.py), never a network, and register with family "diffusion", so that
`preftune methods`, `preftune verify` and the catalogue coverage see them beside the language-model
methods. Importing this package registers every module in it; `preftune.methods` imports it.
"""
import importlib
import pkgutil

_HELPERS = ("common", "checks", "checks_steps", "checks_inversion")

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _HELPERS:
        importlib.import_module(f"{__name__}.{_module.name}")
