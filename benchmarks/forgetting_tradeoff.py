"""Forgetting trade-off: the domain metric against the general score, for each cure of forgetting,
at one training time budget.

Run: .venv/bin/python benchmarks/forgetting_tradeoff.py --recipe customer-support
         [--budget-minutes 5] [--variants none,share-10,kl-10,share-25]
         [--output-dir runs/forgetting-tradeoff] [KEY=VALUE ...]

Each variant runs the recipe (`tunewright.pipeline.run`: prepare, train for at most the budget,
evaluate the tuned model and the forgetting check) in its own run folder, one after the other in
this process. The variants (VARIANTS below) differ only in the replay settings: none; the base's
answers to general prompts mixed in as a share of the training rows (`general_replay_share`),
whole or their first tokens only (`general_replay_answer_tokens`), at a smaller share with each
replayed token weighing more (`general_replay_weight`); and the same with a KL term
to the base (`general_replay_kl`). The table gives per variant the tuned model's headline metric
and macro-F1 with 95% intervals, the forgetting check (base and tuned right of the general
questions, the paired test's p), whether the check passes ("no significant loss":
tuned within 3 points of base and p >= 0.05), the domain metric's difference from the first
variant (paired over the test rows, with its 95% bootstrap interval), training steps, tokens/s and
the run's seconds (replay answers and the base's distributions are made before training, outside
the budget, and cached per model), and the machine's matrix-product rate measured at the start.
Also written to `<output-dir>/<recipe>.md` (and the figures to `<recipe>.json`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console

from tunewright.config import load_config
from tunewright.evaluate.general import right_of
from tunewright.evaluate.stats import paired_bootstrap
from tunewright.pipeline import run

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import matmul_rates  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPLAY = "train.general_replay=200"
VARIANTS = {
    "none": ["train.general_replay=0"],
    "replay-240": ["train.general_replay=240"],  # each chat once: the earlier default dose
    "share-5": [REPLAY, "train.general_replay_share=0.05"],
    "share-10": [REPLAY, "train.general_replay_share=0.1"],
    "share-25": [REPLAY, "train.general_replay_share=0.25"],
    # for recipes of long domain rows (PubMedQA's abstracts), where a replayed chat costs a
    # fraction of a domain row's compute
    "share-50": [REPLAY, "train.general_replay_share=0.5"],
    # only each answer's first 16 tokens: replay rows as short as domain rows, so a step costs less
    "share-10-a16": [
        REPLAY,
        "train.general_replay_share=0.1",
        "train.general_replay_answer_tokens=16",
    ],
    "share-20-a16": [
        REPLAY,
        "train.general_replay_share=0.2",
        "train.general_replay_answer_tokens=16",
    ],
    # fewer replay rows, each token weighing more (`general_replay_weight`): the same pull in
    # expectation with fewer domain rows displaced; whether it costs fewer points: docs/results.md
    "share-5-w2-a16": [
        REPLAY,
        "train.general_replay_share=0.05",
        "train.general_replay_weight=2",
        "train.general_replay_answer_tokens=16",
    ],
    "share-3-w3-a16": [
        REPLAY,
        "train.general_replay_share=0.03",
        "train.general_replay_weight=3",
        "train.general_replay_answer_tokens=16",
    ],
    "kl-10": [REPLAY, "train.general_replay_share=0.1", "train.general_replay_kl=1.0"],
    "kl-25": [REPLAY, "train.general_replay_share=0.25", "train.general_replay_kl=1.0"],
}


def run_variant(recipe: str, variant: str, budget_minutes: float, overrides, output_dir, console):
    cfg = load_config(
        ROOT / "recipes" / f"{recipe}.yaml",
        [
            f"output_dir={output_dir}",
            f"name={recipe}-{variant}",
            f"train.max_minutes={budget_minutes:g}",
            "evaluate.models=[tuned]",
            "evaluate.general_check=true",
            "evaluate.max_minutes=null",  # every test row, whatever the recipe budgets
            *VARIANTS[variant],
            *overrides,
        ],
    )
    console.rule(f"{recipe}, {variant}: {' '.join(VARIANTS[variant])}")
    started = time.perf_counter()
    run(cfg, console=console)
    seconds = time.perf_counter() - started
    results = json.loads((cfg.run_dir / "eval" / "results.json").read_text())
    training = json.loads((cfg.run_dir / "training.json").read_text())
    general = results["general"]
    return {
        "variant": variant,
        "run_dir": str(cfg.run_dir),
        "overrides": VARIANTS[variant],
        "headline": results["headline"],
        "n_examples": results["n_examples"],
        "tuned": results["models"]["tuned"]["metrics"],
        "general": general,
        "passes": general["passed"],
        "training": training,
        "run_seconds": round(seconds, 1),
    }


def _cell(metrics: dict, key: str, percent: bool) -> str:
    c = metrics[key]
    f = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    return f"{f(c['value'])} [{f(c['low'])}, {f(c['high'])}]"


def _scores(run_dir: str) -> dict[str, float]:
    """The tuned model's score on each test row, by the row's source (file:line)."""
    lines = (Path(run_dir) / "eval" / "examples.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    return {row["source"]: row["tuned"]["score"] for row in rows}


def versus_first(first: dict[str, float], other: dict, percent: bool) -> str:
    """The domain metric's difference from the first variant (`first`: its `_scores`), paired
    over the test rows both answered (the same rows: every variant runs the same recipe's split),
    with its 95% paired bootstrap interval: two variants' own intervals overlap long before their
    difference is unresolved, so this says whether a 2-point target is met or cannot be told."""
    a, b = first, _scores(other["run_dir"])
    common = sorted(a.keys() & b.keys())
    paired = paired_bootstrap([a[k] for k in common], [b[k] for k in common])
    # points for a rate; three decimals for a score such as ROUGE-L, as its own cells have
    scale, unit, digits = (100, " pts", 1) if percent else (1, "", 3)
    delta, low, high = (f"{v * scale:+.{digits}f}" for v in (paired.delta, paired.low, paired.high))
    return f"{delta}{unit} [{low}, {high}]"


def table(results: list[dict], header: str) -> str:
    head = results[0]["headline"]
    percent = head == "accuracy"
    lines = [
        header,
        "",
        (
            f"| variant | {head} (95% CI) | vs {results[0]['variant']}, paired (95% CI) | "
            "macro-F1 | general: base → tuned (p) | check | steps | tokens/s | run s |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first = _scores(results[0]["run_dir"])  # read once, paired with every other variant
    for r in results:
        g, t = r["general"], r["training"]
        right = f"{right_of(g, 'base')} → {right_of(g, 'tuned')}"
        delta = "" if r is results[0] else versus_first(first, r, percent)
        lines.append(
            f"| {r['variant']} | {_cell(r['tuned'], head, percent)} | {delta} | "
            f"{_cell(r['tuned'], 'macro_f1', False) if 'macro_f1' in r['tuned'] else '-'} | "
            f"{right} ({g['test']['p_value']:.2g}) | {'passes' if r['passes'] else 'fails'} | "
            f"{t['steps']} | {t['tokens_per_second']:.0f} | {r['run_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="customer-support")
    parser.add_argument("--budget-minutes", type=float, default=5.0)
    parser.add_argument("--variants", default="none,share-5,share-10")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "forgetting-tradeoff")
    parser.add_argument("overrides", nargs="*", help="Dotted overrides for every variant.")
    args = parser.parse_args()
    console = Console(stderr=True)
    rates = matmul_rates()
    rate_text = f"matmul rate bf16 {rates['bfloat16']:.1f}, fp32 {rates['float32']:.1f} GFLOP/s"
    console.print(rate_text)
    results = []
    for variant in args.variants.split(","):
        results.append(
            run_variant(
                args.recipe, variant, args.budget_minutes, args.overrides, args.output_dir, console
            )
        )
        header = (
            f"Forgetting trade-off, {args.recipe}, training budget {args.budget_minutes:g} min; "
            f"overrides: {' '.join(args.overrides) or 'none'}; {rate_text} (measured at the start)."
        )
        text = table(results, header)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / f"{args.recipe}.md").write_text(text, encoding="utf-8")
        (args.output_dir / f"{args.recipe}.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
