"""Preference tuning after SFT: does it add anything to SFT alone, at equal total time?

Run: .venv/bin/python benchmarks/preference_uplift.py [--recipes customer-support-dpo,healthcare-qa-dpo]
         [--objectives dpo,orpo] [--quick] [--output-dir runs/preference-uplift] [KEY=VALUE ...]

The preference recipes of `domain_uplift.py`'s family (recipes/*-dpo.yaml). For each recipe:
1. one chained run per objective (`tunewright.pipeline.run`): SFT for the recipe's
   `train.max_minutes`, pairs from the models' own answers, then DPO or ORPO for
   `preference.max_minutes`, into `<output-dir>/<recipe>/<objective>/`;
2. SFT alone at equal total time: one run with the preference section removed, trained for
   the longest chained run's measured time (its SFT stage, building the pairs and
   preference training), into `<output-dir>/<recipe>/sft-alone/`. Its evaluation also scores the
   chained runs' final models (`dpo`, `orpo`) and their SFT stage (`sft`, at the shorter
   budget) through `evaluate.compare_runs`, so every model answers the same test rows and the
   paired tests compare them directly;
3. training speed on the same pairs: SFT on the pairs' chosen answers for `--speed-seconds`,
   against the chained runs' preference stages (tokens/s and pairs/s).

It prints the machine's matrix-product rate (measured at the start), then per recipe and model the
headline metric with its 95% interval, the paired test against SFT alone, the general score, and
the training seconds; the same goes to `<output-dir>/summary.json` and `summary.md`.

`--quick` checks that all of this works in minutes (tiny budgets, 40 test rows, no general
check). Its scores mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console

from tunewright.config import RunConfig, load_config
from tunewright.dataset.example import Example
from tunewright.dataset.prepared import PreparedDataset
from tunewright.pipeline import run
from tunewright.preference import PAIRS_FILE, SFT_STAGE
from tunewright.runs import open_prepared
from tunewright.train.loop import train

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import matmul_rates  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("customer-support-dpo", "healthcare-qa-dpo")
OBJECTIVES = ("dpo", "orpo")
SPEED_SECONDS = 30.0  # SFT on the pairs' chosen answers: long enough for a steady tokens/s
# Every model answers the same rows, with no time budget on evaluation (five models are scored).
EVAL = ["evaluate.max_minutes=null"]
QUICK = [
    "train.max_minutes=0.3",
    "preference.max_minutes=0.2",
    "preference.max_questions=60",
    "data.max_test_examples=40",
    "evaluate.general_check=false",
]


def chained(recipe: Path, objective: str, overrides: list[str], out: Path, console) -> dict:
    cfg = load_config(
        recipe,
        [
            f"output_dir={out}",
            f"name={objective}",
            *EVAL,
            f"preference.objective={objective}",
            "evaluate.models=[tuned]",  # all models are scored together in the SFT-alone run
            *overrides,
        ],
    )
    console.rule(f"{recipe.stem}: SFT then {objective.upper()}")
    result = run(cfg, console=console)
    chain = result.chain
    return {
        "run_dir": str(cfg.run_dir),
        "sft_seconds": round(chain.sft.seconds, 1),
        "pair_seconds": round(chain.pair_seconds, 1),
        "pairs": chain.pairs,
        "questions": chain.questions,
        "preference": json.loads((cfg.run_dir / "training.json").read_text()),
        "extra_seconds": round(chain.pair_seconds + chain.preference.seconds, 1),
        "batch_size": cfg.preference.batch_size,
    }


def sft_alone(recipe: Path, minutes: float, compare: list[str], overrides, out, console) -> dict:
    cfg = load_config(
        recipe,
        [
            f"output_dir={out}",
            "name=sft-alone",
            *EVAL,
            *overrides,
            f"train.max_minutes={minutes:g}",
            f"evaluate.compare_runs={json.dumps(compare)}",
        ],
    )
    cfg = RunConfig.model_validate(cfg.model_dump(mode="json") | {"preference": None})
    console.rule(f"{recipe.stem}: SFT alone for {minutes:g} min")
    run(cfg, console=console)
    return json.loads((cfg.run_dir / "eval" / "results.json").read_text())


def pairs_sft_speed(chain_dir: Path, seconds: float, console) -> dict:
    """SFT on the pairs' chosen answers for `seconds`, from the same starting model: the
    baseline a preference stage's speed is read against."""
    cfg = load_config(chain_dir / "config.yaml")
    tree = cfg.model_dump(mode="json") | {"preference": None, "name": "pairs-sft-speed"}
    tree["train"] |= {
        "max_minutes": seconds / 60,
        "batch_size": cfg.preference.batch_size * 2,  # a pair is two rows
        "general_replay": 0,
        "general_replay_share": None,
        "init_adapter": str(chain_dir / SFT_STAGE / "adapter"),
    }
    speed_cfg = RunConfig.model_validate(tree)
    pairs = [
        Example.from_json(json.loads(line))
        for line in (chain_dir / "data" / PAIRS_FILE).read_text().splitlines()
    ]
    chosen = [Example(e.messages, e.text, e.label, e.source) for e in pairs]
    data = open_prepared(chain_dir)
    dataset = PreparedDataset(data.folder, chosen, [], data.test, data.labels, data.summary)
    result = train(speed_cfg, dataset, console=console)
    return {"tokens_per_second": round(result.tokens_per_second, 1), "steps": result.steps}


def _metric(results: dict, model: str) -> str:
    metrics = results["models"][model]["metrics"][results["headline"]]
    percent = results["headline"] == "accuracy"
    fmt = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    return f"{fmt(metrics['value'])} [{fmt(metrics['low'])}, {fmt(metrics['high'])}]"


def _paired(results: dict, model: str) -> str:
    """The paired test between SFT alone (the evaluation's 'tuned') and `model`: the delta is
    SFT alone minus `model`, so a negative one means `model` did better."""
    comparison = (results.get("comparisons") or {}).get(model)
    if not comparison:
        return ""
    return (
        f"{comparison['delta']:+.3f} [{comparison['low']:+.3f}, {comparison['high']:+.3f}], "
        f"p={comparison['p_value']:.3g}"
    )


def summarise(name: str, chains: dict, alone: dict, speed: dict, minutes: float) -> list[str]:
    lines = [
        f"### {name}",
        "",
        f"SFT alone: {minutes:.1f} min of training. Chained: SFT for the recipe's budget, then "
        "pairs and preference training (extra seconds below). Same test rows for every model "
        f"({alone['n_examples']}).",
        "",
        "| model | headline (95% CI) | SFT alone minus this (95% CI), p | extra s | pairs | pref. tokens/s |",
        "|---|---|---|---|---|---|",
        f"| base 0-shot | {_metric(alone, 'base_0shot')} | | | | |",
        f"| SFT alone ({minutes:.1f} min) | {_metric(alone, 'tuned')} | | | | |",
        f"| SFT stage only | {_metric(alone, SFT_STAGE)} | {_paired(alone, SFT_STAGE)} | | | |",
    ]
    for objective, chain in chains.items():
        pref = chain["preference"]
        lines.append(
            f"| SFT + {objective.upper()} | {_metric(alone, objective)} | "
            f"{_paired(alone, objective)} | {chain['extra_seconds']:.0f} | {chain['pairs']} of "
            f"{chain['questions']} | {pref.get('tokens_per_second', 0):.0f} |"
        )
    lines += [
        "",
        f"SFT on the same pairs' chosen answers: {speed['tokens_per_second']:.0f} tokens/s.",
    ]
    if alone.get("general"):
        lines.append(f"General check (SFT alone): {alone['general'].get('sentence', '')}")
    return lines


def measure_recipe(
    name: str,
    objectives: list[str],
    overrides: list[str],
    output_dir: Path,
    speed_seconds: float,
    console: Console,
) -> tuple[dict, list[str]]:
    """Steps 1-3 of the module's docstring for one recipe, into `output_dir/name`: its summary
    and its Markdown lines. `domain_uplift.py` calls this for the preference recipes."""
    recipe = ROOT / "recipes" / f"{name}.yaml"
    out = output_dir / name
    chains = {
        objective: chained(recipe, objective, overrides, out, console) for objective in objectives
    }
    # Equal total time: the longest chain's SFT stage plus its pairs and preference training
    # (measured, not the recipe's budgets: a stage may stop before its budget is spent).
    minutes = max(c["sft_seconds"] + c["extra_seconds"] for c in chains.values()) / 60
    first = next(iter(chains.values()))["run_dir"]
    compare = [c["run_dir"] for c in chains.values()] + [str(Path(first) / SFT_STAGE)]
    alone = sft_alone(recipe, minutes, compare, overrides, out, console)
    speed = pairs_sft_speed(Path(first), speed_seconds, console)
    summary = {"chains": chains, "sft_alone": alone, "pairs_sft": speed}
    return summary, summarise(name, chains, alone, speed, minutes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--quick", action="store_true", help="Tiny budgets: checks it works.")
    parser.add_argument("--speed-seconds", type=float, default=SPEED_SECONDS)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "preference-uplift")
    parser.add_argument("overrides", nargs="*", help="Dotted overrides for every run.")
    args = parser.parse_args()

    console = Console(stderr=True)
    rates = matmul_rates()
    rate_text = f"matmul rate bf16 {rates['bfloat16']:.1f}, fp32 {rates['float32']:.1f} GFLOP/s"
    console.print(rate_text)
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    started = time.perf_counter()
    report, summary = [], {"rates": rates, "overrides": overrides, "recipes": {}}
    for name in args.recipes.split(","):
        summary["recipes"][name], lines = measure_recipe(
            name,
            args.objectives.split(","),
            overrides,
            args.output_dir,
            args.speed_seconds,
            console,
        )
        report += lines + [""]
        args.output_dir.mkdir(parents=True, exist_ok=True)
        header = (
            f"{rate_text} (measured at the start); overrides: {' '.join(overrides) or 'none'}; "
            f"total {time.perf_counter() - started:.0f} s"
            f"{' (--quick: scores mean nothing)' if args.quick else ''}."
        )
        (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        (args.output_dir / "summary.md").write_text("\n".join([header, "", *report]))
    Console().print("\n".join([header, "", *report]), highlight=False)


if __name__ == "__main__":
    main()
