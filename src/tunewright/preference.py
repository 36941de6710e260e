"""Preference tuning after SFT, in one run folder: what `tunewright run` does when a recipe has a
`preference:` section.

1. SFT trains into `RUN/sft/`, a run folder of its own (its config, adapter, metrics).
2. Pairs are built from a model's own answers to a seeded sample of the train questions, so the
   recipe needs no preference data of its own:
   - `sft_mistakes` (classification): the SFT model answers; where it names the wrong label, the
     pair is (the right label, its answer). These are hard negatives: the mistakes the model
     actually makes, not random wrong labels it would never pick.
   - `base_answers` (generation): chosen is the reference answer, rejected the base model's
     answer to the same question.
   Train questions only: the test split stays unseen. The pairs are kept in
   `RUN/data/preference_pairs.jsonl`.
3. DPO or ORPO continues the SFT adapter on those pairs (`train.init_adapter`) into `RUN/`, so the
   final model is one adapter, evaluated, exported and served like any other. Under DPO the
   reference is the model at the start of this stage, the SFT model, as in the DPO paper.
4. Evaluation scores the SFT stage beside base and tuned (`evaluate.compare_runs`), on the same
   test rows, so the report says whether preference tuning added anything to SFT alone.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from tunewright.config import RunConfig, save_config
from tunewright.dataset.example import Example
from tunewright.dataset.prepared import PreparedDataset
from tunewright.dataset.store import write_jsonl
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.evaluate.labels import LabelMatcher
from tunewright.hardware import torch_dtype
from tunewright.inference.generate import generate
from tunewright.models import load_model
from tunewright.runs import load_tuned
from tunewright.train.loop import TrainResult, train

SFT_STAGE = "sft"  # the SFT stage's run folder inside the run folder, and its variant's name
PAIRS_FILE = "preference_pairs.jsonl"


@dataclass
class ChainResult:
    sft: TrainResult
    preference: TrainResult
    pairs: int  # pairs the preference stage trained on
    questions: int  # train questions answered to find them
    pair_seconds: float  # time to build the pairs (generation)


def sft_stage_config(cfg: RunConfig) -> RunConfig:
    """The SFT stage: the recipe as written, minus its preference section, in `RUN/sft/`."""
    tree = cfg.model_dump(mode="json")
    tree |= {"name": SFT_STAGE, "output_dir": str(cfg.run_dir), "preference": None}
    tree["train"]["scaling_fractions"] = []
    return RunConfig.model_validate(tree)


def preference_stage_config(cfg: RunConfig, sft_dir: Path) -> RunConfig:
    """The preference stage: the recipe's preference settings, continuing the SFT model. General
    replay stays with SFT: under DPO the reference keeps the model near the SFT one anyway."""
    pc = cfg.preference
    tree = cfg.model_dump(mode="json")
    train = tree["train"]
    train |= {
        "objective": pc.objective,
        "beta": pc.beta,
        "lr": pc.lr,
        "epochs": pc.epochs,
        "max_minutes": pc.max_minutes,
        "max_steps": None,
        "batch_size": pc.batch_size,
        "grad_accum_steps": 1,
        "packing": False,
        "general_replay": 0,
        "general_replay_kl": 0.0,
        "general_replay_share": None,
        "eval_every_steps": None,
        "early_stopping_patience": None,
        "scaling_fractions": [],
    }
    if cfg.train.method == "lora":
        train["init_adapter"] = str(sft_dir / "adapter")
    else:  # full fine-tuning: the SFT stage's model is the starting point
        tree["model"]["name"] = str(sft_dir / "model")
    return RunConfig.model_validate(tree)


def build_pairs(
    cfg: RunConfig, dataset: PreparedDataset, sft_dir: Path, *, console: Console
) -> tuple[list[Example], int]:
    """Preference pairs from the answers of the SFT model (`sft_mistakes`) or the base model
    (`base_answers`) to a seeded sample of the train questions; returns (pairs, questions)."""
    pc = cfg.preference
    questions = [e for e in dataset.train if e.is_chat and e.reference]
    random.Random(cfg.data.seed).shuffle(questions)
    questions = questions[: pc.max_questions]
    dtype = torch_dtype(cfg.train.precision)
    if pc.rejected_from == "sft_mistakes":
        if not dataset.labels:
            raise ValueError(
                "preference.rejected_from: sft_mistakes needs labelled data (classification); "
                "use base_answers for generation tasks"
            )
        tuned = load_tuned(sft_dir, dtype=dtype)
        model, tokenizer, who = tuned.model, tuned.tokenizer, "the SFT model"
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # merged weights generate faster
    else:
        loaded = load_model(cfg.model.name, dtype=dtype)
        model, tokenizer, who = loaded.model, loaded.tokenizer, "the base model"
    model.eval()
    chat = ChatTokenizer(tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len)
    console.print(f"building preference pairs: {who} answers {len(questions)} train questions")
    answers = generate(
        model,
        tokenizer,
        [chat.encode_prompt(e.prompt_messages) for e in questions],
        max_new_tokens=cfg.evaluate.max_new_tokens,
        batch_size=cfg.evaluate.batch_size,
    )
    matcher = LabelMatcher(dataset.labels) if pc.rejected_from == "sft_mistakes" else None
    pairs = []
    for example, answer in zip(questions, answers, strict=True):
        text = answer.text.strip()
        if not text:
            continue
        if matcher is not None:
            if matcher.match(text).label == example.label:
                continue  # a right answer is no negative
        elif " ".join(text.split()) == " ".join(example.reference.split()):
            continue
        pairs.append(replace(example, rejected=text, meta={**example.meta, "rejected_by": who}))
    return pairs, len(questions)


def run_chain(
    cfg: RunConfig, dataset: PreparedDataset, *, console: Console
) -> tuple[ChainResult, Path]:
    """SFT into `RUN/sft/`, pairs from the models' answers, preference tuning into `RUN/`;
    returns the result and the final adapter/model folder."""
    sft_cfg = sft_stage_config(cfg)
    console.print(f"stage 1 of 2: SFT into {sft_cfg.run_dir}")
    sft = train(sft_cfg, dataset, console=console)
    started = time.perf_counter()
    pairs, questions = build_pairs(cfg, dataset, sft_cfg.run_dir, console=console)
    pair_seconds = time.perf_counter() - started
    write_jsonl(cfg.run_dir / "data" / PAIRS_FILE, (p.to_json() for p in pairs))
    console.print(
        f"{len(pairs)} preference pairs from {questions} train questions in {pair_seconds:.0f} s"
    )
    if not pairs:
        raise ValueError(
            f"no preference pairs: {cfg.preference.rejected_from} found none in {questions} "
            "train questions (the model answered them all as the references do)"
        )
    pref_cfg = preference_stage_config(cfg, sft_cfg.run_dir)
    console.print(f"stage 2 of 2: {cfg.preference.objective.upper()} into {cfg.run_dir}")
    stage = PreparedDataset(
        dataset.folder, pairs, [], dataset.test, dataset.labels, dataset.summary
    )
    preference = train(pref_cfg, stage, console=console)
    save_config(cfg, cfg.run_dir / "config.yaml")  # the run's record is the recipe as given
    result = ChainResult(sft, preference, len(pairs), questions, pair_seconds)
    return result, preference.output_dir


def with_sft_compared(cfg: RunConfig) -> RunConfig:
    """The evaluation settings of a chained run: the SFT stage scored beside the others."""
    sft_dir = str(cfg.run_dir / SFT_STAGE)
    evaluate = cfg.evaluate.model_copy(
        update={"compare_runs": [*cfg.evaluate.compare_runs, sft_dir]}
    )
    return cfg.model_copy(update={"evaluate": evaluate})
