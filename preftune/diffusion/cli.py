"""`preftune diffusion train|sample|eval`: the command line of the diffusion family.

Nothing heavy is imported until a command runs, so `preftune --help` and the language commands do not
pay for diffusers.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

DESCRIPTION = ("Preference tuning of diffusion and flow models (diffusion.md): train with any diffusion "
               "method of the registry, sample from a model, evaluate it against its reference. Models are "
               "diffusers pipeline directories, denoiser directories (denoiser/ + scheduler/) or builtin:toy-<name>.")


def add_parser(sub, formatter) -> None:
    parser = sub.add_parser("diffusion", help="train, sample and evaluate diffusion / flow models",
                            description=DESCRIPTION, formatter_class=formatter)
    commands = parser.add_subparsers(dest="diffusion_command", metavar="COMMAND")
    p = commands.add_parser("train", help="train with a diffusion recipe (configs/diffusion/<method>.yaml)",
                            description="Train a diffusion or flow model with a recipe; overrides look like "
                                        "--train.lr=1e-4 --loss.diffusion_dpo.beta=100.",
                            epilog=_keys_epilog(), formatter_class=formatter)
    p.add_argument("--config", type=Path, help="YAML recipe (configs/diffusion/<method>.yaml)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the run's latest checkpoint, or from CHECKPOINT (Ctrl-C or SIGTERM saves "
                        "the last completed step)")
    p = commands.add_parser("sample", help="draw samples from a model into a PNG grid (and a .pt tensor)",
                            description="Sample from a diffusion model directory (a trained run's model/ or any "
                                        "pipeline / denoiser directory) and save a PNG grid.")
    p.add_argument("--model", required=True, help="model directory or builtin:toy-<name>")
    p.add_argument("-n", "--num", type=int, default=16, help="number of samples (default: 16)")
    p.add_argument("--prompt", action="append", default=[], help="a caption (text models; repeatable, cycled)")
    p.add_argument("--condition", type=float, action="append", default=[],
                   help="a class id or control value (toy models; repeatable)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    p.add_argument("--sampler", default="auto", choices=["auto", "ddim", "sde", "ode"],
                   help="auto: deterministic DDIM for DDPM models, the Euler ODE for flow models")
    p.add_argument("--noise", type=float, default=0.0, help="DDIM eta or flow SDE noise level (default: 0)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default: 1)")
    p.add_argument("--frames", type=int, default=0, help="frames per sample of a video network")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load pickle (.bin) weights, which can run code when read (default: safetensors only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG path (default: samples.png)")
    p = commands.add_parser("eval", help="evaluate a model: reward, target fraction, quality and KL proxies",
                            description="Evaluate a model with a recipe's reward and evaluation settings against a "
                                        "reference (default: the recipe's base model).",
                            formatter_class=formatter)
    p.add_argument("--config", type=Path, help="the recipe the model was trained with")
    p.add_argument("--model", help="model to evaluate (default: the recipe's run directory model/)")
    p.add_argument("--reference", help="reference model (default: the recipe's model.name_or_path)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _keys_epilog() -> str:
    from preftune.diffusion.config import diffusion_keys

    return "Valid keys:\n" + textwrap.fill(", ".join(diffusion_keys()), width=96, initial_indent="  ",
                                           subsequent_indent="  ")


def run(args, overrides: list[str]) -> int:
    command = getattr(args, "diffusion_command", None)
    if command is None:
        raise ValueError("give a diffusion command: train, sample or eval (see `preftune diffusion --help`)")
    if command != "train" and command != "eval" and overrides:
        raise ValueError(f"unrecognised arguments: {' '.join(overrides)}")
    return {"train": train, "sample": sample, "eval": evaluate}[command](args, overrides)


def train(args, overrides: list[str]) -> int:
    from preftune.diffusion.config import load_diffusion_config
    from preftune.diffusion.train import SUMMARY, train_diffusion

    cfg = load_diffusion_config(args.config, overrides)
    run_dir = train_diffusion(cfg, resume=args.resume)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    summary = json.loads((run_dir / SUMMARY).read_text())
    print(f"\ntrained {summary['objective']} for {summary['steps']} steps; model: {summary['model_dir']}")
    _print_change(summary.get("initial_eval", {}), summary.get("eval", {}))
    print(f"run directory: {run_dir} (metrics.jsonl, samples/, model/); `preftune report {run_dir}` draws it")
    return 0


def _print_change(before: dict, after: dict) -> None:
    keys = [k for k in after if k in before]
    if keys:
        print(f"{'metric':<28}{'start':>10}{'end':>10}")
        for key in keys:
            print(f"{key.removeprefix('eval/'):<28}{before[key]:>10.4f}{after[key]:>10.4f}")


def sample(args, _) -> int:
    import torch

    from preftune.diffusion.models import load_diffusion_model
    from preftune.diffusion.sampling import sample as draw
    from preftune.report.diffusion import save_sample_grid

    model = load_diffusion_model(args.model, progress=False, frames=args.frames, allow_pickle=args.allow_pickle)
    conditions = None
    if args.prompt:
        conditions = [args.prompt[i % len(args.prompt)] for i in range(args.num)]
    elif args.condition:
        values = torch.tensor(args.condition)
        conditions = (values.long() if model.task is not None and model.task.num_classes else values)
        conditions = conditions.repeat(args.num // len(conditions) + 1)[: args.num]
        if model.task is not None and model.task.control_dim:
            conditions = torch.tensor(args.condition).reshape(-1, model.task.control_dim).repeat(args.num, 1)[: args.num]
    elif model.pipeline is not None:
        conditions = [""] * args.num
    sampler = args.sampler if args.sampler != "auto" else ("ddim" if model.schedule.kind == "ddpm" else "ode")
    cond = model.condition(conditions) if conditions is not None else None
    uncond = model.null_condition(args.num) if args.guidance != 1.0 else None
    x0 = draw(model.call(), model.schedule, (args.num, *model.sample_shape), cond, steps=args.steps, sampler=sampler,
              noise=args.noise, generator=torch.Generator().manual_seed(args.seed), guidance=args.guidance,
              uncond=uncond).x0
    decoded = model.decode(x0)
    path = save_sample_grid(decoded, model.task, args.out, conditions if torch.is_tensor(conditions) else None,
                            title=f"{args.num} samples, {sampler}, {args.steps} steps")
    torch.save(decoded, Path(args.out).with_suffix(".pt"))
    print(f"wrote {path} and {Path(args.out).with_suffix('.pt')}")
    return 0


def evaluate(args, overrides: list[str]) -> int:
    from preftune.diffusion.config import load_diffusion_config
    from preftune.diffusion.evaluate import Evaluator
    from preftune.diffusion.models import load_diffusion_model
    from preftune.diffusion.rewards import build_reward
    from preftune.models import Reference

    cfg = load_diffusion_config(args.config, overrides)
    path = args.model or str(cfg.run_dir / "model")
    model = load_diffusion_model(path, progress=False, frames=cfg.model.frames, allow_pickle=cfg.model.allow_pickle)
    reference_model = load_diffusion_model(args.reference or cfg.model.name_or_path, progress=False,
                                           frames=cfg.model.frames, allow_pickle=cfg.model.allow_pickle)
    reference = Reference("model", frozen=reference_model.network)
    evaluator = Evaluator(cfg, model, build_reward(cfg.reward, model.task), reference)
    metrics = evaluator(model.network, 0)
    base = Evaluator(cfg, reference_model, build_reward(cfg.reward, reference_model.task), None)(reference_model.network, 0)
    out = Path(path).resolve().parent / "eval.json"
    if Path(path).exists():
        out.write_text(json.dumps({"model": path, "metrics": metrics, "reference_metrics": base}, indent=1))
    if args.json:
        print(json.dumps({"model": path, "metrics": metrics, "reference_metrics": base}, indent=1))
    else:
        print(f"model {path} vs reference {args.reference or cfg.model.name_or_path}")
        _print_change(base, metrics)
        for key in sorted(set(metrics) - set(base)):
            print(f"{key.removeprefix('eval/'):<28}{'':>10}{metrics[key]:>10.4f}")
        if Path(path).exists():
            print(f"written to {out}")
    return 0

