"""The `preftune` command line: sft, train, online, eval, generate, methods, verify, quickstart, the
measurement commands probe, sweep, bench, report (cli_measure.py), rl (cli_rl.py), claims (cli_claims.py), and
`preftune diffusion ...` (preftune/diffusion/cli.py)."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

OVERRIDE_HELP = ("Any config key can be overridden as --section.key=value, e.g. --train.lr=1e-5 "
                 "--loss.dpo.beta=0.2 --model.name_or_path=/models/qwen. Values are checked when the config is "
                 "read (ranges, methods and their hyperparameters). Data: data.format auto | text | chat | hh | "
                 "sharegpt, data.columns maps other field names ({prompt: question, ...}), data.on_bad_row error | "
                 "skip. Models load safetensors only (model.allow_pickle) and run no shipped code "
                 "(model.trust_remote_code). Valid keys:\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _overrides(parser: argparse.ArgumentParser, extras: list[str]) -> list[str]:
    bad = [e for e in extras if not (e.startswith("--") and "=" in e)]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (config overrides look like --train.lr=1e-5)")
    return extras


def _keys_epilog() -> str:
    from preftune.config import valid_keys

    return OVERRIDE_HELP + textwrap.fill(", ".join(valid_keys()), width=96, initial_indent="  ",
                                         subsequent_indent="  ")


def build_parser() -> argparse.ArgumentParser:
    from preftune.model_source import add_loading_flags

    parser = argparse.ArgumentParser(prog="preftune", description="Train generative models from preference feedback.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, help_text in (("train", "train a policy on preference data with any registered objective"),
                            ("sft", "supervised fine-tuning (the `sft` objective, no reference model)")):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=_keys_epilog(),
                           formatter_class=_Formatter)
        p.add_argument("--config", type=Path, help="YAML recipe (see configs/); overrides apply on top")
        p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                       help="continue from the run's latest checkpoint, or from CHECKPOINT. Ctrl-C or SIGTERM "
                            "finishes the step in progress, saves it and exits (130, 143); --resume then "
                            "continues exactly")

    p = sub.add_parser("eval", help="evaluate a model on a built-in task: gold reward, win-rate, KL, length",
                       description="Evaluate a model on the held-out prompts of a built-in task. The gold oracle "
                                   "scores samples; --baseline adds a win-rate, --reference a KL estimate.")
    p.add_argument("--model", required=True, help="model directory (save_pretrained) or hub id")
    p.add_argument("--task", default="arithmetic", help="built-in task (default: arithmetic)")
    p.add_argument("--baseline", help="model to compute the win-rate against (e.g. the SFT model)")
    p.add_argument("--reference", help="model to estimate KL(policy || reference) against")
    p.add_argument("--prompts", type=int, default=None, help="number of held-out prompts (default: all)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (default: 4)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", type=Path, help="write the metrics here as JSON (default: MODEL/../eval.json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_loading_flags(p)

    p = sub.add_parser("generate", help="sample responses from a model",
                       description="Sample responses to prompts from a model (KV-cached, batched).")
    p.add_argument("--model", required=True, help="model directory (save_pretrained) or hub id")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", type=Path, help="a file with one prompt per line")
    p.add_argument("-n", "--num", type=int, default=1, help="responses per prompt (default: 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding (default: 1.0)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beams", type=int, default=0, metavar="K",
                   help="beam search with K beams instead of sampling: the most likely response (From r to Q*)")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    add_loading_flags(p)
    from preftune import cli_rl

    cli_rl.add_generate_arguments(p)

    p = sub.add_parser("methods", help="list the registered methods",
                       description="List every registered method with its catalogue seed, family, needs and status, "
                                   "then the analysis tools (probe, diagnostics, sweep, bench, safety task) that "
                                   "implement the catalogue's analysis papers.")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")

    p = sub.add_parser("verify", help="check every method against exact tabular ground truth",
                       description="Run each registered method's exact tabular check (closed-form optima, "
                                   "equilibria, identities) and print a table; exits non-zero on a failure.")
    p.add_argument("methods", nargs="*", metavar="METHOD", help="methods to check (default: all)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("quickstart", help="the whole job on the built-in tiny model: SFT, pairs, DPO, evaluation",
                       description="Build the tiny model, SFT it on the arithmetic task, sample its own answers, "
                                   "label pairs with the gold oracle, train DPO, evaluate and print a before/after "
                                   "table. Pipeline keys can be overridden, e.g. --preference.loss=simpo "
                                   "--preference.train.steps=100 --name=my-run.",
                       formatter_class=_Formatter)
    p.add_argument("--config", type=Path, help="pipeline recipe (default: configs/quickstart.yaml settings)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser("online", help="online / self-play training: iterations of sample -> judge -> pairs -> update",
                       description="Run an online method (online_dpo, dno, sppo, inpo, egpo, nash_mp, mnpo, apo, "
                                   "ofs_dpo) for several iterations; see configs/online/. Keys can be overridden "
                                   "as --section.key=value, e.g. --iterations=5 --train.lr=1e-4. Each iteration "
                                   "prints the judge's counters; a judge that fails stops the run (a rejected "
                                   "key at its first request; an iteration with more than judge.max_failure_rate "
                                   "of failed requests, default 0.2, after saving what was done).",
                       formatter_class=_Formatter)
    p.add_argument("--config", type=Path, help="online recipe (configs/online/<method>.yaml)")
    p.add_argument("--resume", action="store_true", help="continue a stopped run at the iteration it stopped in "
                                                         "(Ctrl-C or SIGTERM stops at once: exit 130, 143)")

    p = sub.add_parser("push", help="upload a run's model, with its model card, to the Hugging Face Hub",
                       description="Upload the model directory of a run (RUN/model: weights, tokenizer and the model "
                                   "card README.md that training wrote) to a Hub repository, creating it if needed. "
                                   "Needs a login (`hf auth login` or HF_TOKEN) and the network; HF_ENDPOINT picks "
                                   "another Hub.")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a run directory (or its model/ directory)")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the Hub model repository")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", help="a Hub token (default: the login or HF_TOKEN)")

    from preftune import cli_claims, cli_measure
    from preftune.diffusion import cli as diffusion_cli

    cli_measure.add_parsers(sub, _Formatter)
    cli_rl.add_parsers(sub, _Formatter)
    cli_claims.add_parser(sub, _Formatter)
    diffusion_cli.add_parser(sub, _Formatter)
    return parser


def _quiet_libraries() -> None:
    """Our own progress bars say what runs; transformers' per-file load/save bars only add noise."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if args.version:
        from preftune import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    _quiet_libraries()
    from preftune import cli_claims, cli_measure, cli_rl

    takes_overrides = ("train", "sft", "quickstart", "online", "diffusion", "claims", *cli_measure.TAKES_OVERRIDES,
                       *cli_rl.TAKES_OVERRIDES)
    if args.command not in takes_overrides:
        if extras:
            parser.error(f"unrecognised arguments: {' '.join(extras)}")
    handler = {"train": cmd_train, "sft": cmd_train, "eval": cmd_eval, "generate": cmd_generate,
               "methods": cmd_methods, "verify": cmd_verify, "quickstart": cmd_quickstart,
               "online": cmd_online, "push": cmd_push, "diffusion": cmd_diffusion, "claims": cli_claims.cmd_claims,
               **cli_measure.HANDLERS, **cli_rl.HANDLERS}[args.command]
    import preftune.train  # noqa: F401  (registers the built-in models a training run makes: builtin:arithmetic-sft)
    from preftune.config import ConfigError
    from preftune.data.formats import DataError
    from preftune.judges import JudgeError

    try:
        code = handler(args, _overrides(parser, extras) if args.command in takes_overrides else [])
    except (ConfigError, DataError, JudgeError, KeyError, ValueError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"preftune {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # the loops have saved what can be resumed and said so
        return getattr(stop, "exit_code", 130)
    _leave_process_group()
    return code


def _leave_process_group() -> None:
    """Destroy the distributed group (if a launcher made one) once the command has ended normally. Left
    to the interpreter's teardown, gloo's worker threads can be destroyed while still joinable, and a
    process that finished its work aborts with SIGABRT ("terminate called without an active exception";
    pytorch/pytorch#65513, #190489), which fails the launch. Not after an error: another process may
    still be inside a collective, and destroying the group could then hang."""
    distributed = sys.modules.get("torch.distributed")  # not imported: no group was made
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def cmd_train(args, overrides: list[str]) -> int:
    from preftune.config import load_config
    from preftune.train.runner import run_training

    base = {"loss": "sft", "reference": "none", "name": "sft"} if args.command == "sft" else None
    cfg = load_config(args.config, overrides, base=base)
    if args.command == "sft" and cfg.loss != "sft" and "sft" not in (cfg.loss if isinstance(cfg.loss, dict) else {}):
        raise ValueError("`preftune sft` trains the sft objective; use `preftune train` for other losses")
    run_dir = run_training(cfg, resume=args.resume)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # one report per distributed run
        return 0
    summary = json.loads((run_dir / "train_summary.json").read_text())
    print(f"trained {summary['objective']} for {summary['steps']} steps; model: "
          f"{summary['model_dir'] or 'not saved (train.save_model: false)'}")
    print(f"run directory: {run_dir}")
    return 0


def cmd_diffusion(args, overrides: list[str]) -> int:
    from preftune.diffusion import cli as diffusion_cli

    return diffusion_cli.run(args, overrides)


def cmd_online(args, overrides: list[str]) -> int:
    from preftune.train.online import run_online
    from preftune.train.online_config import load_online_config

    cfg = load_online_config(args.config, overrides)
    run_dir = run_online(cfg, resume=args.resume)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # one report per distributed run
        return 0
    summary = json.loads((run_dir / "online_summary.json").read_text())
    keys = [k for k in ("duality_gap", "win_rate_vs_initial", "sampled_win_rate_vs_initial", "gold_score")
            if k in summary["iterations"][0]]
    print(f"\n{summary['method']} on {summary['task']}: {len(summary['iterations']) - 1} iterations, "
          f"{summary['wall_seconds']:.0f} s")
    print("iteration  " + "  ".join(f"{k:>28}" for k in keys))
    for row in summary["iterations"]:
        print(f"{row['iteration']:>9}  " + "  ".join(f"{row.get(k, float('nan')):>28.4f}" for k in keys))
    print(f"run directory: {run_dir} (online_summary.json, online_curve.png, iterations/)")
    return 0


def cmd_push(args, _) -> int:
    from preftune.hub import PushError, push

    try:
        url = push(args.run, args.repo, private=args.private, token=args.token)
    except PushError as error:
        print(f"preftune push: error: {error}", file=sys.stderr)
        return 1
    print(f"uploaded {args.run} to {url}")
    return 0


def cmd_eval(args, _) -> int:
    from preftune.eval.task_eval import evaluate_on_task
    from preftune.model_source import flag_loading
    from preftune.models import load_causal_lm, load_tokenizer_and_model
    from preftune.tasks import get_task

    task, loading = get_task(args.task), flag_loading(args)
    tokenizer, model = load_tokenizer_and_model(args.model, **loading)
    baseline = load_causal_lm(args.baseline, **loading) if args.baseline else None
    reference = load_causal_lm(args.reference, **loading) if args.reference else None
    metrics = evaluate_on_task(model, tokenizer, task, task.prompts("test", args.prompts), baseline=baseline,
                               reference=reference, samples_per_prompt=args.samples, temperature=args.temperature,
                               max_new_tokens=args.max_new_tokens, seed=args.seed, progress=not args.json)
    metrics.update(model=args.model, task=args.task, baseline=args.baseline, reference=args.reference)
    out = args.out or Path(args.model).resolve().parent / "eval.json"
    if Path(args.model).exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=1))
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        for key, value in metrics.items():
            print(f"{key:<20} {value:.4f}" if isinstance(value, float) else f"{key:<20} {value}")
        if Path(args.model).exists():
            print(f"written to {out}")
    return 0


def cmd_generate(args, _) -> int:
    from preftune.model_source import flag_loading
    from preftune.models import load_tokenizer_and_model
    from preftune.sampling import sample

    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [line for line in args.prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give at least one --prompt or a --prompts-file")
    if args.value_model:
        from preftune.cli_rl import generate_with_value_model

        return generate_with_value_model(args, prompts)
    tokenizer, model = load_tokenizer_and_model(args.model, **flag_loading(args))
    if args.beams:
        from preftune.eval.search import beam_search

        for prompt, found in zip(prompts, beam_search(model, tokenizer, prompts, args.beams, args.max_new_tokens)):
            print(json.dumps({"prompt": prompt, "response": found.text, "logp": found.score}) if args.json
                  else f"{prompt}{found.text}")
        return 0
    samples = sample(model, tokenizer, prompts, args.num, args.temperature, args.top_p, args.max_new_tokens,
                     seed=args.seed, progress=False)
    for prompt, texts in zip(prompts, samples.texts):
        if args.json:
            print(json.dumps({"prompt": prompt, "responses": texts}))
        else:
            for text in texts:
                print(f"{prompt}{text}")
    return 0


def cmd_methods(args, _) -> int:
    from preftune.analysis_tools import all_tools
    from preftune.methods import all_methods

    specs, tools = all_methods(), all_tools()
    if args.json:  # methods ("kind": "method"), then the analysis tools ("kind": "tool", analysis_tools.py)
        print(json.dumps([{"kind": "method", **s.as_dict()} for s in specs] + [t.as_dict() for t in tools], indent=1))
        return 0
    width = max(len(s.name) for s in specs) + 2  # the longest name still leaves a gap
    kind_width = max(len(s.input_kind) for s in specs) + 2  # diffusion kinds are longer than "pairwise"
    print(f"{'name':<{width}}{'seed':<16}{'family':<24}{'reference':<11}{'input':<{kind_width}}{'status':<14}taxonomy")
    for s in specs:
        tags = "; ".join(",".join(v) for v in s.taxonomy.values() if v)
        print(f"{s.name:<{width}}{(s.seed or '-'):<16}{s.family:<24}{('yes' if s.needs_reference else 'no'):<11}"
              f"{s.input_kind:<{kind_width}}{s.status:<14}{tags}")
    print(f"\n{len(specs)} methods; `preftune methods --json` gives hyperparameters, papers and checks")
    print(f"\n{'analysis tool':<28}{'seed':<22}command")
    for t in tools:
        print(f"{t.name:<28}{t.seed:<22}{t.command}")
    return 0


def cmd_verify(args, _) -> int:
    from preftune.tabular.verify import run_verify

    return run_verify(args.methods or None, args.json, sys.stdout)


def cmd_quickstart(args, overrides: list[str]) -> int:
    from preftune.pipeline import format_table, load_pipeline_config, run_pipeline

    config = args.config
    if config is None and Path("configs/quickstart.yaml").exists():
        config = Path("configs/quickstart.yaml")
    cfg = load_pipeline_config(config, overrides)
    summary = run_pipeline(cfg, progress=not args.no_progress)
    print()
    print(format_table(summary))
    print(f"\npreference pairs: {summary['preference_data']['task']['pairs']} from "
          f"{summary['preference_data']['task']['prompts']} prompts; total time {summary['total_seconds']:.0f} s")
    print(f"run directory: {summary['run_dir']} (summary.json, plots/, sft/, preference/)")
    return 0
