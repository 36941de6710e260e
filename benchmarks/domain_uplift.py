"""Domain uplift: the base model vs the tuned one on the domain recipes, each trained for at most a
fixed budget of time.

Run: .venv/bin/python benchmarks/domain_uplift.py [--budget-minutes 15] [--quick]
         [--recipes customer-support,finance,healthcare,healthcare-qa,customer-support-dpo,healthcare-qa-dpo]
         [--output-dir runs/domain-uplift] [KEY=VALUE ...]

Healthcare has two recipes: PubMedQA (yes/no/maybe, macro-F1) and MedQuAD question answering
(ROUGE-L), the fallback headline should PubMedQA not move a 135M model.

For each recipe (on its default model, SmolLM2-135M, unless an override says otherwise), with the
BUDGET_OVERRIDES below and then the command line's:
1. run the recipe (`tunewright.pipeline.run`: prepare, train, evaluate, report) into
   `<output-dir>/<recipe>/` with `train.max_minutes` set to the budget: training stops when the
   budget is spent, and its learning-rate schedule decays over the budget (train/time_budget.py;
   a recipe smaller than the budget trains in full);
2. read back `eval/results.json` (every model variant it scored: base zero-shot, base k-shot,
   tuned, and on classification recipes the classic classifiers tfidf_logreg and embed_logreg,
   evaluate/baselines.py), `training.json` and the evaluated references in `eval/examples.jsonl`.

It prints the machine's matrix-product rate (measured at the start), then per recipe and variant
the headline metric and macro-F1 with 95% bootstrap intervals, the general score (the forgetting
check: general questions right, base and tuned, and the paired test's p), the majority-class
baseline (accuracy and macro-F1 of always answering the commonest test label:
a tuned model that only learned the prior scores exactly that), the tuned-minus-strongest-base
difference, the training minutes, steps and tokens/s, each classic classifier's CPU seconds (fit +
predict) and whether one matches the tuned model (McNemar p >= 0.05, or better): then the
fine-tuned LLM is not needed for accuracy on that recipe. The same goes to `<output-dir>/summary.json`
and `summary.md`.

The preference recipes (customer-support-dpo, healthcare-qa-dpo) are measured by
`preference_uplift.py`'s `measure_recipe`: SFT alone vs SFT + DPO vs SFT + ORPO at equal total time,
with paired tests, and DPO/ORPO training tokens/s against SFT on the same pairs. They keep their own
budgets (the SFT stage's `train.max_minutes`, then `preference.max_minutes`), not `--budget-minutes`;
their tables follow the main one.

`--quick` checks that all of this works in minutes: at most 30 training steps of batch 4, 50 test
rows, no general-knowledge check. Its scores mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunewright.config import load_config
from tunewright.evaluate.general import right_of
from tunewright.pipeline import run

sys.path.insert(0, str(Path(__file__).parent))
from preference_uplift import OBJECTIVES, SPEED_SECONDS, measure_recipe  # noqa: E402
from preference_uplift import QUICK as PREFERENCE_QUICK  # noqa: E402
from preference_uplift import RECIPES as PREFERENCE_RECIPES  # noqa: E402
from train_throughput import matmul_rates  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("customer-support", "finance", "healthcare", "healthcare-qa", *PREFERENCE_RECIPES)
# The shipped recipes are sized for a ~10-minute demo (a 2,000-row sample of the training split,
# one epoch). Under a time budget, the benchmark lets each see as much data as the budget allows:
# the whole training split (one pass, cut by train.max_steps), or several passes where the split
# is small. Every variant of the fair base is scored, and classification answers are constrained
# to the label names for every variant, so no model loses points to an answer off the label set.
BUDGET_OVERRIDES = {
    "customer-support": [
        "data.max_train_examples=null",
        "data.max_test_examples=500",
        "evaluate.max_minutes=null",  # the recipe's evaluation budget would sample the 500 down
        "evaluate.models=[base_0shot,base_kshot,tuned,tfidf_logreg,embed_logreg]",
        "evaluate.label_decoding=constrained",
    ],
    "finance": ["data.max_train_examples=null", "evaluate.label_decoding=constrained"],
    "healthcare": [
        "train.epochs=4",
        "evaluate.label_decoding=constrained",
    ],  # 475 training questions
    "healthcare-qa": [
        "data.max_train_examples=null",
        "data.max_test_examples=100",
    ],  # free text: slow to generate
}
QUICK = [
    "train.max_steps=30",
    "train.batch_size=4",
    "data.max_test_examples=50",
    "evaluate.general_check=false",
]


def majority_baseline(references: list[str], labels: list[str]) -> dict:
    """Accuracy and macro-F1 of always answering the commonest reference label."""
    label, count = Counter(references).most_common(1)[0]
    share = count / len(references)
    # F1 of the majority label (precision `share`, recall 1), 0 for every other label; averaged
    # over the whole label set, as the evaluation's macro-F1 is
    return {"label": label, "accuracy": share, "macro_f1": 2 * share / (1 + share) / len(labels)}


def run_recipe(
    name: str, budget_seconds: float, overrides: list[str], output_dir: Path, console: Console
) -> dict:
    recipe = ROOT / "recipes" / f"{name}.yaml"
    cfg = load_config(
        recipe,
        [
            f"output_dir={output_dir}",
            *BUDGET_OVERRIDES.get(name, []),
            f"train.max_minutes={budget_seconds / 60:g}",
            *overrides,
        ],
    )
    console.rule(f"{name}: at most {budget_seconds / 60:g} min of training")
    started = time.perf_counter()
    run(cfg, console=console)
    wall = time.perf_counter() - started

    results = json.loads((cfg.run_dir / "eval" / "results.json").read_text())
    training = json.loads((cfg.run_dir / "training.json").read_text())
    rows = [
        json.loads(line)
        for line in (cfg.run_dir / "eval" / "examples.jsonl").read_text().splitlines()
    ]
    out = {
        "recipe": name,
        "run_dir": str(cfg.run_dir),
        "task": results["task"],
        "headline": results["headline"],
        "n_examples": results["n_examples"],
        "budget_minutes": budget_seconds / 60,
        "training": training,
        "run_seconds": round(wall, 1),
        "models": {m: v["metrics"] for m, v in results["models"].items()},
        # the classic classifiers' CPU seconds, fit + predict (time.process_time)
        "cpu_seconds": {
            m: v["cpu_seconds"] for m, v in results["models"].items() if "cpu_seconds" in v
        },
        "comparison": results.get("comparison") or {},
        "comparisons": results.get("comparisons") or {},
        "strongest_base": results.get("strongest_base"),
        "general": results.get("general"),
    }
    if results["task"] == "classification":
        labels = json.loads((cfg.run_dir / "data" / "summary.json").read_text())["labels"]
        out["majority"] = majority_baseline([r["reference"] for r in rows], labels)
    return out


def _cell(metrics: dict, key: str, percent: bool) -> str:
    if key not in metrics:
        return "-"
    c = metrics[key]
    f = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    return f"{f(c['value'])} [{f(c['low'])}, {f(c['high'])}]"


def general_cell(result: dict, model: str) -> str:
    """The forgetting check: general questions right (base, and tuned with its paired p)."""
    g = result.get("general")
    if not g or model not in ("tuned",) and not model.startswith("base_"):
        return ""
    base = right_of(g, "base")
    if model != "tuned":
        return base
    outcome = "passes" if g.get("passed") else "fails"
    return f"{right_of(g, 'tuned')} (vs base {base}, p = {g['test']['p_value']:.2g}; {outcome})"


def table_rows(result: dict) -> list[list[str]]:
    """One row per scored variant, plus the majority-class baseline."""
    head = result["headline"]
    percent = head == "accuracy"
    t = result["training"]
    seconds = (
        f"{t['seconds'] / 60:.1f} min, {t['steps']} of {t.get('planned_steps', '?')} planned "
        f"steps, {t['tokens_per_second']:.0f} tokens/s ({t.get('precision', '?')})"
    )
    cpu = result.get("cpu_seconds") or {}
    rows = []
    for model, metrics in result["models"].items():
        cost = seconds if model == "tuned" else ""
        if model in cpu:
            cost = f"fit + predict {cpu[model]:.1f} CPU s"
        rows.append(
            [
                result["recipe"],
                model,
                _cell(metrics, head, percent),
                _cell(metrics, "macro_f1", False),
                general_cell(result, model),
                cost,
            ]
        )
    if "majority" in result:
        m = result["majority"]
        rows.append(
            [
                result["recipe"],
                f"majority ({m['label']})",
                f"{m['accuracy']:.1%}",
                f"{m['macro_f1']:.3f}",
                "",
                "",
            ]
        )
    return rows


def verdict(result: dict) -> str:
    c = result["comparison"]
    if not c:
        return f"{result['recipe']}: no tuned-vs-base comparison in results.json"
    p = c.get("mcnemar_p_value", c.get("p_value_bootstrap"))
    p_text = f", p = {p:.2g}" if p is not None else ""
    text = (
        f"{result['recipe']}: tuned - {result.get('strongest_base') or 'base'} = {c['delta']:+.3f} "
        f"{result['headline']} (95% CI [{c['low']:+.3f}, {c['high']:+.3f}]{p_text}) over {result['n_examples']} examples"
    )
    # macro-F1 against every base variant: where one label dominates, accuracy can hide that
    # tuning learned only the prior
    f1 = [
        f"{name} {m['delta']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}], p = {m['p_value']:.2g}"
        for name, comp in (result.get("comparisons") or {}).items()
        if (m := comp.get("macro_f1"))
    ]
    text += f"; macro-F1 tuned minus {'; '.join(f1)}" if f1 else ""
    return text + classifier_verdict(result)


def classifier_verdict(result: dict) -> str:
    """'' without classic classifiers; else whether one matches the tuned model on the headline
    metric (McNemar p >= 0.05, or better than it), which makes the fine-tuned LLM unnecessary
    for accuracy, or that the tuned model beats them all."""
    cpu = result.get("cpu_seconds") or {}
    comparisons = result.get("comparisons") or {}
    scored = [n for n in cpu if n in comparisons]
    if not scored:
        return ""
    head = result["headline"]

    def score(name: str) -> float:
        return result["models"][name][head]["value"]

    def p(name: str) -> float:
        return comparisons[name]["p_value"]

    tuned = result["models"]["tuned"][head]["value"]
    matching = [n for n in scored if p(n) >= 0.05 or comparisons[n]["delta"] <= 0]
    if not matching:
        parts = ", ".join(f"{n} {score(n):.3f} (p = {p(n):.2g})" for n in scored)
        return f". Tuned {tuned:.3f} beats the classic classifiers: {parts}"
    best = max(matching, key=score)
    return (
        f". A classic classifier matches: {best} ({cpu[best]:.1f} CPU s) {score(best):.3f} vs tuned "
        f"{tuned:.3f} {head} (p = {p(best):.2g}): the fine-tuned LLM is not needed for {head} here"
    )


def write_markdown(results: list[dict], preference: list[str], path: Path, header: str) -> None:
    lines = [
        "# Domain uplift",
        "",
        header,
        "",
        "| recipe | model | headline metric (95% CI) | macro-F1 (95% CI) | general questions right | training |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    lines += [""] + [f"- {verdict(r)}" for r in results]
    if preference:
        lines += ["", "## Preference tuning after SFT, at equal total time", "", *preference]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget-minutes", type=float, default=15.0, help="Most training time per recipe."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Tiny budgets (30 steps, 50 test rows): checks it works.",
    )
    parser.add_argument(
        "--recipes", default=",".join(RECIPES), help="Comma-separated recipe names under recipes/."
    )
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "domain-uplift")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Dotted overrides for every recipe, e.g. data.max_test_examples=200.",
    )
    args = parser.parse_args()

    console = Console(stderr=True)
    rates = matmul_rates()
    rate_text = f"matmul rate bf16 {rates['bfloat16']:.1f}, fp32 {rates['float32']:.1f} GFLOP/s"
    console.print(rate_text)
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: list[dict] = []
    preference: dict[str, dict] = {}
    preference_lines: list[str] = []
    for name in args.recipes.split(","):
        if name in PREFERENCE_RECIPES:
            own = [*(PREFERENCE_QUICK if args.quick else []), *args.overrides]
            preference[name], lines = measure_recipe(
                name, list(OBJECTIVES), own, args.output_dir, SPEED_SECONDS, console
            )
            preference_lines += [*lines, ""]
        else:
            results.append(
                run_recipe(name, args.budget_minutes * 60, overrides, args.output_dir, console)
            )
        # written after every recipe, so a long run interrupted later still leaves its results
        header = (
            f"Training budget {args.budget_minutes:g} min per recipe"
            f"{' (--quick: scores mean nothing)' if args.quick else ''}; overrides: {' '.join(overrides) or 'none'} "
            f"(and each recipe's BUDGET_OVERRIDES); total {time.perf_counter() - started:.0f} s; "
            f"{rate_text} (measured at the start)."
        )
        (args.output_dir / "summary.json").write_text(
            json.dumps({"header": header, "results": results, "preference": preference}, indent=2)
        )
        write_markdown(results, preference_lines, args.output_dir / "summary.md", header)

    table = Table(title="Domain uplift: " + header)
    for column in (
        "recipe",
        "model",
        "headline metric (95% CI)",
        "macro-F1 (95% CI)",
        "general questions right",
        "training",
    ):
        table.add_column(column)
    for result in results:
        for row in table_rows(result):
            table.add_row(*row)
    out = Console()
    if results:
        out.print(table)
    for result in results:
        out.print(verdict(result), highlight=False)
    if preference_lines:
        out.print("\n".join(preference_lines), highlight=False)
    out.print(f"summary: {args.output_dir / 'summary.md'}", highlight=False)


if __name__ == "__main__":
    main()
