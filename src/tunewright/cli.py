"""The `tunewright` command line. Each command resolves a config and calls one front-door
function; no command holds logic of its own."""

from __future__ import annotations

import inspect
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
    list[str] | None,
    typer.Argument(help="Dotted overrides, e.g. train.lr=1e-4 data.max_train_examples=500."),
]
PrintConfig = Annotated[
    bool, typer.Option("--print-config", help="Print the resolved config and exit.")
]
Strict = Annotated[
    bool,
    typer.Option("--strict", help="Stop at the first bad data row instead of quarantining it."),
]


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
def prepare(
    recipe: Recipe,
    overrides: Overrides = None,
    strict: Strict = False,
    print_config: PrintConfig = False,
):
    """Read, validate and split the recipe's data into <run>/data/."""
    from tunewright.data.prepare import prepare as prepare_data

    def go():
        cfg = _config(recipe, overrides, print_config)
        dataset = prepare_data(cfg, strict=strict, console=console)
        console.print_json(json.dumps(dataset.summary))

    _guard(go)


@app.command()
def train(
    recipe: Recipe,
    overrides: Overrides = None,
    strict: Strict = False,
    print_config: PrintConfig = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Run a few steps; report speed, memory, ETA.")
    ] = False,
    dry_run_steps: Annotated[
        int, typer.Option(help="Timed steps of a dry run (after one warm-up step).")
    ] = 3,
):
    """Fine-tune on the prepared data (prepares it first if needed)."""
    from tunewright.pipeline import load_or_prepare
    from tunewright.train.loop import train as train_model

    def go():
        cfg = _config(
            recipe, [*(overrides or []), *(["train.resume=true"] if resume else [])], print_config
        )
        dataset = load_or_prepare(cfg, strict=strict, console=console)
        result = train_model(
            cfg, dataset, console=console, dry_run_steps=dry_run_steps if dry_run else None
        )
        if dry_run:
            console.print(
                f"fit check: {result.tokens_per_second:.0f} tokens/s, peak memory {result.peak_memory_mb:,.0f} MB, "
                f"{result.planned_steps} steps planned, estimated {result.eta_seconds / 60:.1f} min for the whole run"
            )
        else:
            console.print(
                f"saved {result.output_dir} ({result.steps} steps, {result.tokens_per_second:.0f} tokens/s)"
            )

    _guard(go)


@app.command()
def evaluate(recipe: Recipe, overrides: Overrides = None, print_config: PrintConfig = False):
    """Evaluate base (zero- and k-shot) and tuned models on the test split; write report.md and report.html."""
    from tunewright.errors import RunFolderError
    from tunewright.evaluate.report import summary_table, verdict, write_reports
    from tunewright.evaluate.runner import evaluate as evaluate_models
    from tunewright.runs import RunFolder, open_prepared, read_training_summary

    def go():
        cfg = _config(recipe, overrides, print_config)
        dataset = open_prepared(cfg.run_dir)
        trained = RunFolder(cfg.run_dir).trained_dir(cfg.train.method)
        if "tuned" in cfg.evaluate.models and not trained.is_dir():
            raise RunFolderError(
                f"no trained model in {cfg.run_dir}; run `tunewright train {recipe}` first"
            )
        result = evaluate_models(cfg, dataset, trained, console=console)
        write_reports(result, cfg.run_dir, training=read_training_summary(cfg.run_dir))
        console.print(summary_table(result))
        console.print(verdict(result))
        if result.general:
            console.print(result.general["sentence"])

    _guard(go)


@app.command()
def harness(
    source: Annotated[
        str,
        typer.Argument(help="A run folder (its base and tuned models are compared) or a model."),
    ],
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--tasks",
            "-t",
            help="Task names, comma-separated or repeated (default: tunewright_general_mc).",
        ),
    ] = None,
    include: Annotated[
        list[Path] | None,
        typer.Option(
            "--include", help="Folder of lm_eval task YAMLs with local data (repeatable)."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Score at most this many documents per task.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Requests per forward pass.")] = 8,
    chat_template: Annotated[
        bool, typer.Option("--chat-template", help="Wrap prompts in the model's chat template.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Results file (default: <run>/eval/harness.json, or ./harness.json for a model)."
        ),
    ] = None,
):
    """Run lm-evaluation-harness tasks from local files on a run's base and tuned models."""
    from tunewright.evaluate.harness import DEFAULT_TASKS, harness_table
    from tunewright.evaluate.harness import harness as run_harness

    def go():
        result = run_harness(
            source,
            tasks or DEFAULT_TASKS,
            include=include or (),
            limit=limit,
            batch_size=batch_size,
            apply_chat_template=chat_template,
            output=output,
            console=err_console,
        )
        console.print(harness_table(result))
        console.print(f"saved {result.path}", highlight=False)

    _guard(go)


@app.command()
def run(
    recipe: Recipe,
    overrides: Overrides = None,
    strict: Strict = False,
    print_config: PrintConfig = False,
    scaling: Annotated[
        str | None,
        typer.Option(
            help="Also train on these shares of the train split, e.g. 0.25,0.5,1 (sets train.scaling_fractions)."
        ),
    ] = None,
):
    """Prepare, train (LoRA), evaluate base vs tuned, and write a run folder with a report."""
    from tunewright.pipeline import run as run_pipeline

    def go():
        extra = [f"train.scaling_fractions=[{scaling}]"] if scaling else []
        cfg = _config(recipe, [*(overrides or []), *extra], print_config)
        run_pipeline(cfg, strict=strict, console=console)

    _guard(go)


data_app = typer.Typer(help="Look at prepared data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    recipe: Recipe,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to show: train, val or test.")] = "train",
    show: Annotated[int, typer.Option("--show", "-n", help="How many examples to print.")] = 3,
    print_config: PrintConfig = False,
):
    """Print tokenised samples with the untrained tokens dimmed; check that EOS is trained."""
    from tunewright.data.inspect import inspect_examples
    from tunewright.data.prepare import prepare as prepare_data
    from tunewright.dataset.tokenize import ChatTokenizer
    from tunewright.models import load_tokenizer
    from tunewright.runs import RunFolder, open_prepared

    def go():
        cfg = _config(recipe, overrides, print_config)
        if split not in ("train", "val", "test"):
            raise TunewrightError(f"--split must be train, val or test, got {split!r}")
        dataset = (
            open_prepared(cfg.run_dir)
            if RunFolder(cfg.run_dir).has_prepared_data()
            else prepare_data(cfg, console=err_console)
        )
        tokenizer = load_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
        chat = ChatTokenizer(tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len)
        report = inspect_examples(chat, dataset.split(split), console, show=show)
        if not report.eos_ok and report.checked:
            raise typer.Exit(1)

    _guard(go)


@app.command()
def schema():
    """Print the JSON schema of a recipe (every key, its type, default and description)."""
    console.print_json(json.dumps(RunConfig.model_json_schema()))


RunDir = Annotated[Path, typer.Argument(help="Run folder, e.g. runs/customer-support.")]


@app.command()
def export(
    run_dir: RunDir,
    formats: Annotated[
        list[str] | None,
        typer.Option("--format", "-f", help="adapter, merged or gguf (repeat for several)."),
    ] = None,
    quants: Annotated[
        list[str] | None,
        typer.Option("--quant", "-q", help="GGUF type: f16, bf16 or q8_0 (repeat for several)."),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Where to write (default: <run>/export).")
    ] = None,
    parity_prompts: Annotated[
        int, typer.Option(help="Test prompts compared after each export (0: all).")
    ] = 100,
):
    """Export a tuned run (adapter, merged HF folder, GGUF + Ollama Modelfile), each parity-checked."""
    from tunewright.export.runner import export as export_run

    def go():
        results = export_run(
            run_dir,
            formats or ["merged"],
            quants=quants or ["q8_0"],
            output_dir=output_dir,
            parity_prompts=parity_prompts or None,
            console=console,
        )
        for result in results:
            console.print(f"{result.artifact}: {result.folder}", highlight=False)

    _guard(go)


def _settings_parameters(model) -> list[inspect.Parameter]:
    """One `--option` per field of a settings model, typed, defaulted and documented from it, so
    the CLI never retypes a setting (litgpt's way). A field's `json_schema_extra` may add
    `flags` (extra option names) and `env` (an environment variable that sets it)."""
    parameters = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra or {}
        flags = ["--" + name.replace("_", "-"), *extra.get("flags", ())]
        option = typer.Option(*flags, help=field.description, envvar=extra.get("env"))
        parameters.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=field.default,
                annotation=Annotated[field.annotation, option],
            )
        )
    return parameters


def serve(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="A model (smollm2-135m, a folder, a .gguf) and/or run folders; each LoRA run is served under its run name."
        ),
    ],
    adapters: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="Extra adapter folder as NAME=PATH (repeatable)."),
    ] = None,
    **settings,
):
    """Serve models and tuned runs over an OpenAI-compatible HTTP API."""
    from tunewright.serve.server import serve as run_server
    from tunewright.serve.settings import ServeSettings

    def go():
        pairs = [a.partition("=") for a in adapters or []]
        if any(not sep or not name for name, sep, _ in pairs):
            raise TunewrightError("--adapter takes NAME=PATH")
        chosen = ServeSettings(**{**settings, "api_key": settings.get("api_key") or None})
        run_server(
            sources, chosen, adapters={name: path for name, _, path in pairs}, console=console
        )

    _guard(go)


def _register_serve() -> None:
    from tunewright.serve.settings import ServeSettings

    signature = inspect.signature(serve, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    serve.__signature__ = signature.replace(parameters=fixed + _settings_parameters(ServeSettings))
    app.command()(serve)


_register_serve()


def studio(**settings):
    """Run the studio: the fine-tuning jobs API (OpenAI-shaped), its job runner, and the models it
    trained served on /v1/chat/completions."""
    from tunewright.studio.server import studio as run_studio
    from tunewright.studio.settings import StudioSettings

    def go():
        chosen = StudioSettings(**{**settings, "api_key": settings.get("api_key") or None})
        run_studio(chosen, console=console)

    _guard(go)


def _register_studio() -> None:
    from tunewright.studio.settings import StudioSettings

    studio.__signature__ = inspect.Signature(_settings_parameters(StudioSettings))
    app.command()(studio)


_register_studio()


@app.command()
def chat(
    source: Annotated[
        str, typer.Argument(help="A model (smollm2-135m, a folder) or a run folder.")
    ],
    system: Annotated[str | None, typer.Option(help="System prompt (default: the run's).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 answers greedily.")] = 0.7,
):
    """Chat with a model or a tuned run in the terminal, answers streamed."""
    from tunewright.serve.chat import chat as run_chat

    _guard(
        lambda: run_chat(
            source,
            system_prompt=system,
            max_tokens=max_tokens,
            temperature=temperature,
            console=console,
        )
    )


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
