"""The `preftune rl` command (reinforcement-learning hybrids, preftune/rl/) and value-guided generation.

cli.py registers the parser with `add_parsers` and dispatches through `HANDLERS`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RL_DESCRIPTION = """Train a language model with an RL hybrid of the catalogue, or an actor-critic on the lot-sizing
environment. Recipes: configs/rl/<method>.yaml (grpo, mo_grpo, ppo, rto, dapo_step, oreo, mcts_dpo: task
multistep, two-objective, safety, ...; pdppo and its PPO baseline: task lot-sizing). Every key can be
overridden as --section.key=value, e.g. --iterations=5 --train.lr=1e-5 --loss.mo_grpo.weights=[0.7,0.3].
Each iteration makes data from the current policy (rollouts, DAPO candidates, OREO's offline slice,
MCTS pairs), updates on it and evaluates; RUN_DIR holds metrics.jsonl, rl_summary.json, checkpoints/,
model/ and value_model/. `preftune report RUN_DIR` draws the curves."""


def add_parsers(sub, formatter=argparse.RawDescriptionHelpFormatter) -> None:
    p = sub.add_parser("rl", help="RL hybrids: grpo, mo_grpo, ppo, rto, dapo_step, oreo, mcts_dpo; pdppo (lot-sizing)",
                       description=RL_DESCRIPTION, formatter_class=formatter)
    p.add_argument("--config", type=Path, help="rl recipe (configs/rl/<method>.yaml)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the run's latest checkpoint (or from CHECKPOINT)")


def add_generate_arguments(p) -> None:
    p.add_argument("--value-model", help="value-guided step-level beam search with this value model (OREO's "
                                         "RUN_DIR/value_model): --beams partial answers per prompt (default 4)")
    p.add_argument("--separator", default="\n\n", help="with --value-model: the text that ends a reasoning step "
                                                       "(default: a blank line; ';' on the multistep task)")


def cmd_rl(args, overrides: list[str]) -> int:
    from preftune.rl.config import load_rl_config
    from preftune.rl.loop import run_rl

    cfg = load_rl_config(args.config, overrides)
    run_dir = run_rl(cfg, resume=args.resume)
    summary = json.loads((run_dir / "rl_summary.json").read_text())
    if summary["kind"] == "lot-sizing":
        final = summary["final"]
        print(f"\n{summary['method']} on lot-sizing: {summary['episodes']} episodes, {summary['wall_seconds']:.0f} s")
        print(f"expected return {final.get('eval/expected_return', float('nan')):.4f} (greedy "
              f"{final.get('eval/greedy_return', float('nan')):.4f}); DP optimum {summary['optimum']:.4f}")
    else:
        keys = [k for k in ("eval/gold_reward", "eval/gold_reward_greedy", "eval/search_gold_reward", "eval/kl")
                if k in summary["iterations"][-1]]
        keys += sorted(k for k in summary["iterations"][-1] if k.startswith("eval/aspect/"))
        print(f"\n{summary['method']} on {summary['task']}: {len(summary['iterations']) - 1} iterations, "
              f"{summary['wall_seconds']:.0f} s")
        print("iteration " + "".join(f"{k[5:]:>22}" for k in keys))
        for row in summary["iterations"]:
            print(f"{row['iteration']:>9} " + "".join(f"{row.get(k, float('nan')):>22.4f}" for k in keys))
    print(f"run directory: {run_dir} (rl_summary.json, metrics.jsonl); `preftune report {run_dir}`")
    return 0


def generate_with_value_model(args, prompts: list) -> int:
    from preftune.model_source import flag_loading
    from preftune.models import load_tokenizer_and_model
    from preftune.rl.search import value_guided_search
    from preftune.rl.value_model import ValueModel

    loading = flag_loading(args)  # --trust-remote-code / --allow-pickle, for the policy and the value model alike
    tokenizer, model = load_tokenizer_and_model(args.model, **loading)
    found = value_guided_search(model, ValueModel.from_pretrained(args.value_model, **loading), tokenizer, prompts,
                                args.beams or 4, args.separator, args.max_new_tokens, temperature=args.temperature,
                                seed=args.seed)
    for prompt, result in zip(prompts, found):
        print(json.dumps({"prompt": prompt, "response": result.text, "value": result.value}) if args.json
              else f"{prompt}{result.text}")
    return 0


HANDLERS = {"rl": cmd_rl}
TAKES_OVERRIDES = ("rl",)
