"""preftune against TRL's DPOTrainer, side by side: tokens/s, peak memory, loss parity, matmul-peak fraction.

    python benchmarks/speed.py           # the full run: writes benchmarks/results/speed.json, speed.md and
                                         # the table in benchmarks/README.md (about an hour on 2 quiet cores)
    python benchmarks/speed.py --quick   # one repeat, fewer steps, tiny-model parity only (a smoke test)

Both libraries train the same saved model on the same rows with the same batch, loss, optimizer
(AdamW, constant learning rate, no weight decay, gradient clipping at 1) and precision, each in its
own fresh subprocess, one configuration at a time, interleaved over repeats; medians are reported.

What is measured, exactly:
* tokens/s: real (non-pad) tokens of the concatenated pairs a step trains on, i.e. prompt+chosen
  plus prompt+rejected, the prompt counted twice, as TRL's batch holds it. The same count for both
  libraries (mean over the run's rows times the batch), divided by the median wall time between
  consecutive step ends after the warm-up steps. Timing runs use bf16 autocast (fp32 weights) on a
  CPU with native bf16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo), and fp32 elsewhere: on an
  AVX2-only CPU bf16 is emulated, many times slower, and would time the emulation. The table
  prints the CPU's flags and the precision used.
* peak memory: the process's peak resident set (ru_maxrss, tracked by the kernel) minus its
  resident set after importing torch, transformers, trl and preftune and before loading anything,
  so both count the same libraries. It includes the models, optimizer state, activations, logits
  and the reference (a live model, or its cached values).
* loss parity: fp32, the same single batch every step from identical weights; the loss of the
  first step and of step N, preftune's against TRL's, for each shared loss type.
* matmul-peak fraction: model FLOPs per trained token, taken as 6*N for the policy's forward and
  backward plus 2*N for the reference forward (N = parameters that take part in matmuls: all but
  the input embedding, the lm-head included), times tokens/s, divided by the best throughput of a
  2048x2048 matmul in the timing precision, measured at the start of the run. Runs that avoid work (a
  shared prompt, a cached reference) still count 8*N per token: the fraction reads as "useful
  work per second", like model-FLOPs utilisation.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
TABLE_START, TABLE_END = "<!-- speed-table:start -->", "<!-- speed-table:end -->"


@dataclass(frozen=True)
class Shape:
    name: str
    vocab: int               # 0: the built-in byte-level tokenizer (259 tokens)
    hidden: int
    layers: int
    heads: int
    intermediate: int
    tied: bool
    batch: int               # pairs per step
    data: tuple              # ((data name, mean prompt tokens, mean response tokens, spread), ...): each
                             # length is drawn uniformly within +-spread of its mean
    warmup: int              # steps not timed
    steps: int               # timed steps


SHAPES = {
    # The built-in tiny model of preftune/models.py.
    "tiny": Shape("tiny", 0, 128, 4, 4, 384, True, 8,
                  (("prompt-heavy", 160, 40, 0.125), ("balanced", 96, 96, 0.125), ("varied", 120, 30, 0.75)), 2, 6),
    # A 32k vocabulary (untied head, as in Llama-2-class models) and long prompts.
    "wide-32k": Shape("wide-32k", 32000, 256, 4, 4, 688, False, 4,
                      (("prompt-heavy", 384, 96, 0.125), ("balanced", 240, 240, 0.125)), 1, 3),
}
# (library, variant): how each side is configured. The reference is live (a second model, one more
# forward per step) or served from values computed before training.
CONFIGS = [
    ("preftune", "cached"),       # defaults: reference cache auto, all fast paths
    ("preftune", "live"),         # speed.reference_cache=off
    ("trl", "live"),              # DPOTrainer with its ref model, gradient checkpointing off
    ("trl", "precomputed"),       # precompute_ref_log_probs=True
]
TRL_DEFAULT = ("trl", "checkpointing")  # TRL's own default (gradient checkpointing on), for context
# On data whose lengths vary widely: what packing adds (preftune with and without it).
PACKING_CONFIGS = [("preftune", "cached"), ("preftune", "cached-unpacked"), ("trl", "precomputed")]
PACKING_DATA = "varied"
RUN_LABELS = {
    ("preftune", "cached"): "preftune, cached reference", ("preftune", "live"): "preftune, live reference",
    ("preftune", "cached-unpacked"): "preftune, cached reference, packing off",
    ("trl", "live"): "TRL, live reference", ("trl", "precomputed"): "TRL, precomputed reference",
    ("trl", "checkpointing"): "TRL, live reference, gradient checkpointing (TRL default)",
}
LOSSES = {"dpo": "sigmoid", "ipo": "ipo", "hinge": "hinge"}  # preftune name -> TRL loss_type
BETA = 0.1
PARITY_STEPS = 5


# --------------------------------------------------------------------------- models and data

def word_tokenizer(vocab: int):
    """A word-level tokenizer with `vocab` entries (w3 ... w{vocab-1} plus pad/bos/eos), built offline.
    Text of space-separated words tokenises one word to one id, identically for both libraries."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {"<|pad|>": 0, "<|bos|>": 1, "<|eos|>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    core = Tokenizer(models.WordLevel(words, unk_token="<|pad|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>")


def build_model(shape: Shape, path: Path) -> int:
    """Save the shape's model and tokenizer to `path`; returns N, the matmul parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from preftune.models import TinyModelShape, save_tiny_model

    if shape.vocab == 0:
        save_tiny_model(path, TinyModelShape(shape.hidden, shape.layers, shape.heads, shape.intermediate), seed=0)
    else:
        tokenizer = word_tokenizer(shape.vocab)
        config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                             num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                             num_key_value_heads=shape.heads, max_position_embeddings=1024,
                             tie_word_embeddings=shape.tied, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    return total if tied else total - embedding.numel()


def make_rows(shape: Shape, prompt_len: int, response_len: int, spread: float, count: int, seed: int) -> list[dict]:
    """Random text, each length drawn uniformly within +-spread of its mean."""
    rng = random.Random(seed)

    def length(mean):
        return rng.randint(max(1, round(mean * (1 - spread))), round(mean * (1 + spread)))

    def text(n, leading_space):
        if shape.vocab == 0:
            return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(n))
        words = " ".join(f"w{rng.randrange(3, shape.vocab)}" for _ in range(n))
        return (" " if leading_space else "") + words

    return [{"prompt": text(length(prompt_len), False), "chosen": text(length(response_len), True),
             "rejected": text(length(response_len), True)} for _ in range(count)]


def tokens_per_pair(shape: Shape, rows: list[dict], model_dir: Path) -> float:
    """Mean real tokens of prompt+chosen plus prompt+rejected (BOS and EOS included)."""
    from preftune.data import Tokenization, load_examples
    from preftune.models import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    examples = Tokenization(tokenizer, 4096, 2048).many(load_examples(rows)[0])
    return statistics.fmean(2 * len(e.prompt_ids) + sum(map(len, e.response_ids)) for e in examples)


# --------------------------------------------------------------------------- the worker (one run per process)

def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def token_hash(triples) -> str:
    digest = hashlib.sha256()
    for prompt, chosen, rejected in triples:
        digest.update(json.dumps([list(prompt), list(chosen), list(rejected)]).encode())
    return digest.hexdigest()[:16]


def run_preftune(spec: dict, out: Path, times: list) -> dict:
    from preftune.config import load_config
    from preftune.data.prepare import prepare_data
    from preftune.models import load_tokenizer
    from preftune.train.runner import run_training

    overrides = [f"--output_dir={out}", f"--model.name_or_path={spec['model']}", f"--data.source={spec['data']}",
                 f"--data.max_length={spec['max_length']}", f"--data.max_prompt_length={spec['max_prompt_length']}",
                 f"--loss={spec['loss']}", f"--loss.{spec['loss']}.beta={BETA}", f"--train.batch_size={spec['batch']}",
                 f"--train.steps={spec['steps']}", f"--train.lr={spec['lr']}", "--train.warmup_ratio=0",
                 "--train.schedule=constant", "--train.weight_decay=0", "--train.max_grad_norm=1.0",
                 f"--train.precision={spec['precision']}", "--train.progress=false", "--train.seed=0",
                 f"--speed.reference_cache={'off' if spec['variant'] == 'live' else 'on'}",
                 f"--speed.packing={spec['variant'] != 'cached-unpacked'}",
                 f"--speed.reference_cache_dir={out}/reference-cache"]
    cfg = load_config(None, overrides)
    run_dir = run_training(cfg, on_step_end=lambda step, metrics: times.append(time.perf_counter()))
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result = {"losses": losses, "summary": json.loads((run_dir / "train_summary.json").read_text())["fast_paths"]}
    if spec["check_tokens"]:
        data = prepare_data(cfg.data, load_tokenizer(spec["model"]), "pairwise", 0)
        result["token_hash"] = token_hash((e.prompt_ids, *e.response_ids) for e in data.train)
    return result


def run_trl(spec: dict, out: Path, times: list) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=spec["batch"], max_steps=spec["steps"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        use_cpu=True, bf16=spec["precision"] == "bf16", gradient_checkpointing=spec["variant"] == "checkpointing",
        beta=BETA, loss_type=[LOSSES[spec["loss"]]], precompute_ref_log_probs=spec["variant"] == "precomputed",
        max_length=None, dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[StepTimer()])
    trainer.train()
    result = {"losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]}
    if spec["check_tokens"]:
        dataset = trainer.train_dataset
        result["token_hash"] = token_hash(zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]))
    return result


def worker(spec: dict) -> dict:
    """One training run; prints its result as JSON. Both libraries are imported before the baseline."""
    import resource

    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import preftune.train.loop  # noqa: F401

    torch.set_num_threads(spec["threads"])
    baseline = rss_bytes()
    times: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run = run_preftune if spec["library"] == "preftune" else run_trl
        result = run(spec, Path(out), times)
    steps = [b - a for a, b in zip(times, times[1:])][spec["warmup"] - 1:] if spec["warmup"] else []
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {**result, "step_seconds": steps, "first_step_end_s": times[0] - started,
            "baseline_rss_mb": baseline / 2**20, "peak_rss_mb": peak / 2**20, "peak_above_baseline_mb": (peak - baseline) / 2**20}


def run_worker(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(spec["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({spec['library']}/{spec['variant']}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- measurements

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of CPU_FLAGS the CPU has (from /proc/cpuinfo; empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    present = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return [flag for flag in CPU_FLAGS if flag in present]


def timing_precision(flags: list[str], requested: str = "auto") -> str:
    """bf16 where the CPU computes it natively, fp32 where it would be emulated (or as requested)."""
    if requested != "auto":
        return requested
    return "bf16" if NATIVE_BF16 & set(flags) else "fp32"


def matmul_peak(threads: int, precisions=("fp32", "bf16")) -> dict[str, float]:
    """Best GFLOP/s of a 2048x2048 matmul in each precision (a few repeats, the fastest kept). Emulated
    bf16 is left out by the caller: its probe alone takes minutes on an AVX2-only CPU."""
    import torch

    torch.set_num_threads(threads)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name not in precisions:
            continue
        n = 2048
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = 0.0
        for _ in range(10):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
        peaks[name] = best / 1e9
    return peaks


def spec_for(shape: Shape, library: str, variant: str, data_path: Path, model_dir: Path, lengths: tuple,
             steps: int, warmup: int, precision: str, loss: str, lr: float, threads: int, check_tokens=False) -> dict:
    prompt, response = lengths
    return {"library": library, "variant": variant, "shape": shape.name, "model": str(model_dir),
            "data": str(data_path), "batch": shape.batch, "steps": steps, "warmup": warmup, "precision": precision,
            "loss": loss, "lr": lr, "threads": threads, "check_tokens": check_tokens,
            "max_length": 2 * (prompt + response) + 8, "max_prompt_length": 2 * prompt + 4}


def measure(args, work: Path) -> dict:
    shapes = [SHAPES[name] for name in args.shapes]
    flags = cpu_flags()
    precision = timing_precision(flags, args.precision)
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                           "cpu_flags": flags},
               "command": " ".join(["python", "benchmarks/speed.py", *sys.argv[1:]]), "timing_precision": precision,
               "matmul_peak_gflops": matmul_peak(args.threads, ("fp32", precision)), "shapes": {}, "timing": [],
               "parity": []}
    import torch
    import transformers
    import trl

    results["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    timing_configs = CONFIGS + ([TRL_DEFAULT] if args.trl_default else [])
    plans = []
    for shape in shapes:
        model_dir = work / shape.name
        n_matmul = build_model(shape, model_dir)
        steps = args.steps or shape.steps
        warmup = shape.warmup
        results["shapes"][shape.name] = {**asdict(shape), "matmul_params": n_matmul}
        for seed, (data_name, prompt, response, spread) in enumerate(shape.data):
            rows = make_rows(shape, prompt, response, spread, shape.batch * (warmup + steps), seed=seed)
            path = work / f"{shape.name}-{data_name}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            per_pair = tokens_per_pair(shape, rows, model_dir)
            for library, variant in (PACKING_CONFIGS if data_name == PACKING_DATA else timing_configs):
                spec = spec_for(shape, library, variant, path, model_dir, (prompt, response), warmup + steps, warmup,
                                precision, "dpo", 1e-5, args.threads)
                plans.append((shape, data_name, per_pair, n_matmul, spec))
        if shape.name in args.parity_shapes:
            prompt, response, spread = shape.data[0][1:]
            rows = make_rows(shape, prompt, response, spread, shape.batch, seed=7)
            path = work / f"{shape.name}-parity.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            for loss in LOSSES:
                runs = {library: run_worker(spec_for(shape, library, "live", path, model_dir, (prompt, response),
                                                     PARITY_STEPS, 0, "fp32", loss, args.parity_lr, args.threads,
                                                     check_tokens=True))
                        for library in ("preftune", "trl")}
                ours, theirs = runs["preftune"]["losses"], runs["trl"]["losses"]
                results["parity"].append({
                    "shape": shape.name, "loss": loss, "trl_loss_type": LOSSES[loss], "steps": PARITY_STEPS,
                    "preftune": ours, "trl": theirs, "first_step_diff": abs(ours[0] - theirs[0]),
                    "last_step_diff": abs(ours[-1] - theirs[-1]), "max_diff": max(abs(a - b) for a, b in zip(ours, theirs)),
                    "same_tokens": runs["preftune"]["token_hash"] == runs["trl"]["token_hash"]})
                print(f"parity {shape.name} {loss}: max |diff| {results['parity'][-1]['max_diff']:.2e}", flush=True)

    # Interleaved repeats: every configuration once per round, the order rotated between rounds.
    raw = {i: [] for i in range(len(plans))}
    for repeat in range(args.repeats):
        order = list(range(len(plans)))
        order = order[repeat % len(order):] + order[:repeat % len(order)]
        for i in order:
            shape, data_name, _, _, spec = plans[i]
            raw[i].append(run_worker(spec))
            last = raw[i][-1]
            print(f"round {repeat + 1}/{args.repeats} {shape.name} {data_name} {spec['library']}/{spec['variant']}: "
                  f"{statistics.median(last['step_seconds']):.2f} s/step, "
                  f"{last['peak_above_baseline_mb']:.0f} MB", flush=True)
    peak = results["matmul_peak_gflops"][precision]
    for i, (shape, data_name, per_pair, n_matmul, spec) in enumerate(plans):
        runs = raw[i]
        step_s = [statistics.median(r["step_seconds"]) for r in runs]
        tokens_per_s = [shape.batch * per_pair / s for s in step_s]
        median_tps = statistics.median(tokens_per_s)
        results["timing"].append({
            "shape": shape.name, "data": data_name, "library": spec["library"], "variant": spec["variant"],
            "tokens_per_step": shape.batch * per_pair, "tokens_per_s": median_tps,
            "tokens_per_s_runs": tokens_per_s, "step_s_median": statistics.median(step_s),
            "peak_above_baseline_mb": statistics.median(r["peak_above_baseline_mb"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "first_step_end_s": statistics.median(r["first_step_end_s"] for r in runs),
            "matmul_peak_fraction": median_tps * 8 * n_matmul / (peak * 1e9),
            "fast_paths": runs[0].get("summary")})
    return results


# --------------------------------------------------------------------------- report

def find(results, shape, data, library, variant):
    for row in results["timing"]:
        if (row["shape"], row["data"], row["library"], row["variant"]) == (shape, data, library, variant):
            return row
    return None


def targets(results) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the issue that the results cover."""
    out = []
    for data, needed in (("prompt-heavy", 1.5), ("balanced", 1.1)):
        for shape in results["shapes"]:
            for ours, theirs in (("live", "live"), ("cached", "precomputed")):
                a, b = find(results, shape, data, "preftune", ours), find(results, shape, data, "trl", theirs)
                if a and b:
                    ratio = a["tokens_per_s"] / b["tokens_per_s"]
                    out.append((f"tokens/s >= {needed}x TRL, {data}, {shape}, reference {ours} vs {theirs}",
                                f"{ratio:.2f}x", ratio >= needed))
    for shape in results["shapes"]:
        if results["shapes"][shape]["vocab"] >= 32000:
            ours = find(results, shape, "prompt-heavy", "preftune", "cached")
            for data in ("prompt-heavy", "balanced"):
                ours = find(results, shape, data, "preftune", "cached")
                for variant in ("live", "precomputed", "checkpointing"):
                    theirs = find(results, shape, data, "trl", variant)
                    if ours and theirs:
                        ratio = ours["peak_above_baseline_mb"] / theirs["peak_above_baseline_mb"]
                        out.append((f"peak memory <= 0.6x TRL ({variant} reference), {data}, {shape}",
                                    f"{ratio:.2f}x", ratio <= 0.6))
    if results["parity"]:
        worst = max(p["max_diff"] for p in results["parity"])
        out.append(("same losses as TRL to 1e-4 (dpo, ipo, hinge)", f"max |diff| {worst:.1e}", worst <= 1e-4))
    return out


def markdown(results) -> str:
    flags = results["machine"].get("cpu_flags")
    precision = results.get("timing_precision", "bf16")  # runs made before flags were recorded timed in bf16
    flag_text = "not recorded by this run" if flags is None else " ".join(flags) or f"none of {' '.join(CPU_FLAGS)}"
    peaks = ", ".join(f"{value:.0f} GFLOP/s {name}" for name, value in results["matmul_peak_gflops"].items())
    lines = [f"Command: `{results['command']}`  ",
             f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs, "
             f"{results['machine']['threads']} threads; torch {results['versions']['torch']}, transformers "
             f"{results['versions']['transformers']}, trl {results['versions']['trl']}  ",
             f"CPU flags: {flag_text}; timings in {precision}"
             f"{' autocast with fp32 weights' if precision == 'bf16' else ''}  ",
             f"Matmul peak (2048x2048): {peaks}", ""]
    for name, shape in results["shapes"].items():
        lines.append(f"- **{name}**: Llama, d={shape['hidden']}, {shape['layers']} layers, vocabulary "
                     f"{shape['vocab'] or 259}, {'tied' if shape['tied'] else 'untied'} head, "
                     f"N={shape['matmul_params'] / 1e6:.2f}M matmul parameters, {shape['batch']} pairs per step, "
                     f"{shape['warmup']} warm-up + {shape['steps']} timed steps")
    lines += ["", "| shape | data | run | tokens/s | vs TRL same reference | peak MB | vs TRL live | "
              "matmul-peak fraction | first step ends (s) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    counterpart = {"cached": "precomputed", "cached-unpacked": "precomputed", "live": "live"}
    for row in results["timing"]:
        other = find(results, row["shape"], row["data"], "trl", counterpart.get(row["variant"], ""))
        trl_live = find(results, row["shape"], row["data"], "trl", "live")
        speed = f"{row['tokens_per_s'] / other['tokens_per_s']:.2f}x" if row["library"] == "preftune" and other else ""
        memory = f"{row['peak_above_baseline_mb'] / trl_live['peak_above_baseline_mb']:.2f}x" \
            if row["library"] == "preftune" and trl_live else ""
        lines.append(f"| {row['shape']} | {row['data']} | {RUN_LABELS[row['library'], row['variant']]} | "
                     f"{row['tokens_per_s']:.0f} | {speed} | {row['peak_above_baseline_mb']:.0f} | {memory} | "
                     f"{row['matmul_peak_fraction']:.2f} | {row['first_step_end_s']:.1f} |")
    if results["parity"]:
        lines += ["", f"Loss parity (fp32, one batch repeated for {PARITY_STEPS} steps from the same weights):", "",
                  "| shape | loss (TRL loss_type) | same tokens | step-1 loss preftune / TRL | |diff| step 1 | "
                  f"|diff| step {PARITY_STEPS} | max |diff| |", "|---|---|---|---|---:|---:|---:|"]
        for p in results["parity"]:
            lines.append(f"| {p['shape']} | {p['loss']} ({p['trl_loss_type']}) | {'yes' if p['same_tokens'] else 'NO'} | "
                         f"{p['preftune'][0]:.6f} / {p['trl'][0]:.6f} | {p['first_step_diff']:.1e} | "
                         f"{p['last_step_diff']:.1e} | {p['max_diff']:.1e} |")
    lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if met else '**no**'} |" for name, value, met in targets(results)]
    return "\n".join(lines) + "\n"


def write(results, quick: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "speed-quick" if quick else "speed"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (RESULTS / f"{stem}.md").write_text(table)
    if not quick and README.exists():
        text = README.read_text()
        if TABLE_START in text and TABLE_END in text:
            head, rest = text.split(TABLE_START, 1)
            README.write_text(head + TABLE_START + "\n" + table + TABLE_END + rest.split(TABLE_END, 1)[1])
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat, 2 timed steps, tiny-model parity only")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per run (0: the shape's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="timing precision (auto: bf16 where the CPU has avx512_bf16 or amx_bf16, else fp32)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--parity-shapes", nargs="*", default=None, help="shapes with a loss-parity check (default: all)")
    parser.add_argument("--parity-lr", type=float, default=1e-4)
    parser.add_argument("--no-trl-default", dest="trl_default", action="store_false",
                        help="skip the run with TRL's default gradient checkpointing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.quick:
        args.repeats, args.steps = 1, args.steps or 2
        args.parity_shapes = ["tiny"] if args.parity_shapes is None else args.parity_shapes
    if args.parity_shapes is None:
        args.parity_shapes = list(args.shapes)
    with tempfile.TemporaryDirectory(prefix="preftune-speed-") as work:
        results = measure(args, Path(work))
    write(results, args.quick)


if __name__ == "__main__":
    main()
