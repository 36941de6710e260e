"""Evaluate: base and tuned models on the same held-out examples, side by side.

Front door: `evaluate(cfg, dataset, trained_dir)`. Scores every variant (base zero-shot with the
labels listed, base k-shot, tuned, other runs' tuned models; see `prompts.py`; and, for
classification, the classic classifiers of `baselines.py`) on the test split with the same
metrics, compares each with the tuned model, runs the forgetting check, and writes
`eval/results.json` (metrics with 95% bootstrap intervals and paired tests), `eval/examples.jsonl`
(every example with each variant's answer, whether it was right, and the outcome against the
stronger base) and `eval/general.jsonl` (the forgetting check's answers).

With `evaluate.max_minutes`, evaluation fits a time budget whatever the machine's speed: the
classic classifiers and the forgetting check run first, then the language models take the test
rows in a seeded random order, one batch of rows at a time, every model answering a batch before
the next batch starts, until the next one would overrun the budget. Every model has then answered
the same rows, a random sample of the test split, so the paired tests hold; the report says how
many rows were scored. This mode keeps every model loaded at once (one copy each).

When the test split holds preference pairs (`Example.rejected`), every language model also ranks
each pair's chosen and rejected answers by log-prob, and its generated answers get a win rate
against the pairs (`preference.py`); the tuned model is compared with each other model on both.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunewright.config import DEFAULT_EVAL_MODELS, RunConfig
from tunewright.dataset.example import Example, Message
from tunewright.dataset.prepared import PreparedDataset
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer
from tunewright.errors import ConfigError, RunFolderError
from tunewright.evaluate.baselines import BASELINES, BaselineData, run_baseline, user_text
from tunewright.evaluate.compare import (
    outcomes,
    paired_comparison,
    paired_macro_f1,
    right_flags,
    strongest,
)
from tunewright.evaluate.general import answer_general, forgetting_summary
from tunewright.evaluate.labels import LabelMatcher
from tunewright.evaluate.metrics import (
    encode_labels,
    exact_match,
    macro_f1_from_codes,
    rouge_l,
    token_f1,
)
from tunewright.evaluate.preference import PairScore, add_pair_metrics, compare_pairs, rank_pairs
from tunewright.evaluate.prompts import Variant, base_variants, variant_messages
from tunewright.evaluate.stats import bootstrap_ci, bootstrap_ci_fn
from tunewright.files import write_text_atomic
from tunewright.hardware import torch_dtype
from tunewright.inference.generate import Generation, generate
from tunewright.models import load_model
from tunewright.runs import RunFolder, Trained, load_trained, read_run_config


@dataclass
class ModelScores:
    name: str
    description: str
    metrics: dict[str, dict[str, float]]  # metric -> {value, low, high}
    per_example: list[float]  # the headline metric per example (1/0 for classification)
    right: list[bool]  # per example: exact label, or ROUGE-L >= compare.RIGHT_AT_ROUGE_L
    answers: list[Generation]
    predictions: list[str | None] | None
    seconds: float  # wall clock of scoring it (for a classic classifier: fit + predict)
    cpu_seconds: float | None = None  # classic classifiers only: process CPU time, fit + predict
    pairs: list[PairScore] | None = None  # per preference pair (EvalResult.pair_rows), if ranked
    wins: list[float] | None = None  # per preference pair: its answer's win (1), tie, loss (0)

    @property
    def is_classifier(self) -> bool:
        """A classic classifier (baselines.py), not a language model: it generates no text."""
        return self.cpu_seconds is not None


@dataclass
class EvalResult:
    task: str
    headline: str  # the metric the verdict is about
    n_examples: int
    models: dict[str, ModelScores]
    labels: list[str] | None = None
    references: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # the last user turn of each test example
    comparisons: dict[str, dict] = field(default_factory=dict)  # tuned vs each other variant
    strongest_base: str | None = None  # the base variant with the best headline score
    outcomes: list[str] | None = None  # per example, tuned vs the strongest base
    general: dict | None = None  # the forgetting check (general.forgetting_summary)
    folder: Path | None = None
    test_rows: int | None = None  # rows in the test split; more than n_examples under max_minutes
    pair_rows: list[int] = field(default_factory=list)  # scored rows that are preference pairs
    preference_base: str | None = None  # the base variant with the best reward_accuracy

    @property
    def rows_phrase(self) -> str:
        """'300 held-out examples', or '192 of 300 ...' when a time budget cut the scoring short."""
        if self.test_rows is None or self.test_rows == self.n_examples:
            return f"{self.n_examples} held-out examples"
        return (
            f"{self.n_examples} of {self.test_rows} held-out examples "
            "(a seeded sample: evaluate.max_minutes)"
        )

    @property
    def comparison(self) -> dict:
        """Tuned vs the strongest base variant: what the verdict is about ({} if none)."""
        return self.comparisons.get(self.strongest_base, {}) if self.strongest_base else {}


def _task(cfg: RunConfig, dataset: PreparedDataset) -> str:
    if cfg.evaluate.task != "auto":
        return cfg.evaluate.task
    return "classification" if dataset.labels else "generation"


def _score(task: str, answers: list[Generation], refs: list[str], labels: list[str] | None):
    """Per-example headline scores, predictions and the metric table with 95% intervals."""
    stopped = np.array([a.stopped for a in answers], dtype=float)
    metrics = {"stop_rate": _interval(bootstrap_ci(stopped))}
    if task == "classification":
        matcher = LabelMatcher(labels)
        matches = matcher.match_many([a.text for a in answers])
        preds = [m.label for m in matches]
        correct = np.array([p == r for p, r in zip(preds, refs)], dtype=float)
        strict = np.array([m.strict and m.label == r for m, r in zip(matches, refs)], dtype=float)
        pred_codes, ref_codes = encode_labels(preds, refs, labels)
        metrics["accuracy"] = _interval(bootstrap_ci(correct))
        metrics["accuracy_strict"] = _interval(bootstrap_ci(strict))
        metrics["macro_f1"] = _interval(
            bootstrap_ci_fn(
                len(refs), lambda i: macro_f1_from_codes(pred_codes[i], ref_codes[i], len(labels))
            )
        )
        metrics["invalid_rate"] = _interval(
            bootstrap_ci(np.array([p is None for p in preds], dtype=float))
        )
        return correct, preds, metrics
    rouge = np.array([rouge_l(a.text, r) for a, r in zip(answers, refs)])
    metrics["rouge_l"] = _interval(bootstrap_ci(rouge))
    metrics["token_f1"] = _interval(
        bootstrap_ci(np.array([token_f1(a.text, r) for a, r in zip(answers, refs)]))
    )
    metrics["exact_match"] = _interval(
        bootstrap_ci(np.array([exact_match(a.text, r) for a, r in zip(answers, refs)]))
    )
    return rouge, None, metrics


def label_token_ids(chat: ChatTokenizer, label: str) -> list[int]:
    """The exact tokens a model trained on this data emits for `label`, end-of-turn included."""
    probe = Example(messages=(Message("user", "x"), Message("assistant", label)))
    encoded = chat.encode_example(probe)
    return [t for t in encoded.labels if t != IGNORE_INDEX]


def _interval(iv) -> dict[str, float]:
    return {"value": float(iv.point), "low": float(iv.low), "high": float(iv.high)}


def _load_variant(cfg: RunConfig, model_name: str, trained: Trained | None, dtype: torch.dtype):
    """The base model, or the tuned one (adapter merged in, or full tuned weights) when `trained`
    is set."""
    trust_remote_code = cfg.model.trust_remote_code
    if trained is None:
        return load_model(model_name, dtype=dtype, trust_remote_code=trust_remote_code)
    loaded = load_trained(trained, model_name, dtype=dtype, trust_remote_code=trust_remote_code)
    if trained.method == "lora":
        # merged weights generate faster than base + adapter side paths
        loaded.model = loaded.model.merge_and_unload()
        loaded.model.eval()
    return loaded


def _compare_run_variant(path: str, taken: set[str]) -> tuple[Variant, str, Trained]:
    """A variant for another run folder's tuned model, with that run's own training prompt."""
    folder = Path(path)
    run = RunFolder(folder)
    if not run.config_file.is_file():  # its config holds the prompt it was trained with
        raise RunFolderError(
            f"evaluate.compare_runs: {folder} is not a run folder (no config.yaml)"
        )
    try:
        trained = run.trained()
    except RunFolderError as e:
        raise RunFolderError(f"evaluate.compare_runs: {e}") from None
    other = read_run_config(folder)
    name = folder.resolve().name
    if name in taken:
        raise ConfigError(
            f"evaluate.compare_runs: {path!r} gives the variant name {name!r}, which is taken"
        )
    variant = Variant(name, str(folder), f"tuned model of run {folder}", other.data.system_prompt)
    return variant, other.model.name, trained


def plan_variants(
    cfg: RunConfig, dataset: PreparedDataset, task: str, trained_dir: Path | None
) -> tuple[list[Variant], dict[str, tuple[str, Trained | None]]]:
    """Every variant to score, and for each model key the (model name, trained model) to load.

    Every folder is checked here, so a missing model fails before the first one is scored."""
    labels = dataset.labels if task == "classification" else None
    variants = base_variants(
        cfg.evaluate.models,
        cfg.data.system_prompt,
        labels,
        dataset.train,
        cfg.evaluate.base_shots,
        cfg.data.seed,
    )
    sources: dict[str, tuple[str, Trained | None]] = {"base": (cfg.model.name, None)}
    if "tuned" in cfg.evaluate.models:
        if trained_dir is None:
            raise RunFolderError(
                f"evaluate.models has 'tuned' but {cfg.run_dir} has no trained model; "
                "run `tunewright train` first"
            )
        sources["tuned"] = (cfg.model.name, Trained.at(trained_dir))
        variants.append(
            Variant(
                "tuned",
                "tuned",
                "tuned model, the prompt it was trained with",
                cfg.data.system_prompt,
            )
        )
    for path in cfg.evaluate.compare_runs:
        variant, model_name, trained = _compare_run_variant(path, {v.name for v in variants})
        variants.append(variant)
        sources[variant.model] = (model_name, trained)
    return variants, sources


def plan_baselines(
    cfg: RunConfig, dataset: PreparedDataset, task: str, console: Console | None = None
) -> list[str]:
    """The classic classifiers to score, in `evaluate.models` order.

    They need a label set. On a generation task the default list skips them with a printed
    note; a list that names them anyway is a ConfigError, raised before any model is scored."""
    wanted = [name for name in cfg.evaluate.models if name in BASELINES]
    if not wanted or (task == "classification" and dataset.labels):
        return wanted
    if tuple(cfg.evaluate.models) != DEFAULT_EVAL_MODELS:
        raise ConfigError(
            f"evaluate.models asks for {', '.join(wanted)}, which classify into a label set, but "
            f"this is a {task} task{'' if dataset.labels else ' without labels'}: "
            "remove them from evaluate.models"
        )
    if console is not None:
        console.print(
            f"note: {', '.join(wanted)} skipped: they need a classification task with labels"
        )
    return []


def evaluate(
    cfg: RunConfig,
    dataset: PreparedDataset,
    trained_dir: Path | None,
    *,
    console: Console | None = None,
) -> EvalResult:
    """Score every variant in `cfg.evaluate` on the test split, compare each with the tuned model."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    task = _task(cfg, dataset)
    examples = dataset.test
    dtype = torch_dtype(cfg.train.precision)  # evaluated in the precision it trained in
    variants, sources = plan_variants(cfg, dataset, task, trained_dir)
    baselines = plan_baselines(cfg, dataset, task, console)
    keys = list(dict.fromkeys(v.model for v in variants))
    general_check = cfg.evaluate.general_check and "tuned" in keys
    if (general_check or "embed_logreg" in baselines) and "base" not in keys:
        keys.append("base")  # the forgetting check's reference, and embed_logreg's encoder
    data = _baseline_data(cfg, dataset) if baselines else None
    budgeted = cfg.evaluate.max_minutes is not None
    generated: dict[str, tuple[list[Generation], float]] = {}
    ranked: dict[str, dict[int, PairScore]] = {}  # variant -> test row -> its pair's log-probs
    classifiers: dict[str, ModelScores] = {}
    general_answers: dict[str, list[str]] = {}
    base_shipped = False  # the base's general answers were read (known_answers), not generated
    loaded_models = {}
    for key in keys:  # each model is loaded once for all of its prompt variants
        model_name, trained = sources[key]
        loaded = _load_variant(cfg, model_name, trained, dtype)
        if not budgeted:
            for variant in (v for v in variants if v.model == key):
                answers, seconds = _generate_variant(
                    cfg, task, variant, loaded, examples, dataset.labels, console
                )
                started_pairs = time.perf_counter()
                with console.status(f"preference pairs: {variant.name}"):
                    ranked[variant.name] = _rank_pairs(
                        cfg, variant, loaded, examples, range(len(examples))
                    )
                generated[variant.name] = answers, seconds + time.perf_counter() - started_pairs
        if key == "base" and "embed_logreg" in baselines:
            with console.status("embed_logreg: embedding train and test texts with the base model"):
                classifiers["embed_logreg"] = _score_baseline(
                    "embed_logreg", replace(data, model=loaded), dataset.labels
                )
        if general_check and key in ("base", "tuned"):
            with console.status(f"general questions: {key}"):
                general_answers[key], shipped = answer_general(
                    loaded.model,
                    loaded.tokenizer,
                    batch_size=cfg.evaluate.batch_size,
                    look_up=key == "base",  # only the base can have shipped answers
                )
            if shipped:
                base_shipped = True
                console.print("general questions: base: the answers shipped for this model")
        if budgeted:
            loaded_models[key] = loaded
        del loaded
    for name in baselines:  # listed after the language models, in evaluate.models order
        if name not in classifiers:
            classifiers[name] = _score_baseline(name, data, dataset.labels)
    rows = list(range(len(examples)))
    if budgeted:
        deadline = started + cfg.evaluate.max_minutes * 60
        rows, generated, ranked = _generate_within(
            cfg, task, variants, loaded_models, examples, dataset.labels, deadline, console
        )
        loaded_models.clear()
    scored = [examples[i] for i in rows]
    refs = [e.reference for e in scored]
    models: dict[str, ModelScores] = {}
    for variant in variants:
        answers, seconds = generated[variant.name]
        models[variant.name] = _scores(cfg, task, variant, scored, answers, seconds, dataset.labels)
    for name in baselines:
        models[name] = _rows_of(classifiers[name], rows, refs, dataset.labels)
    pair_rows = add_pair_metrics(models, variants, scored, rows, ranked)

    headline = "accuracy" if task == "classification" else "rouge_l"
    result = EvalResult(
        task,
        headline,
        len(scored),
        models,
        labels=dataset.labels,
        references=refs,
        prompts=[e.prompt_messages[-1].content if e.prompt_messages else "" for e in scored],
        test_rows=len(examples),
        pair_rows=pair_rows,
    )
    if "tuned" in models:
        tuned = models["tuned"]
        for name, other in models.items():
            if name != "tuned":
                result.comparisons[name] = paired_comparison(
                    task, headline, other.per_example, tuned.per_example, other.right, tuned.right
                )
                if task == "classification":
                    result.comparisons[name]["macro_f1"] = paired_macro_f1(
                        other.predictions, tuned.predictions, refs, dataset.labels
                    )
                if other.wins is not None and tuned.wins is not None:
                    result.comparisons[name]["preference"] = compare_pairs(
                        other.pairs, tuned.pairs, other.wins, tuned.wins
                    )
        result.strongest_base = strongest(
            {n: m.metrics[headline]["value"] for n, m in models.items() if n.startswith("base_")}
        )
        if result.strongest_base is not None:
            result.outcomes = outcomes(tuned.right, models[result.strongest_base].right)
        if tuned.pairs is not None:
            result.preference_base = strongest(
                {
                    n: m.metrics["reward_accuracy"]["value"]
                    for n, m in models.items()
                    if n.startswith("base_") and m.pairs is not None
                }
            )
    if general_answers:
        result.general = forgetting_summary(general_answers["base"], general_answers["tuned"])
        result.general["base_answers_shipped"] = base_shipped
    result.folder = _write(RunFolder(cfg.run_dir).eval_dir, result, scored)
    return result


def _generate_within(
    cfg, task, variants: list[Variant], loaded_models, examples, labels, deadline, console
) -> tuple[list[int], dict[str, tuple[list[Generation], float]], dict[str, dict[int, PairScore]]]:
    """Answers of every variant to test rows taken a batch at a time in a seeded random order,
    until the next batch would end after `deadline` (one batch at least). Returns the rows
    answered, in test order, each variant's answers to them with its seconds, and the ranked
    preference pairs among them."""
    order = list(range(len(examples)))
    random.Random(cfg.data.seed).shuffle(order)
    step = cfg.evaluate.batch_size
    answers: dict[str, dict[int, Generation]] = {v.name: {} for v in variants}
    seconds = dict.fromkeys(answers, 0.0)
    ranked: dict[str, dict[int, PairScore]] = {v.name: {} for v in variants}
    done, loop_started = 0, time.perf_counter()
    with _progress(console) as progress:
        task_id = progress.add_task(
            f"evaluate {len(variants)} model(s)", total=len(examples), rate=0.0
        )
        while done < len(order):
            batch_started = time.perf_counter()
            rows = order[done : done + step]
            for variant in variants:
                got, took = _generate_variant(
                    cfg,
                    task,
                    variant,
                    loaded_models[variant.model],
                    [examples[i] for i in rows],
                    labels,
                    None,
                )
                answers[variant.name].update(zip(rows, got))
                pairs_started = time.perf_counter()
                ranked[variant.name] |= _rank_pairs(
                    cfg, variant, loaded_models[variant.model], examples, rows
                )
                seconds[variant.name] += took + time.perf_counter() - pairs_started
            done += len(rows)
            now = time.perf_counter()
            progress.update(task_id, completed=done, rate=done / (now - loop_started))
            if now + (now - batch_started) > deadline:
                break
    scored = sorted(order[:done])
    generated = {name: ([answers[name][i] for i in scored], seconds[name]) for name in answers}
    return scored, generated, ranked


def _rank_pairs(cfg, variant: Variant, loaded, examples, rows) -> dict[int, PairScore]:
    return rank_pairs(
        loaded.model,
        loaded.tokenizer,
        variant,
        examples,
        rows,
        batch_size=cfg.evaluate.batch_size,
    )


def _baseline_data(cfg: RunConfig, dataset: PreparedDataset) -> BaselineData:
    return BaselineData(
        train_texts=[user_text(e) for e in dataset.train],
        train_labels=[e.reference for e in dataset.train],
        test_texts=[user_text(e) for e in dataset.test],
        seed=cfg.data.seed,
        batch_size=cfg.evaluate.batch_size,
        max_seq_len=cfg.data.max_seq_len,
        max_train_examples=cfg.evaluate.embed_max_train_examples,
    )


def _score_baseline(name: str, data: BaselineData, labels) -> ModelScores:
    """A classic classifier fitted and run on every test row; its predicted labels stand as
    answers that stopped on their own, so `_rows_of` scores them with the very same label
    matcher, metrics and intervals as the language models."""
    fitted = run_baseline(name, data)
    answers = [Generation(p, 0, True) for p in fitted.predictions]
    return ModelScores(
        name, fitted.description, {}, [], [], answers, None, fitted.seconds, fitted.cpu_seconds
    )


def _rows_of(classifier: ModelScores, rows: list[int], refs, labels) -> ModelScores:
    """A classic classifier's scores on the test rows the language models answered."""
    answers = [classifier.answers[i] for i in rows]
    per_example, preds, metrics = _score("classification", answers, refs, labels)
    scores = per_example.tolist()
    return replace(
        classifier,
        metrics=metrics,
        per_example=scores,
        right=right_flags("classification", scores),
        answers=answers,
        predictions=preds,
    )


def _generate_variant(
    cfg, task, variant: Variant, loaded, examples, labels, console: Console | None
) -> tuple[list[Generation], float]:
    """One variant's answers to `examples` and the seconds they took (a progress bar on
    `console`)."""
    chat = ChatTokenizer(loaded.tokenizer, None, cfg.data.max_seq_len)
    prompts = [chat.encode_prompt(variant_messages(variant, e.prompt_messages)) for e in examples]
    allowed = None
    if task == "classification" and cfg.evaluate.label_decoding == "constrained":
        allowed = [label_token_ids(chat, label) for label in labels]
    options = {
        "max_new_tokens": cfg.evaluate.max_new_tokens,
        "batch_size": cfg.evaluate.batch_size,
        "allowed_sequences": allowed,
    }
    started = time.perf_counter()
    if console is None:
        answers = generate(loaded.model, loaded.tokenizer, prompts, **options)
        return answers, time.perf_counter() - started
    with _progress(console) as progress:
        task_id = progress.add_task(f"evaluate {variant.name}", total=len(prompts), rate=0.0)

        def advance(n: int, t=task_id, started=started) -> None:
            done = progress.tasks[t].completed + n
            progress.update(t, completed=done, rate=done / (time.perf_counter() - started))

        answers = generate(
            loaded.model, loaded.tokenizer, prompts, on_batch_done=advance, **options
        )
    return answers, time.perf_counter() - started


def _scores(
    cfg, task, variant: Variant, examples, answers: list[Generation], seconds: float, labels
) -> ModelScores:
    refs = [e.reference for e in examples]
    per_example, preds, metrics = _score(task, answers, refs, labels)
    if (
        cfg.evaluate.judge.enabled
    ):  # an LLM grades each answer against its reference; cached in eval/
        from tunewright.evaluate.judge import judge_metrics

        metrics |= judge_metrics(cfg, examples, answers)
    scores = per_example.tolist()
    return ModelScores(
        variant.name,
        variant.description,
        metrics,
        scores,
        right_flags(task, scores),
        answers,
        preds,
        seconds,
    )


def _write(folder: Path, result: EvalResult, examples) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    general = {k: v for k, v in (result.general or {}).items() if k != "rows"} or None
    summary = {
        "task": result.task,
        "headline": result.headline,
        "n_examples": result.n_examples,
        "test_rows": result.test_rows,
        "preference_pairs": len(result.pair_rows),
        "preference_base": result.preference_base,
        "models": {
            n: {"description": m.description, "metrics": m.metrics, "seconds": m.seconds}
            | ({"cpu_seconds": m.cpu_seconds} if m.is_classifier else {})
            for n, m in result.models.items()
        },
        "strongest_base": result.strongest_base,
        "comparison": result.comparison,
        "comparisons": result.comparisons,
        "general": general,
    }
    write_text_atomic(folder / "results.json", json.dumps(summary, indent=2))
    rows = []
    pair_of = {row: k for k, row in enumerate(result.pair_rows)}
    for i, example in enumerate(examples):
        row = {
            "source": example.source,
            "prompt": result.prompts[i],
            "reference": example.reference,
        }
        if example.is_preference:
            row["rejected"] = example.rejected
        for name, scores in result.models.items():
            row[name] = {
                "answer": scores.answers[i].text,
                "score": scores.per_example[i],
                "right": scores.right[i],
                "stopped": scores.answers[i].stopped,
            }
            if scores.predictions is not None:
                row[name]["prediction"] = scores.predictions[i]
            if i in pair_of and scores.wins is not None:
                row[name]["win"] = scores.wins[pair_of[i]]
            if i in pair_of and scores.pairs is not None:
                row[name] |= scores.pairs[pair_of[i]].to_json()
        if result.outcomes is not None:
            row["outcome"] = result.outcomes[i]
            row["outcome_vs"] = result.strongest_base
        rows.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(folder / "examples.jsonl", "\n".join(rows) + "\n")
    if result.general is not None:
        lines = [json.dumps(r, ensure_ascii=False) for r in result.general["rows"]]
        write_text_atomic(folder / "general.jsonl", "\n".join(lines) + "\n")
    return folder


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} examples/s"),
        TimeRemainingColumn(),
        console=console,
    )
