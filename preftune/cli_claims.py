"""`preftune claims`: each catalogue row's paper claim, reproduced in miniature and judged.

cli.py registers the parser with `add_parser` and dispatches to `cmd_claims`; the work is in
preftune/claims/.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

FULL_CONFIG = Path("configs/claims/full.yaml")
SMOKE_CONFIG = Path("configs/claims/smoke.yaml")
DOCS = Path("docs/claims.md")


def add_parser(sub, formatter=argparse.RawDescriptionHelpFormatter) -> None:
    p = sub.add_parser(
        "claims", help="judge each catalogue row's paper claim on a miniature experiment (docs/claims.md)",
        formatter_class=formatter,
        description="For each offline, online and analysis row of the method catalogue, run the row's miniature "
                    "experiment and judge its paper's claim: reproduced (the claimed effect, with a 95%% interval over "
                    "seeds that excludes no effect), not reproduced (the interval excludes effects of the claimed size, "
                    "or points the other way) or inconclusive. Every method and every baseline it is compared with "
                    "gets the same search (its beta-equivalent x the learning-rate grid) on validation prompts, then "
                    "runs at its chosen setting on the final seeds and is scored on test prompts. Writes "
                    "RUN_DIR/claims.json, claims.md and plots; resumes (finished cells are not rerun). The grids, "
                    "seeds, splits, budgets and decision rule are in configs/claims/full.yaml and the row modules "
                    "(preftune/claims/rows/), and are listed in docs/claims.md.",
        epilog="Config keys can be overridden as --key=value, e.g. --workers=2 --seeds=[1,2,3] --name=my-claims")
    p.add_argument("rows", nargs="*", metavar="ROW", help="catalogue rows to run (default: every row)")
    p.add_argument("--config", type=Path, default=None, help=f"claims config (default: {FULL_CONFIG})")
    p.add_argument("--smoke", action="store_true", help=f"toy sizes, every row end to end ({SMOKE_CONFIG}): checks the "
                                                        f"pipeline, says nothing about the methods")
    p.add_argument("--docs", type=Path, default=None, help=f"also write the verdicts into this Markdown file "
                                                           f"(the committed one is {DOCS})")
    p.add_argument("--preregister", action="store_true",
                   help="write only the pre-registration (seeds, splits, budgets, grids, decision rule) into --docs "
                        f"(default {DOCS}) and run nothing")
    p.add_argument("--list", action="store_true", help="list the rows, their arms and extras, and exit")
    p.add_argument("--no-progress", action="store_true")


def cmd_claims(args, overrides: list[str]) -> int:
    from preftune.claims.config import load_claims_config
    from preftune.claims.prereg import preregistration, preregistration_digest
    from preftune.claims.report import format_markdown, write_docs
    from preftune.claims.runner import arms_needed, run_claims, selected_claims

    config = SMOKE_CONFIG if args.smoke else (args.config or FULL_CONFIG)
    cfg = load_claims_config(config, overrides)
    claims = selected_claims(cfg, args.rows)
    if args.list:
        for claim in claims:
            print(f"{claim.row:<22}{claim.family:<10}arms: {', '.join(claim.arms) or '–'}"
                  + (f"; extras: {', '.join(e.name for e in claim.extras)}" if claim.extras else "")
                  + (f"; verify: {', '.join(claim.verify)}" if claim.verify else ""))
        return 0
    if args.preregister:
        arms = arms_needed(claims)
        path = write_docs(args.docs or DOCS, prereg=preregistration(cfg, arms, claims),
                          digest=preregistration_digest(cfg, arms, claims))
        print(f"pre-registration written to {path}")
        return 0
    command = " ".join(shlex.quote(a) for a in ["preftune", "claims", *args.rows,
                                                 *(["--smoke"] if args.smoke else ["--config", str(config)]),
                                                 *overrides])
    report = run_claims(cfg, command, args.rows, progress=not args.no_progress)
    print()
    print(format_markdown(report))
    if args.docs:
        arms = arms_needed(claims)
        write_docs(args.docs, report, preregistration(cfg, arms, claims), report["preregistration_digest"])
        print(f"verdicts written to {args.docs}")
    print(f"run directory: {cfg.run_dir} (claims.json, claims.md, plots/); `preftune report {cfg.run_dir}`")
    return 0
