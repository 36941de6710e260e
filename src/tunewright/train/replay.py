"""General replay: keep the tuned model answering general questions like the base did.

Tuning on thousands of examples that all end in a label teaches a small model to answer *every*
chat with a label (see docs/results.md#general-replay). The cure used here is self-distillation
replay: before training, the base model answers up to 1,000 general prompts
(`replay_prompts.jsonl`, written for tunewright: explanations, how-to steps, definitions, lists,
rewriting a given sentence, polite emails, short stories and poems, word problems, comparisons,
advice), and those answers are mixed into the training set. None of the prompts asks what the
forgetting check asks (tested), so the check stays independent of the cure. They are chats
*without* the run's system prompt, so the model learns the difference: the domain instruction asks
for a label, a plain chat gets a plain answer.
Replaying the base's own answers (not some other model's) asks it to keep, not to change, its
general behaviour, and needs no outside data or licence.

An answer that had not ended within `MAX_ANSWER_TOKENS`, or that does not fit the recipe's
`max_seq_len`, is kept, cut, with its end-of-turn token untrained: its words are still the base's
own, and dropping such answers lost most of them (long explanations are what general chats ask
for), while training an end-of-turn token after a cut would teach stopping mid-sentence.

The answers are cached in the run folder (a dry run and the real run share them).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer, TokenizedExample
from tunewright.files import write_text_atomic
from tunewright.inference.generate import Generation, generate
from tunewright.inference.tokens import stop_token_ids

# longer answers are cut there, their end-of-turn token untrained (see the module docstring)
MAX_ANSWER_TOKENS = 64
_GENERATION_BATCH = 32
CACHE_FILE = "replay.jsonl"


@dataclass(frozen=True, slots=True)
class ReplayChat:
    prompt: str
    answer: str
    finished: bool = True  # False: the answer was cut, so its end-of-turn token is not trained


@cache
def replay_prompts() -> tuple[str, ...]:
    """The bundled general prompts."""
    text = files("tunewright.train").joinpath("replay_prompts.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line)["prompt"] for line in text.splitlines() if line.strip())


def pick_prompts(count: int, seed: int) -> list[str]:
    """`count` of the bundled prompts (all of them at most), in a seeded order."""
    prompts = list(replay_prompts())
    random.Random(seed).shuffle(prompts)
    return prompts[:count]


def replay_chats(prompts: list[str], generations: list[Generation]) -> list[ReplayChat]:
    """Prompt/answer pairs with a non-empty answer; `finished` says whether it ended on its own."""
    return [
        ReplayChat(p, g.text, g.stopped)
        for p, g in zip(prompts, generations, strict=True)
        if g.text
    ]


def base_replay(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    count: int,
    seed: int,
    model_name: str,
    cache_dir: Path | None,
) -> list[ReplayChat]:
    """The base model's greedy answers to `count` general prompts; read from `cache_dir` when it
    holds answers of the same model to the same prompts."""
    prompts = pick_prompts(count, seed)
    cache_path = cache_dir / CACHE_FILE if cache_dir is not None else None
    key = {
        "model": model_name,
        "prompts": prompts,
        "max_answer_tokens": MAX_ANSWER_TOKENS,
        "unfinished_kept": True,
    }
    if cache_path is not None and cache_path.exists():
        lines = cache_path.read_text(encoding="utf-8").splitlines()
        if lines and json.loads(lines[0]) == key:
            return [ReplayChat(**json.loads(line)) for line in lines[1:]]
    chat = ChatTokenizer(
        tokenizer, None, 10_000
    )  # no system prompt: plain chats, as the forgetting check asks
    encoded = [chat.encode_prompt((Message("user", p),)) for p in prompts]
    generations = generate(
        model, tokenizer, encoded, max_new_tokens=MAX_ANSWER_TOKENS, batch_size=_GENERATION_BATCH
    )
    model.train()
    chats = replay_chats(prompts, generations)
    if (
        cache_path is not None
    ):  # under DDP every rank writes the same answers: a unique temporary file each
        lines = [json.dumps(key)] + [
            json.dumps({"prompt": c.prompt, "answer": c.answer, "finished": c.finished})
            for c in chats
        ]
        write_text_atomic(cache_path, "\n".join(lines) + "\n")
    return chats


def encode_replay(
    chats: list[ReplayChat], tokenizer: PreTrainedTokenizerBase, max_seq_len: int
) -> list[TokenizedExample]:
    """Training examples of the replayed chats, without the run's system prompt. An unfinished
    answer keeps its end-of-turn token untrained; one longer than `max_seq_len` is cut to fit, the
    same way; a chat whose prompt alone does not fit is left out."""
    chat = ChatTokenizer(tokenizer, None, 1_000_000)
    stops = set(stop_token_ids(tokenizer))
    encoded = []
    for c in chats:
        example = chat.encode_example(
            Example(
                messages=(Message("user", c.prompt), Message("assistant", c.answer)),
                source="general replay",
            )
        )
        cut = len(example.input_ids) > max_seq_len
        labels = list(example.labels[:max_seq_len])
        if not c.finished or cut:
            trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
            if trained and labels[trained[-1]] in stops:
                labels[trained[-1]] = IGNORE_INDEX
        if all(label == IGNORE_INDEX for label in labels):
            continue  # nothing of the answer fits
        weights = None if example.loss_weights is None else example.loss_weights[:max_seq_len]
        encoded.append(TokenizedExample(example.input_ids[:max_seq_len], labels, weights))
    return encoded
