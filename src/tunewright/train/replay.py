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

Answers are cached twice. Per model, in tunewright's cache (`$TUNEWRIGHT_CACHE/replay/`): a
greedy answer depends only on the model's weights, the dtype it ran in and the prompt, so every
later run of the same model generates only prompts it has not answered before (the first run of a
recipe pays for generation, the next ones do not); for the default model the answers to the bundled
prompts are shipped with tunewright (`inference.known_answers`), so even the first run generates
none. And per run, in the run folder's
`data/replay.jsonl`: the record of what this run trained on (a dry run and the real run share it).

How much of training is replay is `general_replay_share`: the chats are repeated (or a seeded
subset taken) to make that share of the training rows, so a run cut short by its time budget
still sees them in proportion.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer, TokenizedExample
from tunewright.files import write_text_atomic
from tunewright.inference.generate import Generation, generate
from tunewright.inference.known_answers import known_answers
from tunewright.inference.tokens import stop_token_ids
from tunewright.models import cache_dir as tunewright_cache

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


def replay_chats(
    prompts: list[str], generations: list[Generation] | list[ReplayChat]
) -> list[ReplayChat]:
    """Prompt/answer pairs with a non-empty answer; `finished` says whether it ended on its own."""
    chats = [
        g if isinstance(g, ReplayChat) else ReplayChat(p, g.text, g.stopped)
        for p, g in zip(prompts, generations, strict=True)
    ]
    return [c for c in chats if c.answer]


def _model_cache_path(model: PreTrainedModel, model_name: str) -> Path:
    """The per-model answer cache: keyed by the weights files (path, size, mtime), the dtype and
    the answer limit, so changed weights or settings never reuse stale answers."""
    folder = Path(str(getattr(model.config, "_name_or_path", "") or model_name))
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    identity = {
        "model": model_name,
        "weights": [[str(w.resolve()), w.stat().st_size, w.stat().st_mtime_ns] for w in weights],
        "dtype": str(model.dtype),
        "max_answer_tokens": MAX_ANSWER_TOKENS,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return tunewright_cache() / "replay" / f"{digest}.jsonl"


def _read_answers(path: Path) -> dict[str, ReplayChat]:
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return {row["prompt"]: ReplayChat(**row) for row in rows}


def _write_answers(path: Path, answers: dict[str, ReplayChat]) -> None:
    lines = [json.dumps(asdict(chat)) for chat in answers.values()]
    write_text_atomic(path, "\n".join(lines) + "\n")


def generate_replay_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> list[Generation]:
    """Greedy answers of the base model to plain chats (no system prompt), in prompt order."""
    chat = ChatTokenizer(tokenizer, None, 10_000)
    encoded = [chat.encode_prompt((Message("user", p),)) for p in prompts]
    generations = generate(
        model, tokenizer, encoded, max_new_tokens=MAX_ANSWER_TOKENS, batch_size=_GENERATION_BATCH
    )
    model.train()
    return generations


def _generate_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> dict[str, ReplayChat]:
    """The shipped answers where this model has them, greedy generation for the rest; an empty
    answer is kept too (known, never retried)."""
    # any dtype: replay needs answers the base would give, not a like-for-like comparison
    shipped = known_answers(model, prompts, MAX_ANSWER_TOKENS, same_dtype=False)
    rest = [p for p in prompts if p not in shipped]
    answers = shipped | dict(
        zip(rest, generate_replay_answers(model, tokenizer, rest), strict=True)
    )
    return {p: ReplayChat(p, answers[p].text, answers[p].stopped) for p in prompts}


def base_replay(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    *,
    count: int,
    seed: int,
    model_name: str,
    cache_dir: Path | None,
) -> list[ReplayChat]:
    """The base model's greedy answers to `count` general prompts, empty ones left out. Read from
    the run folder (`cache_dir`) when it holds answers of the same model to the same prompts,
    else from the per-model cache, generating only the prompts it lacks."""
    prompts = pick_prompts(count, seed)
    run_cache = cache_dir / CACHE_FILE if cache_dir is not None else None
    key = {
        "model": model_name,
        "prompts": prompts,
        "max_answer_tokens": MAX_ANSWER_TOKENS,
        "unfinished_kept": True,
    }
    if run_cache is not None and run_cache.exists():
        lines = run_cache.read_text(encoding="utf-8").splitlines()
        if lines and json.loads(lines[0]) == key:
            return [ReplayChat(**json.loads(line)) for line in lines[1:]]
    model_cache = _model_cache_path(model, model_name)
    answers = _read_answers(model_cache)
    missing = [p for p in prompts if p not in answers]
    if missing:
        answers.update(_generate_answers(model, tokenizer, missing))
        # under DDP every rank writes the same answers: atomic writes with unique temporary files
        _write_answers(model_cache, answers)
    chats = replay_chats(prompts, [answers[p] for p in prompts])
    if run_cache is not None:
        lines = [json.dumps(key)] + [json.dumps(asdict(c)) for c in chats]
        write_text_atomic(run_cache, "\n".join(lines) + "\n")
    return chats


def repeated_to_share(
    replay: list[TokenizedExample], domain_rows: int, share: float | None
) -> list[TokenizedExample]:
    """The replay rows of a run: each once when `share` is None; else repeated in turn (or the
    first ones taken) until they are `share` of all training rows."""
    if share is None or not replay:
        return replay
    rows = round(domain_rows * share / (1 - share))
    return [replay[i % len(replay)] for i in range(rows)]


def encode_replay(
    chats: list[ReplayChat],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
    answer_tokens: int | None = None,
) -> list[TokenizedExample]:
    """Training examples of the replayed chats, without the run's system prompt. An unfinished
    answer keeps its end-of-turn token untrained; one longer than `max_seq_len`, or than
    `answer_tokens` answer tokens, is cut to fit, the same way (the tokens after the cut are not
    run at all); a chat whose prompt alone does not fit is left out."""
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
        limit = max_seq_len
        if answer_tokens is not None:
            first = next((i for i, x in enumerate(example.labels) if x != IGNORE_INDEX), None)
            if first is not None:
                limit = min(limit, first + answer_tokens)
        cut = len(example.input_ids) > limit
        labels = list(example.labels[:limit])
        if not c.finished or cut:
            trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
            if trained and labels[trained[-1]] in stops:
                labels[trained[-1]] = IGNORE_INDEX
        if all(label == IGNORE_INDEX for label in labels):
            continue  # nothing of the answer fits
        weights = None if example.loss_weights is None else example.loss_weights[:limit]
        encoded.append(TokenizedExample(example.input_ids[:limit], labels, weights))
    return encoded
