"""The two decoders give the same greedy answers: `generate` (offline, one prompt at a time here)
and the engine (every prompt in one left-padded, continuously batched run, with a LoRA adapter on
some rows and the base model on the others)."""

import queue

import pytest

from tunewright.dataset.example import Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.inference.engine import Delta, Engine, Job, Sampling
from tunewright.inference.generate import Generation, generate
from tunewright.models import load_model

QUESTIONS = [
    "I lost my card.",
    "Where is my new card?",
    "hi",
    "What is the exchange rate today? Tell me.",
    "rate?",
    "Why was I charged a fee for taking out cash abroad?",
]
MAX_TOKENS = (5, 12)  # rows leave the running batch at different steps


def _alone(model, tokenizer, prompts: list[list[int]]) -> list[Generation]:
    return [
        generate(model, tokenizer, [p], max_new_tokens=MAX_TOKENS[i % 2], batch_size=1)[0]
        for i, p in enumerate(prompts)
    ]


def _engine(engine: Engine, prompts: list[list[int]], adapters: list[str | None]) -> list[str]:
    """Submit every prompt before the engine starts, so they are prefilled as one batch."""
    got: list[queue.Queue[Delta]] = [queue.Queue() for _ in prompts]
    for i, prompt in enumerate(prompts):
        engine.submit(Job(prompt, Sampling(MAX_TOKENS[i % 2]), got[i].put, adapter=adapters[i]))
    engine.start()
    try:
        answers = []
        for deltas in got:
            parts = [deltas.get(timeout=60)]
            while parts[-1].finish_reason is None:
                parts.append(deltas.get(timeout=60))
            assert parts[-1].finish_reason in ("stop", "length")
            answers.append(("".join(d.text for d in parts), parts[-1]))
        return answers
    finally:
        engine.close()


def _same(engine_answer, alone: Generation) -> bool:
    text, last = engine_answer
    return (
        text.strip() == alone.text  # generate strips its answers
        and (last.finish_reason == "stop") == alone.stopped
        and last.completion_tokens + alone.stopped == alone.new_tokens  # engine omits the stop
    )


@pytest.fixture
def prompts(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    chat = ChatTokenizer(loaded.tokenizer, None, 64)
    prompts = [chat.encode_prompt((Message("user", q),)) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) >= 4, "prompts of different lengths, so rows are padded"
    return prompts


def test_engine_and_generate_agree_on_the_base_model(tiny_model_dir, prompts):
    loaded = load_model(str(tiny_model_dir))
    alone = _alone(loaded.model, loaded.tokenizer, prompts)
    served = _engine(Engine(loaded.model, loaded.tokenizer), prompts, [None] * len(prompts))
    assert all(_same(s, a) for s, a in zip(served, alone)), (served, alone)


def test_per_row_adapters_agree_with_generate_on_each_model(tiny_model_dir, prompts):
    from peft import LoraConfig, get_peft_model

    loaded = load_model(str(tiny_model_dir))
    base_alone = _alone(loaded.model, loaded.tokenizer, prompts)
    tuned = get_peft_model(  # random LoRA weights: the adapter changes the answers
        loaded.model,
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
        adapter_name="tuned",
    )
    tuned_alone = _alone(tuned, loaded.tokenizer, prompts)
    assert [g.text for g in tuned_alone] != [g.text for g in base_alone]
    rows = ["tuned" if i % 3 else None for i in range(len(prompts))]  # both kinds in one batch
    served = _engine(Engine(tuned, loaded.tokenizer, adapters=True), prompts, rows)
    expected = [tuned_alone[i] if rows[i] else base_alone[i] for i in range(len(prompts))]
    assert all(_same(s, e) for s, e in zip(served, expected)), (served, expected)
