"""Evaluate: base and tuned models on the same held-out examples, side by side.

Front door: `evaluate(cfg, dataset, trained_dir)`. Writes `eval/results.json` (metrics with 95%
bootstrap intervals and a paired test), `eval/examples.jsonl` (every example with each model's
answer) and returns an `EvalResult` for the report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunewright.config import RunConfig
from tunewright.data.example import Example, Message
from tunewright.data.prepare import PreparedDataset
from tunewright.data.tokenize import IGNORE_INDEX, ChatTokenizer
from tunewright.evaluate.generate import Generation, generate
from tunewright.evaluate.labels import LabelMatcher
from tunewright.evaluate.metrics import (
    encode_labels,
    exact_match,
    macro_f1_from_codes,
    rouge_l,
    token_f1,
)
from tunewright.evaluate.stats import bootstrap_ci, bootstrap_ci_fn, mcnemar, paired_bootstrap
from tunewright.models import load_model
from tunewright.train.model_setup import resolve_precision


@dataclass
class ModelScores:
    name: str
    metrics: dict[str, dict[str, float]]  # metric -> {value, low, high}
    per_example: list[float]  # the headline metric per example (1/0 for classification)
    answers: list[Generation]
    predictions: list[str | None] | None
    seconds: float


@dataclass
class EvalResult:
    task: str
    headline: str  # the metric the verdict is about
    n_examples: int
    models: dict[str, ModelScores]
    comparison: dict = field(default_factory=dict)
    folder: Path | None = None


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
            bootstrap_ci_fn(len(refs), lambda i: macro_f1_from_codes(pred_codes[i], ref_codes[i], len(labels)))
        )
        metrics["invalid_rate"] = _interval(bootstrap_ci(np.array([p is None for p in preds], dtype=float)))
        return correct, preds, metrics
    rouge = np.array([rouge_l(a.text, r) for a, r in zip(answers, refs)])
    metrics["rouge_l"] = _interval(bootstrap_ci(rouge))
    metrics["token_f1"] = _interval(bootstrap_ci(np.array([token_f1(a.text, r) for a, r in zip(answers, refs)])))
    metrics["exact_match"] = _interval(bootstrap_ci(np.array([exact_match(a.text, r) for a, r in zip(answers, refs)])))
    return rouge, None, metrics


def label_token_ids(chat: ChatTokenizer, label: str) -> list[int]:
    """The exact tokens a model trained on this data emits for `label`, end-of-turn included."""
    probe = Example(messages=(Message("user", "x"), Message("assistant", label)))
    encoded = chat.encode_example(probe)
    return [t for t in encoded.labels if t != IGNORE_INDEX]


def _interval(iv) -> dict[str, float]:
    return {"value": float(iv.point), "low": float(iv.low), "high": float(iv.high)}


def _load_variant(cfg: RunConfig, name: str, trained_dir: Path | None, dtype: torch.dtype):
    loaded = load_model(cfg.model.name, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    if name == "base":
        return loaded
    if trained_dir is None or not trained_dir.is_dir():
        raise FileNotFoundError(f"no trained model at {trained_dir}; run `tunewright train` first")
    if (trained_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        # merged weights generate faster than base + adapter side paths
        loaded.model = PeftModel.from_pretrained(loaded.model, trained_dir).merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM

        loaded.model = AutoModelForCausalLM.from_pretrained(trained_dir, dtype=dtype, use_safetensors=True)
    loaded.model.eval()
    return loaded


def evaluate(
    cfg: RunConfig, dataset: PreparedDataset, trained_dir: Path | None, *, console: Console | None = None
) -> EvalResult:
    """Generate answers on the test split with each model in `cfg.evaluate.models` and score them."""
    console = console or Console(stderr=True)
    task = _task(cfg, dataset)
    examples = dataset.test
    refs = [e.reference for e in examples]
    dtype = torch.bfloat16 if resolve_precision(cfg.train.precision) == "bf16" else torch.float32
    models: dict[str, ModelScores] = {}
    for name in cfg.evaluate.models:
        loaded = _load_variant(cfg, name, trained_dir, dtype)
        chat = ChatTokenizer(loaded.tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len)
        prompts = [chat.encode_prompt(e.prompt_messages) for e in examples]
        allowed = None
        if task == "classification" and cfg.evaluate.label_decoding == "constrained":
            allowed = [label_token_ids(chat, label) for label in dataset.labels]
        started = time.perf_counter()
        with _progress(console) as progress:
            task_id = progress.add_task(f"evaluate {name}", total=len(prompts), rate=0.0)

            def advance(n: int, t=task_id, started=started) -> None:
                done = progress.tasks[t].completed + n
                progress.update(t, completed=done, rate=done / (time.perf_counter() - started))

            answers = generate(
                loaded.model,
                loaded.tokenizer,
                prompts,
                max_new_tokens=cfg.evaluate.max_new_tokens,
                batch_size=cfg.evaluate.batch_size,
                allowed_sequences=allowed,
                on_batch_done=advance,
            )
        seconds = time.perf_counter() - started
        per_example, preds, metrics = _score(task, answers, refs, dataset.labels)
        models[name] = ModelScores(name, metrics, per_example.tolist(), answers, preds, seconds)
        del loaded

    headline = "accuracy" if task == "classification" else "rouge_l"
    result = EvalResult(task, headline, len(examples), models)
    if "base" in models and "tuned" in models:
        base, tuned = np.array(models["base"].per_example), np.array(models["tuned"].per_example)
        paired = paired_bootstrap(base, tuned)
        result.comparison = {"metric": headline, "delta": paired.delta, "low": paired.low, "high": paired.high,
                             "p_value_bootstrap": paired.p_value}
        if task == "classification":
            test = mcnemar(base.astype(bool), tuned.astype(bool))
            result.comparison |= {"mcnemar_p_value": test.p_value, "tuned_right_base_wrong": test.c,
                                  "base_right_tuned_wrong": test.b}
    result.folder = _write(cfg.run_dir / "eval", result, examples)
    return result


def _write(folder: Path, result: EvalResult, examples) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "task": result.task,
        "headline": result.headline,
        "n_examples": result.n_examples,
        "models": {n: {"metrics": m.metrics, "seconds": m.seconds} for n, m in result.models.items()},
        "comparison": result.comparison,
    }
    (folder / "results.json").write_text(json.dumps(summary, indent=2))
    with (folder / "examples.jsonl").open("w", encoding="utf-8") as f:
        for i, example in enumerate(examples):
            row = {"source": example.source, "prompt": example.prompt_messages[-1].content,
                   "reference": example.reference}
            for name, scores in result.models.items():
                row[name] = {"answer": scores.answers[i].text, "score": scores.per_example[i],
                             "stopped": scores.answers[i].stopped}
                if scores.predictions is not None:
                    row[name]["prediction"] = scores.predictions[i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
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
