"""The pre-registration: everything fixed before the final run, and its digest.

Seeds, splits (with each task's prompt counts), budgets, the learning-rate grid, the decision rule,
every arm's grid, held-fixed hyperparameters and search score, and a digest of the code that
defines and judges the rows. Run-time settings (workers, the
output directory, the rows selected) are left out, so the digest changes exactly when something
that decides a verdict does.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from preftune.claims.assets import offline_tasks, pair_prompt_count, split_prompts
from preftune.claims.config import ClaimsConfig
from preftune.config import to_dict

RUNTIME = ("name", "output_dir", "rows", "workers", "threads_per_worker")


def split_sizes(cfg: ClaimsConfig) -> dict:
    """Per offline task: how many train prompts make preference data, and the validation and test counts."""
    return {task: {"preference": pair_prompt_count(cfg, task), "validation": len(split_prompts(cfg, task, "validation")),
                   "test": len(split_prompts(cfg, task, "test"))} for task in offline_tasks(cfg)}


def code_digest() -> str:
    """sha256 of the code that defines the experiments and judges them (the row modules, the decision
    rule, what a judge reads): a changed constant there (a β sweep, a beam count) changes the digest."""
    root = Path(__file__).resolve().parent
    files = sorted((root / "rows").glob("*.py")) + [root / "stats.py", root / "evidence.py"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def preregistration(cfg: ClaimsConfig, arms: list, claims: list) -> dict:
    fixed = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME}
    fixed["split_sizes"] = split_sizes(cfg)
    fixed["arms"] = {arm.name: arm.preregistered() for arm in arms}
    fixed["rows"] = {c.row: {"family": c.family, "statement": c.statement, "miniature": c.miniature,
                             "arms": list(c.arms), "extras": [e.name for e in c.extras], "verify": list(c.verify)}
                     for c in claims}
    fixed["code"] = code_digest()
    return fixed


def preregistration_digest(cfg: ClaimsConfig, arms: list, claims: list) -> str:
    return hashlib.sha256(json.dumps(preregistration(cfg, arms, claims), sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]
