"""`tunewright run`: prepare -> train -> evaluate -> report, in one run folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from tunewright.config import RunConfig, save_config
from tunewright.data.prepare import prepare
from tunewright.dataset.prepared import PreparedDataset
from tunewright.evaluate.general import right_of
from tunewright.evaluate.report import summary_table, verdict, write_reports
from tunewright.evaluate.runner import EvalResult, evaluate
from tunewright.preference import ChainResult, run_chain, with_sft_compared
from tunewright.runs import RunFolder, open_prepared
from tunewright.scaling import run_scaling
from tunewright.train.loop import TrainResult, train


def load_or_prepare(
    cfg: RunConfig, *, strict: bool = False, console: Console | None = None
) -> PreparedDataset:
    """The run's prepared data, preparing it first if needed.

    Under `accelerate launch`/`torchrun` the main process prepares while the others wait, then
    they read what it wrote: every rank trains on the same splits, and no two write one file.
    """
    from accelerate import PartialState

    from tunewright.hardware import cpu_only

    with PartialState(cpu=cpu_only()).main_process_first():
        if RunFolder(cfg.run_dir).has_prepared_data():
            return open_prepared(cfg.run_dir)
        return prepare(cfg, strict=strict, console=console)


@dataclass
class RunResult:
    run_dir: Path
    train: TrainResult
    eval: EvalResult
    seconds: float
    chain: ChainResult | None = None  # with a preference section: both stages and the pairs


def run(cfg: RunConfig, *, strict: bool = False, console: Console | None = None) -> RunResult:
    """Run every stage of a recipe and write the run folder."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    run_folder = RunFolder(cfg.run_dir)
    save_config(cfg, run_folder.config_file)
    console.rule("prepare")
    dataset = prepare(cfg, strict=strict, console=console)
    prepared_at = time.perf_counter()
    s = dataset.summary["splits"]
    console.print(
        f"train {s['train']}, validation {s['val']}, test {s['test']} examples "
        f"({dataset.summary['quarantined']} quarantined)"
    )
    console.rule("train")
    eval_cfg, chain = cfg, None
    if cfg.preference is not None:  # SFT, then preference tuning on the models' own answers
        chain, trained_dir = run_chain(cfg, dataset, console=console)
        trained, eval_cfg = chain.preference, with_sft_compared(cfg)
        console.print(
            f"SFT {chain.sft.steps} steps in {chain.sft.seconds:.0f} s; {chain.pairs} pairs from "
            f"{chain.questions} questions in {chain.pair_seconds:.0f} s; "
            f"{cfg.preference.objective.upper()} {trained.steps} steps in {trained.seconds:.0f} s"
        )
    else:
        trained = train(cfg, dataset, console=console)
        trained_dir = trained.output_dir
        console.print(
            f"trained {trained.steps} steps in {trained.seconds:.0f} s, "
            f"{trained.tokens_per_second:.0f} tokens/s; val loss {trained.val_loss}"
        )
    console.rule("evaluate")
    evaluate_from = time.perf_counter()
    result = evaluate(eval_cfg, dataset, trained_dir, console=console)
    evaluated_at = time.perf_counter()
    training = trained.summary()  # as train wrote it to training.json
    if cfg.train.scaling_fractions:  # before the reports: report.html shows the scaling curve
        run_scaling(cfg, dataset, full=result, console=console)
    write_reports(result, cfg.run_dir, training=training)
    console.print(summary_table(result))
    console.print(verdict(result))
    if result.general:
        console.print(result.general["sentence"])
    console.print(f"report: {run_folder.report_html}")
    console.print(f"run folder: {cfg.run_dir}")
    seconds = time.perf_counter() - started
    console.print(
        done_line(
            result,
            trained,
            seconds=seconds,
            prepare_seconds=prepared_at - started,
            evaluate_seconds=evaluated_at - evaluate_from,
        )
    )
    return RunResult(cfg.run_dir, trained, result, seconds, chain)


def done_line(
    result: EvalResult,
    trained: TrainResult,
    *,
    seconds: float,
    prepare_seconds: float,
    evaluate_seconds: float,
) -> str:
    """One line saying what the run achieved and what each stage cost, printed last."""
    tuned = result.models.get("tuned")
    score = ""
    if tuned is not None:
        value = tuned.metrics[result.headline]["value"]
        shown = f"{value:.1%}" if result.headline == "accuracy" else f"{value:.3f}"
        rows = result.n_examples
        if result.test_rows not in (None, rows):
            rows = f"{rows} of {result.test_rows}"
        score = f"tuned {result.headline} {shown} on {rows} test rows; "
    if result.general:
        g = result.general
        outcome = "passed" if g["passed"] else "failed"
        score += (
            f"forgetting check {outcome} ({right_of(g, 'tuned')} general answers right, "
            f"base {right_of(g, 'base')}); "
        )
    budget = " (time budget)" if trained.out_of_time else ""
    return (
        f"done in {int(seconds // 60)} min {int(seconds % 60):02d} s: {score}prepare "
        f"{prepare_seconds:.0f} s, train {trained.seconds:.0f} s{budget} ({trained.steps} steps, "
        f"{trained.tokens_per_second:.0f} tokens/s, {trained.precision}), "
        f"evaluate {evaluate_seconds:.0f} s"
    )
