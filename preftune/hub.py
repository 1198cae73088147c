"""A trained model's card (README.md in the Hugging Face format) and `preftune push` to the Hub.

A model directory a run saves is a `save_pretrained` directory plus this card. The card is YAML
metadata (base model, tags, data set) followed by what a reader needs to trust and reproduce the
model: the method and its hyperparameters, the data and how many rows were used or skipped, the
final metrics and the command. `push` uploads the directory, card included, with the Hub client;
offline, or without a login, it stops with a message that says which.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

CARD = "README.md"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def command_line(argv: list[str] | None = None) -> str:
    """This process's command as a user would type it (`preftune ...` for the CLI, `python ...` otherwise)."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else ""
    if program == "preftune" or (program == "__main__.py" and Path(argv[0]).parent.name == "preftune"):
        return shlex.join(["preftune", *argv[1:]])
    return shlex.join(["python", *argv])


def hub_model_id(name: str) -> str | None:
    """`name` when it is a Hub model id (owner/name) rather than a local directory or a built-in model."""
    return name if HUB_ID.match(name) and not Path(name).exists() else None


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_card(*, title: str, base_model: str, method: str, hyperparameters: Any, training: dict[str, Any],
                data: dict[str, Any], metrics: dict[str, Any], command: str, config: dict | None = None,
                tags: list[str] | None = None) -> str:
    """The card's text. training: steps, batch and the like; data: source, kind and counts;
    metrics: final values (train and held-out); config: the whole recipe, appended for reproduction."""
    meta: dict[str, Any] = {"library_name": "transformers",
                            "tags": ["preftune", "preference-optimization", *(tags or [])]}
    if hub_model_id(base_model):
        meta["base_model"] = base_model
    source = str(data.get("source", ""))
    if source.startswith("hf:"):
        meta["datasets"] = [source[3:]]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {title}", "",
             f"Trained with [preftune](https://pypi.org/project/preftune/) from `{base_model}` with `{method}`.", "",
             "## Method and hyperparameters", "", "```yaml", yaml.safe_dump(hyperparameters, sort_keys=False).strip(),
             "```", "", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_number(value)} |" for key, value in training.items()]
    lines += ["", "## Data", "", "| | |", "|---|---|"]
    for key, value in data.items():
        shown = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else _number(value)
        lines.append(f"| {key} | {shown} |")
    lines += ["", "## Final metrics", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {key} | {_number(value)} |" for key, value in metrics.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)]
    lines += ["", "## Reproduce", "", "```bash", command, "```"]
    if config:
        lines += ["", "The whole recipe (`config.yaml` of the run):", "", "```yaml",
                  yaml.safe_dump(config, sort_keys=False).strip(), "```"]
    return "\n".join(lines) + "\n"


def write_card(model_dir: Path, text: str) -> Path:
    path = Path(model_dir) / CARD
    path.write_text(text)
    return path


class PushError(RuntimeError):
    """`preftune push` could not upload; the message says why and what to do."""


def model_directory(run: Path) -> Path:
    """The model directory of a run directory (RUN/model), or `run` itself when it is one."""
    run = Path(run)
    for candidate in (run / "model", run):
        if (candidate / "config.json").exists() or (candidate / "adapter_config.json").exists():
            return candidate
    raise PushError(f"{run} holds no saved model (no model/config.json or adapter_config.json): "
                    "give a run directory of `preftune train` or `preftune online`, or its model/ directory")


def push(run: Path, repo_id: str, private: bool = False, token: str | None = None,
         message: str = "Upload model trained with preftune") -> str:
    """Upload a run's model directory (with its card) to `repo_id` on the Hub; returns the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    folder = model_directory(run)
    if not (folder / CARD).exists():
        raise PushError(f"{folder} has no model card ({CARD}); train it again with this preftune, which saves one")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message, repo_type="model")
    except OfflineModeIsEnabled as error:
        raise PushError(f"offline mode is on (HF_HUB_OFFLINE): nothing was uploaded; the model stays in {folder}") \
            from error
    except LocalTokenNotFoundError as error:
        raise PushError("not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN") from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        hint = "log in with `hf auth login` or set HF_TOKEN" if status in (401, 403) else f"the Hub answered {status}"
        raise PushError(f"could not upload {folder} to {repo_id}: {hint}") from error
    except Exception as error:
        if not is_network_error(error):
            raise
        raise PushError(f"cannot reach the Hugging Face Hub at {endpoint} ({type(error).__name__}: {error}); "
                        f"nothing was uploaded and the model stays in {folder}. Check the network, or HF_ENDPOINT") \
            from error
    return str(url)


def is_network_error(error: BaseException) -> bool:
    """A failure to reach the server (refused, unresolvable, timed out), whichever HTTP library the
    Hub client uses (requests, httpx)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, (OSError, TimeoutError)) or bool(
        names & {"TransportError", "NetworkError", "ConnectError", "ConnectionError", "Timeout", "TimeoutException"})


def training_card(cfg, summary: dict[str, Any], command: str | None = None) -> str:
    """The card of an offline run (`train()`): its RunConfig and train_summary.json."""
    from preftune.config import to_dict

    data = summary.get("data", {})
    load = data.get("load", {})
    source = cfg.data.source if isinstance(cfg.data.source, str) else "in-memory rows"
    rows = {"source": source, "kind": data.get("kind"), "rows read": load.get("rows"), "rows kept": load.get("kept"),
            "rows skipped (by reason)": load.get("skipped") or "none", "training examples": data.get("train_examples"),
            "held-out examples": data.get("eval_examples"), "truncated": data.get("truncation"),
            **({"built-in task": data["task"]} if "task" in data else {})}
    training = {"steps": summary.get("steps"), "epochs": summary.get("epochs"), "global batch": summary.get("global_batch"),
                "processes": summary.get("processes"), "learning rate": cfg.train.lr, "schedule": cfg.train.schedule,
                "precision": cfg.train.precision, "reference": summary.get("reference"), "seed": cfg.train.seed,
                "LoRA": cfg.model.lora.enabled}
    metrics = {**{f"train/{k}": v for k, v in (summary.get("final_train_metrics") or {}).items()},
               **(summary.get("eval") or {})}
    method_names = [name for name in (cfg.loss if isinstance(cfg.loss, dict) else {})] or \
        [part.split("*")[-1].strip() for part in str(cfg.loss).split("+")]
    return render_card(title=f"{cfg.name}: {summary.get('objective', cfg.loss)}", base_model=cfg.model.name_or_path,
                       method=summary.get("objective", str(cfg.loss)), hyperparameters=cfg.loss, training=training,
                       data={k: v for k, v in rows.items() if v is not None}, metrics=metrics,
                       command=command or command_line(), config=to_dict(cfg), tags=method_names)
