"""Run one row extra (a per-seed measurement that is not a trained arm on a split); cached as JSON."""
from __future__ import annotations

import json
import time
import traceback

from preftune.claims.config import ClaimsConfig
from preftune.config import from_dict


def find_extra(name: str):
    from preftune.claims.catalogue import all_claims

    for claim in all_claims():
        for extra in claim.extras:
            if extra.name == name:
                return extra
    raise KeyError(f"claims: no extra named {name!r}")


def run_extra(cfg_dict: dict, name: str, seed, models: dict, chosen: dict) -> dict:
    cfg = from_dict(ClaimsConfig, cfg_dict)
    path = cfg.run_dir / "extras" / name / f"{'once' if seed is None else f'seed{seed}'}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = {"extra": name, "seed": seed}
    started, cpu = time.perf_counter(), time.process_time()
    try:
        result.update(find_extra(name).fn(cfg_dict, seed, models, chosen), status="ok")
    except Exception as error:  # noqa: BLE001  (reported in its row)
        result.update(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(limit=6))
    result.update(seconds=round(time.perf_counter() - started, 2), cpu_seconds=round(time.process_time() - cpu, 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    return result
