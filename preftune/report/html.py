"""`preftune report RUN_DIR`: one self-contained HTML page with a run's plots and summary.

Works on any run directory preftune writes: a training run (metrics.jsonl, train_summary.json), an
RL run (rl_summary.json), a quickstart pipeline (summary.json and its stages), a bench
(results.json), a sweep (sweep/sweep.json), a probe (probe.json) or `preftune claims`
(claims.json). The plots are drawn with matplotlib and embedded as base64 PNG data URIs, so the
page is one file that opens anywhere, offline. A few lines of script record whether every image decoded (`data-images` on <body>), which
the report test reads back from headless Chromium.
"""
from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path

from preftune.train.metrics import read_metrics

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: left; }
th { max-width: 9em; overflow-wrap: anywhere; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; } code { background: #f3f3f3; padding: 1px 4px; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
.muted { color: #777; font-size: 0.85em; }
"""

# Marks <body data-images="loaded/total"> once every image has decoded (naturalWidth > 0).
IMAGE_CHECK = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + images.length);
  // How wide the page is laid out against the window (the report must fit a 1280-pixel window).
  document.body.setAttribute('data-width', document.documentElement.scrollWidth + '/' + window.innerWidth);
});
"""


class Page:
    """An HTML page built section by section."""

    def __init__(self, title: str):
        self.title, self.parts = title, []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, muted: bool = False) -> None:
        self.parts.append(f"<p{' class=muted' if muted else ''}>{_inline(text)}</p>")

    def table(self, header: list[str], rows: list[list], caption: str | None = None) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")

    def mapping(self, values: dict, caption: str | None = None) -> None:
        self.table(["", "value"], [[k, v] for k, v in values.items()], caption)

    def image(self, path: Path | None, alt: str) -> None:
        if path is None or not Path(path).exists():
            return
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        self.parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
                          f"<figcaption class=muted>{html.escape(alt)}</figcaption></figure>")

    def markdown(self, text: str) -> None:
        """The Markdown preftune itself writes (headings, paragraphs, pipe tables, `code`)."""
        lines, i = text.splitlines(), 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("|"):
                block = []
                while i < len(lines) and lines[i].startswith("|"):
                    block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                    i += 1
                rows = [r for r in block if not all(re.fullmatch(r"-+", c) for c in r)]
                self.table(rows[0], rows[1:])
                continue
            if line.startswith("#"):
                self.heading(line.lstrip("#").strip())
            elif line.strip():
                self.paragraph(line)
            i += 1

    def render(self) -> str:
        return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(self.title)}</title>"
                f"<style>{STYLE}</style><script>{IMAGE_CHECK}</script></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self.parts) + "</body></html>")


NUMBER = re.compile(r"^[-+]?[\d.]+(e[-+]?\d+)?( ± [\d.]+(e[-+]?\d+)?)?$")


def _td(value) -> str:
    text = _format(value)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool) or bool(NUMBER.match(text))
    return f"<td{' class=num' if numeric else ''}>{html.escape(text)}</td>"


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "–" if value is None else str(value)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


# --------------------------------------------------------------------------- sections per kind of run

def _training_section(page: Page, run_dir: Path, plots: Path, title: str = "Training") -> None:
    from preftune.report.measure_plots import plot_diagnostics
    from preftune.report.plots import plot_training

    summary_path = run_dir / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    page.heading(f"{title}: {summary.get('objective', run_dir.name)}")
    if summary:
        page.mapping({"objective": summary["objective"], "steps": summary["steps"], "epochs": summary.get("epochs"),
                      "global batch": summary.get("global_batch"), "reference": summary.get("reference"),
                      "train examples": summary.get("data", {}).get("train_examples"),
                      "held-out examples": summary.get("data", {}).get("eval_examples")}, "run")
        if summary.get("data", {}).get("load"):
            page.mapping(data_loading(summary["data"]), "data: rows skipped by reason, truncation")
        final = {k: v for k, v in summary.get("final_train_metrics", {}).items() if isinstance(v, float)}
        if final:
            page.mapping(final, "last training step")
        if summary.get("eval"):
            page.mapping(summary["eval"], "held-out evaluation")
    metrics = read_metrics(run_dir)
    if any("loss" in r for r in metrics):
        page.image(plot_training(metrics, plots / f"{run_dir.name}_training.png"), "training curves: loss, accuracy, "
                   "margin, chosen and rejected log-likelihood")
    diagnostics = [r for r in metrics if any(k.startswith("diag/") for k in r)]
    if diagnostics:
        page.image(plot_diagnostics(metrics, plots / f"{run_dir.name}_diagnostics.png"), "training diagnostics on "
                   "held-out data")
        from preftune.eval.diagnostics import diagnostic_warnings

        for warning in diagnostic_warnings(diagnostics):
            page.paragraph(f"Warning: {warning}.")
        first, last = diagnostics[0], diagnostics[-1]
        keys = [k for k in last if k.startswith("diag/")]
        page.table(["diagnostic", f"step {first['step']}", f"step {last['step']}"],
                   [[k[len("diag/"):], first.get(k), last.get(k)] for k in keys], "diagnostics, first and last")


def data_loading(data: dict) -> dict:
    """What loading did to a run's data (train_summary.json's data.load and data.truncation), as shown."""
    load, cut = data["load"], data.get("truncation", {})
    return {"rows read": load.get("rows"), "rows kept": load.get("kept"),
            "rows skipped": ", ".join(f"{k} {v}" for k, v in load.get("skipped", {}).items()) or "none",
            "columns not used": ", ".join(load.get("unused_columns", {})) or "none",
            "truncated": f"{cut.get('prompts_truncated', 0)} prompts, {cut.get('responses_truncated', 0)} responses; "
                         f"{cut.get('examples_dropped', 0)} examples dropped"}


def _pipeline_section(page: Page, run_dir: Path, plots: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    from preftune.pipeline import ROWS

    page.heading(f"Quickstart: {summary['objective']} on {summary['task']}")
    page.table(["metric", "SFT", f"SFT + {summary['objective']}", "change"],
               [[label, summary["before"][k], summary["after"][k], summary["after"][k] - summary["before"][k]]
                for k, label, _ in ROWS if k in summary["before"] and k in summary["after"]])
    page.mapping(summary["seconds"], f"seconds (total {summary['total_seconds']})")
    for path in summary.get("plots", []):
        page.image(Path(path), Path(path).stem.replace("_", " "))
    if (run_dir / "preference").exists():
        _training_section(page, run_dir / "preference", plots, "Preference stage")


def _bench_section(page: Page, run_dir: Path, plots: Path) -> None:
    from preftune.bench import format_markdown
    from preftune.report.measure_plots import plot_bench

    report = json.loads((run_dir / "results.json").read_text())
    page.heading("Benchmark")
    page.markdown(format_markdown(report))
    page.heading("Gold reward per method and task")
    for path in plot_bench(report, plots):
        page.image(path, f"gold reward per method (mean ± std over seeds), {path.stem.split('_')[-1]} start")


ONLINE_COLUMNS = 8
JUDGE_COUNTERS = ("requests", "answered", "failed", "unparseable", "timeouts", "retries")


def _online_section(page: Page, run_dir: Path, plots: Path) -> None:
    """An online run (preftune online): the duality-gap / win-rate curve and one row per iteration."""
    from preftune.report.online_plots import plot_online_curve

    summary = json.loads((run_dir / "online_summary.json").read_text())
    rows = summary.get("iterations", [])
    page.heading(f"Online: {summary.get('method', run_dir.name)} on {summary.get('task', '')}")
    page.image(plot_online_curve(summary, plots / "online_curve.png"),
               "duality gap and win-rate against the initial policy, per iteration (0: the initial policy)")
    columns = [k for k in dict.fromkeys(k for r in rows for k in r)
               if k != "iteration" and all(isinstance(r.get(k, 0.0), (int, float)) for r in rows)]
    # A few columns per table, so that the page fits a 1280-pixel window however many metrics there are.
    groups = [columns[i:i + ONLINE_COLUMNS] for i in range(0, len(columns), ONLINE_COLUMNS)]
    for number, group in enumerate(groups, 1):
        page.table(["iteration", *(c.replace("_", " ") for c in group)],
                   [[r.get("iteration"), *(r.get(c) for c in group)] for r in rows],
                   f"per iteration (online_summary.json), {number} of {len(groups)}")
    if summary.get("stopped"):
        page.paragraph(f"The run stopped: {summary['stopped']}")
    judged = [r for r in rows if isinstance(r.get("judge"), dict)]
    if judged:  # what the judge did in each iteration: what it answered, what it could not, and the first error
        counters = [c for c in JUDGE_COUNTERS if any(c in r["judge"] for r in judged)]
        page.table(["iteration", *counters, "first error"],
                   [[r["iteration"], *(r["judge"].get(c) for c in counters), r["judge"].get("first_error", "")]
                    for r in judged], "judge counters in each iteration (online_summary.json), with the first error's text")


def _rl_section(page: Page, run_dir: Path, plots: Path) -> None:
    """The report's section for an RL run: its summary, curves and per-iteration table."""
    summary = json.loads((run_dir / "rl_summary.json").read_text())
    page.heading(f"RL: {summary.get('method')} on {summary.get('task')}")
    if summary.get("kind") == "lot-sizing":
        page.mapping({"episodes": summary["episodes"], "DP optimum": summary["optimum"], **summary.get("final", {}),
                      "seconds": summary.get("wall_seconds")}, "run")
    else:
        page.mapping({"algorithm": summary.get("algorithm"), "iterations": len(summary["iterations"]) - 1,
                      "seconds": summary.get("wall_seconds")}, "run")
    from preftune.report.rl_plots import plot_rl

    page.image(plot_rl(read_metrics(run_dir), plots / f"{run_dir.name}_rl.png"),
               "reward, accuracy, KL, per-aspect rewards and value loss per iteration (0: the starting policy)")
    rows = summary.get("iterations", [])
    columns = [k for k in dict.fromkeys(k for r in rows for k in r)
               if k.startswith("eval/") and all(isinstance(r.get(k, 0.0), (int, float)) for r in rows)]
    if rows and columns:
        page.table(["iteration", *(c[5:] for c in columns)], [[r["iteration"], *(r.get(c) for c in columns)]
                                                               for r in rows], "held-out evaluation per iteration")


def _sweep_section(page: Page, sweep_json: Path, plots: Path) -> None:
    from preftune.eval.sweep import format_sweep
    from preftune.report.measure_plots import plot_sweep

    report = json.loads(sweep_json.read_text())
    page.heading(f"KL-budget sweep: {report['loss']} on {report['task']}")
    page.image(plot_sweep(report, plots / "sweep.png"), "gold reward gain against sqrt(KL), with the fitted curve")
    for line in format_sweep(report).splitlines():
        page.paragraph(line)
    page.table(["value", "step", "KL", "d", "gold reward"],
               [[p["value"], p["step"], p["kl"], p["d"], p["gold_reward"]] for p in report["points"]])


def _probe_section(page: Page, probe_json: Path, plots: Path) -> None:
    from preftune.eval.probe import ProbeResult
    from preftune.report.measure_plots import plot_probe

    report = json.loads(probe_json.read_text())
    page.heading(f"Separability probe: {report['data']} on {report['model']}")
    results = {int(k): ProbeResult(**v) for k, v in report["layers"].items()}
    page.image(plot_probe(results, plots / "probe.png"), "held-out probe accuracy per layer")
    page.table(["layer", "accuracy", "AUC", "Fisher ratio"],
               [[k, r.accuracy, r.auc, r.fisher_ratio] for k, r in sorted(results.items())],
               f"{report['pairs']} pairs, {report['folds']}-fold pair-grouped CV, pooling {report['pooling']}")


def _claims_section(page: Page, run_dir: Path, plots: Path) -> None:
    """`preftune claims`: the plots of every measured effect and of the verdicts, then the table and rows."""
    from preftune.report.claims_plots import plot_claims

    report = json.loads((run_dir / "claims.json").read_text())
    page.heading("Paper claims, reproduced in miniature")
    for path in plot_claims(report, plots):
        page.image(path, path.stem.replace("_", " "))
    if (run_dir / "claims.md").exists():
        page.markdown((run_dir / "claims.md").read_text())


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN_DIR/report.html (or `out`) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory")
    plots = run_dir / "report_plots"
    page = Page(f"preftune report: {run_dir.resolve().name}")
    page.paragraph(f"Run directory `{run_dir.resolve()}`; generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", muted=True)
    found = False
    if (run_dir / "rl_summary.json").exists():  # `preftune rl` (its metrics.jsonl is not a training run's)
        _rl_section(page, run_dir, plots)
        found = True
    elif (run_dir / "summary.json").exists():
        _pipeline_section(page, run_dir, plots)
        found = True
    elif (run_dir / "diffusion_summary.json").exists():  # preftune diffusion train (report/diffusion.py)
        from preftune.report.diffusion import diffusion_section

        diffusion_section(page, run_dir, plots, read_metrics(run_dir))
        found = True
    elif (run_dir / "train_summary.json").exists() or (run_dir / "metrics.jsonl").exists():
        _training_section(page, run_dir, plots)
        found = True
    if (run_dir / "online_summary.json").exists():
        _online_section(page, run_dir, plots)
        found = True
    if (run_dir / "results.json").exists():
        _bench_section(page, run_dir, plots)
        found = True
    for sweep_json in (run_dir / "sweep" / "sweep.json", run_dir / "sweep.json"):
        if sweep_json.exists():
            _sweep_section(page, sweep_json, plots)
            found = True
    if (run_dir / "probe.json").exists():
        _probe_section(page, run_dir / "probe.json", plots)
        found = True
    if (run_dir / "claims.json").exists():
        _claims_section(page, run_dir, plots)
        found = True
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no preftune run (no train_summary.json, metrics.jsonl, rl_summary.json, summary.json, "
                                f"online_summary.json, results.json, sweep.json, probe.json or claims.json)")
    path = Path(out) if out else run_dir / "report.html"
    path.write_text(page.render())
    return path
