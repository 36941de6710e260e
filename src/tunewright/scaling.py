"""Data scaling: how the tuned model's test score grows with the amount of training data.

Front door: `run_scaling(cfg, dataset, full=...)`, called by `tunewright run` when
`train.scaling_fractions` is set (`tunewright run RECIPE --scaling 0.25,0.5,1`). For each fraction
it trains on `round(fraction * n)` examples of the run's train split and scores that tuned
model on the run's test split. The subsets are prefixes of one seeded order (`data.seed`) of the
train split, stratified by label for classification data, so they are nested random samples:
25% is part of 50%, which is part of 100%, and only the amount of data changes between points.
(The split's own order is not used: it may follow the input files, which are often sorted by
label.) Fraction 1 is the main run itself, reused rather than trained again.

Writes `<run>/scaling/scaling.json` ({"metric", "points": [{"fraction", "examples", "value",
"low", "high"}]}, read by the HTML report), `<run>/scaling/scaling.png`, and one sub-run folder
per trained fraction (`<run>/scaling/fraction-0.25/`, with its adapter and eval/).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rich.console import Console

from tunewright.config import RunConfig
from tunewright.dataset.example import Example
from tunewright.dataset.prepared import PreparedDataset
from tunewright.evaluate.runner import EvalResult, evaluate
from tunewright.files import write_bytes_atomic
from tunewright.train.loop import train


def subset_size(fraction: float, n_train: int) -> int:
    """Training examples used for `fraction` of a train split of `n_train` (at least one)."""
    return max(1, round(fraction * n_train))


def nested_order(examples: list[Example], seed: int) -> list[int]:
    """Indices of `examples` in a seeded order whose every prefix is a random sample, stratified
    by label when every example has one: the k-th of a label's n examples (shuffled) sorts at
    (k + u) / n, u uniform in [0, 1), so any prefix holds each label in about its overall share."""
    rng = random.Random(seed)
    if not examples or any(e.label is None for e in examples):
        order = list(range(len(examples)))
        rng.shuffle(order)
        return order
    by_label: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_label.setdefault(example.label, []).append(i)
    keyed = []
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        keyed += [((k + rng.random()) / len(members), i) for k, i in enumerate(members)]
    return [i for _, i in sorted(keyed)]


class _TrainSubset(PreparedDataset):
    """A prepared dataset with only some of its training examples; validation and test unchanged."""

    def __init__(self, dataset: PreparedDataset, indices: list[int]) -> None:
        super().__init__(dataset.folder, dataset.labels, dataset.summary)
        self._full, self._indices, self._train = dataset, sorted(indices), None

    def split(self, name: str) -> list[Example]:
        if name != "train":
            return self._full.split(name)
        if self._train is None:
            full = self._full.split("train")
            self._train = [full[i] for i in self._indices]
        return self._train


def nested_subset(dataset: PreparedDataset, fraction: float, seed: int) -> PreparedDataset:
    """The dataset with `fraction` of its train split: a prefix of `nested_order(train, seed)`."""
    train = dataset.train
    return _TrainSubset(dataset, nested_order(train, seed)[: subset_size(fraction, len(train))])


def fraction_config(cfg: RunConfig, fraction: float) -> RunConfig:
    """The config of one scaling sub-run: its own folder under <run>/scaling/, tuned model only."""
    tree = cfg.model_dump(mode="json")
    tree["name"] = f"fraction-{fraction:g}"
    tree["output_dir"] = str(cfg.run_dir / "scaling")
    tree["train"] |= {"scaling_fractions": [], "resume": False}
    # the base models were scored by the main run on the same test split; score only the new model
    tree["evaluate"] |= {"models": ["tuned"], "compare_runs": []}
    return RunConfig.model_validate(tree)


def run_scaling(
    cfg: RunConfig,
    dataset: PreparedDataset,
    *,
    full: EvalResult | None = None,
    console: Console | None = None,
) -> Path:
    """Train and score one model per `cfg.train.scaling_fractions`; returns the scaling.json path.

    `full` is the main run's evaluation (trained on the whole train split): it is reused for the
    fraction that selects every example.
    """
    console = console or Console(stderr=True)
    n_train = len(dataset.train)
    metric, points = None, []
    for fraction in cfg.train.scaling_fractions:
        examples = subset_size(fraction, n_train)
        if examples == n_train and full is not None and "tuned" in full.models:
            result = full
        else:
            console.rule(f"scaling: {fraction:g} of the train split ({examples} examples)")
            sub_cfg = fraction_config(cfg, fraction)
            subset = nested_subset(dataset, fraction, cfg.data.seed)
            trained = train(sub_cfg, subset, console=console)
            result = evaluate(sub_cfg, subset, trained.output_dir, console=console)
        metric = result.headline
        cell = result.models["tuned"].metrics[metric]
        points.append(
            {
                "fraction": float(fraction),
                "examples": examples,
                "value": cell["value"],
                "low": cell["low"],
                "high": cell["high"],
            }
        )
        console.print(
            f"{fraction:g} ({examples} examples): {metric} {cell['value']:.3f} "
            f"[{cell['low']:.3f}, {cell['high']:.3f}]"
        )
    folder = cfg.run_dir / "scaling"
    folder.mkdir(parents=True, exist_ok=True)
    scaling = {"metric": metric, "points": points}
    path = folder / "scaling.json"
    write_bytes_atomic(path, json.dumps(scaling, indent=2).encode())
    baselines = (
        {}
        if full is None
        else {
            name: scores.metrics[metric]["value"]
            for name, scores in full.models.items()
            if name.startswith("base")
        }
    )
    write_bytes_atomic(folder / "scaling.png", plot(scaling, baselines, title=cfg.name))
    return path


def plot(scaling: dict, baselines: dict[str, float], *, title: str) -> bytes:
    """PNG bytes: the metric against training examples with 95% intervals; each untuned
    variant's score as a dashed line, so the plot shows how much data it takes to beat it."""
    import io

    from matplotlib.figure import Figure  # Agg renders it; no pyplot global state or GUI backend

    points = scaling["points"]
    x = [p["examples"] for p in points]
    y = [p["value"] for p in points]
    err = [
        [max(v - p["low"], 0) for v, p in zip(y, points)],
        [max(p["high"] - v, 0) for v, p in zip(y, points)],
    ]
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="tuned")
    for k, (name, value) in enumerate(sorted(baselines.items())):
        ax.axhline(value, linestyle="--", color=f"C{k + 1}", label=name)
    ax.set_xlabel("training examples")
    ax.set_ylabel(f"{scaling['metric']} (95% CI)")
    ax.set_title(f"{title}: {scaling['metric']} vs training examples")
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
