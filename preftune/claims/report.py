"""claims.md and docs/claims.md: the verdict table, a paragraph per row, and the pre-registration."""
from __future__ import annotations

import json
from pathlib import Path

from preftune.claims.stats import format_interval

TABLE_START, TABLE_END = "<!-- claims-table:start -->", "<!-- claims-table:end -->"
PREREG_START, PREREG_END = "<!-- claims-preregistration:start -->", "<!-- claims-preregistration:end -->"


def _setting(setting: dict | None) -> str:
    if not setting:
        return "–"
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in setting.items())


def _part_line(part: dict) -> str:
    interval = part.get("interval")
    unit = f" {part['unit']}" if part.get("unit") else ""
    if interval is None:
        return f"{part['label']}: {part['judgement']} (exact; {part.get('detail', '')[:160]})"
    margin = "" if part["kind"] == "reported" else f", δ = {part['margin']:g}"
    return (f"{part['label']}: {format_interval(_interval(interval))}{unit} ({part['kind']}{margin}) → "
            f"{part['judgement']}")


class _interval:  # format_interval takes an object with mean/low/high
    def __init__(self, d: dict):
        self.mean, self.low, self.high = d["mean"], d["low"], d["high"]


def _headline(row: dict) -> str:
    """The first measured part's effect and interval (the table's effect column)."""
    for part in row.get("parts", []):
        if part.get("interval") is not None and part["kind"] != "reported":
            return format_interval(_interval(part["interval"])) + (f" {part['unit']}" if part.get("unit") else "")
    return "exact" if row.get("parts") else "–"


def row_seconds(report: dict, row: dict) -> float:
    """Wall seconds of the row's cells (search and final) and extras; shared arms count in every row."""
    cells = report.get("cell_seconds", {})
    total = sum(cells.get(arm, 0.0) for arm in row.get("arms", []))
    total += sum(v.get("seconds", 0.0) for k, v in report.get("extras", {}).items()
                 if k.split("/")[0] in row.get("extra_names", []))
    return total


def format_table(report: dict) -> str:
    machine = report.get("machine", {})
    invocations = report.get("invocations", [])
    loads = "; ".join(f"load {i['load_start'][0]:.1f} at the start, {i['load_end'][0]:.1f} at the end"
                      + (f", {min(i['loads_after_each_pool']):.1f} to {max(i['loads_after_each_pool']):.1f} between "
                         f"phases" if i.get("loads_after_each_pool") else "")
                      for i in invocations if "load_start" in i)
    counts = {v: sum(r["verdict"] == v for r in report["rows"]) for v in ("reproduced", "not reproduced", "inconclusive")}
    lines = [f"Command: `{report['command']}`", "",
             f"{len(report['rows'])} rows: {counts['reproduced']} reproduced, {counts['not reproduced']} not reproduced, "
             f"{counts['inconclusive']} inconclusive. Wall time {report['wall_seconds'] / 60:.1f} min over "
             f"{len(invocations)} invocation(s) ({loads}: 1-minute load averages, which count other users of the "
             f"machine; a quiet 2-core machine has a load of about 2 while this runs) with {report['config']['workers']} worker processes of "
             f"{report['config']['threads_per_worker']} thread(s) on {machine.get('cpu_count')} CPUs "
             f"({', '.join(machine.get('cpu_flags', [])) or 'no flags read'}; fp32); "
             f"{report.get('cpu_seconds', 0) / 60:.1f} CPU-minutes in cells and extras. "
             f"Pre-registration digest `{report['preregistration_digest']}`; final seeds "
             f"{', '.join(map(str, report['config']['seeds']))}, search seeds "
             f"{', '.join(map(str, report['config']['search_seeds']))}.", "",
             "| row | family | verdict | effect [95% interval] | parts | chosen settings | row s |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        parts = "; ".join(f"{p['label']} → {p['judgement']}" for p in row.get("parts", [])) or row.get("error", "")
        chosen = "; ".join(f"{arm}: {_setting(report['chosen'].get(arm))}" for arm in row.get("arms", []))
        lines.append(f"| {row['row']} | {row['family']} | **{row['verdict']}** | {_headline(row)} | {parts} | "
                     f"{chosen or '–'} | {row_seconds(report, row):.0f} |")
    return "\n".join(lines)


def format_paragraphs(report: dict) -> str:
    lines = []
    for row in report["rows"]:
        lines += [f"### {row['row']}: {row['verdict']}", "", f"*Claim (catalogue):* {row['statement']}", "",
                  f"*What was run:* {row['miniature']}", ""]
        for part in row.get("parts", []):
            per_seed = part.get("per_seed") or {}
            seeds = ", ".join(f"{s}: {v:+.3f}" for s, v in per_seed.items())
            lines.append(f"- {_part_line(part)}" + (f"; per seed {seeds}" if seeds else ""))
        if row.get("error"):
            lines.append(f"- no verdict could be computed: {row['error']}")
        for arm in row.get("arms", []):
            search = report.get("searches", {}).get(arm)
            if search:
                scored = ", ".join(f"{_setting(s['setting'])}: {s['score']:.3f}" if s["score"] is not None
                                   else f"{_setting(s['setting'])}: failed" for s in search)
                lines.append(f"- search of {arm} (validation score per setting): {scored}; chosen "
                             f"{_setting(report['chosen'].get(arm))}")
        lines.append("")
    return "\n".join(lines)


def budget_check(report: dict) -> str:
    """Is the budget enough to move DPO? Per DPO arm from the SFT model: the SFT model's and DPO's test gold
    reward, their paired difference, and DPO's own spread over seeds (the issue's bar: the difference
    larger than that spread)."""
    import statistics

    lines = ["| arm | SFT gold reward | DPO gold reward | DPO − SFT (paired) | DPO's std over seeds | difference > spread |",
             "|---|---|---|---|---|---|"]
    for arm, entry in sorted(report.get("finals", {}).items()):
        if entry["loss"] != "dpo" or entry["start"] != "sft":
            continue
        pairs = []
        for seed, metrics in entry["seeds"].items():
            sft = report.get("baselines", {}).get(f"{entry['task']}/seed{seed}", {}).get("test", {}).get("sft", {})
            if "gold_reward" in (metrics or {}) and "gold_reward" in sft:
                pairs.append((sft["gold_reward"], metrics["gold_reward"]))
        if len(pairs) < 2:
            continue
        sft, dpo = [p[0] for p in pairs], [p[1] for p in pairs]
        diff = [b - a for a, b in pairs]
        spread = statistics.stdev(dpo)
        lines.append(f"| {arm} | {statistics.fmean(sft):.3f} | {statistics.fmean(dpo):.3f} | "
                     f"{statistics.fmean(diff):+.3f} ± {statistics.stdev(diff):.3f} | {spread:.3f} | "
                     f"{'yes' if abs(statistics.fmean(diff)) > spread else 'no'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def format_markdown(report: dict) -> str:
    check = budget_check(report)
    return "\n".join(["## Verdicts", "", format_table(report), "",
                      *(["### Does the budget move DPO?", "", check, ""] if check else []),
                      "## Rows", "", format_paragraphs(report)])


def format_preregistration(prereg: dict, digest: str) -> str:
    """The pre-registration as Markdown: everything fixed before the final run."""
    lines = [f"Digest `{digest}` (sha256 of the settings below and of the row modules, the decision rule and the "
             f"evidence accessors, code digest `{prereg.get('code', '–')}`; written into claims.json by every run).",
             "",
             f"- Seeds: search {prereg['search_seeds']} (validation split only), final {prereg['seeds']} (test split "
             f"only); the two sets never overlap.",
             f"- Splits: preference data from the first train prompts of each task; validation = the last train "
             f"prompts, never in the preference data; test = the task's test split, seen by no training stage; "
             f"{prereg['splits']['samples_per_prompt']} samples per prompt at temperature 1 (prompts: "
             + "; ".join(f"{t} {s['preference']}/{s['validation']}/{s['test']}"
                         for t, s in prereg.get("split_sizes", {}).items())
             + " as preference/validation/test). The intransitive task holds out "
             f"{prereg['online']['validation_prompts']} guests for validation; the final runs are scored on "
             f"{prereg['online']['eval_prompts']} test guests.",
             f"- Offline budget (every arm): {prereg['preference']['steps']} optimizer steps of "
             f"{prereg['preference']['batch_size']} examples, warm-up {prereg['preference']['warmup_ratio']}, "
             f"linear decay after it (the loop's default schedule); the same pairs (or lists of the same samples) "
             f"per task and seed.",
             f"- Online budget (every arm): {prereg['online']['iterations']} iterations "
             f"({prereg['online']['iterations_per_domain']} per domain on the two-domain sequence) of "
             f"{prereg['online']['prompts_per_iteration']} prompts, "
             f"{prereg['online']['samples_per_prompt']} samples each, {prereg['online']['steps']} steps of "
             f"{prereg['online']['batch_size']}.",
             f"- Learning-rate grid (every arm): {prereg['lr_grid']}.",
             f"- Decision rule: Student-t {prereg['decision']['level']:.0%} interval of the mean per-seed effect "
             f"(paired by seed); superiority holds above 0 and fails below δ, non-inferiority holds above −δ and "
             f"fails below −δ; a row is reproduced when every part holds, not reproduced when any part fails, "
             f"inconclusive otherwise. δ per metric: "
             + ", ".join(f"{k} {v:g}" for k, v in prereg["decision"]["margins"].items()) + ".", "",
             "| arm | task | method | start | β-equivalent grid | held fixed | search score |", "|---|---|---|---|---|---|---|"]
    for name, arm in prereg["arms"].items():
        grid = "; ".join(_setting(g) for g in arm["grid"]) or "–"
        if arm.get("search_as"):
            grid = f"(setting of {arm['search_as']})"
        lines.append(f"| {name} | {arm['task']} | {arm['loss']} | {arm['start']} | {grid} | "
                     f"{_setting(arm['fixed']) if arm['fixed'] else '–'} | {arm['selection']} |")
    lines += ["", "What each row runs, and the parts its verdict is made of:", ""]
    for row, claim in prereg.get("rows", {}).items():
        lines.append(f"- **{row}** ({claim['family']}): {claim['miniature']}")
    return "\n".join(lines)


def replace_between(text: str, start: str, end: str, block: str) -> str:
    if start in text and end in text:
        before, rest = text.split(start, 1)
        return before + start + "\n" + block + "\n" + end + rest.split(end, 1)[1]
    return text.rstrip("\n") + f"\n\n{start}\n{block}\n{end}\n"


def write_docs(path: Path, report: dict | None = None, prereg: dict | None = None, digest: str | None = None) -> Path:
    """Rewrite the results (and/or the pre-registration) section of docs/claims.md between its markers."""
    text = path.read_text() if path.exists() else "# Paper claims, reproduced in miniature\n"
    if prereg is not None:
        text = replace_between(text, PREREG_START, PREREG_END, format_preregistration(prereg, digest))
    if report is not None:
        text = replace_between(text, TABLE_START, TABLE_END, format_markdown(report))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_outputs(report: dict, run_dir: Path) -> None:
    from preftune.report.claims_plots import plot_claims

    report["plots"] = [str(p) for p in plot_claims(report, run_dir / "plots")]
    (run_dir / "claims.md").write_text(format_markdown(report))
    (run_dir / "claims.json").write_text(json.dumps(report, indent=1, default=str))
