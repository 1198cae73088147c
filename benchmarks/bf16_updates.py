"""How many weights a bf16 recipe moves: configs/hf/dpo_hh_rlhf.yaml (model.dtype bfloat16, train.precision bf16,
lr 5e-7) for a few steps on the shared HH-RLHF sample, with the built-in tiny model saved in bf16 as the start.

    python benchmarks/bf16_updates.py [--steps 10]    # prints a markdown table; writes results/bf16_updates.md

Three runs from the same bf16 weights and data:
* `bf16 weights stepped`: AdamW steps the bf16 parameters themselves (preftune before issue 12, item 2);
* `fp32 master weights`: the recipe as shipped (train/precision.py keeps fp32 copies of the trained weights);
* `fp32 weights`: the same recipe with model.dtype float32 (fp32 weights under bf16 autocast), the yardstick.
Each run's weights, as the optimizer left them (its last checkpoint) and as saved (rounded to bf16), are compared
with the start: the fraction of weights that differ, and sum |w - w0|. Deterministic (one seed, one thread); wall time is not reported.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import subprocess
import tempfile
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
# The shared data sits beside the checkout (or beside its worktrees' folder).
DATA = next((d / "shared" / "data" / "hh-rlhf-harmless-base-test-part1.jsonl.gz" for d in ROOT.parents[:2]
             if (d / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data")


def moved(weights: Path, initial: dict, rounded: bool) -> tuple[float, float]:
    """(fraction of weights that changed, sum of |change|) of a safetensors file against `initial`, as they are
    (`rounded` False: the weights the optimizer stepped) or rounded to bf16."""
    from safetensors.torch import load_file

    trained = {k: v.to(torch.bfloat16) if rounded else v for k, v in load_file(str(weights)).items() if k in initial}
    changed = sum(int((trained[k] != initial[k].to(trained[k].dtype)).sum()) for k in trained)
    total = sum(initial[k].numel() for k in trained)
    distance = sum(float((trained[k].float() - initial[k].float()).abs().sum()) for k in trained)
    return changed / total, distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--data", type=Path, default=DATA, help="the shared HH-RLHF sample (.jsonl.gz)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from safetensors.torch import load_file

    from preftune.config import load_config
    from preftune.models import build_tiny_model, build_tiny_tokenizer
    from preftune.train import loop
    from preftune.train.checkpoint import list_checkpoints
    from preftune.train.runner import run_training

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        start, data = Path(scratch) / "start", Path(scratch) / "hh.jsonl"
        tokenizer = build_tiny_tokenizer()
        build_tiny_model(tokenizer).to(torch.bfloat16).save_pretrained(start)
        tokenizer.save_pretrained(start)
        initial = load_file(str(start / "model.safetensors"))
        with gzip.open(args.data, "rt") as handle:  # the tiny tokenizer knows few words: short rows are enough
            data.write_text("".join(line for _, line in zip(range(200), handle)))
        runs = [("bf16 weights stepped (before)", "bfloat16", True), ("fp32 master weights (now)", "bfloat16", False),
                ("fp32 weights (yardstick)", "float32", False)]
        for label, dtype, old in runs:
            cfg = load_config(ROOT / "configs" / "hf" / "dpo_hh_rlhf.yaml", [
                f"--model.name_or_path={start}", f"--model.dtype={dtype}", f"--data.source={data}",
                "--data.max_length=128", "--data.max_prompt_length=96", "--data.eval_fraction=0",
                f"--train.steps={args.steps}", "--train.grad_accum=1", f"--train.checkpoint_every={args.steps}",
                "--train.progress=false", "--train.report_to=[]", f"--output_dir={scratch}/{dtype}-{old}"])
            with mock.patch.object(loop, "fp32_master_weights", lambda model: 0) if old else nullcontext():
                run_dir = run_training(cfg)
            stepped = list_checkpoints(run_dir)[-1] / "model.safetensors"  # the weights as the optimizer left them
            rows.append((label, dtype, *moved(stepped, initial, False), *moved(run_dir / "model" / "model.safetensors",
                                                                               initial, True)))

    flags = subprocess.run("lscpu | grep -o -w -E 'avx512_bf16|amx_bf16|avx2' | sort -u | tr '\\n' ' '",
                           shell=True, capture_output=True, text=True).stdout.strip()
    table = [f"# bf16 updates: weights moved after {args.steps} steps of configs/hf/dpo_hh_rlhf.yaml", "",
             f"`python benchmarks/bf16_updates.py --steps {args.steps}`, {datetime.date.today()}, CPU flags: {flags}; "
             "built-in tiny model saved in bf16, first 200 rows of the shared HH-RLHF sample, batch 4, lr 5e-7.", "",
             "| run | model.dtype | weights changed, as stepped | sum abs change | weights changed, rounded to bf16 "
             "| sum abs change |", "|---|---|---|---|---|---|"]
    table += [f"| {label} | {dtype} | {a:.2%} | {b:.4g} | {c:.2%} | {d:.4g} |" for label, dtype, a, b, c, d in rows]
    text = "\n".join(table) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / "bf16_updates.md").write_text(text)


if __name__ == "__main__":
    main()
