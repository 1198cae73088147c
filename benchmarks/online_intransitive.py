"""Every online recipe on the intransitive task: per-iteration duality gap and win-rate, wall time, one table.

    python benchmarks/online_intransitive.py [--methods sppo dno ...] [--jobs 4] [--threads 1] [--out runs/online-bench]

Each recipe in configs/online/ runs as its own `preftune online` process (CPU only, `--threads`
torch threads each, `--jobs` at a time) after the shared warm start has been trained once. The
table (results.md) and a combined plot (curves.png) are written to --out, next to the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "online"


def run(method: str, out: Path, threads: int, extra: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(ROOT))
    log = out / "logs" / f"{method}.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.call([sys.executable, "-m", "preftune", "online", "--config", str(RECIPES / f"{method}.yaml"),
                                f"--output_dir={out}/{{name}}", "--train.progress=false", *extra],
                               stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    path = out / yaml.safe_load((RECIPES / f"{method}.yaml").read_text())["name"] / "online_summary.json"
    summary = json.loads(path.read_text()) if code == 0 and path.exists() else None
    return {"method": method, "code": code, "seconds": round(seconds, 1), "summary": summary}


def table(results: list[dict]) -> str:
    lines = ["| recipe: objective | iterations | duality gap per iteration (0 = initial) | regularised gap (beta 0.1) | "
             "exact win-rate vs initial | sampled win-rate vs initial | style probs at the end | answer-set mass | "
             "wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        if s is None:
            lines.append(f"| {r['method']} | failed (exit {r['code']}) | | | | | | | {r['seconds']} |")
            continue
        rows = s["iterations"]
        fmt = lambda key: " → ".join(f"{row[key]:.3f}" for row in rows if key in row)  # noqa: E731
        last = rows[-1]
        lines.append(f"| {r['method']}: {s['method']} | {len(rows) - 1} | {fmt('duality_gap')} | "
                     f"{fmt('duality_gap_regularised')} | {fmt('win_rate_vs_initial')} | "
                     f"{fmt('sampled_win_rate_vs_initial')} | ({', '.join(f'{p:.2f}' for p in last['style_probs'])}) | "
                     f"{last['answer_set_mass']:.3f} | {s['wall_seconds']:.0f} |")
    shifted = [r for r in results if r["summary"] and "domain0/duality_gap" in r["summary"]["iterations"][0]]
    if shifted:
        lines += ["", "Domain-shift runs: the duality gap under each annotator panel (forgetting shows in domain 0's).",
                  "", "| recipe | domain of each iteration | domain 0 gap | domain 1 gap | COFS weight w |", "|---|---|---|---|---|"]
        for r in shifted:
            rows = r["summary"]["iterations"]
            gaps = [" → ".join(f"{row[f'domain{d}/duality_gap']:.3f}" for row in rows) for d in (0, 1)]
            weights = ", ".join(f"{row['cofs_weight']:.1f}" for row in rows if "cofs_weight" in row) or "-"
            domains = ", ".join(str(row["domain"]) for row in rows[1:])
            lines.append(f"| {r['method']} | {domains} | {gaps[0]} | {gaps[1]} | {weights} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    colours = plt.get_cmap("tab20").colors  # more recipes than tab10 has colours: no two lines alike
    for i, r in enumerate(results):
        if r["summary"] is None:
            continue
        rows = r["summary"]["iterations"]
        style = {"color": colours[(2 * i) % 20 + (2 * i) // 20], "linestyle": "--" if "domains" in r["method"] else "-"}
        for ax, key in zip(axes, ("duality_gap", "win_rate_vs_initial")):
            ax.plot([row["iteration"] for row in rows], [row[key] for row in rows], marker="o", label=r["method"],
                    **style)
    axes[0].set_title("duality gap of the exact style distribution")
    axes[1].set_title("exact win-rate against the initial policy")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=sorted(p.stem for p in RECIPES.glob("*.yaml")))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "online-bench")
    parser.add_argument("overrides", nargs="*", help="--key=value overrides for every recipe")
    args, extra = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    # The warm start is shared by the recipes: train it once before the runs start in parallel.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    overrides = ["--train.progress=false", *extra, *args.overrides]
    subprocess.check_call([sys.executable, "-c", "import sys, json\n"
                           "from preftune.train.online import warm_start\n"
                           "from preftune.train.online_config import load_online_config\n"
                           "cfg = load_online_config(sys.argv[1], json.loads(sys.argv[2]))\n"
                           "print(warm_start(cfg) if cfg.warm_start.enabled else 'no warm start')",
                           str(RECIPES / f"{args.methods[0]}.yaml"), json.dumps(overrides)], env=env, cwd=ROOT)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda m: run(m, args.out, args.threads, extra + args.overrides), args.methods))
    text = table(results)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "curves.png")
    print(text)
    return 0 if all(r["code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
