"""The pre-registration: everything fixed before the final run, and its digest.

Seeds, splits (with each task's prompt counts), budgets, the learning-rate grid, the decision rule
and every arm's grid, held-fixed hyperparameters and search score. Run-time settings (workers, the
output directory, the rows selected) are left out, so the digest changes exactly when something
that decides a verdict does.
"""
from __future__ import annotations

import hashlib
import json

from preftune.claims.assets import offline_tasks, pair_prompt_count, split_prompts
from preftune.claims.config import ClaimsConfig
from preftune.config import to_dict

RUNTIME = ("name", "output_dir", "rows", "workers", "threads_per_worker")


def split_sizes(cfg: ClaimsConfig) -> dict:
    """Per offline task: how many train prompts make preference data, and the validation and test counts."""
    return {task: {"preference": pair_prompt_count(cfg, task), "validation": len(split_prompts(cfg, task, "validation")),
                   "test": len(split_prompts(cfg, task, "test"))} for task in offline_tasks(cfg)}


def preregistration(cfg: ClaimsConfig, arms: list) -> dict:
    fixed = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME}
    fixed["split_sizes"] = split_sizes(cfg)
    fixed["arms"] = {arm.name: arm.preregistered() for arm in arms}
    return fixed


def preregistration_digest(cfg: ClaimsConfig, arms: list) -> str:
    return hashlib.sha256(json.dumps(preregistration(cfg, arms), sort_keys=True, default=str).encode()).hexdigest()[:16]
