"""The `tunewright` command line. Each command resolves a config and calls one front-door
function; no command holds logic of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from tunewright.config import RunConfig, load_config
from tunewright.errors import TunewrightError

app = typer.Typer(
    help="Turn a general LLM into a domain specialist, and prove it is better on your data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

Recipe = Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.lr=1e-4 data.max_train_examples=500.")
]
PrintConfig = Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")]
Strict = Annotated[bool, typer.Option("--strict", help="Stop at the first bad data row instead of quarantining it.")]


def _config(recipe: Path, overrides: list[str] | None, print_config: bool) -> RunConfig:
    cfg = load_config(recipe, overrides or [])
    if print_config:
        console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        raise typer.Exit(0)
    return cfg


def _guard(fn):
    """Run a command; user errors become one clear message and exit code 1, not a traceback."""
    try:
        return fn()
    except TunewrightError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


@app.command()
def prepare(recipe: Recipe, overrides: Overrides = None, strict: Strict = False, print_config: PrintConfig = False):
    """Read, validate and split the recipe's data into <run>/data/."""
    from tunewright.data.prepare import prepare as prepare_data

    def go():
        cfg = _config(recipe, overrides, print_config)
        dataset = prepare_data(cfg, strict=strict, console=console)
        console.print_json(json.dumps(dataset.summary))

    _guard(go)


@app.command()
def train(recipe: Recipe, overrides: Overrides = None, strict: Strict = False, print_config: PrintConfig = False):
    """Fine-tune on the prepared data (prepares it first if needed)."""
    from tunewright.data.prepare import load_prepared, prepare as prepare_data
    from tunewright.train.loop import train as train_model

    def go():
        cfg = _config(recipe, overrides, print_config)
        folder = cfg.run_dir / "data"
        dataset = load_prepared(folder) if (folder / "summary.json").is_file() else prepare_data(cfg, strict=strict, console=console)
        result = train_model(cfg, dataset, console=console)
        console.print(f"saved {result.output_dir} ({result.steps} steps, {result.tokens_per_second:.0f} tokens/s)")

    _guard(go)


@app.command()
def evaluate(recipe: Recipe, overrides: Overrides = None, print_config: PrintConfig = False):
    """Evaluate base and tuned models on the test split of a trained run."""
    from tunewright.data.prepare import load_prepared
    from tunewright.evaluate.report import summary_table, verdict, write_markdown
    from tunewright.evaluate.runner import evaluate as evaluate_models

    def go():
        cfg = _config(recipe, overrides, print_config)
        dataset = load_prepared(cfg.run_dir / "data")
        trained = cfg.run_dir / ("adapter" if cfg.train.method == "lora" else "model")
        if "tuned" in cfg.evaluate.models and not trained.is_dir():
            raise TunewrightError(f"no trained model in {cfg.run_dir}; run `tunewright train {recipe}` first")
        result = evaluate_models(cfg, dataset, trained, console=console)
        write_markdown(result, cfg.run_dir / "report.md")
        console.print(summary_table(result))
        console.print(verdict(result))

    _guard(go)


@app.command()
def run(recipe: Recipe, overrides: Overrides = None, strict: Strict = False, print_config: PrintConfig = False):
    """Prepare, train (LoRA), evaluate base vs tuned, and write a run folder with a report."""
    from tunewright.pipeline import run as run_pipeline

    def go():
        cfg = _config(recipe, overrides, print_config)
        run_pipeline(cfg, strict=strict, console=console)

    _guard(go)


@app.command()
def schema():
    """Print the JSON schema of a recipe (every key, its type, default and description)."""
    console.print_json(json.dumps(RunConfig.model_json_schema()))


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
