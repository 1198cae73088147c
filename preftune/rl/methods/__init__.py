"""The reinforcement-learning losses: one file per paper, registered in preftune's method registry.

Imported by preftune.methods (registry.METHOD_PACKAGES), so `preftune methods`, `preftune verify` and the
coverage tool see them beside the offline and online methods. Every loss takes input kind "rollout":
sampled responses whose per-token quantities (old log-probs, values, rewards) arrive as extras; the
`preftune rl` loop (preftune/rl/loop.py) provides them.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "common":
        importlib.import_module(f"{__name__}.{_module.name}")
