"""General replay: the base's own answers to general chats, mixed into training."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from rich.console import Console

from tests.train.test_loop import config
from tunewright.config import TrainConfig
from tunewright.data.prepare import prepare
from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer, TokenizedExample
from tunewright.evaluate.general import general_set
from tunewright.evaluate.metrics import normalize_answer
from tunewright.inference.generate import Generation, generate
from tunewright.inference.tokens import stop_token_ids
from tunewright.models import load_model
from tunewright.train.loop import train
from tunewright.train.micro_batches import MicroBatches, drop_untrained_tail
from tunewright.train.replay import (
    CACHE_FILE,
    MAX_ANSWER_TOKENS,
    ReplayChat,
    base_replay,
    encode_replay,
    pick_prompts,
    repeated_to_share,
    replay_chats,
    replay_prompts,
)

QUIET = Console(quiet=True)
ROOT = Path(__file__).parents[2]


def _bundled_rows() -> list[dict]:
    text = (ROOT / "src/tunewright/train/replay_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_prompts_are_shipped_unique_and_well_formed():
    rows = _bundled_rows()
    assert [row["id"] for row in rows] == [f"r{k:03d}" for k in range(1, 1001)]
    assert all(set(row) == {"id", "prompt"} and row["prompt"].strip() for row in rows)
    prompts = replay_prompts()
    assert prompts == tuple(row["prompt"] for row in rows)
    assert len({normalize_answer(p) for p in prompts}) == len(prompts) == 1000
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (
        "train/replay_prompts.jsonl"
        in pyproject["tool"]["setuptools"]["package-data"]["tunewright"]
    )
    assert pick_prompts(5, seed=1) == pick_prompts(5, seed=1) != pick_prompts(5, seed=2)
    # train.general_replay may ask for every bundled prompt, and no more
    assert len(pick_prompts(TrainConfig(general_replay=1000).general_replay, seed=0)) == 1000
    with pytest.raises(ValidationError, match="general_replay"):
        TrainConfig(general_replay=1001)


def test_no_prompt_asks_a_question_of_the_forgetting_check():
    # replaying the base's answer to a checked question would make the check measure the cure
    replayed = [f" {normalize_answer(p)} " for p in replay_prompts()]
    for item in general_set():
        question = f" {normalize_answer(item.prompt)} "
        assert not [p for p in replayed if question in p], item.id


def test_no_prompt_names_a_country_whose_capital_is_checked():
    countries = [
        match[1]
        for item in general_set()
        if (match := re.fullmatch(r"What is the capital of (?:the )?(.+)\?", item.prompt))
    ]
    assert len(countries) >= 20 and "United States" in countries
    for country in countries:
        pattern = re.compile(rf"\b{re.escape(country)}\b", re.IGNORECASE)
        assert not [p for p in replay_prompts() if pattern.search(p)], country


def test_unfinished_answers_are_kept_and_marked_empty_ones_dropped():
    generations = [
        Generation("Rain is water.", 5, True),
        Generation("It goes on and on", 64, False),
        Generation("", 1, True),
    ]
    assert replay_chats(["a", "b", "c"], generations) == [
        ReplayChat("a", "Rain is water."),
        ReplayChat("b", "It goes on and on", finished=False),
    ]


def test_replayed_chats_train_the_answer_without_the_runs_system_prompt(tiny_model_dir):
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    [example] = encode_replay(
        [ReplayChat("Describe rain.", "Rain is water falling.")], tokenizer, 256
    )
    text = tokenizer.decode(example.input_ids)
    trained = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert (
        "Describe rain." in text
        and "Rain is water falling." in trained
        and "Describe" not in trained
    )
    domain = ChatTokenizer(tokenizer, "Name the banking intent.", 256)
    assert "Name the banking intent." in domain.prompt_text((Message("user", "x"),))
    assert "Name the banking intent." not in text
    [ended] = encode_replay([ReplayChat("Describe rain.", "Rain falls.")], tokenizer, 256)
    stops = set(stop_token_ids(tokenizer))
    assert [t for t in ended.labels if t in stops], "a finished answer trains its end of turn"
    # unfinished, or too long and cut to fit: the words train, the end of turn does not
    [unfinished] = encode_replay(
        [ReplayChat("Describe rain.", "Rain falls and", finished=False)], tokenizer, 256
    )
    [cut] = encode_replay([ReplayChat("Describe rain.", "word " * 300)], tokenizer, 64)
    for example in (unfinished, cut):
        trained = [t for t in example.labels if t != IGNORE_INDEX]
        assert trained and not [t for t in trained if t in stops]
    assert len(cut.input_ids) == 64
    assert unfinished.num_trained_tokens == ended.num_trained_tokens - 1 + (
        len(tokenizer("Rain falls and", add_special_tokens=False)["input_ids"])
        - len(tokenizer("Rain falls.", add_special_tokens=False)["input_ids"])
    )
    # a prompt that alone overruns max_seq_len leaves nothing to train: left out
    assert encode_replay([ReplayChat("word " * 300, "Rain.")], tokenizer, 64) == []


def test_replay_answer_tokens_trains_and_runs_only_the_answers_start(tiny_model_dir):
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    stops = set(stop_token_ids(tokenizer))
    long = ReplayChat("Describe rain.", "Rain is water that falls from clouds to the ground. " * 3)
    [whole] = encode_replay([long], tokenizer, 256)
    [short] = encode_replay([long], tokenizer, 256, answer_tokens=5)
    trained = [t for t in short.labels if t != IGNORE_INDEX]
    assert len(trained) == 5 and not [t for t in trained if t in stops]
    # the same tokens as the whole answer's start, and nothing after the cut is run
    assert short.input_ids == whole.input_ids[: len(short.input_ids)]
    assert short.labels[-1] != IGNORE_INDEX and len(short.input_ids) < len(whole.input_ids)
    # an answer shorter than the limit is kept whole, its end of turn trained
    [ended] = encode_replay([ReplayChat("Describe rain.", "Rain.")], tokenizer, 256, 30)
    assert ended == encode_replay([ReplayChat("Describe rain.", "Rain.")], tokenizer, 256)[0]
    assert [t for t in ended.labels if t in stops]


def test_base_replay_is_the_base_models_greedy_answers_and_is_cached(tmp_path, tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    chats = base_replay(
        loaded.model, loaded.tokenizer, count=6, seed=0, model_name="tiny", cache_dir=tmp_path
    )
    prompts = pick_prompts(6, seed=0)
    chat = ChatTokenizer(loaded.tokenizer, None, 10_000)
    expected = generate(
        loaded.model,
        loaded.tokenizer,
        [chat.encode_prompt((Message("user", p),)) for p in prompts],
        max_new_tokens=MAX_ANSWER_TOKENS,
        batch_size=1,
    )
    assert chats == replay_chats(prompts, expected)
    # a second call reads the cache: it never touches the model
    assert (
        base_replay(None, loaded.tokenizer, count=6, seed=0, model_name="tiny", cache_dir=tmp_path)
        == chats
    )
    header = json.loads((tmp_path / CACHE_FILE).read_text().splitlines()[0])
    assert header["model"] == "tiny" and header["prompts"] == prompts


def test_training_trains_on_the_replayed_chats_as_well(tmp_path, tiny_model_dir):
    def trained_tokens(folder, *overrides):
        cfg = config(folder, tiny_model_dir, "train.epochs=1", "data.max_seq_len=256", *overrides)
        if (
            "train.general_replay=3" in overrides
        ):  # answers as the base would have given them, cached
            prompts = pick_prompts(3, seed=0)
            key = {
                "model": str(tiny_model_dir),
                "prompts": prompts,
                "max_answer_tokens": MAX_ANSWER_TOKENS,
                "unfinished_kept": True,
            }
            rows = [json.dumps(key)] + [
                json.dumps({"prompt": p, "answer": f"An answer to {p}"}) for p in prompts
            ]
            (cfg.run_dir / "data").mkdir(parents=True)
            (cfg.run_dir / "data" / CACHE_FILE).write_text("\n".join(rows) + "\n")
        dataset = prepare(cfg, console=QUIET)
        return train(cfg, dataset, console=QUIET).trained_tokens

    without = trained_tokens(tmp_path / "plain")
    with_replay = trained_tokens(tmp_path / "replay", "train.general_replay=3")
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    replayed = encode_replay(
        [ReplayChat(p, f"An answer to {p}") for p in pick_prompts(3, seed=0)], tokenizer, 256
    )
    assert len(replayed) == 3
    assert with_replay - without == sum(len(drop_untrained_tail(e).input_ids) for e in replayed)


def test_answers_are_cached_per_model_and_only_new_prompts_are_generated(
    tmp_path, tiny_model_dir, monkeypatch
):
    from tunewright.train import replay as replay_module

    loaded = load_model(str(tiny_model_dir))
    asked: list[list[str]] = []
    real = replay_module._generate_answers

    def counting(model, tokenizer, prompts):
        asked.append(list(prompts))
        return real(model, tokenizer, prompts)

    monkeypatch.setattr(replay_module, "_generate_answers", counting)
    first = base_replay(
        loaded.model, loaded.tokenizer, count=4, seed=0, model_name="tiny", cache_dir=tmp_path / "a"
    )
    # another run folder, more prompts: the first four come from the model's cache
    second = base_replay(
        loaded.model, loaded.tokenizer, count=6, seed=0, model_name="tiny", cache_dir=tmp_path / "b"
    )
    assert asked == [pick_prompts(4, seed=0), pick_prompts(6, seed=0)[4:]]
    assert second[: len(first)] == first
    # the same answers as generating all six at once, and recorded in the run folder
    fresh = real(loaded.model, loaded.tokenizer, pick_prompts(6, seed=0))
    assert second == replay_chats(pick_prompts(6, seed=0), list(fresh.values()))
    assert len((tmp_path / "b" / CACHE_FILE).read_text().splitlines()) == 1 + len(second)
    # other weights (another dtype here) never reuse these answers
    loaded.model.to(torch.bfloat16)
    base_replay(
        loaded.model, loaded.tokenizer, count=1, seed=0, model_name="tiny", cache_dir=tmp_path / "c"
    )
    assert asked[-1] == pick_prompts(1, seed=0)


def test_replay_is_repeated_or_cut_to_its_share_of_the_training_rows():
    rows = [TokenizedExample([i], [i]) for i in range(3)]
    assert repeated_to_share(rows, 100, None) == rows
    mixed = repeated_to_share(rows, 90, 0.25)  # 30 replay rows of 120
    assert len(mixed) == 30 and mixed[:4] == [rows[0], rows[1], rows[2], rows[0]]
    assert repeated_to_share(rows, 4, 0.2) == rows[:1]
    assert repeated_to_share([], 100, 0.5) == []


def test_replay_weight_scales_replayed_tokens_but_not_the_steps_divisor(tiny_model_dir):
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    chat = ChatTokenizer(tokenizer, "Name the banking intent.", 256)
    domain = [Example(messages=(Message("user", "card?"), Message("assistant", "card_arrival")))]
    replay = encode_replay([ReplayChat("Describe rain.", "Rain is water falling.")], tokenizer, 256)

    def built(weight):
        return MicroBatches.build(
            chat,
            domain,
            tokenizer.pad_token_id,
            packing=False,
            max_seq_len=256,
            extra=replay,
            extra_weight=weight,
        )

    plain, heavy = built(1.0), built(3.0)
    batch = heavy.collate([0, 1])
    trained = batch["labels"] != IGNORE_INDEX
    assert batch["loss_weights"][0][trained[0]].eq(1.0).all()
    assert batch["loss_weights"][1][trained[1]].eq(3.0).all()
    assert batch["loss_weights"][~trained].eq(0.0).all()
    # the divisor counts each trained token once: a replayed token pulls 3x, the mean does not
    # shrink every other token's pull to make room for it
    assert (
        heavy.unit_weights
        == plain.unit_weights
        == [
            float(trained[0, 1:].sum()),
            float(trained[1, 1:].sum()),
        ]
    )
    assert "loss_weights" not in plain.collate([0, 1])
