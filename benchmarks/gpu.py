"""preftune against TRL's DPOTrainer on one GPU: tokens/s, peak memory, largest batch, MFU, loss parity.

    python benchmarks/gpu.py            # on one GPU, in one process, within --budget seconds (default 330):
                                        # writes benchmarks/results/gpu.json, gpu.md and the table in
                                        # benchmarks/README.md
    python benchmarks/gpu.py --smoke    # tiny shapes on the CPU, to check the script end to end
                                        # (tests/test_gpu_benchmark.py); writes results/gpu-smoke.*

Both libraries train randomly initialised models with the shapes of Qwen2.5-0.5B and Qwen2.5-1.5B
(their dimensions, GQA heads, 151,936-word vocabulary and tied embeddings, in Llama modules),
built locally (nothing is downloaded), saved once in bf16 and loaded by both
in fp32: bf16 autocast with fp32 master weights and fp32 Adam state, SDPA attention, gradient
checkpointing off. The data are random words of a word-level tokenizer with the model's
vocabulary (one word, one token), so both libraries see the same token ids.

What is measured, per model shape, data mix and pair length:
* tokens/s: real tokens of the pairs a step trains on, counted as TRL's batch holds them (prompt +
  chosen and prompt + rejected, the prompt twice), divided by the median wall time between step
  ends after the warm-up steps (CUDA synchronised at each step end).
* peak memory: torch.cuda.max_memory_allocated during the run, minus what was allocated before it.
  The runs share one process, and everything of a run is freed before the next one starts.
* largest batch: the largest number of pairs per step that trains without running out of GPU
  memory, found by doubling from the timing batch and then bisecting, one short run per try. The
  search stops at --budget; an unfinished search is reported as a lower bound (">= b").
* MFU: model FLOPs per step over the step time, divided by the card's bf16 matmul peak measured at
  the start (8192x8192 matmuls). Model FLOPs per pair, over its two rows of s = prompt + response
  tokens: 8 N per token (6 N policy forward and backward, 2 N reference forward; N = every matmul
  parameter, the lm-head included and the input embedding not, tied or not) plus causal attention,
  8 L d s^2 per row (6 for the policy, 2 for the reference). A run that avoids work (a shared
  prompt, a cached reference) still counts it all, so MFU reads as useful work per second.
* loss parity: bf16, the Qwen2.5-0.5B-shaped model, one batch of 2 balanced 2k-token pairs repeated
  for 3 steps from the same weights (learning rate 1e-3, so that the loss moves); preftune's DPO
  loss against TRL's sigmoid loss.

Runs compared: preftune with its defaults (the reference cache, prompt sharing, chunked lm-head) and
TRL with `precompute_ref_log_probs=True`, so neither holds a reference model while training;
`--variants live` adds both with a live reference model.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import BETA, make_rows, word_tokenizer  # noqa: E402  (the CPU benchmark's data and tokenizer)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
TABLE_START, TABLE_END = "<!-- gpu-table:start -->", "<!-- gpu-table:end -->"
TRL_VERSION = "1.16.0"  # the version benchmarks/speed.py measured against (pyproject's `bench` extra pins it)


@dataclass(frozen=True)
class Shape:
    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    batch: dict              # pair length -> pairs per step in the timing runs


SHAPES = [  # Qwen2.5's published dimensions (tied embeddings, rope theta 1e6), randomly initialised
    Shape("Qwen2.5-0.5B", 151936, 896, 4864, 24, 14, 2, {2048: 8, 8192: 2}),
    Shape("Qwen2.5-1.5B", 151936, 1536, 8960, 28, 12, 2, {2048: 4, 8192: 1}),
]
SMOKE_SHAPES = [Shape("tiny", 512, 64, 128, 2, 4, 2, {96: 2})]
MIXES = {"prompt-heavy": 4.0, "balanced": 1.0}  # prompt length / response length
WARMUP, TIMED = 2, 4          # steps per timing run (the smoke run takes 1 + 2)
PARITY_LR = 1e-3              # large enough that three steps move the loss visibly
RUNS = {"cached": [("preftune", "cached"), ("trl", "precomputed")],
        "live": [("preftune", "live"), ("trl", "live")]}


def lengths(pair_tokens: int, ratio: float) -> tuple[int, int]:
    """(prompt, response) tokens of a pair of `pair_tokens` = prompt + chosen + rejected."""
    response = round(pair_tokens / (ratio + 2))
    return pair_tokens - 2 * response, response


def build_model(shape: Shape, path: Path, device: str) -> dict:
    """Save a randomly initialised model of `shape` (bf16) and its tokenizer; returns its sizes.

    Llama modules with Qwen2.5's dimensions: the same matmuls as Qwen2, whose only difference, small
    q/k/v biases, is left out. A Qwen2 model directory would make transformers load the word-level
    tokenizer as Qwen's byte-level one, which cannot read it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=32768, rope_theta=1e6,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(path)
    word_tokenizer(shape.vocab).save_pretrained(path)
    del model
    return {"parameters": total, "matmul_parameters": total}  # tied: the embedding is the lm-head, counted once


def model_flops_per_pair(shape: Shape, matmul_parameters: int, prompt: int, response: int) -> float:
    s = prompt + response
    return 2 * (8 * matmul_parameters * s + 8 * shape.layers * shape.hidden * s * s)


# --------------------------------------------------------------------------- one run

class Timer:
    """Step-end times, taken after the device has finished the step's work."""

    def __init__(self, cuda: bool):
        self.cuda, self.times = cuda, []

    def __call__(self, *_) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def run_preftune(spec: dict, out: Path, timer: Timer) -> list[float]:
    from preftune.config import load_config
    from preftune.train.runner import run_training

    cfg = load_config(None, [
        f"--output_dir={out}", f"--model.name_or_path={spec['model']}", f"--data.source={spec['data']}",
        f"--data.max_length={spec['max_length']}", f"--data.max_prompt_length={spec['max_prompt_length']}",
        f"--loss.dpo.beta={BETA}", f"--train.batch_size={spec['batch']}", f"--train.steps={spec['steps']}",
        f"--train.lr={spec['lr']}", "--train.warmup_ratio=0", "--train.schedule=constant", "--train.weight_decay=0",
        "--train.max_grad_norm=1.0", f"--train.precision={spec['precision']}", "--train.progress=false",
        "--train.seed=0", "--train.save_model=false", f"--speed.reference_cache={'off' if spec['variant'] == 'live' else 'on'}",
        f"--speed.reference_cache_dir={out}/reference-cache"])
    run_dir = run_training(cfg, on_step_end=timer)
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_trl(spec: dict, out: Path, timer: Timer) -> list[float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timer()

    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, attn_implementation="sdpa")
    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=spec["batch"], max_steps=spec["steps"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        use_cpu=not timer.cuda, bf16=spec["precision"] == "bf16", gradient_checkpointing=False, beta=BETA,
        loss_type=["sigmoid"], precompute_ref_log_probs=spec["variant"] == "precomputed", max_length=None,
        dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(spec["model"]), callbacks=[StepTimer()])
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def run(spec: dict, cuda: bool) -> dict:
    """One training run in this process: its losses, step times and peak memory, or {"oom": True}."""
    import torch

    from preftune.train.loop import release_accelerator

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    timer = Timer(cuda)
    result, started = {"oom": False}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="preftune-gpu-") as out:
        try:
            losses = (run_preftune if spec["library"] == "preftune" else run_trl)(spec, Path(out), timer)
        except torch.OutOfMemoryError:
            result["oom"] = True
        finally:
            release_accelerator()  # both libraries' accelerate settings, so the next run may differ
    gc.collect()
    if cuda:
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        torch.cuda.empty_cache()
    if result["oom"]:
        return result
    steps = [b - a for a, b in zip(timer.times, timer.times[1:])][spec["warmup"] - 1:]
    return {**result, "losses": losses, "step_seconds": steps, "seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------- the largest batch

def largest_batch(fits: Callable[[int], bool], start: int, deadline: float, clock=time.perf_counter,
                  limit: int = 4096) -> tuple[int, bool]:
    """The largest batch b with fits(b), knowing fits(start): doubling, then bisecting between the last
    size that fit and the first that did not. Returns (b, exact): exact is False when the deadline
    (a clock value) or `limit` stopped the search first, and b is then only a lower bound."""
    good, bad = start, None
    while bad is None:
        if clock() >= deadline or 2 * good > limit:
            return good, False
        if fits(2 * good):
            good *= 2
        else:
            bad = 2 * good
    while bad - good > 1:
        if clock() >= deadline:
            return good, False
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good, True


# --------------------------------------------------------------------------- the benchmark

def matmul_peak_tflops(cuda: bool) -> float:
    """Best bf16 (GPU) or fp32 (CPU smoke) matmul throughput, in TFLOP/s."""
    import torch

    n, dtype, device = (8192, torch.bfloat16, "cuda") if cuda else (512, torch.float32, "cpu")
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    best = 0.0
    for _ in range(12):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - started))
    return best / 1e12


def write_data(shape: Shape, path: Path, prompt: int, response: int, count: int, seed: int) -> None:
    rows = make_rows(shape, prompt, response, 0.0, count, seed)  # exact lengths: no padding to muddy the counts
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def trl_installed() -> str | None:
    """TRL's version, or None when it is not installed (the smoke run then times preftune alone)."""
    try:
        import trl
    except ImportError:
        return None
    return trl.__version__


def measure(args, work: Path) -> dict:
    import torch
    import transformers

    trl_version = trl_installed()
    cuda = torch.cuda.is_available() and not args.smoke
    warmup, timed = (1, 2) if args.smoke else (WARMUP, TIMED)
    started = time.perf_counter()
    deadline = started + args.budget
    shapes = SMOKE_SHAPES if args.smoke else [s for s in SHAPES if s.name in args.shapes]
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    precision = "bf16" if cuda else "fp32"
    results = {"command": " ".join(["python", "benchmarks/gpu.py", *sys.argv[1:]]), "device": device,
               "precision": precision, "smoke": args.smoke,
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
                            "trl_of_cpu_benchmark": TRL_VERSION},
               "peak_tflops": matmul_peak_tflops(cuda), "shapes": {}, "timing": [], "parity": []}
    if trl_version != TRL_VERSION:
        print(f"warning: TRL {trl_version}, but benchmarks/speed.py measured TRL {TRL_VERSION}", flush=True)
    libraries = ["preftune"] + (["trl"] if trl_version else [])
    runs = [(library, variant) for variant in args.variants for library, variant in RUNS[variant] if library in libraries]
    for shape in shapes:
        model_dir = work / shape.name
        sizes = build_model(shape, model_dir, "cuda" if cuda else "cpu")
        results["shapes"][shape.name] = {**asdict(shape), **sizes}
        for pair_tokens, batch in shape.batch.items():
            for mix, ratio in MIXES.items():
                prompt, response = lengths(pair_tokens, ratio)
                data = work / f"{shape.name}-{mix}-{pair_tokens}.jsonl"
                write_data(shape, data, prompt, response, batch * (warmup + timed), seed=pair_tokens)
                spec = {"model": str(model_dir), "data": str(data), "batch": batch, "steps": warmup + timed,
                        "warmup": warmup, "precision": precision, "lr": 1e-6,
                        "max_length": 2 * (prompt + response) + 8, "max_prompt_length": prompt + 4}
                flops = model_flops_per_pair(shape, sizes["matmul_parameters"], prompt, response)
                for library, variant in runs:
                    row = {"shape": shape.name, "pair_tokens": pair_tokens, "data": mix, "prompt": prompt,
                           "response": response, "library": library, "variant": variant, "batch": batch}
                    done = run({**spec, "library": library, "variant": variant}, cuda)
                    if done["oom"]:
                        results["timing"].append({**row, "oom": True, "peak_mb": done.get("peak_mb")})
                        print(f"{shape.name} {pair_tokens} {mix} {library}/{variant}: out of memory at batch {batch}",
                              flush=True)
                        continue
                    step = statistics.median(done["step_seconds"])
                    row.update(oom=False, step_s=step, tokens_per_s=batch * 2 * (prompt + response) / step,
                               peak_mb=done.get("peak_mb"), mfu=batch * flops / step / (results["peak_tflops"] * 1e12),
                               losses=done["losses"], run_s=done["seconds"])
                    results["timing"].append(row)
                    print(f"{shape.name} {pair_tokens} {mix} {library}/{variant}: {row['tokens_per_s']:.0f} tokens/s, "
                          f"{row['peak_mb'] or 0:.0f} MB, MFU {row['mfu']:.2f} ({time.perf_counter() - started:.0f} s)",
                          flush=True)
    if trl_version:
        parity(results, shapes[0], work, precision, cuda)
    if cuda and not args.no_max_batch:
        search_largest_batches(results, work, precision, deadline)
    results["seconds"] = time.perf_counter() - started
    return results


def parity(results: dict, shape: Shape, work: Path, precision: str, cuda: bool) -> None:
    pair_tokens = min(shape.batch)
    prompt, response = lengths(pair_tokens, MIXES["balanced"])
    data = work / "parity.jsonl"
    write_data(shape, data, prompt, response, 2, seed=7)
    spec = {"model": str(work / shape.name), "data": str(data), "batch": 2, "steps": 3, "warmup": 1,
            "precision": precision, "lr": PARITY_LR, "max_length": 2 * (prompt + response) + 8,
            "max_prompt_length": prompt + 4}
    losses = {library: run({**spec, "library": library, "variant": "live"}, cuda).get("losses")
              for library in ("preftune", "trl")}
    if losses["preftune"] and losses["trl"]:
        results["parity"].append({"shape": shape.name, "pair_tokens": pair_tokens, **losses,
                                  "max_diff": max(abs(a - b) for a, b in zip(losses["preftune"], losses["trl"]))})


def search_largest_batches(results: dict, work: Path, precision: str, deadline: float) -> None:
    """Largest batch of every timed configuration, prompt-heavy and short pairs first, until the deadline."""
    order = sorted((row for row in results["timing"] if not row["oom"]),
                   key=lambda row: (row["data"] != "prompt-heavy", row["pair_tokens"], row["shape"]))
    for row in order:
        spec = {"model": str(work / row["shape"]), "batch": row["batch"], "steps": 1, "warmup": 0,
                "precision": precision, "lr": 1e-6, "library": row["library"], "variant": row["variant"],
                "max_length": 2 * (row["prompt"] + row["response"]) + 8, "max_prompt_length": row["prompt"] + 4}
        shape = next(s for s in SHAPES if s.name == row["shape"])

        def fits(batch: int) -> bool:
            data = work / "largest.jsonl"
            write_data(shape, data, row["prompt"], row["response"], batch, seed=3)
            return not run({**spec, "data": str(data), "batch": batch}, cuda=True)["oom"]

        row["largest_batch"], row["largest_batch_exact"] = largest_batch(fits, row["batch"], deadline)


# --------------------------------------------------------------------------- report

def find(results: dict, row: dict, library: str, variant: str) -> dict | None:
    for other in results["timing"]:
        if (other["shape"], other["pair_tokens"], other["data"], other["library"], other["variant"]) == \
                (row["shape"], row["pair_tokens"], row["data"], library, variant) and not other["oom"]:
            return other
    return None


COUNTERPART = {"cached": "precomputed", "live": "live"}


def markdown(results: dict) -> str:
    lines = [f"Command: `{results['command']}`  ",
             f"Device: {results['device']}; "
             f"{'bf16 autocast, fp32 master weights' if results['precision'] == 'bf16' else 'fp32'}; torch "
             f"{results['versions']['torch']}, transformers {results['versions']['transformers']}, trl "
             f"{results['versions']['trl'] or 'not installed'}; measured matmul peak {results['peak_tflops']:.3g} TFLOP/s; "
             f"{results.get('seconds', 0):.0f} s in all  ", ""]
    for name, shape in results["shapes"].items():
        lines.append(f"- **{name}** shape: d={shape['hidden']}, {shape['layers']} layers, {shape['heads']} heads "
                     f"({shape['kv_heads']} KV), vocabulary {shape['vocab']}, {shape['parameters'] / 1e6:.3g}M "
                     f"parameters, random weights")
    lines += ["", "| shape | pair tokens | data | run | batch | tokens/s | vs TRL | peak MB | vs TRL | largest batch | MFU |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["timing"]:
        run_name = f"{row['library']}, {row['variant']} reference"
        if row["oom"]:
            lines.append(f"| {row['shape']} | {row['pair_tokens']} | {row['data']} | {run_name} | {row['batch']} | "
                         "out of memory | | | | | |")
            continue
        other = find(results, row, "trl", COUNTERPART[row["variant"]]) if row["library"] == "preftune" else None
        speed = f"{row['tokens_per_s'] / other['tokens_per_s']:.2f}x" if other else ""
        memory = f"{row['peak_mb'] / other['peak_mb']:.2f}x" if other and row["peak_mb"] and other["peak_mb"] else ""
        largest = row.get("largest_batch")
        largest = "" if largest is None else (str(largest) if row.get("largest_batch_exact") else f">= {largest}")
        peak = f"{row['peak_mb']:.0f}" if row["peak_mb"] is not None else "n/a"
        lines.append(f"| {row['shape']} | {row['pair_tokens']} | {row['data']} | {run_name} | {row['batch']} | "
                     f"{row['tokens_per_s']:.0f} | {speed} | {peak} | {memory} | {largest} | {row['mfu']:.2f} |")
    for p in results["parity"]:
        lines += ["", f"Loss parity ({results['precision']}, {p['shape']} shape, one batch of 2 balanced "
                      f"{p['pair_tokens']}-token pairs repeated): preftune "
                      f"{', '.join(f'{x:.5f}' for x in p['preftune'])}; TRL {', '.join(f'{x:.5f}' for x in p['trl'])}; "
                      f"max |diff| {p['max_diff']:.1e}"]
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path | None) -> Path:
    out = out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-smoke" if results["smoke"] else "gpu"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / f"{stem}.md").write_text(table)
    if not results["smoke"] and out == RESULTS and TABLE_START in README.read_text():
        text = README.read_text()
        head, rest = text.split(TABLE_START, 1)
        README.write_text(head + TABLE_START + "\n" + table + TABLE_END + rest.split(TABLE_END, 1)[1])
    print(table)
    return out / f"{stem}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script, measures nothing)")
    parser.add_argument("--shapes", nargs="+", default=[s.name for s in SHAPES], choices=[s.name for s in SHAPES])
    parser.add_argument("--variants", nargs="+", default=["cached"], choices=list(RUNS),
                        help="cached: preftune's reference cache vs TRL's precomputed reference; live: both with a "
                             "live reference model")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds after which the largest-batch search stops (a lower bound is reported)")
    parser.add_argument("--no-max-batch", action="store_true", help="skip the largest-batch search")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results)")
    args = parser.parse_args()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        parser.error("no GPU: this benchmark times one GPU; run --smoke to check the script on the CPU")
    if not args.smoke and trl_installed() is None:
        parser.error("TRL is not installed: pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory(prefix="preftune-gpu-") as work:
        write(measure(args, Path(work)), args.out)


if __name__ == "__main__":
    main()
