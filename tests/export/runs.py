"""A tiny trained run folder for the export and serve tests (LoRA, ~20 steps, about a second)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from rich.console import Console

from tunewright.config import RunConfig, load_config, save_config
from tunewright.data.prepare import prepare
from tunewright.train.loop import train

QUIET = Console(quiet=True)
FIXTURES = Path(__file__).parents[1] / "fixtures"


def train_tiny_run(root: Path, model_dir: Path, name: str = "tiny-run", *overrides: str) -> Path:
    """Train the tiny model with LoRA until its answers are confident; returns the run folder.

    Four epochs on the fixture intents: a barely trained random model has near-flat logits, and
    its greedy answers would flip on any rounding, quantised or not.
    """
    recipe = root / f"{name}.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "output_dir": str(root / "runs"),
                "model": {"name": str(model_dir)},
                "data": {
                    "train_files": [str(FIXTURES / "intents_train.csv")],
                    "test_files": [str(FIXTURES / "intents_test.csv")],
                    "columns": {"label": "category"},
                    "system_prompt": "Name the intent.",
                    "max_seq_len": 64,
                    "val_fraction": 0.1,
                },
                "train": {"epochs": 4, "batch_size": 8, "lr": 0.02, "lr_warmup_steps": 1},
                "evaluate": {"max_new_tokens": 12},
            }
        )
    )
    cfg = load_config(recipe, list(overrides))
    train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    save_config(
        cfg, cfg.run_dir / "config.yaml"
    )  # `tunewright run` writes it; train alone does not
    return cfg.run_dir


def full_run_from(model_dir: Path, run_dir: Path) -> Path:
    """A run folder as full fine-tuning leaves it (`model/` + config.yaml), from a model folder."""
    shutil.copytree(model_dir, run_dir / "model")
    cfg = RunConfig(
        name=run_dir.name,
        output_dir=str(run_dir.parent),
        model={"name": str(model_dir)},
        train={"method": "full"},
    )
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return run_dir
