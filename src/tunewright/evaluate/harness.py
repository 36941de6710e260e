"""lm-evaluation-harness tasks on the base and the tuned model, from local task files only.

Front door: `harness(source, tasks)`. `source` is a run folder (its base model and its tuned model
are both scored, and compared) or a model (scored alone). Tasks are YAML files in lm_eval's
format, looked up in the shipped `harness_tasks/` folder and any `include` folders; their data
must be local files (`dataset_path: json` with `dataset_kwargs: {data_files: ...}`). Relative
`data_files` are resolved against the YAML's own folder, so a task folder can live anywhere.
lm_eval's built-in tasks are not indexed: they download their data from the Hub.

Writes `<run>/eval/harness.json` (or `output`): each model's metrics with lm_eval's standard
errors, the number of samples, and per task a paired bootstrap of tuned minus base.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tunewright.errors import TunewrightError
from tunewright.evaluate.stats import paired_bootstrap
from tunewright.files import write_text_atomic

TASKS_DIR = Path(__file__).parent / "harness_tasks"
DEFAULT_TASKS = ("tunewright_general_mc",)
# read by datasets and huggingface_hub when they are imported: any Hub access fails at once
_OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@dataclass
class HarnessResult:
    tasks: list[str]
    # model -> task -> {"n_samples": int, "metrics": {metric: {"value", "stderr"}}}
    models: dict[str, dict[str, dict]]
    comparisons: dict[str, dict] = field(default_factory=dict)  # task -> tuned minus base
    path: Path | None = None


@contextmanager
def _offline() -> Iterator[None]:
    """Task data are local files: keep datasets off the network, its download-count ping included.

    datasets reads the offline switches from the environment only when first imported, so where it
    was imported earlier in the process its config flag is set too, and both are restored after.
    """
    saved = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    os.environ.update(dict.fromkeys(_OFFLINE_ENV, "1"))
    import datasets

    was_offline, datasets.config.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = was_offline
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def task_specs(tasks: Sequence[str], include: Sequence[Path] = ()):
    """A TaskManager over the local task folders, and what to pass it for each requested task."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise TunewrightError(
            "the harness needs lm-eval: pip install 'tunewright[harness]'"
        ) from None
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    from tunewright.models import cache_dir

    for folder in include:
        if not Path(folder).is_dir():
            raise TunewrightError(f"task folder not found: {folder}")
    manager = TaskManager(include_path=[str(TASKS_DIR), *map(str, include)], include_defaults=False)
    specs: list[str | dict] = []
    for name in tasks:
        entry = manager.task_index.get(name)
        if entry is None:
            raise TunewrightError(
                f"unknown harness task {name!r}; local tasks: {', '.join(manager.all_tasks)}"
            )
        if entry.kind is not Kind.TASK or entry.yaml_path is None:
            specs.append(name)  # a group or tag: its member tasks are resolved by lm_eval
            continue
        cfg = load_yaml(entry.yaml_path)
        kwargs = dict(cfg.get("dataset_kwargs") or {})
        if "data_files" in kwargs:
            kwargs["data_files"] = _resolve(kwargs["data_files"], Path(entry.yaml_path).parent)
        # the Arrow cache of task data goes with tunewright's, not into ~/.cache/huggingface
        kwargs.setdefault("cache_dir", str(cache_dir() / "harness-datasets"))
        specs.append(cfg | {"dataset_kwargs": kwargs})
    return manager, specs


def _resolve(files, folder: Path):
    if isinstance(files, dict):
        return {split: _resolve(f, folder) for split, f in files.items()}
    if isinstance(files, list):
        return [_resolve(f, folder) for f in files]
    path = Path(files).expanduser()
    return str(path if path.is_absolute() else folder / path)


def _run(
    model,
    tokenizer,
    manager,
    specs,
    *,
    limit: int | None,
    batch_size: int,
    apply_chat_template: bool,
) -> dict:
    """lm_eval's `simple_evaluate` on an in-memory model; returns its raw results dict."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    # HFLM warns that an in-memory model skips its loading options: that is what we mean
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=specs,
        task_manager=manager,
        limit=limit,
        apply_chat_template=apply_chat_template,
        log_samples=True,
        bootstrap_iters=1000,
    )


def summarise(raw: dict) -> dict[str, dict]:
    """task -> {"n_samples", "metrics": {metric: {"value", "stderr"}}} from lm_eval's results."""
    summary = {}
    for task, row in raw["results"].items():
        metrics = {}
        for key, value in row.items():
            metric, sep, filt = key.partition(",")
            if not sep or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = row.get(f"{metric}_stderr,{filt}")
            name = metric if filt == "none" else key
            metrics[name] = {
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            }
        n = raw.get("n-samples", {}).get(task, {}).get("effective")
        summary[task] = {"n_samples": n, "metrics": metrics}
    return summary


def per_sample(raw: dict, task: str) -> tuple[str, dict[int, float]] | None:
    """The task's headline metric per document (for the paired comparison), if it has one."""
    samples = raw.get("samples", {}).get(task)
    metrics = list(raw.get("higher_is_better", {}).get(task, {}))
    if not samples or not metrics:
        return None
    metric, first_filter = metrics[0], samples[0].get("filter")
    scores = {
        int(s["doc_id"]): s[metric]
        for s in samples
        if s.get("filter") == first_filter and metric in s
    }
    if not scores or not all(isinstance(v, (int, float)) for v in scores.values()):
        return None  # a corpus-level metric (BLEU...) has no per-document score
    return metric, {doc: float(v) for doc, v in scores.items()}


def _models(source: str):
    """(name, loader) pairs: base and tuned for a run folder, the model alone otherwise."""
    from tunewright.models import load_model
    from tunewright.runs import RunFolder, load_trained, read_run_config

    run = RunFolder(Path(source))
    if run.is_run():
        trained = run.trained()  # a run without a trained model fails before the base is scored
        cfg = read_run_config(run.path)
        # both models in fp32, so the comparison carries no precision difference
        dtype = torch.float32

        def tuned():
            loaded = load_trained(
                trained,
                cfg.model.name,
                dtype=dtype,
                trust_remote_code=cfg.model.trust_remote_code,
            )
            model = loaded.model.merge_and_unload() if trained.method == "lora" else loaded.model
            return model, loaded.tokenizer

        def base():
            loaded = load_model(
                cfg.model.name, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code
            )
            return loaded.model, loaded.tokenizer

        return [("base", base), ("tuned", tuned)], run.eval_dir / "harness.json"

    def model():
        loaded = load_model(source)
        return loaded.model, loaded.tokenizer

    return [("base", model)], Path("harness.json")


def harness(
    source: str | Path,
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    include: Sequence[Path] = (),
    limit: int | None = None,
    batch_size: int = 8,
    apply_chat_template: bool = False,
    output: Path | None = None,
    console: Console | None = None,
) -> HarnessResult:
    """Run harness tasks on a run's base and tuned models (or one model) and write harness.json."""
    console = console or Console(stderr=True)
    tasks = [t.strip() for item in tasks for t in item.split(",") if t.strip()]
    loaders, default_output = _models(str(source))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models: dict[str, dict] = {}
    headline: dict[str, dict[str, tuple[str, dict[int, float]] | None]] = {}
    # lm_eval and datasets are first imported in here, so they read the offline switches; models
    # load outside it (a Hub model id may legitimately need the network)
    with _offline():
        manager, specs = task_specs(tasks, include)  # a bad task name fails before any model loads
    for name, load in loaders:  # one model in memory at a time
        model, tokenizer = load()
        with _offline(), console.status(f"harness: {name}"):
            raw = _run(
                model.to(device),
                tokenizer,
                manager,
                specs,
                limit=limit,
                batch_size=batch_size,
                apply_chat_template=apply_chat_template,
            )
        models[name] = summarise(raw)
        headline[name] = {task: per_sample(raw, task) for task in models[name]}
        del model
    result = HarnessResult(tasks, models, _compare(headline))
    result.path = _write(output or default_output, result)
    return result


def _compare(headline: dict[str, dict]) -> dict[str, dict]:
    if set(headline) != {"base", "tuned"}:
        return {}
    comparisons = {}
    for task, base in headline["base"].items():
        tuned = headline["tuned"].get(task)
        if base is None or tuned is None or base[1].keys() != tuned[1].keys():
            continue
        docs = sorted(base[1])
        paired = paired_bootstrap([base[1][d] for d in docs], [tuned[1][d] for d in docs])
        comparisons[task] = {
            "metric": base[0],
            "delta": paired.delta,
            "low": paired.low,
            "high": paired.high,
            "p_value_bootstrap": paired.p_value,
        }
    return comparisons


def _write(path: Path, result: HarnessResult) -> Path:
    from importlib.metadata import version

    body = {
        "tasks": result.tasks,
        "lm_eval_version": version("lm_eval"),
        "models": result.models,
        "comparisons": result.comparisons,
    }
    write_text_atomic(path, json.dumps(body, indent=2))
    return path


def harness_table(result: HarnessResult) -> Table:
    """Task x metric rows, one column per model (value ± stderr), and tuned minus base."""
    names = list(result.models)
    table = Table(title="lm-evaluation-harness (± standard error)")
    table.add_column("task", no_wrap=True)  # names are what the reader looks for: never cut them
    table.add_column("metric", no_wrap=True)
    for column in ("n", *names):
        table.add_column(column, justify="right")
    if result.comparisons:
        table.add_column("tuned - base [95% CI]", justify="right")
    first = result.models[names[0]]
    for task, row in first.items():
        for metric in row["metrics"]:
            cells = []
            for name in names:
                cell = result.models[name].get(task, {}).get("metrics", {}).get(metric)
                cells.append("-" if cell is None else _fmt(cell))
            extra = []
            if result.comparisons:
                c = result.comparisons.get(task)
                extra = [
                    f"{c['delta']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
                    if c and c["metric"] == metric
                    else ""
                ]
            table.add_row(task, metric, str(row["n_samples"]), *cells, *extra)
    return table


def _fmt(cell: dict) -> str:
    return f"{cell['value']:.3f}" + (
        f" ± {cell['stderr']:.3f}" if cell["stderr"] is not None else ""
    )
