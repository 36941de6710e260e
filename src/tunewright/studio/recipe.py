"""A job's recipe: the create request turned into an ordinary `RunConfig`, written as the run
folder's `config.yaml`, which the runner hands to `tunewright run`.

Precedence, lowest first: the recipe defaults; the client's overrides, dotted keys as the CLI
takes them, in `metadata["tunewright_overrides"]` (e.g. `"train.max_steps=200
evaluate.general_check=false"`, split like a shell line); the OpenAI hyperparameters that are
not "auto"; and what the studio fixes itself (paths, model, seed, checkpoints). Overrides cannot
name paths, the model or code: a job reads only files the studio stored.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tunewright.config import RunConfig, load_config, parse_overrides
from tunewright.errors import ConfigError
from tunewright.studio.protocol import OVERRIDES_KEY, RECIPE_KEY, JobCreate

# Keys a client may not set: they name files, folders, the model, code to trust, or are the studio's.
BLOCKED_KEYS = (
    "name",
    "output_dir",
    "recipe_dir",
    "model",
    "data.train_files",
    "data.test_files",
    "data.format",
    "data.columns",
    "evaluate.compare_runs",
    "evaluate.judge",
    "train.resume",
)
# A checkpoint every this many optimiser steps unless the overrides say otherwise: a crash or a
# restart then loses at most this much training.
CHECKPOINT_EVERY_STEPS = 25


def job_config(
    request: JobCreate,
    *,
    job_id: str,
    seed: int,
    model_source: str,
    training_path: Path,
    validation_path: Path | None,
    runs_dir: Path,
    recipe: Path | None = None,
) -> RunConfig:
    """The run config of a job, starting from `recipe`'s settings (a shipped recipe, chosen by
    name in `metadata["tunewright_recipe"]`) or the defaults; raises ConfigError naming the bad
    override or value. The recipe's own data files are replaced by the job's."""
    overrides = client_overrides(request.metadata or {})
    hyper = request.chosen_hyperparameters()
    fixed = [
        f"name={job_id}",
        f"output_dir={_quoted(runs_dir)}",
        f"recipe_dir={_quoted(runs_dir / job_id)}",
        f"model.name={_quoted(model_source)}",
        f"data.train_files=[{_quoted(training_path)}]",
        f"data.test_files=[{_quoted(validation_path)}]"
        if validation_path
        else "data.test_files=[]",
        # OpenAI's file formats: chat examples, or preference pairs for DPO
        "data.format=openai_preference" if request.method_type == "dpo" else "data.format=messages",
        "data.columns={}",
        f"data.seed={seed}",
        f"train.seed={seed}",
        "train.resume=true",
    ]
    if not any(key == "train.checkpoint_every_steps" for key, _ in parse_overrides(overrides)):
        fixed.append(f"train.checkpoint_every_steps={CHECKPOINT_EVERY_STEPS}")
    if hyper.n_epochs != "auto":
        fixed.append(f"train.epochs={hyper.n_epochs}")
    if hyper.batch_size != "auto":
        fixed.append(f"train.batch_size={hyper.batch_size}")
    if request.method_type == "dpo":
        fixed.append("train.objective=dpo")
        if hyper.beta != "auto":
            fixed.append(f"train.beta={hyper.beta}")
    cfg = load_config(recipe, [*overrides, *fixed])
    if hyper.learning_rate_multiplier != "auto":
        cfg.train.lr = cfg.train.lr * hyper.learning_rate_multiplier
    return cfg


def shipped_recipes(folder: Path | None) -> dict[str, Path]:
    """The recipes a job may start from: `<name>.yaml` in the operator's recipes folder."""
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def chosen_recipe(metadata: dict[str, str] | None, folder: Path | None) -> Path | None:
    """The shipped recipe named in `metadata["tunewright_recipe"]` (None: the defaults); a name
    not in the folder is refused, so a client never names a path."""
    name = (metadata or {}).get(RECIPE_KEY)
    if not name:
        return None
    recipes = shipped_recipes(folder)
    if name not in recipes:
        raise ConfigError(
            f"metadata.{RECIPE_KEY}: no shipped recipe '{name}' "
            f"(this studio has: {', '.join(recipes) or 'none'})"
        )
    return recipes[name]


def client_overrides(metadata: dict[str, str]) -> list[str]:
    """The dotted overrides in the job's metadata, refused when they name a blocked key."""
    line = metadata.get(OVERRIDES_KEY, "")
    try:
        overrides = shlex.split(line)
    except ValueError as e:
        raise ConfigError(f"metadata.{OVERRIDES_KEY}: {e}") from None
    for key, _ in parse_overrides(overrides):
        if any(key == b or key.startswith(b + ".") for b in BLOCKED_KEYS):
            raise ConfigError(
                f"metadata.{OVERRIDES_KEY}: '{key}' is set by the studio, not by a job "
                f"(blocked: {', '.join(BLOCKED_KEYS)})"
            )
    return overrides


def resolved_hyperparameters(cfg: RunConfig, request: JobCreate) -> dict:
    """The hyperparameters the job runs with, as OpenAI reports them (no "auto" left)."""
    multiplier = request.chosen_hyperparameters().learning_rate_multiplier
    epochs = cfg.train.epochs
    resolved = {
        "n_epochs": int(epochs) if float(epochs).is_integer() else epochs,
        "batch_size": cfg.train.batch_size * cfg.train.grad_accum_steps,
        "learning_rate_multiplier": 1.0 if multiplier == "auto" else multiplier,
    }
    if request.method_type == "dpo":
        resolved["beta"] = cfg.train.beta
    return resolved


def _quoted(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"  # a YAML single-quoted string
