"""What an iteration keeps for later ones: its rows in RUN_DIR/iterations/iter-NNN/pairs.jsonl, read
back for DNO-Prct's replay (online.md §1b step 4) and COFS-DPO's replay memory (online.md §8)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from preftune.train.online_config import OnlineConfig


def iteration_dir(run_dir: Path, t: int) -> Path:
    return run_dir / "iterations" / f"iter-{t:03d}"


def iteration_pairs(run_dir: Path, t: int) -> list[dict]:
    """The rows iteration t trained on in its full phase (not those it replayed)."""
    return [r for r in read_jsonl(iteration_dir(run_dir, t) / "pairs.jsonl") if r["phase"] == "full" and r["iteration"] == t]


def replay(cfg: OnlineConfig, t: int, new_rows: int) -> list[dict]:
    """DNO-Prct's replay (online.md §1b step 4): up to `replay` x the new rows from iteration t-1, half that
    from t-2, and so on, read back from their pairs.jsonl (seeded choice, not regenerated)."""
    fraction, out = cfg.pairs.replay, []
    rng = random.Random(cfg.train.seed + t)
    for back in range(1, t + 1):
        take = int(fraction / 2 ** (back - 1) * new_rows)
        if take < 1:
            break
        old = iteration_pairs(cfg.run_dir, t - back)
        out += [{**r, "replayed_from": t - back} for r in rng.sample(old, min(take, len(old)))]
    return out


def write_jsonl(path: Path, rows: list[dict], append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
